"""The loss catalogue: every loss's name, activations, declared options and class, as data.

The single source of truth for the losses: ``build_loss``, ``gumbel train``'s ``--loss``,
``--activation`` and loss flags, the configuration file's ``loss_options``, and the run tables
all read :data:`LOSSES`. An entry names its class by import path, so the catalogue (and the
command line built from it) needs no torch; the class is imported only when a loss is built.

Adding a loss: write its class in ``losses/methods/NAME.py`` and add one :class:`LossEntry` to
:data:`LOSSES` below (or call :func:`register_loss` with one).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from gumbel_analysis.errors import InputError
from gumbel_analysis.spec.options import Option, check_options


class Activation(StrEnum):
    SIGMOID = "sigmoid"
    GUMBEL = "gumbel"
    SOFTMAX = "softmax"


class GumbelMode(StrEnum):
    """How the Gumbel BCE is computed: exactly (stable), as the authors' code with its clip of
    the logits at [-4, 10] (paper), or the plain formula (none)."""

    STABLE = "stable"
    PAPER = "paper"
    NONE = "none"


class DropVariant(StrEnum):
    """Where a method's paper and its authors' code differ: the equation or the code."""

    EQUATION = "equation"
    REFERENCE = "reference"


#: The activations of the BCE family (Sigmoid first: a method's default) and of softmax losses.
BCE_ACTIVATIONS = (Activation.SIGMOID.value, Activation.GUMBEL.value)
SOFTMAX_ACTIVATIONS = (Activation.SOFTMAX.value,)

#: The Gumbel temperature sigma of Eq. 3 (also the values ``gumbel sweep`` takes).
TEMPERATURE_OPTION = Option(
    "temperature",
    "float",
    1.0,
    "Gumbel temperature sigma of Eq. 3.",
    low=1e-3,
    high=1e3,
)
#: Options of the Gumbel activation, shared by every BCE-family method.
GUMBEL_OPTIONS = (
    TEMPERATURE_OPTION,
    Option(
        "gumbel_mode",
        "choice",
        GumbelMode.STABLE.value,
        "Gumbel loss: stable (exact, default), paper (the authors' clip at [-4, 10]) or none.",
        choices=tuple(m.value for m in GumbelMode),
    ),
)
#: The options each activation adds to a method's own.
ACTIVATION_OPTIONS: dict[str, tuple[Option, ...]] = {
    Activation.SIGMOID.value: (),
    Activation.GUMBEL.value: GUMBEL_OPTIONS,
    Activation.SOFTMAX.value: (),
}

LAMBDA_OPTION = Option(
    "lambda_",
    "float",
    None,
    "Frequency threshold lambda of EQL/DropLoss/GOL (classes with f_c below it are 'rare'). "
    "Default: midway between the data's common and frequent groups.",
    flag="--lambda",
    low=0.0,
    high=1.0,
    low_open=True,
)
VARIANT_OPTION = Option(
    "variant",
    "choice",
    DropVariant.REFERENCE.value,
    "Where a method's paper and its authors' code differ: the paper's equation or the "
    "authors' code (reference).",
    choices=tuple(v.value for v in DropVariant),
    aliases=("--drop-variant",),
)


@dataclass(frozen=True)
class LossEntry:
    """A loss of the catalogue: its class (``module:Class``), activations (the first is the
    default), own options and, for an alias, the activation and option defaults it fixes."""

    name: str
    target: str
    activations: tuple[str, ...]
    own_options: tuple[Option, ...] = ()
    #: An alias fixes its activation (``gumbel`` is ``bce`` with Gumbel): ``--activation`` may
    #: not pick another.
    fixed: bool = False
    #: A second stage: it trains from a finished run (``--from RUN``, DisAlign), on a schedule
    #: of its own.
    second_stage: bool = False

    @property
    def default_activation(self) -> str:
        return self.activations[0]

    def options(self, activation: str | None = None) -> tuple[Option, ...]:
        """The method's options and those of ``activation`` (default: the loss's own)."""
        return self.own_options + ACTIVATION_OPTIONS[activation or self.default_activation]

    def resolve(self, activation: str | None, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The activation and every option's checked value (defaults filled); InputError
        naming the flag for an activation or option that does not apply or is out of range."""
        activation = getattr(activation, "value", activation)
        if activation is not None and activation not in self.activations:
            fixes = f" (--loss {self.name} fixes it)" if self.fixed else ""
            raise InputError(
                f"--activation {activation} does not apply to --loss {self.name}{fixes}; "
                f"use one of: {', '.join(self.activations)}"
            )
        activation = activation or self.default_activation
        owner = f"--loss {self.name} with --activation {activation}"
        return activation, check_options(self.options(activation), values, owner)

    def label(self, activation: str | None) -> str:
        """The loss as reports name it: ``eqlv2/gumbel``, or the name alone where it has one
        activation (``gumbel``, ``gol``, ``softmax``)."""
        if len(self.activations) == 1 or activation is None:
            return self.name
        return f"{self.name}/{activation}"

    def load_class(self) -> type:
        """The loss's class (imports torch)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


def alias(of: LossEntry, name: str, activation: str, **defaults: Any) -> LossEntry:
    """``of`` under another name, with its activation fixed and other option defaults."""
    declared = {o.name for o in of.options(activation)}
    if not set(defaults) <= declared:
        raise ValueError(f"alias {name}: {sorted(set(defaults) - declared)} are not options")
    own = tuple(
        replace(o, default=defaults[o.name]) if o.name in defaults else o for o in of.own_options
    )
    return LossEntry(name, of.target, (activation,), own, fixed=True)


_METHODS = "gumbel_analysis.losses.methods"
_BCE = LossEntry(
    "bce",
    f"{_METHODS}.plain:PlainBCE",
    BCE_ACTIVATIONS,
)
_DROPLOSS = LossEntry(
    "droploss",
    f"{_METHODS}.droploss:DropLoss",
    BCE_ACTIVATIONS,
    (LAMBDA_OPTION, VARIANT_OPTION),
)
_EQL = LossEntry(
    "eql",
    f"{_METHODS}.eql:EQL",
    BCE_ACTIVATIONS,
    (LAMBDA_OPTION,),
)
_ACSL = LossEntry(
    "acsl",
    f"{_METHODS}.acsl:ACSL",
    BCE_ACTIVATIONS,
    (
        Option(
            "acsl_xi",
            "float",
            0.7,
            "ACSL's score threshold xi: a negative whose detached probability reaches it is kept.",
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        ),
        VARIANT_OPTION,
    ),
)
_FEDERATED = LossEntry(
    "federated",
    f"{_METHODS}.federated:FederatedLoss",
    BCE_ACTIVATIONS,
    (
        Option(
            "fed_classes",
            "int",
            50,
            "Federated Loss: classes per batch (the batch's ground truth, topped up by sampling).",
            low=1,
        ),
        Option(
            "fed_power",
            "float",
            0.5,
            "Federated Loss: sampling weights image_count^power.",
            low=0.0,
        ),
    ),
)
_EQLV2 = LossEntry(
    "eqlv2",
    f"{_METHODS}.eqlv2:EQLv2",
    BCE_ACTIVATIONS,
    (
        Option("eqlv2_gamma", "float", 12.0, "EQLv2's gamma (slope of the mapping).", low=0.0),
        Option("eqlv2_mu", "float", 0.8, "EQLv2's mu (centre of the mapping).", low=0.0),
        Option("eqlv2_alpha", "float", 4.0, "EQLv2's alpha (positive up-weighting).", low=0.0),
    ),
)
_SOFTMAX = LossEntry(
    "softmax",
    f"{_METHODS}.softmax:SoftmaxCE",
    SOFTMAX_ACTIVATIONS,
)
_SEESAW = LossEntry(
    "seesaw",
    f"{_METHODS}.seesaw:SeesawLoss",
    SOFTMAX_ACTIVATIONS,
    (
        Option("seesaw_p", "float", 0.8, "Seesaw's mitigation exponent p.", low=0.0),
        Option("seesaw_q", "float", 2.0, "Seesaw's compensation exponent q.", low=0.0),
        Option(
            "seesaw_eps",
            "float",
            1e-2,
            "Seesaw's floor of the own-class score.",
            low=0.0,
            low_open=True,
        ),
    ),
)
_LOCE = LossEntry(
    "loce",
    f"{_METHODS}.loce:EquilibriumLoss",
    (Activation.SOFTMAX.value, *BCE_ACTIVATIONS),
    (
        Option(
            "loce_alpha",
            "float",
            0.9,
            "LOCE's momentum alpha of each class's mean classification score.",
            low=0.0,
            high=1.0,
            high_open=True,
        ),
        Option(
            "loce_bg_score",
            "float",
            0.01,
            "LOCE's fixed mean score of the background.",
            low=0.0,
            high=1.0,
            low_open=True,
        ),
        Option(
            "loce_mfs",
            "bool",
            False,
            "LOCE's memory-augmented feature sampling (MFS): replay ground-truth RoI features "
            "of the classes with low mean scores (the authors' LOCE; off: the loss alone).",
        ),
        Option(
            "loce_mfs_queue",
            "int",
            80,
            "MFS: the feature queue of each class (entries, about 50 KB each on FPN).",
            low=1,
        ),
        Option(
            "loce_mfs_classes",
            "int",
            4,
            "MFS: classes drawn per image of the batch, each step (the authors' 8 per GPU of "
            "2 images).",
            low=1,
        ),
        Option(
            "loce_mfs_features",
            "int",
            4,
            "MFS: features replayed per drawn class.",
            low=1,
        ),
    ),
)
_DISALIGN = LossEntry(
    "disalign",
    f"{_METHODS}.disalign:DisAlignLoss",
    (Activation.SOFTMAX.value, *BCE_ACTIVATIONS),
    (
        Option(
            "disalign_rho",
            "float",
            0.8,
            "DisAlign's re-weighting exponent rho (weights 1 / r_c^rho).",
            low=0.0,
        ),
    ),
    second_stage=True,
)

#: name -> entry: the methods, then the aliases (gumbel, sigmoid, gol, gol-star).
LOSSES: dict[str, LossEntry] = {
    e.name: e
    for e in (
        _BCE,
        _DROPLOSS,
        _EQL,
        _ACSL,
        _FEDERATED,
        _EQLV2,
        _SOFTMAX,
        _SEESAW,
        _LOCE,
        _DISALIGN,
        alias(_BCE, "gumbel", "gumbel"),  # Gumbel BCE, C + 1 outputs (Eq. 3, 4)
        alias(_BCE, "sigmoid", "sigmoid"),
        alias(_DROPLOSS, "gol", "gumbel", variant="equation"),  # GOL: Eq. 4-6
        alias(_EQL, "gol-star", "gumbel"),  # GOL*: EQL with Gumbel
    )
}


def register_loss(entry: LossEntry) -> LossEntry:
    """Add ``entry`` to the catalogue (for a loss defined outside this package)."""
    if entry.name in LOSSES:
        raise ValueError(f"a loss named {entry.name!r} is already registered")
    LOSSES[entry.name] = entry
    return entry


def available_losses() -> list[str]:
    return sorted(LOSSES)


def loss_entry(name: str) -> LossEntry:
    """The catalogue's entry for ``name``; InputError listing the names if there is none."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown loss {name!r}; available: {', '.join(available_losses())}"
        ) from None


def all_options() -> dict[str, Option]:
    """Every option any loss or activation declares, by name (one flag, one meaning)."""
    found: dict[str, Option] = {}
    for entry in LOSSES.values():
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


@dataclass(frozen=True)
class OptionUse:
    """Which losses declare an option, by default value (an alias may change it)."""

    option: Option
    by_default: dict[str, list[str]] = field(default_factory=dict)

    @property
    def losses(self) -> list[str]:
        return sorted({n for names in self.by_default.values() for n in names})


def option_uses() -> list[OptionUse]:
    """Each declared option with the losses that take it, for the command line's help."""
    uses = {name: OptionUse(option) for name, option in all_options().items()}
    for name in available_losses():
        entry = LOSSES[name]
        for activation in entry.activations:
            for option in entry.options(activation):
                users = uses[option.name].by_default.setdefault(str(option.default), [])
                if name not in users:
                    users.append(name)
    return list(uses.values())
