"""LOCE's equilibrium loss (Feng et al., ICCV 2021): a class-wise logit margin from each class's
running mean classification score. Softmax as its authors, or Sigmoid or Gumbel in a BCE form.

C + 1 outputs with a background column. Each foreground class ``c`` keeps a mean score ``m_c``
(a float64 buffer of the module, 0.01 at the start). The background's is fixed at ``bg_score``
(0.01). Each training batch first updates the scores, then computes the loss.

**Update** (the authors' ``LoceRoIHead._update_mean_score``):

1. For every ground-truth instance ``i`` with at least one positive proposal, ``s_i`` is the mean,
   over its proposals, of the score of its own class. The score is computed from the raw logits:
   the softmax, or the activation's probability in the BCE form.
2. The ``n_c`` instances of class ``c`` in the batch, on all ranks, move its mean score:
   ``m_c <- alpha^n_c m_c + (1 - alpha^n_c) mean_i s_i``, with ``alpha = 0.9``.

**Softmax** (the authors' ``equilibrium_loss``):
``L = -(1/N) sum_i log( m_{y_i} e^{z_{i,y_i}} / sum_j m_j e^{z_ij} )``. That is cross-entropy on
the logits plus the margins ``log m_j``. A well-classified (frequent) class gets a large margin
in training, which its raw logits, scored at test time, no longer have.

**BCE form** (Sigmoid, Gumbel; the authors define only the softmax). Each column is the
activation's BCE (Eq. 4 of the supplementary, weights 1) of ``z_ij + log(m_j / m_0)``, where
``m_0 = 0.01`` is the initial mean score. The softmax is invariant to one shift of all logits, so
its margins read the same with or without ``m_0``. In the BCE form, ``m_0`` makes the first step
plain BCE, from the activation's own initial bias. The margins then grow, as in the softmax, with
how well each class is already classified.

The paper describes the mean score as an exponential moving average over instances; the code
applies ``alpha`` once per instance of a batch, to the batch's mean of the instances' scores.
The paper's text was not at hand to find an equation that differs from the code, so this follows
the code and has no ``--variant``.

Instances come from the RoI heads (``needs_instances``): each foreground proposal's matched
ground-truth box. A caller without them (a benchmark calling ``loss(logits, labels)``) counts
each positive proposal as an instance of its own.

**Memory-augmented feature sampling** (``loce_mfs``, Table 4's MFS row): the RoI heads keep a
queue of ground-truth features per class and replay some each step, classes drawn inversely to
their mean score (``model/feature_memory.py``). Replayed rows come with ``instances`` equal to
``MEMORY_INSTANCE``; those of one class count as one more instance of it, scored by their mean
(the authors add each distinct drawn class once). Off by default: the random-sampler row is the
equilibrium loss alone; the authors' LOCE uses both. Measured on the embedded data (2 epochs,
tiny preset): with the Gumbel BCE form and MFS, lr 0.005 diverged after 254 iterations (the
classifier's gradient grew 1e13-fold in 40 steps) and lr 0.0025 trained; Softmax and Sigmoid
trained at 0.005.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gumbel_analysis.losses.base import MEMORY_INSTANCE, compute_dtype
from gumbel_analysis.losses.elementwise import EntryWeights
from gumbel_analysis.losses.methods.eqlv2 import all_reduce_sum
from gumbel_analysis.losses.softmax_or_bce import SoftmaxOrBCE

#: Every class's mean score before any update (the authors' ``torch.ones(C + 1) * 0.01``).
INITIAL_MEAN_SCORE = 0.01


class EquilibriumLoss(SoftmaxOrBCE):
    """LOCE's equilibrium loss: CE (or BCE) with the margins ``log m_c`` of running mean scores."""

    needs_instances = True

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        loce_alpha: float = 0.9,
        loce_bg_score: float = 0.01,
        loce_mfs: bool = False,
        loce_mfs_queue: int = 80,
        loce_mfs_classes: int = 4,
        loce_mfs_features: int = 4,
        **activation_options,
    ):
        super().__init__(num_classes, class_frequency, frequency_groups, **activation_options)
        if not 0.0 <= loce_alpha < 1.0:
            raise ValueError(f"loce_alpha must be in [0, 1), got {loce_alpha}")
        if not 0.0 < loce_bg_score <= 1.0:
            raise ValueError(f"loce_bg_score must be in (0, 1], got {loce_bg_score}")
        self.alpha, self.bg_score = float(loce_alpha), float(loce_bg_score)
        if loce_mfs:
            self.feature_memory_options = {
                "queue_size": loce_mfs_queue,
                "classes_per_image": loce_mfs_classes,
                "features_per_class": loce_mfs_features,
            }
        self.register_buffer(
            "mean_score", torch.full((num_classes,), INITIAL_MEAN_SCORE, dtype=torch.float64)
        )

    def margins(self) -> torch.Tensor:
        """``log(m_j / m_0)`` for the C classes and the background ([C + 1], float64)."""
        bg = self.mean_score.new_full((1,), self.bg_score)
        return torch.log(torch.cat([self.mean_score, bg]) / INITIAL_MEAN_SCORE)

    def memory_scores(self) -> torch.Tensor:
        """The mean scores, by which MFS draws the classes it replays."""
        return self.mean_score

    def own_class_scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each row's score of its label, from the raw logits (softmax or the activation)."""
        return self.probabilities(logits).gather(1, labels[:, None]).squeeze(1)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        instances: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.check_inputs(logits, labels)
        labels = labels.long()
        if self.training:  # the authors update the scores first, then compute the loss
            self.update(logits.detach(), labels, instances)
        z = compute_dtype(logits)
        if z.shape[0] == 0:
            return z.sum()
        shifted = z + self.margins().to(z.dtype)
        if self.elementwise is None:
            return F.cross_entropy(shifted, labels)
        return self.elementwise.loss(shifted, labels, EntryWeights(), True)

    @torch.no_grad()
    def update(
        self, logits: torch.Tensor, labels: torch.Tensor, instances: torch.Tensor | None = None
    ) -> None:
        """Move the mean scores by this batch's instances (all ranks); see the module docstring.
        ``instances`` [N]: an id per proposal, equal for the proposals of one ground-truth
        instance (background rows ignored; ``MEMORY_INSTANCE``: a replayed row); None: every
        positive row is its own instance."""
        c = self.num_classes
        device = labels.device
        fg = torch.where(labels < c)[0]
        scores = self.own_class_scores(logits[fg], labels[fg]).double()
        classes = labels[fg]
        # totals: sum of instance means, instances, sum of replayed scores, replayed rows
        totals = torch.zeros(4, c, dtype=torch.float64, device=device)
        if instances is None:
            ids = torch.arange(len(fg), device=device)
        else:
            replayed = instances[fg] == MEMORY_INSTANCE
            totals[2].index_add_(0, classes[replayed], scores[replayed])
            totals[3].index_add_(0, classes[replayed], torch.ones_like(scores[replayed]))
            scores, classes = scores[~replayed], classes[~replayed]
            ids = torch.unique(instances[fg][~replayed].long(), return_inverse=True)[1]
        count = int(ids.max()) + 1 if len(ids) else 0
        per_instance = torch.zeros(count, dtype=torch.float64, device=labels.device)
        per_instance.index_add_(0, ids, scores)
        size = torch.zeros(count, dtype=torch.float64, device=labels.device)
        size.index_add_(0, ids, torch.ones_like(scores))
        instance_class = torch.zeros(count, dtype=torch.long, device=labels.device)
        instance_class[ids] = classes
        totals[0].index_add_(0, instance_class, per_instance / size.clamp(min=1))
        totals[1].index_add_(0, instance_class, torch.ones_like(size))
        totals = all_reduce_sum(totals.to(self.mean_score.device))
        drawn = totals[3] > 0  # a class's replayed rows, over all ranks: one instance
        totals[0][drawn] += totals[2][drawn] / totals[3][drawn]
        totals[1][drawn] += 1
        seen = totals[1] > 0
        keep = torch.pow(self.alpha, totals[1][seen])
        batch_mean = totals[0][seen] / totals[1][seen]
        self.mean_score[seen] = keep * self.mean_score[seen] + (1.0 - keep) * batch_mean

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, bg_score={self.bg_score}"
