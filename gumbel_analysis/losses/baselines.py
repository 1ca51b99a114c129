"""Gumbel BCE, Sigmoid BCE and Softmax CE heads with a background column (C + 1 outputs)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.losses.gumbel import PAPER_CLIP, GumbelMode, gumbel_bce, one_hot_targets
from gumbel_analysis.losses.registry import register_loss
from gumbel_analysis.math import check_temperature, eta, init_bias


def _compute_dtype(logits: torch.Tensor) -> torch.Tensor:
    """Half precision is computed in float32; float32 and float64 stay as they are."""
    return logits if logits.dtype == torch.float64 else logits.float()


#: Weight value of Sec. 1.1: every logit starts near the bias.
GUMBEL_INIT_WEIGHT = 1e-3
#: The usual prior of sigmoid classifiers (focal loss, detectron2/mmdetection): sigmoid(b) = 0.01.
SIGMOID_PRIOR_PROB = 0.01


def init_gumbel_classifier(layer: nn.Linear, num_outputs: int, temperature: float) -> None:
    """Weights 0.001 and bias ``-sigma log(log C)`` with C = the outputs, background included."""
    nn.init.constant_(layer.weight, GUMBEL_INIT_WEIGHT)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, init_bias(max(num_outputs, 2), temperature))


@register_loss("gumbel")
class GumbelBCE(ClassificationLoss):
    """Gumbel binary cross-entropy over C + 1 outputs (Eq. 3, 4); see :func:`gumbel_bce`."""

    with_background = True
    activation = "gumbel"

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        temperature: float = 1.0,
        mode: GumbelMode | str = GumbelMode.STABLE,
        low: float = PAPER_CLIP[0],
        high: float = PAPER_CLIP[1],
    ):
        super().__init__(num_classes, class_frequency)
        check_temperature(temperature)
        self.temperature = float(temperature)
        self.mode = GumbelMode(mode)
        self.low, self.high = float(low), float(high)

    def gumbel_loss(self, logits, labels, weight=None):
        return gumbel_bce(
            logits,
            labels,
            temperature=self.temperature,
            mode=self.mode,
            low=self.low,
            high=self.high,
            weight=weight,
            with_background=self.with_background,
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        return self.gumbel_loss(logits, labels)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return eta(logits.float(), self.temperature)[:, : self.num_classes]

    def init_classifier(self, layer: nn.Linear) -> None:
        init_gumbel_classifier(layer, self.num_classes + 1, self.temperature)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, temperature={self.temperature}, mode={self.mode.value}, "
            f"low={self.low}, high={self.high}"
        )


@register_loss("sigmoid")
class SigmoidBCE(ClassificationLoss):
    """Sigmoid binary cross-entropy over C + 1 outputs, summed over classes, mean over proposals."""

    with_background = True
    activation = "sigmoid"

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        prior_prob: float = SIGMOID_PRIOR_PROB,
    ):
        super().__init__(num_classes, class_frequency)
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must lie in (0, 1), got {prior_prob}")
        self.prior_prob = prior_prob

    def sigmoid_loss(self, logits, labels, weight=None):
        q = _compute_dtype(logits)
        target = one_hot_targets(labels, logits.shape[1], self.with_background).to(q.dtype)
        if weight is not None:
            weight = weight.to(q.dtype)
        loss = F.binary_cross_entropy_with_logits(q, target, weight=weight, reduction="sum")
        return loss / max(logits.shape[0], 1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        return self.sigmoid_loss(logits, labels)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())[:, : self.num_classes]

    def init_classifier(self, layer: nn.Linear) -> None:
        nn.init.normal_(layer.weight, std=0.01)
        if layer.bias is not None:
            nn.init.constant_(layer.bias, -math.log((1 - self.prior_prob) / self.prior_prob))


@register_loss("softmax")
class SoftmaxCE(ClassificationLoss):
    """Softmax cross-entropy over C + 1 outputs (torchvision's and detectron2's default head)."""

    with_background = True
    activation = "softmax"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        if logits.shape[0] == 0:
            return _compute_dtype(logits).sum()
        return F.cross_entropy(_compute_dtype(logits), labels.long())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float(), dim=-1)[:, : self.num_classes]

    def init_classifier(self, layer: nn.Linear) -> None:
        nn.init.normal_(layer.weight, std=0.01)
        if layer.bias is not None:
            nn.init.constant_(layer.bias, 0.0)
