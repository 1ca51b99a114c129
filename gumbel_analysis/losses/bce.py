"""The BCE family: a long-tail method's weights times an activation's elementwise loss (Eq. 4).

``L = (1/N) sum_i sum_j w_ij l(q_ij, y_ij)`` with ``l`` the Sigmoid or Gumbel BCE
(:mod:`~gumbel_analysis.losses.elementwise`) and ``w`` what the method decides
(:meth:`WeightedBCE.entry_weights`). Every method of ``losses/methods/`` subclasses
:class:`WeightedBCE` and works with either activation.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.losses.elementwise import (
    Activation,
    ElementwiseBCE,
    EntryWeights,
    make_elementwise,
)
from gumbel_analysis.math import check_temperature

#: The usual prior of sigmoid classifiers (focal loss, detectron2/mmdetection): sigmoid(b) = 0.01.
SIGMOID_PRIOR_PROB = 0.01


class WeightedBCE(ClassificationLoss):
    """Base of the BCE family. Subclasses set ``with_background`` and ``options`` and implement
    :meth:`entry_weights`; plain BCE weighs every entry 1."""

    activations: ClassVar[tuple[str, ...]] = (Activation.SIGMOID, Activation.GUMBEL)
    #: The Sigmoid classifier's initial prior ``sigmoid(b)`` (the method's authors' choice).
    sigmoid_prior: ClassVar[float] = SIGMOID_PRIOR_PROB
    #: ``paper`` mode: clamp the reduced loss to [0, 20] (only the authors' plain Gumbel loss).
    clamp_paper_loss: ClassVar[bool] = False

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        activation: Activation | str | None = None,
        temperature: float = 1.0,
        gumbel_mode: str = "stable",
    ):
        super().__init__(num_classes, class_frequency, frequency_groups)
        activation = Activation(activation or self.activations[0])
        if activation not in self.activations:
            raise ValueError(f"{self.name} does not work with the {activation.value} activation")
        self.activation = activation.value
        options = {}
        if activation is Activation.GUMBEL:
            check_temperature(temperature)
            options = {
                "temperature": temperature,
                "gumbel_mode": gumbel_mode,
                "clamp_loss": self.clamp_paper_loss,
            }
        self.elementwise: ElementwiseBCE = make_elementwise(activation, **options)
        if self.needs_groups and self.frequency_groups is None:
            raise ValueError(f"the {self.name} loss needs frequency_groups (r/c/f per class)")

    # Convenience for reports and the gradient log.
    @property
    def temperature(self) -> float | None:
        return getattr(self.elementwise, "temperature", None)

    @property
    def mode(self):
        return getattr(self.elementwise, "mode", None)

    def entry_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> EntryWeights:
        """The method's ``w_ij`` for detached logits and labels in ``[0, C]``."""
        return EntryWeights()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.weighted_loss(logits, labels)

    def weighted_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        gradient_sink: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Eq. 4 with the method's weights; ``gradient_sink`` as in
        :meth:`ElementwiseBCE.loss`."""
        self.check_inputs(logits, labels)
        labels = labels.long()
        with torch.no_grad():
            weights = self.entry_weights(logits.detach(), labels)
        n, k = logits.shape
        # Kept for the gradient recorder, which counts only the negatives the loss kept.
        self.last_weights = None if weights.entries is None else weights.entries.expand(n, k)
        return self.elementwise.loss(logits, labels, weights, self.with_background, gradient_sink)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return self.elementwise.probabilities(logits)[:, : self.num_classes]

    def init_classifier(self, layer: nn.Linear) -> None:
        # Gumbel's bias counts the background whether or not the layout has a column for it
        # (Sec. 1.1: C = 1204 on LVIS v1).
        self.elementwise.init_classifier(layer, self.num_classes + 1, self.sigmoid_prior)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.elementwise.describe()}"
