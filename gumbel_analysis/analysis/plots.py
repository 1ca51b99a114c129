"""Shared figure style and saving (PNG, PDF or SVG by suffix, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display here or on clusters

import matplotlib.pyplot as plt
import seaborn as sns

from gumbel_analysis.io import atomic_path, check_output_path

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def apply_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 150, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def check_figure_path(path: str | os.PathLike) -> Path:
    return check_output_path(path, FIGURE_SUFFIXES)


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Save by the path's suffix, atomically, and close the figure."""
    path = check_figure_path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".").lower())
    finally:
        plt.close(fig)
    return path
