"""Temperature curves of the Gumbel activation (Fig. 1.i) and the clip cut-off error (Sec. 1.3)."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gumbel_analysis.analysis.plots import apply_style, save_figure
from gumbel_analysis.errors import InputError
from gumbel_analysis.math import check_clip_range, check_temperature, cutoff_error, eta
from gumbel_analysis.paper import PAPER_SIGMAS  # noqa: F401 - re-export


def cutoff_table(sigmas: Sequence[float], low: float, high: float) -> list[dict[str, float]]:
    """One :func:`gumbel_analysis.math.cutoff_error` row per temperature."""
    check_clip_range(low, high)
    if not sigmas:
        raise InputError("give at least one temperature")
    for s in sigmas:
        check_representable(low, s)
        if not math.isfinite(high / s):
            raise InputError(
                f"--clip high {high:g} with --sigma {s:g}: high / sigma overflows float64"
            )
    return [cutoff_error(low, high, s) for s in sigmas]


#: The largest ``x`` with ``exp(x)`` finite in float64.
_EXP_MAX = math.log(sys.float_info.max)


def check_representable(low: float, sigma: float) -> None:
    """The bottom error ``eta(low) = exp(-exp(-low / sigma))`` is reported by its log10,
    ``-exp(-low / sigma) / ln 10``, which float64 holds while ``-low / sigma <= 709.78``; past
    that even the logarithm is out of range, so say so in one line instead of printing -inf."""
    check_temperature(sigma)
    if -low / sigma > _EXP_MAX:
        raise InputError(
            f"--clip low {low:g} with --sigma {sigma:g}: log10 eta(low) = -exp({-low / sigma:.4g})"
            f" / ln 10 is beyond float64; use low >= {-_EXP_MAX * sigma:.6g} or sigma >= "
            f"{-low / _EXP_MAX:.4g}"
        )


def plot_temperature(
    sigmas: Sequence[float], low: float, high: float, path: str | os.PathLike
) -> Path:
    """Fig. 1.i beside the cut-off error.

    Left: ``eta(q; sigma)`` for each temperature and the Sigmoid, the clip range shaded.
    Right: what a clip at ``q`` discards, in log10: ``1 - eta(q)`` for an upper bound at ``q`` and
    ``eta(q)`` for a lower bound at ``q``, with the chosen bounds marked.
    """
    import matplotlib.pyplot as plt

    for s in sigmas:
        check_temperature(s)
    check_clip_range(low, high)
    apply_style()
    span = max(abs(low), abs(high), 6.0)
    q = torch.linspace(-span, span, 801, dtype=torch.float64)
    fig, (ax_curve, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    palette = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, len(sigmas)))
    for color, s in zip(palette, sigmas, strict=True):
        ax_curve.plot(q, eta(q, s), color=color, lw=1.8, label=f"Gumbel, σ={s:g}")
    ax_curve.plot(q, torch.sigmoid(q), color="black", ls="--", lw=1.4, label="Sigmoid")
    ax_curve.axvspan(low, high, color="tab:orange", alpha=0.08, label=f"clip [{low:g}, {high:g}]")
    ax_curve.set(xlabel="logit q", ylabel="activation", title="Gumbel activation η(q; σ)")
    ax_curve.set_ylim(-0.02, 1.02)
    ax_curve.legend(fontsize=8, loc="lower right")

    ln10 = math.log(10.0)
    for color, s in zip(palette, sigmas, strict=True):
        a = torch.exp(-q / s)
        top = torch.log10(-torch.expm1(-a))  # log10(1 - eta): error of an upper clip at q
        bottom = -a / ln10  # log10(eta): error of a lower clip at q
        ax_err.plot(q[q > 0], top[q > 0], color=color, lw=1.8, label=f"σ={s:g}")
        ax_err.plot(q[q < 0], bottom[q < 0], color=color, lw=1.8, ls=":")
    reference = cutoff_error(low, high, 1.0)
    for bound, log10_err, side in (
        (high, reference["top_error_log10"], "right"),
        (low, reference["bottom_error_log10"], "left"),
    ):
        ax_err.axvline(bound, color="tab:orange", lw=1.0)
        ax_err.annotate(
            f"σ=1: {_scientific(log10_err)}",
            (bound, max(log10_err, -58.0)),
            textcoords="offset points",
            xytext=(-6 if side == "right" else 6, -14),
            ha=side,
            fontsize=8,
            color="tab:orange",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
        )
    ax_err.set_ylim(-60, 1)
    ax_err.set(
        xlabel="clip bound q",
        ylabel="log10 cut-off error",
        title="Cut-off error: 1−η above 0 (solid), η below 0 (dotted)",
    )
    ax_err.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _scientific(log10_value: float) -> str:
    """``1.9e-24`` from its log10 (the value itself may underflow float64)."""
    exponent = math.floor(log10_value)
    return f"{10 ** (log10_value - exponent):.1f}e{exponent:+03d}"
