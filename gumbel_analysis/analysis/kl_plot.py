"""Figure 3: chosen images' target and predicted category distributions, KL in each title,
and the per-image KL distribution per run (see :mod:`gumbel_analysis.analysis.kl`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gumbel_analysis.analysis.kl import KLComparison, RunKL
from gumbel_analysis.groups import GROUP_NAMES

_GROUP_COLORS = {"f": "tab:blue", "c": "tab:orange", "r": "tab:red", None: "tab:gray"}


def plot_kl_dist(
    comparison: KLComparison,
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
) -> Path:
    """Fig. 3: per chosen image the target and each run's predicted distribution, and the
    distribution of per-image KL per run.

    Bars run over the categories ordered by ``image_count`` (descending), coloured by frequency
    group; each panel names its largest categories and each run's title gives its KL. With
    ``image_root`` a first column shows the image (``file_name`` or the ``coco_url`` basename
    under it) with its ground-truth masks, where the file exists.
    """
    import matplotlib.pyplot as plt

    from gumbel_analysis.analysis.plots import apply_style, save_figure

    gt, runs, rows = comparison.gt, comparison.runs, comparison.chosen_rows
    unit = comparison.options.unit
    apply_style()
    images = [None] * len(rows)
    if image_root is not None:
        images = [
            _thumbnail(Path(image_root), *comparison.chosen_annotations[int(i)])
            if int(i) in comparison.chosen_annotations
            else None
            for i in gt.row_image_ids[rows]
        ]
    with_images = any(im is not None for im in images)
    ncols = int(with_images) + 1 + len(runs)
    fig = plt.figure(figsize=(2.9 * ncols, 2.0 * len(rows) + 2.8), layout="constrained")
    grid = fig.add_gridspec(len(rows) + 1, ncols, height_ratios=[1.0] * len(rows) + [1.5])
    order = gt.frequency_order()
    groups = gt.frequency if gt.frequency is not None else [None] * len(order)
    colors = np.array([_GROUP_COLORS[g] for g in groups])[order]
    names = np.array(gt.category_names, dtype=object)[order]
    for i, row in enumerate(rows):
        image_id = int(gt.row_image_ids[row])
        if with_images:
            ax = fig.add_subplot(grid[i, 0])
            ax.axis("off")
            if images[i] is not None:
                ax.imshow(images[i])
            ax.set_title(f"image {image_id}", fontsize=8)
        target = gt.target_distribution(row)
        first = fig.add_subplot(grid[i, int(with_images)])
        _bars(first, target[order], colors, names)
        first.set_title(f"target, image {image_id}", fontsize=8)
        first.set_ylabel("mass")
        for j, run in enumerate(runs):
            ax = fig.add_subplot(grid[i, int(with_images) + 1 + j], sharey=first)
            _bars(ax, run.chosen_predicted[i][order], colors, names)
            ax.set_title(f"{run.label}: KL = {run.kl[row]:.3g} {unit}", fontsize=8)
        top = max([target.max()] + [run.chosen_predicted[i].max() for run in runs])
        first.set_ylim(0, 1.6 * top)  # the row shares it; the headroom holds the names
    ax = fig.add_subplot(grid[len(rows), :])
    _kl_histograms(ax, runs, unit)
    if gt.frequency is not None:
        handles = [
            plt.Line2D([], [], color=_GROUP_COLORS[g], lw=2, label=GROUP_NAMES[g])
            for g in ("f", "c", "r")
        ]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=3,
            fontsize=8,
            title="bars: category frequency group",
            title_fontsize=8,
        )
    fig.suptitle(
        f"Target vs predicted category distributions (categories by training frequency), "
        f"KL(target ‖ predicted) in {unit}",
        fontsize=10,
    )
    return save_figure(fig, path)


def _bars(ax, mass: np.ndarray, colors: np.ndarray, names: np.ndarray, labelled: int = 3) -> None:
    """Mass per category as thin bars; the ``labelled`` largest (>= 5 % of the mass) are numbered
    above their bars and named, with their mass, in the panel's top corner."""
    x = np.arange(len(mass))
    shown = mass > 1e-4 * mass.max()
    ax.vlines(x[shown], 0, mass[shown], colors=colors[shown], lw=1.2)
    top = [i for i in np.argsort(-mass, kind="stable")[:labelled] if mass[i] >= 0.05]
    for k, i in enumerate(top, 1):
        ax.annotate(str(k), (x[i], mass[i]), xytext=(0, 1), textcoords="offset points",
                    ha="center", va="bottom", fontsize=6)  # fmt: skip
    if top:
        legend = "\n".join(f"{k} {names[i]} {mass[i]:.2f}" for k, i in enumerate(top, 1))
        ax.text(0.98, 0.97, legend, transform=ax.transAxes, ha="right", va="top", fontsize=6)
    ax.set_xlim(-0.5, len(mass) - 0.5)
    ax.set_xticks([])
    ax.set_xlabel("categories by image count →", fontsize=7)
    ax.tick_params(labelsize=7)


def _kl_histograms(ax, runs: list[RunKL], unit: str) -> None:
    if not runs:
        ax.axis("off")
        return
    values = np.concatenate([r.kl for r in runs])
    high = float(values.max()) if values.size else 1.0
    bins = np.linspace(0.0, max(high, 1e-9) * 1.02, 60)
    palette = [f"C{i}" for i in range(len(runs))]
    for color, run in zip(palette, runs, strict=True):
        ax.hist(run.kl, bins=bins, histtype="step", lw=1.6, color=color, label=run.label)
        ax.axvline(run.summary["kl_mean"], color=color, ls="--", lw=1.0)
    ax.set(
        xlabel=f"KL(target ‖ predicted) per image [{unit}] (dashed: mean)",
        ylabel="images",
        title="Distribution of per-image KL",
    )
    ax.legend(fontsize=8)


def _thumbnail(root: Path, image: dict, annotations: list[dict]) -> np.ndarray | None:
    """The image under ``root`` with its ground-truth masks blended in, or None if not there."""
    import matplotlib.image as mpimg
    from matplotlib import colormaps

    names = [image.get("file_name"), os.path.basename(str(image.get("coco_url") or ""))]
    found = next((root / n for n in names if n and (root / n).is_file()), None)
    if found is None:
        return None
    try:
        picture = mpimg.imread(found)
    except (OSError, ValueError, SyntaxError):
        return None
    picture = np.asarray(picture, dtype=np.float64)
    if picture.max() > 1.0:
        picture = picture / 255.0
    if picture.ndim == 2:
        picture = np.stack([picture] * 3, axis=-1)
    picture = picture[..., :3].copy()
    h, w = int(image["height"]), int(image["width"])
    if picture.shape[:2] != (h, w):
        return picture  # not the annotated size: the masks would not line up
    palette = colormaps["tab20"]
    for k, ann in enumerate(annotations):
        mask = _decode_mask(ann.get("segmentation"), h, w)
        if mask is not None and mask.shape == (h, w):
            color = np.array(palette(k % 20)[:3])
            picture[mask] = 0.5 * picture[mask] + 0.5 * color
    return picture


def _decode_mask(segmentation, h: int, w: int) -> np.ndarray | None:
    import warnings

    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list) and segmentation:
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
        elif isinstance(segmentation, dict):
            rle = segmentation
            if isinstance(rle.get("counts"), list):
                rle = mask_utils.frPyObjects(rle, h, w)
        else:
            return None
        with warnings.catch_warnings():  # pycocotools' own numpy 2 copy= deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError, KeyError):
        return None
