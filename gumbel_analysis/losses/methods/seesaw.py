"""Seesaw Loss (Wang et al., CVPR 2021), softmax family, with its objectness branch.

C + 2 outputs: C class logits and 2 objectness logits (foreground, background). With ``N``
sampled proposals and the cumulative class counts ``n_j`` (all ranks, the whole run, including
this batch), a foreground proposal of class i contributes to

    L_cls = -(1/N) sum_{fg i} log( e^{z_i} / (e^{z_i} + sum_{j != i} S_ij e^{z_j}) )
    S_ij = M_ij C_ij,  M_ij = (n_j / n_i)^p if n_j < n_i else 1   (mitigation, p = 0.8)
                       C_ij = (s_j / s_i)^q if s_j > s_i else 1   (compensation, q = 2)

with ``s`` the detached softmax of the class logits and ``s_i`` clamped below at ``eps``
(1e-2); counts below 1 count as 1. Every proposal contributes the objectness cross-entropy
``L_obj = (1/N) sum_i CE(objectness_i, [i is background])``; the loss is ``L_cls + L_obj``.
Scores: ``softmax(classes)_j * softmax(objectness)_fg``. As mmdetection's implementation, from
which p, q, eps and the layout come; the counts are float64 buffers summed across ranks and
saved in the checkpoint. ``--activation`` does not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gumbel_analysis.losses.base import ClassificationLoss, compute_dtype
from gumbel_analysis.losses.methods.eqlv2 import all_reduce_sum
from gumbel_analysis.losses.methods.softmax import init_softmax_classifier


def seesaw_log_factors(
    class_logits: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    p: float,
    q: float,
    eps: float,
) -> torch.Tensor:
    """``log S_ij`` [P, C] for foreground rows (0 at the label's own column)."""
    log_s = torch.zeros_like(class_logits)
    if p > 0:
        n = counts.clamp(min=1).to(class_logits.dtype)
        # log M_ij = p log(n_j / n_i) where n_j < n_i, else 0.
        log_ratio = n.log()[None, :] - n.log()[labels][:, None]
        log_s += p * log_ratio.clamp(max=0.0)
    if q > 0:
        scores = F.softmax(class_logits.detach(), dim=1)
        self_score = scores.gather(1, labels[:, None]).clamp(min=eps)
        log_c = (scores / self_score).log().clamp(min=0.0)
        log_s += q * log_c
    return log_s.scatter(1, labels[:, None], 0.0)


class SeesawLoss(ClassificationLoss):
    """Seesaw Loss: mitigation and compensation factors on the softmax, C + 2 outputs."""

    with_background = True
    activation = "softmax"
    activations = ("softmax",)

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        seesaw_p: float = 0.8,
        seesaw_q: float = 2.0,
        seesaw_eps: float = 1e-2,
    ):
        super().__init__(num_classes, class_frequency, frequency_groups)
        self.p, self.q, self.eps = float(seesaw_p), float(seesaw_q), float(seesaw_eps)
        # Counts of every label, background included (index C), as mmdetection keeps them.
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.float64))

    @property
    def num_outputs(self) -> int:
        return self.num_classes + 2

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, labels)
        labels = labels.long()
        c = self.num_classes
        if self.training:
            batch = torch.bincount(labels, minlength=c + 1).double()
            self.cum_samples += all_reduce_sum(batch)
        x = compute_dtype(logits)
        n = max(x.shape[0], 1)
        fg = labels < c
        objectness_target = (~fg).long()
        loss = F.cross_entropy(x[:, c:], objectness_target, reduction="sum") / n
        if fg.any():
            z = x[fg, :c]
            fg_labels = labels[fg]
            z = z + seesaw_log_factors(z, fg_labels, self.cum_samples[:c], self.p, self.q, self.eps)
            loss = loss + F.cross_entropy(z, fg_labels, reduction="sum") / n
        return loss

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        x = logits.float()
        c = self.num_classes
        return F.softmax(x[:, :c], dim=-1) * F.softmax(x[:, c:], dim=-1)[:, :1]

    def background_scores(self, logits: torch.Tensor) -> torch.Tensor:
        # The objectness pair's second column: the scores are p(c | fg) p(fg), summing to p(fg).
        return F.softmax(logits.float()[:, self.num_classes :], dim=-1)[:, 1]

    def init_classifier(self, layer: nn.Linear) -> None:
        init_softmax_classifier(layer)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}, q={self.q}, eps={self.eps}"
