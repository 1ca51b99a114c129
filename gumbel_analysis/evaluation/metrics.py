"""The paper's LVIS metrics of a results file or list: AP, APr, APc, APf, APb, ... as percentages.

:func:`evaluate_results` checks the results against the ground truth and runs the evaluator of
:mod:`~gumbel_analysis.evaluation.lvis_eval` (``evaluator="fast"``, the default) or the official
``lvis.LVISEval`` (``evaluator="lvis"``, the reference: same numbers, many times the time and
memory). :func:`metrics_table` shows the metrics. Nothing here imports torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from rich.progress import Progress
from rich.table import Table

from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation import lvis_eval
from gumbel_analysis.evaluation.lvis_eval import IOU_TYPES
from gumbel_analysis.evaluation.results import Detections, read_results, results_from_entries
from gumbel_analysis.groups import FREQUENCY_GROUPS

#: The AP metrics of ``LVISEval.results`` the paper reports, in its tables' order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
EVALUATORS = ("fast", "lvis")
#: Prefix of the box metrics in :func:`evaluate_results`'s dict (mask metrics have none).
BOX_PREFIX = "bbox/"

_METRIC_HELP = {
    "AP": "IoU .50:.95",
    "AP50": "IoU .50",
    "AP75": "IoU .75",
    "APs": "small, area < 32²",
    "APm": "medium, 32² to 96²",
    "APl": "large, area > 96²",
    "APr": "rare categories (frequency r)",
    "APc": "common categories (frequency c)",
    "APf": "frequent categories (frequency f)",
}


def evaluate_results(
    gt: dict | str | os.PathLike | lvis_eval.GroundTruth,
    results: list[dict] | str | os.PathLike | Detections,
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: int = 300,
    evaluator: str = "fast",
    progress: Progress | None = None,
    verbose: bool = False,
    notes: list[str] | None = None,
) -> dict[str, float | int | None]:
    """LVIS AP of ``results`` against the ground truth ``gt``, lvis-api 0.5.3's numbers.

    ``gt``: an LVIS annotation file, its loaded dict, or a loaded :class:`GroundTruth` (not
    modified). ``results``: a results file, a list of LVIS result entries or loaded
    :class:`Detections` (not modified); the ``max_dets`` highest-scoring per image are kept, as
    ``LVISResults`` does (LVIS: 300).

    Returns, in this order (AP values are percentages, 0-100, as in the paper's tables):

    * ``AP AP50 AP75 APs APm APl APr APc APf``: mask AP (``segm``); object sizes from the masks,
      as detectron2 evaluates LVIS.
    * ``APb``: box AP, equal to ``bbox/AP``; ``bbox/AP ... bbox/APf``: the nine box metrics.
    * ``num_detections``: the number of results given (before the ``max_dets`` cut).

    A metric LVIS leaves undefined (it reports -1: no ground truth in that group) is ``None``.
    Only the requested ``iou_types`` are present. When some result has no mask, or the ground
    truth has no masks, mask AP is left out with a ``UserWarning`` (also appended to ``notes``)
    and boxes are evaluated. No results at all is no error: every defined metric is 0.0.
    Bad input raises :class:`InputError`.
    """
    iou_types = _check_iou_types(iou_types)
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise InputError(f"max_dets must be a positive integer, got {max_dets!r}")
    if evaluator not in EVALUATORS:
        raise InputError(f"evaluator must be one of {', '.join(EVALUATORS)}, got {evaluator!r}")
    gt_data = gt if isinstance(gt, lvis_eval.GroundTruth) else lvis_eval.load_ground_truth(gt)
    if isinstance(results, Detections):
        dets = results
    elif isinstance(results, list):
        dets = results_from_entries(results)
    elif isinstance(results, str | os.PathLike):
        dets = read_results(results)
    else:
        raise InputError("results must be a list of LVIS result entries or a results file")
    check_against(gt_data, dets)
    for cid, freq in zip(gt_data.cat_ids.tolist(), gt_data.frequency, strict=True):
        if freq not in FREQUENCY_GROUPS:
            raise InputError(f"ground truth category {cid} has no frequency group r/c/f")
    notes = [] if notes is None else notes
    if not len(dets):
        _note(notes, "no detections to evaluate: every defined AP is 0")
    if "segm" in iou_types and len(dets) and not dets.has_mask.all():
        lacking = int((~dets.has_mask).sum())
        iou_types = _drop_segm(
            iou_types,
            notes,
            f"{lacking} of {len(dets)} results have no segmentation: mask AP is not "
            "evaluated, box AP only",
        )
    if "segm" in iou_types and not gt_data.has_masks:
        iou_types = _drop_segm(
            iou_types, notes, "the ground truth has no masks: mask AP is not evaluated, box AP only"
        )
    if "bbox" in iou_types and not gt_data.has_boxes:
        raise InputError(
            "the ground truth has annotations without a bbox: boxes cannot be evaluated"
        )

    metrics: dict[str, float | int | None] = {}
    for iou_type in iou_types:
        if evaluator == "fast":
            values = _fast(gt_data, dets, iou_type, max_dets, progress)
        else:
            values = _reference(gt, dets, iou_type, max_dets, progress, verbose)
        prefix = BOX_PREFIX if iou_type == "bbox" else ""
        if iou_type == "bbox":
            metrics["APb"] = _percent(values["AP"])
        metrics.update({prefix + name: _percent(values[name]) for name in METRIC_NAMES})
    order = [*METRIC_NAMES, "APb", *(BOX_PREFIX + name for name in METRIC_NAMES)]
    metrics = {key: metrics[key] for key in order if key in metrics}
    metrics["num_detections"] = len(dets)
    return metrics


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    warnings.warn(text, UserWarning, stacklevel=3)


def _drop_segm(iou_types: tuple[str, ...], notes: list[str], text: str) -> tuple[str, ...]:
    _note(notes, text)
    return tuple(t for t in iou_types if t != "segm")


def check_against(gt: lvis_eval.GroundTruth, dets: Detections) -> None:
    """Every detection's image and category is in ``gt``, and its mask has its image's size."""
    lvis_eval.check_ids(gt, dets)
    if dets.mask_size is None:
        return
    img = gt.image_index(dets.image_id)
    expected = np.stack([gt.heights[img], gt.widths[img]], axis=1)
    bad = dets.has_mask & (dets.mask_size != expected).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"detection {i}: mask size {dets.mask_size[i].tolist()} differs from image "
            f"{int(dets.image_id[i])}'s {expected[i].tolist()} (height, width)"
        )


def _check_iou_types(iou_types: Sequence[str]) -> tuple[str, ...]:
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown or not iou_types:
        raise InputError(f"IoU types must be some of {', '.join(IOU_TYPES)}, got {iou_types!r}")
    return tuple(t for t in IOU_TYPES if t in iou_types)


def _fast(gt, dets, iou_type, max_dets, progress) -> dict[str, float]:
    if progress is None:
        return lvis_eval.evaluate(gt, dets, iou_type, max_dets=max_dets)
    total = int((np.bincount(gt.ann_cat, minlength=len(gt.cat_ids)) > 0).sum())
    task = progress.add_task(f"LVIS {iou_type} evaluation", total=max(total, 1))
    values = lvis_eval.evaluate(
        gt, dets, iou_type, max_dets=max_dets, progress=lambda n: progress.advance(task, n)
    )
    progress.update(task, completed=max(total, 1))
    return values


def _reference(gt, dets, iou_type, max_dets, progress, verbose) -> dict[str, float]:
    """The official ``LVISEval`` on the same detections (entries rebuilt as lvis-api reads them:
    for segm the mask alone, so that its area is the mask's; for bbox the box, or the mask's)."""
    import pycocotools.mask as mask_utils

    from gumbel_analysis.data.lvis_io import load_lvis_json
    from gumbel_analysis.evaluation.compat import lvis_api_eval

    if isinstance(gt, dict):
        data = gt
    elif isinstance(gt, lvis_eval.GroundTruth):
        raise InputError("the lvis evaluator needs the ground truth as a file or dict")
    else:
        data = load_lvis_json(gt)
    data = {
        "images": [
            {"neg_category_ids": [], "not_exhaustive_category_ids": [], **im}
            for im in data["images"]
        ],
        "categories": data["categories"],
        "annotations": data["annotations"],
    }
    ids = dets.image_id.tolist()
    cats = dets.category_id.tolist()
    scores = dets.score.tolist()
    entries = []
    for i in range(len(dets)):
        entry = {"image_id": ids[i], "category_id": cats[i], "score": scores[i]}
        if iou_type == "segm":
            rle = dets.rle(i)
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        elif dets.bbox is not None and not np.isnan(dets.bbox[i]).any():
            entry["bbox"] = dets.bbox[i].tolist()
        else:
            entry["bbox"] = mask_utils.toBbox(dets.rle(i)).tolist()
        entries.append(entry)
    task, steps, tick = None, 0, None
    if progress is not None:
        steps = len(data["images"]) * len(data["categories"]) * 5
        task = progress.add_task(f"LVIS {iou_type} evaluation", total=max(steps, 1))
        count = 0

        def tick() -> None:
            nonlocal count
            count += 1
            if count % 4096 == 0:
                progress.advance(task, 4096)

    values = lvis_api_eval(data, entries, iou_type, max_dets, tick, verbose)
    if progress is not None:
        progress.update(task, completed=max(steps, 1))
    return values


def _percent(value: float) -> float | None:
    return None if value == -1 else float(value) * 100.0


def metrics_table(metrics: dict, title: str) -> Table:
    """The metrics of :func:`evaluate_results` as a table: one row per metric, mask and box."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("what")
    table.add_column("mask (segm)", justify="right")
    table.add_column("box (bbox)", justify="right")
    for name in METRIC_NAMES:
        if name not in metrics and BOX_PREFIX + name not in metrics:
            continue
        table.add_row(
            name, _METRIC_HELP[name], _cell(metrics, name), _cell(metrics, BOX_PREFIX + name)
        )
    notes = ["AP in %", "- = undefined (no ground truth in that group)"]
    if "num_detections" in metrics:
        notes.insert(0, f"{metrics['num_detections']} detections")
    table.caption = "; ".join(notes)
    return table


def _cell(metrics: dict, key: str) -> str:
    if key not in metrics:
        return ""
    value = metrics[key]
    return "-" if value is None else f"{value:.1f}"


__all__ = [
    "BOX_PREFIX",
    "EVALUATORS",
    "IOU_TYPES",
    "METRIC_NAMES",
    "check_against",
    "evaluate_results",
    "metrics_table",
]
