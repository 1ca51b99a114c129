"""LVIS evaluation: Mask R-CNN outputs -> LVIS results JSON -> AP through the official ``LVISEval``.

* :func:`detections_to_results` turns torchvision Mask R-CNN eval outputs into LVIS result entries
  (``bbox`` as ``[x, y, w, h]``, masks as compressed RLE), the format every LVIS tool reads.
* :func:`evaluate_results` runs ``lvis.LVISEval`` (released lvis 0.5.3, numpy 2 shim applied) for
  mask (``segm``) and box (``bbox``) AP and returns the paper's metrics as percentages (0-100).
* :func:`write_results` saves results atomically; :func:`metrics_table` shows metrics as a table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from rich.progress import Progress
from rich.table import Table

from gumbel_analysis.data.lvis_io import (
    frequency_groups,
    load_lvis,
    load_lvis_json,
    patch_lvis_numpy,
    validate_lvis,
)
from gumbel_analysis.errors import InputError
from gumbel_analysis.io import atomic_path, check_output_path

#: The AP metrics of ``LVISEval.results`` the paper reports, in its tables' order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
IOU_TYPES = ("segm", "bbox")
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


def detections_to_results(
    outputs: Sequence[dict],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    *,
    mask_threshold: float = 0.5,
) -> list[dict]:
    """LVIS result entries from torchvision Mask R-CNN eval outputs, one output per image.

    Each output has ``boxes`` ``[K, 4]`` (x1, y1, x2, y2 in pixels), ``labels`` ``[K]`` in
    ``1..C`` (label ``l`` is category ``category_ids[l - 1]``), ``scores`` ``[K]`` and optionally
    ``masks`` ``[K, 1, H, W]`` (or ``[K, H, W]``) of probabilities at the image's size. Tensors
    (on any device) or numpy arrays.

    Returns entries ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` plus
    ``"segmentation": {"size": [H, W], "counts": str}`` (compressed RLE of ``mask >
    mask_threshold``) when masks are given. Boxes are rounded to 0.01 px; scores keep their
    float32 value in the shortest decimal that reads back to it.
    """
    if len(outputs) != len(image_ids):
        raise InputError(f"got {len(outputs)} outputs for {len(image_ids)} image ids")
    if not 0.0 <= mask_threshold < 1.0:
        raise InputError(f"mask threshold must be in [0, 1), got {mask_threshold}")
    cat_lookup = np.asarray(category_ids, dtype=np.int64)
    results: list[dict] = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = _to_numpy(output["boxes"]).astype(np.float64).reshape(-1, 4)
        labels = _to_numpy(output["labels"]).astype(np.int64).reshape(-1)
        scores = _to_numpy(output["scores"]).astype(np.float32).reshape(-1)
        num = len(labels)
        if len(boxes) != num or len(scores) != num:
            raise InputError(
                f"image {image_id}: {len(boxes)} boxes, {num} labels and {len(scores)} scores"
            )
        if num == 0:
            continue
        if labels.min() < 1 or labels.max() > len(cat_lookup):
            raise InputError(
                f"image {image_id}: labels must be in 1..{len(cat_lookup)} (one per category), "
                f"got {labels.min()}..{labels.max()}"
            )
        masks = output.get("masks")
        rles = None if masks is None else _encode_masks(masks, mask_threshold, num, image_id)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        entries = zip(
            cat_lookup[labels - 1].tolist(),
            np.round(xywh, 2).tolist(),
            # str of a float32 is its shortest round-trip decimal: compact JSON, no precision lost
            [float(str(s)) for s in scores],
            strict=True,
        )
        image_id = int(image_id)
        for k, (category_id, bbox, score) in enumerate(entries):
            entry = {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}
            if rles is not None:
                entry["segmentation"] = rles[k]
            results.append(entry)
    return results


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def _encode_masks(masks: Any, threshold: float, num: int, image_id: int) -> list[dict]:
    """Compressed RLE (``counts`` as str) of each ``mask > threshold``, one pycocotools call."""
    shape = tuple(masks.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)) or shape[0] != num:
        raise InputError(f"image {image_id}: masks must be [{num}, 1, H, W], got {list(shape)}")
    height, width = shape[-2:]
    # pycocotools reads one H x W x K array in Fortran order, i.e. a C-ordered [K, W, H] array:
    # threshold and transpose in one pass, writing booleans that are viewed as uint8.
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().reshape(num, height, width)
        if masks.device.type != "cpu" or masks.dtype == torch.bfloat16:  # threshold it there
            binary = (masks.transpose(1, 2) > threshold).contiguous().cpu().numpy()
            return _encode_kwh(binary.view(np.uint8))
        masks = masks.numpy()
    masks = np.asarray(masks).reshape(num, height, width)
    binary = np.empty((num, width, height), dtype=bool)
    np.greater(masks.transpose(0, 2, 1), threshold, out=binary)
    return _encode_kwh(binary.view(np.uint8))


def _encode_kwh(binary: np.ndarray) -> list[dict]:
    rles = mask_utils.encode(binary.transpose(2, 1, 0))  # H x W x K, Fortran-contiguous
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def evaluate_results(
    gt: dict | str | os.PathLike,
    results: list[dict],
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: int = 300,
    progress: Progress | None = None,
    verbose: bool = False,
) -> dict[str, float | int | None]:
    """LVIS AP of ``results`` against the ground truth ``gt`` with the official ``lvis.LVISEval``.

    ``LVISEval`` runs unchanged but for skipping the (image, category) pairs and the categories
    it cannot score (see ``FastLVISEval``): the same numbers, tested against the plain class.

    ``gt`` is an LVIS annotation file or its loaded dict (not modified). ``results`` are LVIS
    result entries (as from :func:`detections_to_results` or an LVIS results JSON; not modified);
    the ``max_dets`` highest-scoring per image are kept, as ``LVISResults`` does (LVIS: 300).

    Returns, in this order (all AP values are percentages, 0-100, as in the paper's tables):

    * ``AP AP50 AP75 APs APm APl APr APc APf``: mask AP (``segm``). ``APr/APc/APf`` average over
      the rare/common/frequent categories, ``APs/APm/APl`` over small/medium/large objects
      (area from the mask, as detectron2 evaluates LVIS).
    * ``APb``: box AP, equal to ``bbox/AP``.
    * ``bbox/AP ... bbox/APf``: the same nine metrics for boxes (``bbox``).
    * ``num_detections``: the number of results given (before the ``max_dets`` cut).

    A metric LVIS leaves undefined (it reports -1: no ground truth of that group, e.g. no rare
    category in a small val set) is ``None``. Only the requested ``iou_types`` are present; when
    the results have no ``segmentation`` in every entry, the mask metrics are left out and a
    ``UserWarning`` says so. No results at all (a model that detects nothing) is no error: every
    defined metric is 0.0, ``num_detections`` is 0, and a ``UserWarning`` says so. Results that
    name image or category ids absent from ``gt`` raise :class:`InputError`.

    ``progress`` shows one task per IoU type; ``verbose`` keeps lvis's log and prints its summary.
    """
    iou_types = _check_iou_types(iou_types)
    if not isinstance(max_dets, int) or max_dets < 1:
        raise InputError(f"max_dets must be a positive integer, got {max_dets!r}")
    data = _ground_truth(gt, needs_masks="segm" in iou_types)
    has_masks = _check_results(results, data)
    if not results:
        warnings.warn("no detections to evaluate: every defined AP is 0", UserWarning, stacklevel=2)
    elif "segm" in iou_types and not has_masks:
        lacking = sum("segmentation" not in r for r in results)
        warnings.warn(
            f"{lacking} of {len(results)} results have no segmentation: mask AP is not "
            "evaluated, box AP only",
            UserWarning,
            stacklevel=2,
        )
        iou_types = tuple(t for t in iou_types if t != "segm")

    patch_lvis_numpy()
    metrics: dict[str, float | int | None] = {}
    for iou_type in iou_types:
        values = _run_lvis_eval(data, results, iou_type, max_dets, progress, verbose)
        prefix = BOX_PREFIX if iou_type == "bbox" else ""
        if iou_type == "bbox":
            metrics["APb"] = values["AP"]
        metrics.update({prefix + name: values[name] for name in METRIC_NAMES})
    order = [*METRIC_NAMES, "APb", *(BOX_PREFIX + name for name in METRIC_NAMES)]
    metrics = {key: metrics[key] for key in order if key in metrics}
    metrics["num_detections"] = len(results)
    return metrics


def _check_iou_types(iou_types: Sequence[str]) -> tuple[str, ...]:
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown or not iou_types:
        raise InputError(f"IoU types must be some of {', '.join(IOU_TYPES)}, got {iou_types!r}")
    return tuple(t for t in IOU_TYPES if t in iou_types)


def _ground_truth(gt: dict | str | os.PathLike, needs_masks: bool) -> dict:
    """A validated copy of the ground truth with what ``LVISEval`` needs filled in."""
    if isinstance(gt, dict):
        validate_lvis(gt, "ground truth")
        source = "ground truth"
    else:
        source = str(gt)
        gt = load_lvis_json(gt)
    frequency_groups(gt)  # every category needs its r/c/f group
    needed = ("area", "segmentation") if needs_masks else ("area",)
    for ann in gt["annotations"]:
        missing = [key for key in needed if key not in ann]
        if missing:
            raise InputError(f"{source}: annotation {ann['id']} has no {missing[0]}")
    images = [
        {"neg_category_ids": [], "not_exhaustive_category_ids": [], **im} for im in gt["images"]
    ]
    return {"images": images, "categories": gt["categories"], "annotations": gt["annotations"]}


def _check_results(results: list[dict], data: dict) -> bool:
    """Raise InputError for malformed results or unknown ids; whether all have a segmentation."""
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise InputError("results must be a list of LVIS result entries (dicts)")
    sizes = {int(im["id"]): [int(im["height"]), int(im["width"])] for im in data["images"]}
    cat_ids = {int(c["id"]) for c in data["categories"]}
    image_ids_seen, cat_ids_seen = set(), set()
    has_masks = True
    for i, r in enumerate(results):
        missing = [k for k in ("image_id", "category_id", "score") if k not in r]
        if missing:
            raise InputError(f"result {i} is not an LVIS result entry: it has no {missing[0]}")
        if not isinstance(r["score"], int | float):
            raise InputError(f"result {i} has a score that is not a number: {r['score']!r}")
        image_ids_seen.add(r["image_id"])
        cat_ids_seen.add(r["category_id"])
        segm = r.get("segmentation")
        if segm is None:
            has_masks = False
            if not (isinstance(r.get("bbox"), list | tuple) and len(r["bbox"]) == 4):
                raise InputError(f"result {i} has neither a bbox [x, y, w, h] nor a segmentation")
        elif not (isinstance(segm, dict) and "counts" in segm and "size" in segm):
            raise InputError(f"result {i}: segmentation must be compressed RLE (size, counts)")
        elif r["image_id"] in sizes and list(segm["size"]) != sizes[r["image_id"]]:
            raise InputError(
                f"result {i}: mask size {segm['size']} differs from image {r['image_id']}'s "
                f"{sizes[r['image_id']]} (height, width)"
            )
    for what, seen, known in (
        ("image", image_ids_seen, sizes.keys()),
        ("category", cat_ids_seen, cat_ids),
    ):
        unknown = seen - set(known)
        if unknown:
            raise InputError(
                f"results name {len(unknown)} {what} id(s) absent from the ground truth, "
                f"e.g. {sorted(unknown, key=str)[0]!r}"
            )
    return has_masks


def _run_lvis_eval(
    data: dict,
    results: list[dict],
    iou_type: str,
    max_dets: int,
    progress: Progress | None,
    verbose: bool,
) -> dict[str, float | None]:
    """One official ``LVISEval`` run; its nine AP metrics in percent, -1 (undefined) as None."""
    from lvis import LVISResults

    # LVISEval writes "ignore" flags and RLEs into the annotation dicts: give it copies
    gt_api = load_lvis({**data, "annotations": [dict(a) for a in data["annotations"]]})
    # LVISResults deep-copies the GT it is given but keeps only its images and categories
    images_only = load_lvis({**data, "annotations": []})
    if iou_type == "segm":
        # without a bbox, LVISResults takes the area from the mask, as detectron2 does for segm
        dts = [_result_entry(r, "segmentation") for r in results]
    else:
        dts = [_result_entry(r, "bbox") for r in results]

    task, steps = None, 0
    if progress is not None:
        with_gt = {ann["category_id"] for ann in data["annotations"]}
        steps = len(data["images"]) * len(with_gt) * 5  # IoUs, then matches for 4 area ranges
        task = progress.add_task(f"LVIS {iou_type} evaluation", total=steps)

    with _quiet_lvis(verbose):
        if dts:
            dt_api = LVISResults(images_only, dts, max_dets=max_dets)
        else:  # LVISResults cannot take an empty list (it reads results[0]): build it empty
            dt_api = LVISResults.__new__(LVISResults)
            dt_api.dataset, dt_api.logger = images_only.dataset, images_only.logger
            dt_api._create_index()
        evaluator = _lvis_eval_class()(gt_api, dt_api, iou_type, _ticker(progress, task))
        evaluator.params.max_dets = max_dets
        evaluator.run()
        if verbose:
            evaluator.print_results()
    if progress is not None and task is not None:
        progress.update(task, completed=steps)
    return {name: _percent(evaluator.results[name]) for name in METRIC_NAMES}


def _result_entry(result: dict, region: str) -> dict:
    entry = {k: result[k] for k in ("image_id", "category_id", "score")}
    if region == "bbox" and "bbox" not in result:
        entry["bbox"] = mask_utils.toBbox(result["segmentation"]).tolist()
    else:
        entry[region] = result[region]
    return entry


def _percent(value: float) -> float | None:
    return None if value == -1 else float(value) * 100.0


def _ticker(progress: Progress | None, task: Any) -> Callable[[], None] | None:
    if progress is None:
        return None
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count % 4096 == 0:  # a rich update per call would cost more than the call itself
            progress.advance(task, 4096)

    return tick


@contextlib.contextmanager
def _quiet_lvis(verbose: bool) -> Iterator[None]:
    """Silence lvis's info/warning log and its ``Logger.warn`` deprecation warnings."""
    if verbose:
        yield
        return
    logger = logging.getLogger("lvis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


@functools.cache
def _lvis_eval_class() -> type:
    """Built on first use: importing lvis takes half a second and configures root logging."""
    from lvis import LVISEval

    class FastLVISEval(LVISEval):
        """``LVISEval`` with the same results, faster, counting its steps for a progress bar.

        ``LVISEval`` visits every (image, category) pair, and most have neither ground truth nor
        detections; for those it returns ``[]`` (IoUs) and ``None`` (matches) after filling two
        defaultdicts. Here they return the same at once. And only categories with ground truth
        are evaluated: ``LVISEval`` gives any other -1 (precision and recall) and leaves it out
        of every mean, so no metric changes.
        """

        def __init__(self, gt, dt, iou_type, tick):
            super().__init__(gt, dt, iou_type)
            self._tick = tick or (lambda: None)
            with_gt = {ann["category_id"] for ann in gt.dataset["annotations"]}
            self.params.cat_ids = [c for c in self.params.cat_ids if c in with_gt]

        def _empty(self, img_id, cat_id):
            key = (img_id, cat_id)
            return self.params.use_cats and key not in self._gts and key not in self._dts

        def compute_iou(self, img_id, cat_id):
            self._tick()
            if self._empty(img_id, cat_id):
                return []
            return super().compute_iou(img_id, cat_id)

        def evaluate_img(self, img_id, cat_id, area_rng):
            self._tick()
            if self._empty(img_id, cat_id):
                return None
            return super().evaluate_img(img_id, cat_id, area_rng)

    return FastLVISEval


def write_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Write LVIS results as compact JSON; the file appears complete or not at all."""
    path = check_output_path(path)
    with atomic_path(path) as tmp, tmp.open("w") as f:
        json.dump(results, f, separators=(",", ":"))


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
        mask = _cell(metrics, name)
        box = _cell(metrics, BOX_PREFIX + name)
        table.add_row(name, _METRIC_HELP[name], mask, box)
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
