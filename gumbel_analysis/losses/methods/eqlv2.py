"""EQLv2, the Equalization Loss v2 (Tan et al., CVPR 2021), with either activation.

C + 1 outputs with a background column. Per class j, the accumulated positive and negative
gradient magnitudes ``P_j``, ``N_j`` (over the whole run, all ranks) give ``g_j = P_j / N_j`` and

    q_j = 1 / (1 + exp(-gamma (g_j - mu)))          negative weight   (gamma 12, mu 0.8)
    r_j = 1 + alpha (1 - q_j)                        positive weight   (alpha 4)

(``w_ij = r_j`` at a proposal's own class, ``q_j`` elsewhere; the background column weighs 1).
After each batch, ``P_j += sum_i |dl_ij/dq_ij| w_ij y_ij`` and ``N_j += sum_i |dl_ij/dq_ij| w_ij
(1 - y_ij)``, with the activation's own gradient of the unweighted elementwise loss (Sigmoid:
``|p - y|``; Gumbel: ``a / sigma`` and ``(a / sigma) / (e^a - 1)``). Before any statistics the
ratio starts at 100 (every weight 1), as in the authors' code. The sums are float64 buffers of the
module: they are summed across ranks (``torch.distributed``) and travel in the checkpoint.

Scores, as the authors' code: ``p_j (1 - p_bg)`` for the activation's probabilities ``p``. The
Sigmoid classifier starts from the prior ``sigmoid(b) = 0.001`` (the authors' head).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from gumbel_analysis.losses.bce import WeightedBCE
from gumbel_analysis.losses.elementwise import EntryWeights
from gumbel_analysis.losses.gumbel import positive_index

#: The ratio before any statistics (the authors' initial value): every weight starts at ~1.
INITIAL_RATIO = 100.0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks when a process group is running (else ``t`` itself)."""
    if (
        torch_dist.is_available()
        and torch_dist.is_initialized()
        and torch_dist.get_world_size() > 1
    ):
        torch_dist.all_reduce(t)
    return t


class EQLv2(WeightedBCE):
    """EQLv2: gradient-guided reweighting of each class's positives and negatives, C + 1 outputs."""

    with_background = True
    # The authors' Sigmoid classifier starts from the prior 0.001 (mmdetection's ConvFC head:
    # bias_init_with_prob(0.001) when the loss uses a sigmoid), not the focal-loss 0.01.
    sigmoid_prior = 1e-3

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        eqlv2_gamma: float = 12.0,
        eqlv2_mu: float = 0.8,
        eqlv2_alpha: float = 4.0,
        **activation_options,
    ):
        super().__init__(num_classes, class_frequency, frequency_groups, **activation_options)
        self.gamma, self.mu, self.alpha = float(eqlv2_gamma), float(eqlv2_mu), float(eqlv2_alpha)
        self.register_buffer("pos_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def ratio(self) -> torch.Tensor:
        """``g_j = P_j / N_j`` ([C], float64); 100 before the first update."""
        if int(self.updates) == 0:
            return torch.full_like(self.pos_grad, INITIAL_RATIO)
        return self.pos_grad / (self.neg_grad + 1e-10)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_j, r_j)``, [C + 1] each with 1 for the background column."""
        q = torch.sigmoid(self.gamma * (self.ratio() - self.mu))
        one = torch.ones(1, dtype=q.dtype, device=q.device)
        neg = torch.cat([q, one])
        pos = torch.cat([1.0 + self.alpha * (1.0 - q), one])
        return neg, pos

    def entry_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> EntryWeights:
        neg, pos = self.class_weights()
        return EntryWeights(neg[None, :].float(), positive_columns=pos.float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The Gumbel kernel hands over the gradient it computes anyway: the statistics are then
        # one column sum of it, not a second pass of the activation's derivative.
        sink: list[torch.Tensor] | None = [] if self.training else None
        loss = self.weighted_loss(logits, labels, sink)
        if self.training:
            self.collect(logits.detach(), labels.long(), sink[0] if sink else None)
        return loss

    @torch.no_grad()
    def collect(
        self, logits: torch.Tensor, labels: torch.Tensor, grad: torch.Tensor | None = None
    ) -> None:
        """Add this batch's weighted gradient magnitudes to ``P`` and ``N`` (all ranks).

        ``grad``: the loss's own gradient w.r.t. the logits ([N, K], weights and 1/N included;
        positives' entries negative, negatives' non-negative), when the activation provides it.
        Else ``N_j = q_j (sum_i g-(q_ij) - sum_{i: y_ij = 1} g-(q_ij))``: one pass over the
        logits for the negative magnitudes ``g-``, the positives on their gathered values.
        """
        c, n = self.num_classes, logits.shape[0]
        rows, cols = positive_index(labels, logits.shape[1], True)
        if grad is not None:
            pos_mag = -grad[rows, cols].double() * n
            pos_sum = torch.zeros(grad.shape[1], dtype=torch.float64, device=grad.device)
            pos_sum.index_add_(0, cols, pos_mag)
            neg_sum = grad.sum(0, dtype=torch.float64) * n + pos_sum
        else:
            neg, pos = self.class_weights()
            g_neg = self.elementwise.negative_gradients(logits)
            column = g_neg.sum(0, dtype=torch.float64)
            column.index_add_(0, cols, g_neg[rows, cols].double(), alpha=-1.0)
            g_pos = self.elementwise.positive_gradients(logits[rows, cols]).double()
            pos_sum = torch.zeros_like(column).index_add_(0, cols, g_pos) * pos
            neg_sum = column * neg
        both = all_reduce_sum(torch.stack([pos_sum[:c], neg_sum[:c]]))
        self.pos_grad += both[0]
        self.neg_grad += both[1]
        self.updates += 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.elementwise.probabilities(logits)
        return p[:, : self.num_classes] * (1.0 - p[:, self.num_classes :])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}"
