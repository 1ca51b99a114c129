"""EQL v1 (Tan et al., CVPR 2020) with either activation; with Gumbel it is GOL*.

Eq. of EQL: ``w_j = 1 - E(r) T_lambda(f_j) (1 - y_j)``: only foreground proposals (``E(r) = 1``)
drop the negatives of classes below lambda; every background negative is kept. lambda as
DropLoss's (derived from the groups; 1.76e-3 on LVIS v0.5 in the EQL paper, 0.00177 in its
code). C outputs as the GOL authors' EQL code; Sigmoid prior 0.001.
"""

from __future__ import annotations

from gumbel_analysis.losses.methods.droploss import DropLoss


class EQL(DropLoss):
    """EQL v1: rare negatives dropped on foreground proposals only, C outputs."""

    background_dropping = False
