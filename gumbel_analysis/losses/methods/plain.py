"""Plain BCE: every entry weighs 1, C + 1 outputs with a background column."""

from __future__ import annotations

from gumbel_analysis.losses.bce import WeightedBCE


class PlainBCE(WeightedBCE):
    """Plain BCE over C + 1 outputs: Sigmoid, or Gumbel (Eq. 3, 4) with all weights 1."""

    with_background = True
    # The authors' plain Gumbel loss clamps its reduced value to [0, 20] in ``paper`` mode.
    clamp_paper_loss = True
