"""ACSL, the Adaptive Class Suppression Loss (Wang et al., CVPR 2021), with either activation.

C + 1 outputs with a background column. With ``p`` the activation's detached probabilities and
``k`` a proposal's label (the background column for a background proposal):

    w_j = 1  if j = k,   1  if p_j >= xi,   0  otherwise        (ACSL's weight, xi = 0.7)

* ``variant="reference"`` (default, the authors' code): a background proposal does not use the
  scores. Its background column weighs 1; the frequent classes' negatives are kept on every
  background proposal, the common classes' on a random ``floor(0.1 n_bg)`` of them and the rare
  classes' on a random ``floor(0.01 n_bg)`` (``n_bg`` background proposals in the batch; the
  two draws are independent).
* ``variant="equation"``: the rule above for every proposal, background ones included.

The groups are the data's r/c/f frequency groups. The Gumbel version thresholds the Gumbel
probabilities, as the GOL authors' ACSL code does.
"""

from __future__ import annotations

import torch

from gumbel_analysis.losses.bce import WeightedBCE
from gumbel_analysis.losses.elementwise import EntryWeights
from gumbel_analysis.losses.gumbel import positive_index
from gumbel_analysis.spec.losses import DropVariant

#: Shares of the background proposals that keep each group's negatives (the authors' code).
BACKGROUND_SHARES = {"r": 0.01, "c": 0.1, "f": 1.0}


class ACSL(WeightedBCE):
    """ACSL: negatives kept only where the detached score reaches xi, C + 1 outputs."""

    with_background = True
    needs_groups = True

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
        *,
        acsl_xi: float = 0.7,
        variant: DropVariant | str = DropVariant.REFERENCE,
        **activation_options,
    ):
        super().__init__(num_classes, class_frequency, frequency_groups, **activation_options)
        if not 0.0 < acsl_xi < 1.0:
            raise ValueError(f"xi must lie in (0, 1), got {acsl_xi}")
        self.xi = float(acsl_xi)
        self.variant = DropVariant(variant)
        groups = self.frequency_groups or []
        for g in "rcf":
            mask = torch.tensor([x == g for x in groups], dtype=torch.bool)
            self.register_buffer(f"group_{g}", mask, persistent=False)
        self.generator: torch.Generator | None = None

    def entry_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> EntryWeights:
        c = self.num_classes
        keep = logits >= self.elementwise.logit_at(self.xi)  # p >= xi, without the activation
        bg = (labels == c).nonzero().squeeze(1)
        n_bg = bg.numel()
        if self.variant is DropVariant.REFERENCE and n_bg:
            rows = torch.zeros((n_bg, c), dtype=torch.bool, device=logits.device)
            for g, share in BACKGROUND_SHARES.items():
                chosen = torch.zeros(n_bg, dtype=torch.bool, device=logits.device)
                count = int(n_bg * share)
                if count:
                    pick = torch.randperm(n_bg, generator=self.generator)[:count]
                    chosen[pick.to(logits.device)] = True
                group = getattr(self, f"group_{g}").to(logits.device)
                rows |= chosen[:, None] & group[None, :]
            keep[bg, :c] = rows
        rows, cols = positive_index(labels, logits.shape[1], True)
        keep[rows, cols] = True  # the label's own column (the background's for background rows)
        return EntryWeights(keep)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, xi={self.xi}, variant={self.variant.value}"
