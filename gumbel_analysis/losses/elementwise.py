"""The two activations of the BCE family as elementwise losses: Sigmoid and Gumbel (Eq. 3, 4).

A BCE-family loss is ``(1/N) sum_ij w_ij l(q_ij, y_ij)``: the activation fixes ``l`` (here), the
long-tail method fixes ``w`` (``losses/methods/``). Weights come as :class:`EntryWeights`: one
tensor for every entry (boolean or float, ``[N, K]`` or broadcastable ``[1, K]``) and, where the
method weighs a proposal's own class differently (EQLv2), one value per column for the target-1
entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gumbel_analysis.losses.base import compute_dtype
from gumbel_analysis.losses.gumbel import (
    gumbel_bce,
    one_hot_targets,
    positive_index,
)
from gumbel_analysis.math import eta, init_bias
from gumbel_analysis.paper import PAPER_CLIP
from gumbel_analysis.spec.losses import Activation, GumbelMode

#: Weight value of Sec. 1.1: every logit starts near the bias.
GUMBEL_INIT_WEIGHT = 1e-3


@dataclass
class EntryWeights:
    """``w_ij`` of Eq. 4: ``entries`` for every entry (None: 1) and, where a method weighs a
    proposal's own class differently (EQLv2), ``positive_columns`` [K]: the weight of a target-1
    entry by its column (None: as ``entries``)."""

    entries: torch.Tensor | None = None
    positive_columns: torch.Tensor | None = None

    def positive_rows(self, labels: torch.Tensor, k: int, with_background: bool):
        """The [P] weights of the target-1 entries (in
        :func:`~gumbel_analysis.losses.gumbel.positive_index` order), or None where ``entries``
        holds them."""
        if self.positive_columns is None:
            return None
        _, cols = positive_index(labels, k, with_background)
        return self.positive_columns[cols]


class ElementwiseBCE:
    """One activation's elementwise BCE, its inference probabilities, its gradient magnitudes and
    its classifier initialisation. Not a module: it holds only the activation's options."""

    activation: Activation

    def loss(
        self,
        logits,
        labels,
        weights: EntryWeights,
        with_background: bool,
        gradient_sink: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The weighted loss; where the activation computes its gradient in the forward pass
        (Gumbel), ``gradient_sink`` receives it ([N, K], weights and 1/N included)."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logit_at(self, probability: float) -> float:
        """The logit whose probability is ``probability`` (the activation is increasing, so
        ``p(q) >= t`` is ``q >= logit_at(t)``: one comparison instead of the activation)."""
        raise NotImplementedError

    def negative_gradients(self, logits: torch.Tensor) -> torch.Tensor:
        """``|dl/dq|`` of the unweighted loss of a target-0 entry, elementwise (EQLv2)."""
        raise NotImplementedError

    def positive_gradients(self, logits: torch.Tensor) -> torch.Tensor:
        """``|dl/dq|`` of the unweighted loss of a target-1 entry, elementwise (EQLv2)."""
        raise NotImplementedError

    def init_classifier(self, layer: nn.Linear, num_outputs: int, prior_prob: float) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.activation.value


class SigmoidElementwise(ElementwiseBCE):
    """``l = -y log s(q) - (1 - y) log(1 - s(q))``, ``s`` the logistic sigmoid."""

    activation = Activation.SIGMOID

    def loss(self, logits, labels, weights, with_background, gradient_sink=None):
        q = compute_dtype(logits)
        n, k = q.shape
        target = one_hot_targets(labels, k, with_background).to(q.dtype)
        w = weights.entries
        positive = weights.positive_rows(labels, k, with_background)
        if w is not None:
            w = w.to(q.dtype)
        total = F.binary_cross_entropy_with_logits(q, target, weight=w, reduction="sum")
        if positive is not None:
            # The positives' own weight: replace their weight there by a correction on the
            # gathered [P] entries, instead of a dense [N, K] weight.
            rows, cols = positive_index(labels, k, with_background)
            there = 1.0 if w is None else w.expand(n, k)[rows, cols]
            total = total + ((positive.to(q.dtype) - there) * F.softplus(-q[rows, cols])).sum()
        return total / max(n, 1)

    def probabilities(self, logits):
        return torch.sigmoid(logits.float())

    def logit_at(self, probability):
        return math.log(probability / (1.0 - probability))

    def negative_gradients(self, logits):
        return torch.sigmoid(compute_dtype(logits))

    def positive_gradients(self, logits):
        return torch.sigmoid(-compute_dtype(logits))

    def init_classifier(self, layer, num_outputs, prior_prob):
        # The focal-loss prior: sigmoid(b) = prior_prob, weights N(0, 0.01).
        nn.init.normal_(layer.weight, std=0.01)
        if layer.bias is not None:
            nn.init.constant_(layer.bias, -math.log((1 - prior_prob) / prior_prob))


class GumbelElementwise(ElementwiseBCE):
    """``l = y exp(-z) - (1 - y) log(1 - exp(-exp(-z)))``, ``z = q / sigma`` (Eq. 3, 4), by the
    stable kernel of :func:`~gumbel_analysis.losses.gumbel.gumbel_bce`."""

    activation = Activation.GUMBEL

    def __init__(
        self,
        temperature: float = 1.0,
        gumbel_mode: GumbelMode | str = GumbelMode.STABLE,
        low: float = PAPER_CLIP[0],
        high: float = PAPER_CLIP[1],
        clamp_loss: bool = True,
    ):
        self.temperature = float(temperature)
        self.mode = GumbelMode(gumbel_mode)
        self.low, self.high = float(low), float(high)
        # The authors' plain Gumbel loss clamps the reduced loss to [0, 20]; their DropLoss and
        # EQL code does not, so the weighted methods switch it off in ``paper`` mode.
        self.clamp_loss = clamp_loss

    def loss(self, logits, labels, weights, with_background, gradient_sink=None):
        return gumbel_bce(
            logits,
            labels,
            temperature=self.temperature,
            mode=self.mode,
            low=self.low,
            high=self.high,
            weight=weights.entries,
            positive_weight=weights.positive_rows(labels, logits.shape[1], with_background),
            with_background=with_background,
            clamp_loss=self.clamp_loss,
            gradient_sink=gradient_sink,
        )

    def probabilities(self, logits):
        return eta(logits.float(), self.temperature)

    def logit_at(self, probability):
        # exp(-exp(-q / sigma)) = t  <=>  q = -sigma log(-log t)
        return -self.temperature * math.log(-math.log(probability))

    def negative_gradients(self, logits):
        # (a / sigma) / (e^a - 1) with a = exp(-z) (losses/gumbel.py); a / (e^a - 1) by its
        # series where a underflows, 0 where e^a overflows.
        a = torch.exp(compute_dtype(logits) * (-1.0 / self.temperature)).clamp_(max=80.0)
        ratio = a / torch.expm1(a)
        ratio = torch.where(a < 1e-4, 1.0 - 0.5 * a, ratio)
        return ratio.mul_(1.0 / self.temperature)

    def positive_gradients(self, logits):
        # a / sigma; below ``low`` the stable mode's linear continuation has the slope at ``low``.
        z = compute_dtype(logits).clamp(min=self.low) / self.temperature
        return torch.exp(-z) / self.temperature

    def init_classifier(self, layer, num_outputs, prior_prob):
        # Sec. 1.1: weights 0.001, bias -sigma log(log C) with C the outputs (background included).
        nn.init.constant_(layer.weight, GUMBEL_INIT_WEIGHT)
        if layer.bias is not None:
            nn.init.constant_(layer.bias, init_bias(max(num_outputs, 2), self.temperature))

    def describe(self) -> str:
        return f"gumbel(temperature={self.temperature:g}, mode={self.mode.value})"


def make_elementwise(activation: Activation | str, **options) -> ElementwiseBCE:
    """The elementwise BCE of ``activation`` with its declared options."""
    activation = Activation(activation)
    if activation is Activation.GUMBEL:
        return GumbelElementwise(**options)
    if activation is Activation.SIGMOID:
        return SigmoidElementwise()
    raise ValueError(f"{activation.value} is not an activation of the BCE family")
