"""Softmax cross-entropy, torchvision's and detectron2's default head (C + 1 outputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gumbel_analysis.losses.base import ClassificationLoss, compute_dtype


def init_softmax_classifier(layer: nn.Linear) -> None:
    """torchvision's and mmdetection's classifier: weights N(0, 0.01), bias 0."""
    nn.init.normal_(layer.weight, std=0.01)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, 0.0)


class SoftmaxCE(ClassificationLoss):
    """Softmax cross-entropy over C + 1 outputs."""

    with_background = True
    activation = "softmax"
    activations = ("softmax",)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        if logits.shape[0] == 0:
            return compute_dtype(logits).sum()
        return F.cross_entropy(compute_dtype(logits), labels.long())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float(), dim=-1)[:, : self.num_classes]

    def background_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float(), dim=-1)[:, self.num_classes]

    def init_classifier(self, layer: nn.Linear) -> None:
        init_softmax_classifier(layer)
