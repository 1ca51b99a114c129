"""Reading LVIS v1 annotation files with the official ``lvis`` API, and what it lacks.

* :func:`read_json` / :func:`load_lvis_json` give one clear :class:`InputError` for a missing,
  truncated or non-LVIS file instead of a traceback from deep inside ``json`` or ``lvis``.
* The lvis-api pieces (the numpy 2 shim, ``lvis.LVIS`` from a dict) live in
  :mod:`gumbel_analysis.evaluation.compat`.
* Frequency groups (``r``/``c``/``f`` from each category's ``frequency``) and the class
  frequency ``f_c = image_count / number of training images`` that GOL's lambda compares with.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gumbel_analysis.errors import InputError
from gumbel_analysis.groups import FREQUENCY_GROUPS


def read_json(
    path: str | os.PathLike,
    what: str = "JSON file",
    object_hook: Callable[[dict], Any] | None = None,
) -> Any:
    """``json.load`` with one clear :class:`InputError` for a missing, truncated or binary file
    (``what`` names the file in the message)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        with path.open("rb") as f:
            return json.load(f, object_hook=object_hook)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{what} {path} is not valid JSON (truncated?): {err.msg} at line {err.lineno}"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not a text JSON file") from None
    except RecursionError:
        raise InputError(f"{what} {path} is nested too deeply") from None


def validate_lvis(data: Any, source: str = "annotation file") -> None:
    """Check the LVIS v1 structure and the references between its parts."""
    if not isinstance(data, dict):
        raise InputError(f"{source} is not LVIS: expected a JSON object at the top")
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)
    ]
    if missing:
        raise InputError(f"{source} is not LVIS: no {', '.join(missing)} list")
    try:
        cat_ids = {int(c["id"]) for c in data["categories"]}
        for c in data["categories"]:
            if "name" not in c:
                raise KeyError("name")
        image_ids = {int(im["id"]) for im in data["images"]}
        for im in data["images"]:
            int(im["height"]), int(im["width"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{source} is not LVIS: a category or image lacks {err}") from None
    if not data["categories"]:
        raise InputError(f"{source} has no categories")
    for ann in data["annotations"]:
        try:
            cid, iid, bbox = int(ann["category_id"]), int(ann["image_id"]), ann["bbox"]
            int(ann["id"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{source} is not LVIS: an annotation lacks {err}") from None
        if cid not in cat_ids:
            raise InputError(f"{source}: annotation {ann['id']} has unknown category id {cid}")
        if iid not in image_ids:
            raise InputError(f"{source}: annotation {ann['id']} has unknown image id {iid}")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise InputError(f"{source}: annotation {ann['id']} has a malformed bbox")
        _check_annotation_values(ann, source)


def _finite_numbers(values: Any) -> bool:
    try:
        return all(
            not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
            for v in values
        )
    except TypeError:
        return False


def _check_annotation_values(ann: dict, source: str) -> None:
    """Boxes, areas and segmentations hold finite numbers of the right shape, so a bad value is
    named here by file and annotation id, not found later as a non-finite training loss."""
    aid, bbox = ann["id"], ann["bbox"]
    if not _finite_numbers(bbox):
        raise InputError(f"{source}: annotation {aid} has a non-finite or non-numeric bbox {bbox}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise InputError(f"{source}: annotation {aid} has a negative bbox width or height {bbox}")
    if "area" in ann and not (_finite_numbers([ann["area"]]) and ann["area"] >= 0):
        raise InputError(f"{source}: annotation {aid} has an invalid area {ann['area']!r}")
    if "segmentation" not in ann:
        return
    seg = ann["segmentation"]
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2 or not _finite_numbers(poly):
                raise InputError(
                    f"{source}: annotation {aid} has a malformed polygon (a polygon is a list of "
                    "finite x, y pairs)"
                )
    elif isinstance(seg, dict):
        size = seg.get("size")
        if (
            "counts" not in seg
            or not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and v >= 0 for v in size)
        ):
            raise InputError(
                f"{source}: annotation {aid} has a malformed RLE segmentation (needs counts and "
                "size [height, width])"
            )
    else:
        raise InputError(
            f"{source}: annotation {aid} has a segmentation that is neither polygons nor RLE"
        )


def load_lvis_json(path: str | os.PathLike) -> dict:
    """Read and validate an LVIS annotation file; fill the fields the lvis API needs."""
    data = read_json(path, "annotation file")
    validate_lvis(data, str(path))
    for im in data["images"]:
        im.setdefault("neg_category_ids", [])
        im.setdefault("not_exhaustive_category_ids", [])
    _fill_counts(data)
    return data


def _fill_counts(data: dict) -> None:
    """Add ``image_count``/``instance_count`` to categories that lack them (from annotations)."""
    if all("image_count" in c and "instance_count" in c for c in data["categories"]):
        return
    images: dict[int, set[int]] = {int(c["id"]): set() for c in data["categories"]}
    instances = dict.fromkeys(images, 0)
    for ann in data["annotations"]:
        cid = int(ann["category_id"])
        images[cid].add(int(ann["image_id"]))
        instances[cid] += 1
    for c in data["categories"]:
        c.setdefault("image_count", len(images[int(c["id"])]))
        c.setdefault("instance_count", instances[int(c["id"])])


def sorted_categories(data: dict) -> list[dict]:
    """Categories by id: the order of the classifier's columns."""
    return sorted(data["categories"], key=lambda c: int(c["id"]))


def frequency_groups(data: dict) -> list[str]:
    """Per category (in id order) its group ``r``, ``c`` or ``f`` from the ``frequency`` field."""
    groups = []
    for c in sorted_categories(data):
        g = c.get("frequency")
        if g not in FREQUENCY_GROUPS:
            raise InputError(f"category {c['id']} ({c.get('name')}) has no frequency group r/c/f")
        groups.append(g)
    return groups


def image_counts(data: dict) -> np.ndarray:
    """Each category's ``image_count`` (the images it appears in), in id order (float64)."""
    return np.array([c["image_count"] for c in sorted_categories(data)], dtype=np.float64)


def class_frequency(data: dict) -> np.ndarray:
    """``f_c = image_count / number of images`` per category, in id order (float64)."""
    if not data["images"]:
        raise InputError("the annotation file has no images")
    return image_counts(data) / len(data["images"])
