"""LVIS evaluation of a model: Mask R-CNN outputs -> LVIS results JSON -> AP.

* :func:`detections_to_results` turns torchvision Mask R-CNN eval outputs into LVIS result entries
  (``bbox`` as ``[x, y, w, h]``, masks as compressed RLE), the format every LVIS tool reads.
* :func:`write_results` saves results atomically.
* :func:`evaluate_results` and :func:`metrics_table` come from
  :mod:`gumbel_analysis.evaluation.metrics` (lvis-api's numbers, without torch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation.metrics import (  # re-exported: the engine's evaluation API
    BOX_PREFIX,
    IOU_TYPES,
    METRIC_NAMES,
    evaluate_results,
    metrics_table,
)
from gumbel_analysis.io import atomic_path, check_output_path

__all__ = [
    "BOX_PREFIX",
    "IOU_TYPES",
    "METRIC_NAMES",
    "detections_to_results",
    "evaluate_results",
    "metrics_table",
    "write_results",
]


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


def write_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Write LVIS results as compact JSON; the file appears complete or not at all."""
    path = check_output_path(path)
    with atomic_path(path) as tmp, tmp.open("w") as f:
        json.dump(results, f, separators=(",", ":"))
