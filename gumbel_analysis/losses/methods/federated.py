"""Federated Loss (Zhou et al., "Probabilistic two-stage detection", 2021) with either activation.

C outputs. Per batch, the loss is computed only on a set S of classes: the batch's ground-truth
classes, topped up to ``fed_classes`` (50) by sampling without replacement with weights
``image_count^fed_power`` (0.5; ``image_count`` is proportional to ``f_c``):

    w_ij = [j in S]

As in the authors' code (CenterNet2 / detectron2's ``get_fed_loss_classes``), the background
label counts as one of the batch's classes when the batch has background proposals, so such a
batch keeps ``fed_classes - 1`` foreground columns once topped up; a batch with more ground-truth
classes than ``fed_classes`` keeps them all. Classes that never occur (``f_c = 0``) are never
sampled.
"""

from __future__ import annotations

import torch

from gumbel_analysis.losses.bce import WeightedBCE
from gumbel_analysis.losses.elementwise import EntryWeights


def federated_classes(
    labels: torch.Tensor,
    class_weight: torch.Tensor,
    num_sampled: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The [C] boolean mask of S: the classes of ``labels`` (C = background, counted but not a
    column) topped up to ``num_sampled`` by weighted sampling without replacement."""
    c = class_weight.numel()
    present = torch.unique(labels)
    mask = torch.zeros(c, dtype=torch.bool, device=labels.device)
    mask[present[present < c]] = True
    missing = num_sampled - present.numel()
    if missing > 0:
        prob = class_weight.double().clone()
        prob[mask] = 0.0
        missing = min(missing, int((prob > 0).sum()))
        if missing > 0:
            drawn = torch.multinomial(prob.cpu(), missing, replacement=False, generator=generator)
            mask[drawn.to(labels.device)] = True
    return mask


class FederatedLoss(WeightedBCE):
    """Federated Loss: BCE only on the batch's classes plus sampled ones, C outputs."""

    with_background = False

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        fed_classes: int = 50,
        fed_power: float = 0.5,
        **activation_options,
    ):
        super().__init__(num_classes, class_frequency, frequency_groups, **activation_options)
        if self.class_frequency is None:
            raise ValueError(f"the {self.name} loss needs class_frequency (f_c per class)")
        if int(fed_classes) != fed_classes or fed_classes < 1:
            raise ValueError(f"fed_classes must be a positive integer, got {fed_classes}")
        self.fed_classes, self.fed_power = int(fed_classes), float(fed_power)
        freq = self.class_frequency
        weight = torch.where(freq > 0, freq.pow(self.fed_power), torch.zeros_like(freq))
        self.register_buffer("sampling_weight", weight, persistent=False)
        self.generator: torch.Generator | None = None

    def entry_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> EntryWeights:
        mask = federated_classes(labels, self.sampling_weight, self.fed_classes, self.generator)
        return EntryWeights(mask[None, :])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fed_classes={self.fed_classes}, power={self.fed_power}"
