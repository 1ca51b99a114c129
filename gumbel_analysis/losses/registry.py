"""Name -> loss, the single source of truth for the losses, their activations and their options.

A method registers itself with ``@register_loss("name")``; an alias fixes a method's activation
and option defaults (``gol`` = DropLoss with Gumbel and Eq. 6). ``build_loss``, ``gumbel train``'s
flags and choices, and the config file's ``loss_options`` are all read from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from gumbel_analysis.errors import InputError
from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.losses.elementwise import ACTIVATION_OPTIONS
from gumbel_analysis.losses.options import LossOption, check_options


@dataclass(frozen=True)
class LossEntry:
    """A registered name: the method's class, and for an alias its fixed activation and option
    defaults."""

    name: str
    cls: type[ClassificationLoss]
    activation: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def activations(self) -> tuple[str, ...]:
        return (self.activation,) if self.activation else tuple(self.cls.activations)

    @property
    def default_activation(self) -> str:
        return self.activations[0]

    def options(self, activation: str | None = None) -> tuple[LossOption, ...]:
        """The method's options (with the alias's defaults) and those of ``activation``."""
        activation = activation or self.default_activation
        own = tuple(
            replace(o, default=self.defaults[o.name]) if o.name in self.defaults else o
            for o in self.cls.options
        )
        return own + ACTIVATION_OPTIONS[activation]

    def resolve(
        self, activation: str | None, options: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The activation and every option's checked value; InputError (a ValueError) naming
        the flag for an activation or option that does not apply."""
        if activation is not None and activation not in self.activations:
            fixed = f" (--loss {self.name} fixes it)" if self.activation else ""
            raise InputError(
                f"--activation {activation} does not apply to --loss {self.name}{fixed}; "
                f"use one of: {', '.join(self.activations)}"
            )
        activation = activation or self.default_activation
        owner = f"--loss {self.name} with --activation {activation}"
        return activation, check_options(self.options(activation), options, owner)


_LOSSES: dict[str, LossEntry] = {}


def register_loss(
    name: str, summary: str = ""
) -> Callable[[type[ClassificationLoss]], type[ClassificationLoss]]:
    """Class decorator: register a method under ``name`` (its first activation is the default)."""

    def add(cls: type[ClassificationLoss]) -> type[ClassificationLoss]:
        _add(LossEntry(name, cls, summary=summary or _first_line(cls.__doc__)))
        cls.name = name
        return cls

    return add


def register_alias(name: str, method: str, activation: str, summary: str, **defaults: Any) -> None:
    """Register ``name`` as ``method`` with a fixed ``activation`` and other option defaults."""
    entry = _LOSSES[method]
    declared = {o.name for o in entry.options(activation)}
    if not set(defaults) <= declared:
        raise ValueError(f"alias {name}: {sorted(set(defaults) - declared)} are not options")
    _add(LossEntry(name, entry.cls, activation, dict(defaults), summary))


def _add(entry: LossEntry) -> None:
    if entry.name in _LOSSES:
        raise ValueError(f"a loss named {entry.name!r} is already registered")
    _LOSSES[entry.name] = entry


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def loss_entry(name: str) -> LossEntry:
    try:
        return _LOSSES[name]
    except KeyError:
        raise InputError(
            f"unknown loss {name!r}; available: {', '.join(available_losses())}"
        ) from None


def all_options() -> dict[str, LossOption]:
    """Every option any loss or activation declares, by name (one flag, one meaning)."""
    found: dict[str, LossOption] = {}
    for entry in _LOSSES.values():
        for activation in entry.activations:
            for option in entry.options(activation):
                known = found.get(option.name)
                if known is not None and (known.kind, known.cli_flag) != (
                    option.kind,
                    option.cli_flag,
                ):
                    raise ValueError(f"option {option.name} is declared twice, differently")
                found.setdefault(option.name, option)
    return found


def build_loss(
    name: str,
    num_classes: int,
    class_frequency: torch.Tensor | None = None,
    frequency_groups: list[str] | None = None,
    *,
    activation: str | None = None,
    **options: Any,
) -> ClassificationLoss:
    """Build a registered loss for ``num_classes`` foreground classes.

    ``class_frequency`` (f_c = image_count / training images) is needed by the methods that use
    class frequencies (DropLoss family, Federated Loss), ``frequency_groups`` (r/c/f per class) by
    ACSL and to derive lambda; ``activation`` picks Sigmoid or Gumbel for the BCE family (an
    alias fixes it); ``options`` are the declared options (``loss_entry(name).options()``).
    """
    entry = loss_entry(name)
    activation, checked = entry.resolve(activation, options)
    kwargs: dict[str, Any] = dict(checked)
    if activation != "softmax":  # the BCE family takes its activation; softmax losses have one
        kwargs["activation"] = activation
    return entry.cls(
        num_classes,
        class_frequency=class_frequency,
        frequency_groups=frequency_groups,
        **kwargs,
    )
