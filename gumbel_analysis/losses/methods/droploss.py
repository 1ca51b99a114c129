"""DropLoss (Hsieh et al., AAAI 2021) with either activation; with Gumbel it is GOL (Eq. 4-6).

C columns (no background column; a background proposal has all-zero targets), as the authors'
DropLoss/EQL code. With ``T(f_j) = [f_j < lambda]`` (a "rare" class) and ``E(r)`` = proposal r
is foreground, the weights of Eq. 5 are:

* foreground proposal: ``w_j = 1 - T(f_j) (1 - y_j)``: negatives of rare classes are dropped.
* background proposal: ``w_j ~ Ber(mu_j)`` (1 keeps the negative), with Eq. 6 counted on the
  batch's foreground proposals: ``mu_j = n_below / n_all`` for rare classes and
  ``n_above / n_all`` for the others (``variant="equation"``, GOL's default). With lambda
  selecting the rare and common groups that is Eq. 6's ``(n_r + n_c) / n_all`` and
  ``n_f / n_all``.
* ``variant="reference"`` (DropLoss's default, its authors' code): background negatives of
  classes above lambda are always kept, rare ones with probability ``n_below / n_all``.
* A batch with no foreground proposal has ``n_all = 0``: then ``mu = 1`` and every negative is
  kept; the reference code reaches the same by comparing to NaN.

lambda: by default midway between the most frequent rare/common class and the least frequent
frequent class of the training set (:func:`lambda_from_groups`; LVIS v1: ``100.5 / 100170``),
or ``LVIS_V1_LAMBDA`` when no groups are given. The authors' code uses 0.00177 (LVIS v0.5).
Sigmoid starts from the prior 0.001 (bias about -6.9), as the authors' configurations do.
"""

from __future__ import annotations

import torch

from gumbel_analysis.groups import lambda_from_groups
from gumbel_analysis.losses.bce import WeightedBCE
from gumbel_analysis.losses.elementwise import EntryWeights
from gumbel_analysis.paper import LVIS_V1_LAMBDA
from gumbel_analysis.spec.losses import DropVariant


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


class DropLoss(WeightedBCE):
    """DropLoss: rare negatives dropped on foreground proposals, drawn on background ones (Eq. 5,
    6), C outputs."""

    with_background = False
    background_dropping = True
    sigmoid_prior = 1e-3

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        lambda_: float | None = None,
        variant: DropVariant | str = DropVariant.REFERENCE,
        **activation_options,
    ):
        super().__init__(num_classes, class_frequency, frequency_groups, **activation_options)
        if self.class_frequency is None:
            raise ValueError(f"the {self.name} loss needs class_frequency (f_c per class)")
        if lambda_ is None:
            lambda_ = (
                LVIS_V1_LAMBDA
                if frequency_groups is None
                else lambda_from_groups(self.class_frequency.tolist(), frequency_groups)
            )
        if not lambda_ > 0:
            raise ValueError(f"lambda must be positive, got {lambda_}")
        self.lambda_ = float(lambda_)
        self.variant = DropVariant(variant)
        self.register_buffer("rare", self.class_frequency < self.lambda_, persistent=False)
        #: Draws of the background rule; None: torch's global generator (seeded by the run).
        self.generator: torch.Generator | None = None

    @property
    def num_rare_classes(self) -> int:
        """How many classes fall below lambda (whose negatives can be dropped)."""
        return int(self.rare.sum())

    def entry_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> EntryWeights:
        return EntryWeights(
            drop_weights(
                labels,
                self.rare.to(labels.device),
                background_dropping=self.background_dropping,
                variant=self.variant,
                generator=self.generator,
            )
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lambda={self.lambda_:.6g}, "
            f"rare_classes={self.num_rare_classes}, variant={self.variant.value}, "
            f"background_dropping={self.background_dropping}"
        )
