"""DropLoss weights (Eq. 5, 6) and the losses built on them: GOL, GOL*, DropLoss, EQL.

All use C columns (no background column; a background proposal has all-zero targets), as the
reference code does. With ``T(f_j) = [f_j < lambda]`` (a "rare" class) and ``E(r)`` = proposal r
is foreground:

* foreground proposal: ``w_j = 1 - T(f_j) (1 - y_j)``: negatives of rare classes are dropped.
* background proposal (DropLoss, GOL): ``w_j ~ Ber(mu_j)`` (1 keeps the negative), with Eq. 6
  counted on the batch's foreground proposals:
  ``mu_j = n_below / n_all`` for rare classes, ``n_above / n_all`` for the others, where
  ``n_below`` counts foreground proposals whose class is below lambda. With lambda selecting the
  rare and common groups (the LVIS default here) that is Eq. 6's ``(n_r + n_c) / n_all`` and
  ``n_f / n_all``.
* ``variant="reference"`` follows the released code instead: background negatives of classes
  above lambda are always kept, rare ones kept with probability ``n_below / n_all``.
* A batch with no foreground proposal has ``n_all = 0``: then ``mu = 1`` and every negative is
  kept (the loss is the plain one); the reference code reaches the same by comparing to NaN.
* EQL and GOL* (Gumbel + EQL) apply only the foreground rule: every background negative is kept.
"""

from __future__ import annotations

from enum import StrEnum

import torch

from gumbel_analysis.losses.baselines import (
    SIGMOID_PRIOR_PROB,
    GumbelBCE,
    SigmoidBCE,
)
from gumbel_analysis.losses.gumbel import PAPER_CLIP, GumbelMode
from gumbel_analysis.losses.registry import register_loss
from gumbel_analysis.paper import LVIS_V1_LAMBDA, LVIS_V1_TRAIN_IMAGES  # noqa: F401 - re-export


class DropVariant(StrEnum):
    EQUATION = "equation"
    REFERENCE = "reference"


def drop_weights(
    labels: torch.Tensor,
    rare: torch.Tensor,
    *,
    background_dropping: bool = True,
    variant: DropVariant | str = DropVariant.EQUATION,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The [N, C] weights of Eq. 5 for labels in ``[0, C]`` (C = background), as booleans
    (True keeps the entry; the weights are 0 or 1, and booleans are a quarter of the memory).

    ``rare`` is the [C] boolean ``T_lambda(f_j)``. ``background_dropping=False`` gives EQL's
    weights (foreground rule only).
    """
    variant = DropVariant(variant)
    num_classes = rare.numel()
    n = labels.shape[0]
    fg = labels < num_classes
    fg_labels = labels[fg]
    weight = torch.ones((n, num_classes), dtype=torch.bool, device=labels.device)
    if background_dropping and fg_labels.numel() < n:
        mu = keep_probabilities(fg_labels, rare, variant)
        draw = torch.rand(
            (n - fg_labels.numel(), num_classes), generator=generator, device=labels.device
        )
        weight[~fg] = draw < mu
    # Foreground: drop rare-class negatives, keep the positive.
    weight[fg] = ~rare
    weight[fg.nonzero().squeeze(1), fg_labels] = True
    return weight


def keep_probabilities(
    fg_labels: torch.Tensor, rare: torch.Tensor, variant: DropVariant | str = DropVariant.EQUATION
) -> torch.Tensor:
    """Per-class ``mu_j`` of Eq. 6 from the batch's foreground labels (1 everywhere if none)."""
    variant = DropVariant(variant)
    n_all = fg_labels.numel()
    if n_all == 0:
        return torch.ones(rare.shape, dtype=torch.float32, device=rare.device)
    n_below = rare[fg_labels].sum().to(torch.float32)
    share_below = n_below / n_all
    share_above = (
        1.0 - share_below if variant is DropVariant.EQUATION else torch.ones_like(share_below)
    )
    return torch.where(rare, share_below, share_above)


class _DropLossMixin:
    """Shared state of the DropLoss family: lambda, the rare mask, the dropping rule."""

    with_background = False
    background_dropping = True

    def _setup_drop(self, lambda_: float, variant: DropVariant | str) -> None:
        if self.class_frequency is None:
            raise ValueError(f"the {self.name} loss needs class_frequency (f_c per class)")
        if not lambda_ > 0:
            raise ValueError(f"lambda must be positive, got {lambda_}")
        self.lambda_ = float(lambda_)
        self.variant = DropVariant(variant)
        self.register_buffer("rare", self.class_frequency < self.lambda_, persistent=False)
        self.generator: torch.Generator | None = None
        self.last_weights: torch.Tensor | None = None

    @property
    def num_rare_classes(self) -> int:
        """How many classes fall below lambda (whose negatives can be dropped)."""
        return int(self.rare.sum())

    def weights(self, labels: torch.Tensor) -> torch.Tensor:
        # Kept for the gradient recorder, which counts only the negatives the loss kept.
        self.last_weights = drop_weights(
            labels,
            self.rare.to(labels.device),
            background_dropping=self.background_dropping,
            variant=self.variant,
            generator=self.generator,
        )
        return self.last_weights

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lambda={self.lambda_:.6g}, "
            f"rare_classes={self.num_rare_classes}, variant={self.variant.value}, "
            f"background_dropping={self.background_dropping}"
        )


@register_loss("gol")
class GOL(_DropLossMixin, GumbelBCE):
    """Gumbel Optimised Loss: Gumbel BCE with DropLoss weights (Eq. 4-6), C columns."""

    with_background = False

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        lambda_: float = LVIS_V1_LAMBDA,
        variant: DropVariant | str = DropVariant.EQUATION,
        temperature: float = 1.0,
        mode: GumbelMode | str = GumbelMode.STABLE,
        low: float = PAPER_CLIP[0],
        high: float = PAPER_CLIP[1],
    ):
        GumbelBCE.__init__(self, num_classes, class_frequency, temperature, mode, low, high)
        self._setup_drop(lambda_, variant)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        return self.gumbel_loss(logits, labels, self.weights(labels))


@register_loss("gol-star")
class GOLStar(GOL):
    """GOL*: Gumbel BCE with EQL's weights (only foreground proposals drop rare negatives)."""

    background_dropping = False


@register_loss("droploss")
class DropLoss(_DropLossMixin, SigmoidBCE):
    """DropLoss (Hsieh et al.): Sigmoid BCE with the weights of Eq. 5, C columns."""

    with_background = False

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        lambda_: float = LVIS_V1_LAMBDA,
        variant: DropVariant | str = DropVariant.EQUATION,
        prior_prob: float = SIGMOID_PRIOR_PROB,
    ):
        SigmoidBCE.__init__(self, num_classes, class_frequency, prior_prob)
        self._setup_drop(lambda_, variant)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        return self.sigmoid_loss(logits, labels, self.weights(labels))


@register_loss("eql")
class EQL(DropLoss):
    """EQL v1 (Tan et al.): Sigmoid BCE, rare negatives dropped on foreground proposals only."""

    background_dropping = False
