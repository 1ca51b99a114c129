"""Post-hoc score calibration at test time: NorCal (Pan et al., NeurIPS 2021).

NorCal retrains nothing. Each foreground class's score is divided by ``N_c^gamma``, where
``N_c`` is the number of training images the class appears in. The scores are then renormalised
with the background, before the score threshold, NMS and the top-k cut of
:meth:`~gumbel_analysis.model.heads.LossRoIHeads.postprocess_detections`.

**Exclusive scores** (a softmax over the C classes and the background; Seesaw's
``p(c | fg) p(fg)`` too). The background's share is ``p_bg = 1 - sum_k p_k``, and

    p'_c = p_c N_c^-gamma / (sum_k p_k N_k^-gamma + p_bg)

The authors' code computes the same thing: ``CalibrationFastRCNNOutputLayers.predict_probs``
with ``WITH = "exps"`` and ``RENORM = True``, i.e. ``exp(z_c) N_c^-gamma`` normalised over the
classes and ``exp(z_bg)``. So there is no ``--variant`` here. ``N_c`` is the category's
``image_count``, as the authors' ``_get_frequencies(by="image")`` reads it.

**Independent per-class probabilities** (Sigmoid and Gumbel heads, EQLv2's ``p_c (1 - p_bg)``)
have no shared background to renormalise against. Each class is its own binary problem, "c" or
"not c", and the class's own complement ``1 - p_c`` plays the background:

    p'_c = p_c N_c^-gamma / (p_c N_c^-gamma + 1 - p_c)

For a Sigmoid this is ``sigmoid(z_c - gamma log N_c)``: a logit shift, the binary form of the
same prior correction. For a Gumbel head it scales the odds ``p / (1 - p)`` of
``p = exp(-exp(-z))`` by ``N_c^-gamma``. In both it keeps each score in (0, 1) and preserves the
order of detections within a class. What it changes is the order across classes, which is what
AP over LVIS's 300 detections per image responds to.

A class without training images would get an infinite weight, so ``N_c`` is counted as at least 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class NorCal(nn.Module):
    """NorCal's calibration of per-class scores [N, C] (both forms: the module docstring).

    ``image_counts``: training images per class (``N_c``, category-id order). ``gamma >= 0``
    (0: the scores unchanged). ``forward(scores, background)``: ``background`` [N] is the
    background's probability where the scores share one with it (the loss's
    ``background_scores``), None for independent per-class probabilities. It is taken from the
    loss rather than as ``1 - sum(scores)``, which loses all precision when a foreground class
    takes nearly all the mass.
    """

    def __init__(self, image_counts: Sequence[float], gamma: float) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"NorCal's gamma must be at least 0, got {gamma}")
        counts = torch.as_tensor(image_counts, dtype=torch.float64).clamp(min=1.0)
        # Not saved with the model: the calibration belongs to an evaluation, not to the weights.
        self.register_buffer("class_weight", counts.pow(-float(gamma)), persistent=False)
        self.gamma = float(gamma)

    def forward(self, scores: torch.Tensor, background: torch.Tensor | None = None) -> torch.Tensor:
        if scores.dim() != 2 or scores.shape[1] != len(self.class_weight):
            raise ValueError(
                f"NorCal expects scores [N, {len(self.class_weight)}], got {tuple(scores.shape)}"
            )
        if background is not None and background.shape != scores.shape[:1]:
            raise ValueError(
                f"NorCal expects background scores [{len(scores)}], got {tuple(background.shape)}"
            )
        # float64: [N, C] is small, and the sums then add nothing to the scores' own rounding.
        p = scores.to(torch.float64)
        weighted = p * self.class_weight.to(p.device)
        if background is not None:
            rest = background.to(torch.float64).unsqueeze(1)
            calibrated = weighted / (weighted.sum(dim=1, keepdim=True) + rest)
        else:
            calibrated = weighted / (weighted + (1.0 - p))  # 1 - p is exact for p >= 1/2
        # A zero score over a zero remainder (0 / 0) stays 0.
        return torch.nan_to_num(calibrated, nan=0.0).to(scores.dtype)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, classes={len(self.class_weight)}"


def calibration_tag(gamma: float) -> str:
    """The file-name part of a NorCal evaluation: ``results.norcal-g0.5.json``."""
    return f"norcal-g{gamma:g}"


@contextmanager
def score_calibration(model: nn.Module, calibration: nn.Module | None) -> Iterator[None]:
    """Score ``model``'s detections through ``calibration`` inside the block (None: as it is).
    The model's own setting comes back afterwards, even on an error."""
    heads = model.roi_heads
    before = heads.score_calibration
    heads.score_calibration = calibration
    try:
        yield
    finally:
        heads.score_calibration = before
