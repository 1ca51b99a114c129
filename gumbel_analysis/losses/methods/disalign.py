"""DisAlign's generalized re-weighted loss (Zhang et al., CVPR 2021), the loss of its second stage.

DisAlign trains a first-stage model as usual. It then freezes all of it and learns one adjustment
of the classifier's logits (``model/disalign.py``) towards a balanced reference distribution.
This is the loss of that second stage: cross-entropy whose class ``c`` weighs

    w_c = C (1 / r_c^rho) / sum_k (1 / r_k^rho),   r_c = N_c / sum_k N_k,   rho = 0.8

and the background 1. The mean is taken over the weights of the rows' labels,
``sum_i w_{y_i} l_i / sum_i w_{y_i}``, as ``F.cross_entropy(weight=...)`` computes it. The
authors' ``GRWFastRCNNOutputs`` does the same, with ``GRW_SCALE = 0.8`` for LVIS. ``N_c`` here is
the class's training image count (``class_frequency``; only the ratios matter). The authors read
it from a file of per-class "shots".

**Sigmoid and Gumbel.** The first stage may have a BCE head with a background column. The
second stage then weighs each row's summed elementwise BCE (Eq. 4 of the supplementary) by
``w_{y_i}``, with the same normalisation. A softmax weighs a row's single cross-entropy term the
same way. Scores follow the activation, as the first stage scored.

The class sets ``adjusts_logits``: ``build_model`` then gives the box predictor DisAlign's
adjustment and freezes everything else (``model/disalign.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gumbel_analysis.losses.base import compute_dtype
from gumbel_analysis.losses.elementwise import EntryWeights
from gumbel_analysis.losses.softmax_or_bce import SoftmaxOrBCE


def reweighting(class_frequency: torch.Tensor, rho: float) -> torch.Tensor:
    """``[w_0 .. w_{C-1}, 1]``: the generalized re-weighting of the module docstring (float64)."""
    ratio = class_frequency.double().clamp(min=torch.finfo(torch.float64).tiny)
    ratio = ratio / ratio.sum()
    inverse = ratio.pow(-float(rho))
    weights = inverse / inverse.sum() * len(ratio)
    return torch.cat([weights, weights.new_ones(1)])


class DisAlignLoss(SoftmaxOrBCE):
    """The generalized re-weighted loss of DisAlign's second stage (C + 1 outputs)."""

    adjusts_logits = True

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        disalign_rho: float = 0.8,
        **activation_options,
    ):
        super().__init__(num_classes, class_frequency, frequency_groups, **activation_options)
        if self.class_frequency is None:
            raise ValueError("the disalign loss needs class_frequency (N_c per class)")
        self.rho = float(disalign_rho)
        self.register_buffer(
            "class_weight", reweighting(self.class_frequency, self.rho), persistent=False
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        labels = labels.long()
        z = compute_dtype(logits)
        if z.shape[0] == 0:
            return z.sum()
        weight = self.class_weight.to(z.device, z.dtype)
        if self.elementwise is None:
            return F.cross_entropy(z, labels, weight=weight)
        rows = weight[labels]
        # Eq. 4 per row (sum over columns), weighted by its label's w, over the weights' sum.
        per_row = EntryWeights(rows[:, None].expand_as(z))
        total = self.elementwise.loss(z, labels, per_row, True) * len(labels)
        return total / rows.sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rho={self.rho}"
