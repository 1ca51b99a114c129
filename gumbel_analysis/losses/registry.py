"""``build_loss``: a loss of the catalogue (``gumbel_analysis.spec.losses``) as a module.

The catalogue declares each loss's class, activations and options; this imports the class only
when a loss is built, checks the options against the declaration and constructs it.
"""

from __future__ import annotations

from typing import Any

import torch

from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.spec.losses import loss_entry


def build_loss(
    name: str,
    num_classes: int,
    class_frequency: torch.Tensor | None = None,
    frequency_groups: list[str] | None = None,
    *,
    activation: str | None = None,
    **options: Any,
) -> ClassificationLoss:
    """Build a loss of the catalogue for ``num_classes`` foreground classes.

    ``class_frequency`` (f_c = image_count / training images) is needed by the methods that use
    class frequencies (DropLoss family, Federated Loss), ``frequency_groups`` (r/c/f per class) by
    ACSL and to derive lambda; ``activation`` picks Sigmoid or Gumbel for the BCE family (an
    alias fixes it); ``options`` are the declared options (``loss_entry(name).options()``).
    InputError naming the flag for an activation or option that does not apply.
    """
    entry = loss_entry(name)
    activation, checked = entry.resolve(activation, options)
    kwargs: dict[str, Any] = dict(checked)
    if activation != "softmax":  # the BCE family takes its activation; softmax losses have one
        kwargs["activation"] = activation
    loss = entry.load_class()(
        num_classes,
        class_frequency=class_frequency,
        frequency_groups=frequency_groups,
        **kwargs,
    )
    loss.name = entry.name
    return loss
