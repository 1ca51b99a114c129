"""LVIS AP category by category: lvis-api 0.5.3's numbers in a fraction of its time and memory.

``lvis.LVISEval`` keeps a dict per (image, category) pair and matches detections to ground truth
in Python, one detection, one IoU threshold and one area range at a time. Here the detections
are columns (:class:`~gumbel_analysis.evaluation.results.Detections`), sorted once by category,
and each category is evaluated alone: its IoUs through ``pycocotools.mask.iou`` per image, the
greedy matching of all its images at once (numpy over images x 10 IoU thresholds x 4 area
ranges, one step per detection rank), then its precision/recall curves. Nothing is kept per
(image, category) pair, nothing but the curves per category.

The rules are lvis-api's, to the bit (tests compare every metric with ``LVISEval``):

* **top 300 per image**: of an image's detections, the ``max_dets`` highest scores across
  categories are kept (``LVISResults.limit_dets_per_image``; equal scores: the earlier entry).
* **zero area**: ground truth and detections of area 0 are left out (``LVIS.get_ann_ids`` keeps
  ``0 < area < inf``). The area of a box is ``w * h``; of a mask (``segm``) the mask's pixel
  count (detectron2 drops the boxes from segm results for this).
* **federated**: a detection of a category that is neither in the image's ground truth nor in its
  ``neg_category_ids`` (an *unverified* category) is dropped; an unmatched detection of a
  category in its ``not_exhaustive_category_ids`` is ignored.
* **matching** (``LVISEval.evaluate_img``): detections by score (stable), each takes the unmatched
  ground truth of highest IoU ``>= min(t, 1 - 1e-10)`` (equal IoU: the later one), preferring one
  inside the area range; a detection matched to one outside it, or unmatched and itself outside
  it, is ignored. A ground truth whose ``id`` is 0 counts as no match, as lvis-api's
  ``dt_m == 0`` does.
* **accumulation** (``LVISEval.accumulate``): a category's detections by score, equal scores in
  image-id order (numpy's stable mergesort); precision made monotone, read at the 101 recall
  levels; the means over the defined (``> -1``) entries in the same order as lvis-api's, so that
  even the last bit agrees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import pycocotools.mask as mask_utils

from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation.results import RLE, Detections
from gumbel_analysis.groups import FREQUENCY_GROUPS

IOU_TYPES = ("segm", "bbox")
#: ``LVISEval.params``: IoU thresholds .50:.05:.95, recall levels 0:.01:1, area ranges (all,
#: small, medium, large).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_LEVELS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]])
#: Padded IoU entries (images x detections x ground truth) matched in one numpy batch.
_BATCH_ELEMENTS = 1 << 19


# ----------------------------------------------------------------------------- ground truth


class _Image(msgspec.Struct):
    id: int
    height: int
    width: int
    neg_category_ids: list[int] = []
    not_exhaustive_category_ids: list[int] = []


class _Category(msgspec.Struct):
    id: int
    frequency: str | None = None


class _Annotation(msgspec.Struct):
    id: int
    image_id: int
    category_id: int
    area: float
    bbox: list[float] | None = None
    segmentation: msgspec.Raw = msgspec.Raw()  # its JSON text, decoded when needed
    ignore: bool | float = 0


class _LVIS(msgspec.Struct):
    images: list[_Image]
    annotations: list[_Annotation]
    categories: list[_Category]


_POLYGONS_OR_RLE = list[list[float]] | RLE


@dataclass
class GroundTruth:
    """An LVIS annotation file as columns: what the evaluation reads of it, nothing else.

    Images in id order (``image_ids``), categories in id order (``cat_ids``, ``frequency``);
    annotations in file order, with their image and category as indices into those. Masks stay
    as their JSON text (``segmentation``) until a category needs them.
    """

    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    cat_ids: np.ndarray
    frequency: list[str | None]
    neg_keys: np.ndarray  # image index * num categories + category index, sorted
    nel_keys: np.ndarray  # the same for the not-exhaustive categories
    ann_ids: np.ndarray
    ann_image: np.ndarray
    ann_cat: np.ndarray
    ann_area: np.ndarray
    ann_ignore: np.ndarray
    ann_bbox: np.ndarray  # [M, 4]; NaN where an annotation has none
    segmentation: list[msgspec.Raw | None]

    @property
    def has_masks(self) -> bool:
        return all(s is not None for s in self.segmentation)

    @property
    def has_boxes(self) -> bool:
        return not np.isnan(self.ann_bbox).any()

    def image_index(self, image_ids: np.ndarray) -> np.ndarray:
        """Indices of ``image_ids`` into :attr:`image_ids`; -1 for an id not in the ground truth."""
        return _index_of(self.image_ids, image_ids)

    def cat_index(self, cat_ids: np.ndarray) -> np.ndarray:
        return _index_of(self.cat_ids, cat_ids)

    def masks(self, indices: np.ndarray) -> list[dict]:
        """Compressed RLEs of the annotations ``indices`` (``LVIS.ann_to_rle``: polygons are
        merged into one mask, uncompressed RLE is compressed)."""
        out = []
        for i in indices.tolist():
            img = self.ann_image[i]
            h, w = int(self.heights[img]), int(self.widths[img])
            try:
                segm = msgspec.json.decode(self.segmentation[i], type=_POLYGONS_OR_RLE)
            except msgspec.ValidationError:
                raise InputError(
                    f"ground truth annotation {self.ann_ids[i]} has a segmentation that is "
                    "neither polygons nor RLE"
                ) from None
            if isinstance(segm, list):
                out.append(mask_utils.merge(mask_utils.frPyObjects(segm, h, w)))
            elif isinstance(segm.counts, list):
                out.append(mask_utils.frPyObjects({"size": segm.size, "counts": segm.counts}, h, w))
            else:
                out.append({"size": segm.size, "counts": segm.counts})
        return out


def _index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1) if len(sorted_ids) else np.full(len(ids), -1)


def load_ground_truth(source: str | os.PathLike | dict, name: str | None = None) -> GroundTruth:
    """Read an LVIS annotation file (or its loaded dict) into a :class:`GroundTruth`.

    msgspec decodes only the fields the evaluation reads; a polygon stays JSON text until its
    category is evaluated, so a 200 MB LVIS val file never becomes a gigabyte of Python lists.
    """
    if isinstance(source, dict):
        data, name = msgspec.json.encode(source), name or "ground truth"
    else:
        path = os.fspath(source)
        name = name or path
        if not os.path.isfile(path):
            raise InputError(f"annotation file not found: {path}")
        with open(path, "rb") as f:
            data = f.read()
    try:
        lvis = msgspec.json.decode(data, type=_LVIS)
    except msgspec.ValidationError as err:
        raise InputError(f"{name} is not an LVIS annotation file: {err}") from None
    except msgspec.DecodeError as err:
        raise InputError(f"{name} is not valid JSON (truncated?): {err}") from None
    except RecursionError:
        raise InputError(f"{name} is not valid JSON: nested too deeply") from None
    del data
    images = sorted(lvis.images, key=lambda im: im.id)
    image_ids = np.array([im.id for im in images], dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise InputError(f"{name}: two images have the same id")
    cats = sorted(lvis.categories, key=lambda c: c.id)
    cat_ids = np.array([c.id for c in cats], dtype=np.int64)
    if len(np.unique(cat_ids)) != len(cat_ids):
        raise InputError(f"{name}: two categories have the same id")
    if not len(cat_ids):
        raise InputError(f"{name} has no categories")
    num_cats = len(cat_ids)

    def keys(field: str) -> np.ndarray:
        pairs = [(i, c) for i, im in enumerate(images) for c in getattr(im, field)]
        if not pairs:
            return np.zeros(0, dtype=np.int64)
        img, cid = np.array(pairs, dtype=np.int64).T
        k = _index_of(cat_ids, cid)
        return np.unique((img * num_cats + k)[k >= 0])

    anns = lvis.annotations
    ann_ids = np.array([a.id for a in anns], dtype=np.int64)
    if len(np.unique(ann_ids)) != len(ann_ids):
        # lvis-api indexes annotations by id: a repeated id would evaluate one of them twice
        raise InputError(f"{name}: two annotations have the same id")
    ann_image = _index_of(image_ids, np.array([a.image_id for a in anns], dtype=np.int64))
    ann_cat = _index_of(cat_ids, np.array([a.category_id for a in anns], dtype=np.int64))
    for what, idx in (("image", ann_image), ("category", ann_cat)):
        if (idx < 0).any():
            i = int(np.argmax(idx < 0))
            raise InputError(f"{name}: annotation {anns[i].id} has an unknown {what} id")
    bad_box = [i for i, a in enumerate(anns) if a.bbox is not None and len(a.bbox) != 4]
    if bad_box:
        raise InputError(f"{name}: annotation {anns[bad_box[0]].id} has a malformed bbox")
    nan4 = [np.nan] * 4
    return GroundTruth(
        image_ids=image_ids,
        heights=np.array([im.height for im in images], dtype=np.int64),
        widths=np.array([im.width for im in images], dtype=np.int64),
        cat_ids=cat_ids,
        frequency=[c.frequency for c in cats],
        neg_keys=keys("neg_category_ids"),
        nel_keys=keys("not_exhaustive_category_ids"),
        ann_ids=ann_ids,
        ann_image=ann_image,
        ann_cat=ann_cat,
        ann_area=np.array([a.area for a in anns], dtype=np.float64),
        ann_ignore=np.array([bool(a.ignore) for a in anns], dtype=bool),
        ann_bbox=np.array([nan4 if a.bbox is None else a.bbox for a in anns], dtype=np.float64)
        if anns
        else np.zeros((0, 4)),
        segmentation=[_raw_or_none(a.segmentation) for a in anns],
    )


def _raw_or_none(raw: msgspec.Raw) -> msgspec.Raw | None:
    return None if len(raw) == 0 or bytes(raw) == b"null" else raw


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    gt: GroundTruth,
    dets: Detections,
    iou_type: str,
    *,
    max_dets: int = 300,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """LVIS metrics of ``dets`` for ``iou_type`` (``segm`` or ``bbox``), as ``LVISEval.results``.

    Returns ``AP AP50 AP75 APs APm APl APr APc APf`` and ``AR@300 ARs@300 ARm@300 ARl@300``
    (``max_dets`` in the names) as fractions; -1 where undefined (no ground truth in the group).
    ``progress(n)`` is told after each ``n`` categories. Every detection's image and category
    must be in ``gt`` (see :func:`check_ids`); for ``segm`` every detection needs a mask, for
    ``bbox`` a box or a mask (its box is then the mask's).
    """
    precision, recall = precision_recall(gt, dets, iou_type, max_dets=max_dets, progress=progress)
    return _summarize(precision, recall, gt.frequency, max_dets)


def precision_recall(
    gt: GroundTruth,
    dets: Detections,
    iou_type: str,
    *,
    max_dets: int = 300,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``LVISEval.eval``'s arrays behind :func:`evaluate`: precision [T, R, K, A] (IoU
    thresholds, recall levels, categories in id order, area ranges) and recall [T, K, A], -1 where
    a category has no ground truth. ``ap_at_iou`` reads the AP at each IoU threshold from them."""
    if iou_type not in IOU_TYPES:
        raise InputError(f"IoU type must be segm or bbox, got {iou_type!r}")
    for cid, freq in zip(gt.cat_ids.tolist(), gt.frequency, strict=True):
        if freq not in FREQUENCY_GROUPS:
            raise InputError(f"ground truth category {cid} has no frequency group r/c/f")
    num_cats = len(gt.cat_ids)
    T, R, A = len(IOU_THRESHOLDS), len(RECALL_LEVELS), len(AREA_RANGES)
    precision = -np.ones((T, R, num_cats, A))
    recall = -np.ones((T, num_cats, A))

    # ground truth that lvis-api keeps (0 < area < inf), by category, image, then file order
    g_keep = np.flatnonzero((gt.ann_area > 0) & (gt.ann_area < np.inf))
    g_order = g_keep[np.lexsort((g_keep, gt.ann_image[g_keep], gt.ann_cat[g_keep]))]
    g_cat, g_img = gt.ann_cat[g_order], gt.ann_image[g_order]
    pos_keys = np.unique(g_img * num_cats + g_cat)

    d = _kept_detections(gt, dets, iou_type, max_dets, pos_keys, num_cats)
    d_cat = d["cat"]
    g_bounds = np.searchsorted(g_cat, np.arange(num_cats + 1))
    d_bounds = np.searchsorted(d_cat, np.arange(num_cats + 1))
    with_gt = np.flatnonzero(np.diff(g_bounds) > 0)
    for n_done, k in enumerate(with_gt.tolist(), 1):
        gs = g_order[g_bounds[k] : g_bounds[k + 1]]
        ds = slice(d_bounds[k], d_bounds[k + 1])
        p, r = _evaluate_category(gt, dets, iou_type, gs, {n: v[ds] for n, v in d.items()})
        precision[:, :, k, :] = p
        recall[:, k, :] = r
        if progress is not None and (n_done % 32 == 0 or n_done == len(with_gt)):
            progress(32 if n_done % 32 == 0 else n_done % 32)
    return precision, recall


def ap_at_iou(precision: np.ndarray, categories: Sequence[int] | None = None) -> np.ndarray:
    """AP at each of the IoU thresholds 0.50:0.05:0.95 (all areas), the mean over the defined
    entries of ``precision`` (from :func:`precision_recall`) as ``AP50``/``AP75`` are, over
    ``categories`` (indices) or all; -1 where nothing is defined."""
    part = precision[:, :, :, 0] if categories is None else precision[:, :, list(categories), 0]
    out = np.full(part.shape[0], -1.0)
    for t in range(part.shape[0]):
        defined = part[t][part[t] > -1]
        if defined.size:
            out[t] = float(defined.mean())
    return out


def check_ids(gt: GroundTruth, dets: Detections, source: str = "results") -> None:
    """Raise :class:`InputError` if a detection names an image or category not in ``gt``."""
    for what, idx, ids in (
        ("image", gt.image_index(dets.image_id), dets.image_id),
        ("category", gt.cat_index(dets.category_id), dets.category_id),
    ):
        unknown = np.unique(ids[idx < 0])
        if len(unknown):
            raise InputError(
                f"{source} name {len(unknown)} {what} id(s) absent from the ground truth, "
                f"e.g. {int(unknown[0])} (detection {int(np.argmax(idx < 0))})"
            )


def _kept_detections(
    gt: GroundTruth,
    dets: Detections,
    iou_type: str,
    max_dets: int,
    pos_keys: np.ndarray,
    num_cats: int,
) -> dict[str, np.ndarray]:
    """The detections ``LVISEval`` evaluates, sorted by category, image, score (stable).

    Columns: ``index`` (entry in the file), ``img``, ``cat``, ``score``, ``area``, ``nel`` (its
    category is not exhaustively annotated in its image).
    """
    n = len(dets)
    img = gt.image_index(dets.image_id)
    cat = gt.cat_index(dets.category_id)
    if n and ((img < 0).any() or (cat < 0).any()):
        check_ids(gt, dets)
    # top max_dets per image: by score, equal scores in file order (Python's stable sort)
    order = np.lexsort((np.arange(n), -dets.score, img))
    sorted_img = img[order]
    starts = np.flatnonzero(np.r_[True, sorted_img[1:] != sorted_img[:-1]]) if n else order
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    keep = np.sort(order[rank < max_dets])
    del order, sorted_img, rank
    # federated rule: only categories verified present or absent in the image
    keys = img[keep] * num_cats + cat[keep]
    verified = _isin_sorted(keys, pos_keys) | _isin_sorted(keys, gt.neg_keys)
    keep, keys = keep[verified], keys[verified]
    area = _areas(dets, keep, iou_type)
    sized = (area > 0) & (area < np.inf)
    keep, keys, area = keep[sized], keys[sized], area[sized]
    score = dets.score[keep]
    order = np.lexsort((keep, -score, img[keep], cat[keep]))
    keep = keep[order]
    return {
        "index": keep,
        "img": img[keep],
        "cat": cat[keep],
        "score": score[order],
        "area": area[order],
        "nel": _isin_sorted(keys[order], gt.nel_keys),
    }


def _isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values


def _areas(dets: Detections, indices: np.ndarray, iou_type: str) -> np.ndarray:
    """``LVISResults``' area: ``w * h`` of the box for bbox, the mask's pixels for segm."""
    if iou_type == "segm":
        if not len(indices):
            return np.zeros(0)
        # pycocotools 2.0.11's area() overflows a uint8 count from 256 masks on: 255 at a time
        return np.concatenate(
            [
                mask_utils.area(dets.rles(indices[i : i + 255])).astype(np.float64)
                for i in range(0, len(indices), 255)
            ]
        )
    boxes = _boxes(dets, indices)
    return boxes[:, 2] * boxes[:, 3]


def _boxes(dets: Detections, indices: np.ndarray) -> np.ndarray:
    """Boxes of the entries ``indices``; an entry without one gets its mask's (``toBbox``)."""
    boxes = np.full((len(indices), 4), np.nan) if dets.bbox is None else dets.bbox[indices]
    lacking = np.flatnonzero(np.isnan(boxes).any(axis=1))
    if len(lacking):
        boxes[lacking] = mask_utils.toBbox(dets.rles(indices[lacking]))
    return boxes


def _evaluate_category(
    gt: GroundTruth, dets: Detections, iou_type: str, g: np.ndarray, d: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Precision ``[T, R, A]`` and recall ``[T, A]`` of one category (``LVISEval.accumulate``).

    ``g``: its ground truth (indices, by image then file order); ``d``: its kept detections.
    """
    T, A = len(IOU_THRESHOLDS), len(AREA_RANGES)
    g_img, g_area = gt.ann_image[g], gt.ann_area[g]
    lo, hi = AREA_RANGES[:, 0], AREA_RANGES[:, 1]
    # _ignore of each ground truth per area range: [G, A]
    g_ig = gt.ann_ignore[g][:, None] | (g_area[:, None] < lo) | (g_area[:, None] > hi)
    num_gt = (~g_ig).sum(axis=0)
    D = len(d["index"])
    found = np.zeros((D, T, A), dtype=bool)  # matched a ground truth
    match_ig = np.zeros((D, T, A), dtype=bool)  # ... that is ignored in that area range
    match_nz = np.zeros((D, T, A), dtype=bool)  # ... whose id is not 0
    if D:
        d_img = d["img"]
        g_first = np.searchsorted(g_img, d_img)
        has_gt = g_first < len(g_img)
        has_gt[has_gt] = g_img[g_first[has_gt]] == d_img[has_gt]
        # images where the category has both detections and ground truth: match them
        pair_imgs = np.unique(d_img[has_gt])
        if len(pair_imgs):
            d_lo = np.searchsorted(d_img, pair_imgs)
            d_hi = np.searchsorted(d_img, pair_imgs, side="right")
            g_lo = np.searchsorted(g_img, pair_imgs)
            g_hi = np.searchsorted(g_img, pair_imgs, side="right")
            _match_pairs(
                gt,
                dets,
                iou_type,
                g,
                d["index"],
                g_ig,
                (d_lo, d_hi, g_lo, g_hi),
                found,
                match_ig,
                match_nz,
            )
    # dt_ig: matched to an ignored ground truth, or unmatched and outside the area range / in a
    # not-exhaustive category; tps and fps as lvis-api's accumulate counts them
    outside = (d["area"][:, None] < lo) | (d["area"][:, None] > hi) | d["nel"][:, None]
    dt_m = found & match_nz
    dt_ig = (found & match_ig) | (~dt_m & outside[:, None, :])
    tps = dt_m & ~dt_ig
    fps = ~dt_m & ~dt_ig
    # all images' detections by score; equal scores by image id, then by rank in the image
    order = np.lexsort((d["index"], d["img"], -d["score"]))
    tp_sum = np.cumsum(tps[order], axis=0, dtype=np.float64)
    fp_sum = np.cumsum(fps[order], axis=0, dtype=np.float64)
    precision = -np.ones((T, len(RECALL_LEVELS), A))
    recall = -np.ones((T, A))
    for a in range(A):
        if num_gt[a] == 0:
            continue
        for t in range(T):
            precision[t, :, a], recall[t, a] = _curve(tp_sum[:, t, a], fp_sum[:, t, a], num_gt[a])
    return precision, recall


def _curve(tp: np.ndarray, fp: np.ndarray, num_gt: np.integer) -> tuple[np.ndarray, float]:
    """Precision at the recall levels and the final recall (one row of ``accumulate``)."""
    out = np.zeros(len(RECALL_LEVELS))
    if not len(tp):
        return out, 0
    rc = tp / num_gt
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # the highest precision at any higher recall
    inds = np.searchsorted(rc, RECALL_LEVELS, side="left")
    defined = inds < len(pr)
    out[defined] = pr[inds[defined]]
    return out, rc[-1]


def _match_pairs(
    gt: GroundTruth,
    dets: Detections,
    iou_type: str,
    g: np.ndarray,
    d_index: np.ndarray,
    g_ig: np.ndarray,
    bounds: tuple[np.ndarray, ...],
    found: np.ndarray,
    match_ig: np.ndarray,
    match_nz: np.ndarray,
) -> None:
    """Greedy matching (``LVISEval.evaluate_img``) of one category in all its images at once.

    Each image's detections are taken in score order (they come sorted); step ``k`` matches the
    ``k``-th detection of every image that has one, for every IoU threshold and area range.
    Images are batched so that the padded IoU array stays small.
    """
    d_lo, d_hi, g_lo, g_hi = bounds
    n_d, n_g = d_hi - d_lo, g_hi - g_lo
    # IoUs of each image's detections (score order) with its ground truth (file order)
    if iou_type == "bbox":
        d_geo = _boxes(dets, d_index)
        g_geo = gt.ann_bbox[g]
        if np.isnan(g_geo[g_lo.min() : g_hi.max()]).any():
            raise InputError("ground truth annotations without a bbox cannot be evaluated for bbox")
        ious = [
            mask_utils.iou(d_geo[a:b], g_geo[c:e], [0] * int(e - c))
            for a, b, c, e in zip(d_lo, d_hi, g_lo, g_hi, strict=True)
        ]
    else:
        ious = []
        for a, b, c, e in zip(
            d_lo.tolist(), d_hi.tolist(), g_lo.tolist(), g_hi.tolist(), strict=True
        ):
            ious.append(mask_utils.iou(dets.rles(d_index[a:b]), gt.masks(g[c:e]), [0] * (e - c)))
    g_nz = gt.ann_ids[g] != 0
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    # batches of images with similar counts, most detections first within a batch
    by_size = np.lexsort((-n_d, n_g))
    start = 0
    while start < len(by_size):
        stop = start + 1
        while stop < len(by_size):
            rows = by_size[start : stop + 1]
            if (stop + 1 - start) * n_d[rows].max() * n_g[rows].max() > _BATCH_ELEMENTS:
                break
            stop += 1
        batch = by_size[start:stop]
        batch = batch[np.argsort(-n_d[batch], kind="stable")]
        _match_batch(batch, ious, n_d, n_g, d_lo, g_lo, g_ig, g_nz, thr, found, match_ig, match_nz)
        start = stop


def _match_batch(batch, ious, n_d, n_g, d_lo, g_lo, g_ig, g_nz, thr, found, match_ig, match_nz):
    P, Dm, Gm = len(batch), int(n_d[batch].max()), int(n_g[batch].max())
    T, A = len(thr), g_ig.shape[1]
    iou = np.full((P, Dm, Gm), -np.inf)
    ig = np.ones((P, A, Gm), dtype=bool)
    nz = np.zeros((P, Gm), dtype=bool)
    for p, i in enumerate(batch.tolist()):
        nd, ng, gl = int(n_d[i]), int(n_g[i]), int(g_lo[i])
        iou[p, :nd, :ng] = ious[i]
        ig[p, :, :ng] = g_ig[gl : gl + ng].T
        nz[p, :ng] = g_nz[gl : gl + ng]
    matched = np.zeros((P, T, A, Gm), dtype=bool)
    active = n_d[batch]
    rows_d = d_lo[batch]
    for k in range(Dm):
        n = int(np.searchsorted(-active, -k, side="left"))  # images with more than k detections
        row = iou[:n, k][:, None, None, :]  # [n, 1, 1, Gm]
        ok = (row >= thr[None, :, None, None]) & ~matched[:n]  # [n, T, A, Gm]
        ig_n = ig[:n, None]  # [n, 1, A, Gm]
        ok_regular = ok & ~ig_n
        # a ground truth inside the area range if any qualifies, else an ignored one
        pick = np.where(ok_regular.any(-1, keepdims=True), ok_regular, ok & ig_n)
        hit = pick.any(-1)  # [n, T, A]
        value = np.where(pick, row, -np.inf)
        j = Gm - 1 - value[..., ::-1].argmax(-1)  # the highest IoU, equal ones: the last
        pp, tt, aa = np.nonzero(hit)
        jj = j[pp, tt, aa]
        matched[pp, tt, aa, jj] = True
        det = rows_d[:n] + k
        found[det] = hit
        match_ig[det[pp], tt, aa] = ig[pp, aa, jj]
        match_nz[det[pp], tt, aa] = nz[pp, jj]


def _summarize(
    precision: np.ndarray, recall: np.ndarray, frequency: list, max_dets: int
) -> dict[str, float]:
    """``LVISEval.summarize``: means over the defined entries, in lvis-api's element order."""

    def mean(s: np.ndarray) -> float:
        s = s[s > -1]
        return -1.0 if s.size == 0 else float(np.mean(s))

    def thr(t: float) -> np.ndarray:
        return np.where(t == IOU_THRESHOLDS)[0]

    groups = [[k for k, f in enumerate(frequency) if f == g] for g in FREQUENCY_GROUPS]
    results = {
        "AP": mean(precision[..., [0]]),
        "AP50": mean(precision[thr(0.50)][..., [0]]),
        "AP75": mean(precision[thr(0.75)][..., [0]]),
        "APs": mean(precision[..., [1]]),
        "APm": mean(precision[..., [2]]),
        "APl": mean(precision[..., [3]]),
    }
    for name, group in zip(("APr", "APc", "APf"), groups, strict=True):
        results[name] = mean(precision[:, :, group, 0])
    results[f"AR@{max_dets}"] = mean(recall[..., [0]])
    for a, name in enumerate(("s", "m", "l"), 1):
        results[f"AR{name}@{max_dets}"] = mean(recall[..., [a]])
    return results
