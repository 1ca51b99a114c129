"""Name -> loss class. Later code adds losses with ``@register_loss`` and callers never change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gumbel_analysis.losses.base import ClassificationLoss

_LOSSES: dict[str, type[ClassificationLoss]] = {}


def register_loss(name: str) -> Callable[[type[ClassificationLoss]], type[ClassificationLoss]]:
    def add(cls: type[ClassificationLoss]) -> type[ClassificationLoss]:
        if name in _LOSSES:
            raise ValueError(f"a loss named {name!r} is already registered")
        cls.name = name
        _LOSSES[name] = cls
        return cls

    return add


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def loss_class(name: str) -> type[ClassificationLoss]:
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; available: {', '.join(available_losses())}"
        ) from None


def build_loss(
    name: str,
    num_classes: int,
    class_frequency: torch.Tensor | None = None,
    **options: Any,
) -> ClassificationLoss:
    """Build a registered loss for ``num_classes`` foreground classes.

    ``class_frequency`` (f_c = image_count / training images, one per class) is required by the
    DropLoss family and ignored by the others; ``options`` go to the loss's constructor.
    """
    return loss_class(name)(num_classes, class_frequency=class_frequency, **options)
