"""The base of methods defined on a softmax that also take a BCE form (LOCE, DisAlign).

C + 1 outputs with a background column. With the softmax (the default, as these methods'
authors) the scores are a softmax over the classes and the background. With Sigmoid or Gumbel
each column is the activation's elementwise BCE (Eq. 4 of the supplementary), as in
:mod:`~gumbel_analysis.losses.bce`, and the scores are the activation's probabilities. A subclass
computes its loss from :meth:`probabilities` or ``self.elementwise`` (None for the softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gumbel_analysis.losses.base import ClassificationLoss, compute_dtype
from gumbel_analysis.losses.bce import SIGMOID_PRIOR_PROB
from gumbel_analysis.losses.elementwise import ElementwiseBCE, make_elementwise
from gumbel_analysis.losses.methods.softmax import init_softmax_classifier
from gumbel_analysis.math import check_temperature


class SoftmaxOrBCE(ClassificationLoss):
    """A method with the softmax, or Sigmoid or Gumbel in a BCE form; C + 1 outputs."""

    with_background = True
    activations = ("softmax", "sigmoid", "gumbel")

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        activation: str | None = None,
        temperature: float = 1.0,
        gumbel_mode: str = "stable",
    ):
        super().__init__(num_classes, class_frequency, frequency_groups)
        self.activation = str(getattr(activation, "value", activation) or "softmax")
        if self.activation not in self.activations:
            raise ValueError(f"{self.name} does not work with the {self.activation} activation")
        #: The BCE form's elementwise loss; None with the softmax.
        self.elementwise: ElementwiseBCE | None = None
        if self.activation == "gumbel":
            check_temperature(temperature)
            self.elementwise = make_elementwise(
                "gumbel", temperature=temperature, gumbel_mode=gumbel_mode, clamp_loss=False
            )
        elif self.activation == "sigmoid":
            self.elementwise = make_elementwise("sigmoid")

    @property
    def temperature(self) -> float | None:
        return getattr(self.elementwise, "temperature", None)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, C + 1] in the logits' compute dtype: the softmax, or the activation per column."""
        z = compute_dtype(logits)
        return (
            F.softmax(z, dim=1) if self.elementwise is None else self.elementwise.probabilities(z)
        )

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        z = compute_dtype(logits)
        if self.elementwise is None:
            return F.softmax(z.float(), dim=-1)[:, : self.num_classes]
        return self.elementwise.probabilities(z)[:, : self.num_classes]

    def background_scores(self, logits: torch.Tensor) -> torch.Tensor | None:
        if self.elementwise is not None:
            return None
        return F.softmax(compute_dtype(logits).float(), dim=-1)[:, self.num_classes]

    def init_classifier(self, layer: nn.Linear) -> None:
        if self.elementwise is None:
            init_softmax_classifier(layer)
        else:
            self.elementwise.init_classifier(layer, self.num_classes + 1, SIGMOID_PRIOR_PROB)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"
