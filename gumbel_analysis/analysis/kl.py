"""Predicted vs ground-truth object distributions and their KL divergence (supp. Sec. 2.4, Fig. 3).

Definitions (over the C ground-truth categories, in id order, the classifier's columns):

* Images: the ground-truth images with at least one instance; the target is undefined elsewhere.
  Detections on other images are counted but ignored.
* Target distribution of an image: its ground-truth instances per category, normalised. It is
  used as it is, without smoothing.
* Predicted distribution of an image: the scores of its detections summed per category (or the
  detections counted, ``count=True``), after the score threshold (keep ``score >= threshold``) and
  the per-image top-k, then smoothed and normalised: ``p_c = (s_c + eps) / sum_c' (s_c' + eps)``.
  Only the prediction is smoothed: ``KL(t || p)`` needs ``p > 0`` wherever ``t > 0``, and
  smoothing the target would add mass the ground truth does not have. An image without detections
  gets the uniform distribution ``1 / C``.
* ``KL(t || p) = sum_c t_c log(t_c / p_c)`` per image, in nats (``base="e"``) or bits (``"2"``).
* Summary per run: mean and median over the images; the mean over the images containing a rare,
  common or frequent category (LVIS ``frequency``; an image can be in several groups); and the KL
  between the dataset-wide histograms: ground-truth instances per category against the predicted
  mass per category (summed over the same images, smoothed the same way).

Results files are LVIS/COCO results, read by :mod:`gumbel_analysis.evaluation.results` (the
reader ``gumbel eval`` uses; scores and ids only). An empty list is a run without detections:
every image gets the uniform prediction. The figure is drawn by
:mod:`gumbel_analysis.analysis.kl_plot`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import rel_entr

from gumbel_analysis.data.lvis_io import load_lvis_json, sorted_categories
from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation.results import read_results
from gumbel_analysis.groups import FREQUENCY_GROUPS, GROUP_NAMES

DEFAULT_EPS = 1e-6
DEFAULT_NUM_IMAGES = 4
#: Rows of Fig. 3 (and of the chosen-images table) at most.
MAX_CHOSEN_IMAGES = 20
#: Natural log of each allowed base: KL in nats ("e") or bits ("2").
LOG_BASES = {"e": 1.0, "2": math.log(2.0)}
UNITS = {"e": "nats", "2": "bits"}


#: ``progress(description, total_bytes) -> advance(bytes)`` (advance may be None); ``advance``
#: may be called from another thread.
ProgressFactory = Callable[[str, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class KLOptions:
    """How predicted distributions are formed and KL reported (see the module docstring)."""

    eps: float = DEFAULT_EPS
    base: str = "e"
    score_threshold: float = 0.0
    top_k: int = 0  # 0: every detection
    count: bool = False  # count detections instead of summing scores

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise InputError(f"--eps must be a positive number, got {self.eps}")
        if self.base not in LOG_BASES:
            raise InputError(f"--base must be 'e' (nats) or '2' (bits), got {self.base!r}")
        if not math.isfinite(self.score_threshold):
            raise InputError(f"--score-threshold must be finite, got {self.score_threshold}")
        if self.top_k < 0:
            raise InputError(f"--top-k must be 0 (all) or positive, got {self.top_k}")

    @property
    def unit(self) -> str:
        return UNITS[self.base]


@dataclass(frozen=True)
class ImageCategoryCounts:
    """Ground-truth instances per (image, category) of an LVIS file: the target distributions.

    Rows are the images with at least one instance (``target_images``, indices into
    ``image_ids``); a pair is one (row, category) with instances, sorted by ``pair_key``.
    """

    source: str
    image_ids: np.ndarray  # every image id, sorted
    category_ids: np.ndarray  # sorted: the classifier's columns
    category_names: list[str]
    image_count: np.ndarray  # images per category (the training frequency of the plot's order)
    frequency: np.ndarray | None  # 'r'/'c'/'f' per category, None if the file has no groups
    target_images: np.ndarray  # image index of each row
    row_of_image: np.ndarray  # row of each image index, -1 without instances
    pair_row: np.ndarray
    pair_category: np.ndarray
    pair_count: np.ndarray  # instances of the pair (float64)
    pair_key: np.ndarray  # pair_row * C + pair_category, increasing
    target_total: np.ndarray  # instances per row

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)

    @property
    def num_rows(self) -> int:
        return len(self.target_images)

    @property
    def row_image_ids(self) -> np.ndarray:
        return self.image_ids[self.target_images]

    def frequency_order(self) -> np.ndarray:
        """Category indices by ``image_count`` descending, ties by id (the plot's x axis)."""
        return np.lexsort((self.category_ids, -self.image_count))

    def target_histogram(self) -> np.ndarray:
        """Ground-truth instances per category over the rows."""
        return np.bincount(
            self.pair_category, weights=self.pair_count, minlength=self.num_categories
        )

    def target_distribution(self, row: int) -> np.ndarray:
        """The dense target distribution of one row."""
        out = np.zeros(self.num_categories)
        sel = self.pair_row == row
        out[self.pair_category[sel]] = self.pair_count[sel] / self.target_total[row]
        return out

    def group_rows(self) -> dict[str, np.ndarray] | None:
        """Per frequency group, a mask of the rows containing a category of that group."""
        if self.frequency is None:
            return None
        out = {}
        for g in FREQUENCY_GROUPS:
            mask = np.zeros(self.num_rows, dtype=bool)
            mask[self.pair_row[self.frequency[self.pair_category] == g]] = True
            out[g] = mask
        return out


@dataclass(frozen=True)
class IndexedDetections:
    """Detections mapped to dense indices of an :class:`ImageCategoryCounts` (``image_index``
    into its image ids, ``category_index`` into its category ids)."""

    source: str
    image_index: np.ndarray
    category_index: np.ndarray
    score: np.ndarray
    total: int  # entries in the file, before any selection


@dataclass
class RunKL:
    """One run's per-row KL, its summary and the predicted distributions of the chosen rows."""

    label: str
    source: str
    kl: np.ndarray  # per row of the ground truth, in the options' unit
    summary: dict
    chosen_predicted: np.ndarray  # [len(chosen rows), C], smoothed and normalised


@dataclass
class KLComparison:
    """Every run compared with one ground truth; ``to_dict`` is what ``--json`` prints."""

    gt: ImageCategoryCounts
    options: KLOptions
    chosen_rows: np.ndarray
    runs: list[RunKL] = field(default_factory=list)
    chosen_annotations: dict[int, tuple[dict, list[dict]]] = field(default_factory=dict)

    def closest(self) -> str | None:
        """The run whose mean KL is lowest (its distributions are closest to the target)."""
        if not self.runs:
            return None
        return min(self.runs, key=lambda r: r.summary["kl_mean"]).label

    def to_dict(self) -> dict:
        gt = self.gt
        return {
            "ground_truth": gt.source,
            "categories": gt.num_categories,
            "images": gt.num_rows,
            "images_without_ground_truth": len(gt.image_ids) - gt.num_rows,
            "unit": self.options.unit,
            "eps": self.options.eps,
            "mass": "count" if self.options.count else "score",
            "score_threshold": self.options.score_threshold,
            "top_k": self.options.top_k,
            "closest": self.closest(),
            "runs": [r.summary for r in self.runs],
            "chosen_images": [
                {
                    "image_id": int(gt.row_image_ids[row]),
                    "instances": int(gt.target_total[row]),
                    "categories": int(np.count_nonzero(gt.pair_row == row)),
                    "kl": {r.label: float(r.kl[row]) for r in self.runs},
                }
                for row in self.chosen_rows
            ],
        }


# ----------------------------------------------------------------------------- the divergence


def smoothed(mass: np.ndarray, eps: float) -> np.ndarray:
    """``(mass + eps) / sum(mass + eps)`` along the last axis.

    Computed as ``(mass/m + eps/m) / sum(mass/m + eps/m)`` with ``m`` the largest mass (1 when
    all are 0), the same value, so that scores near the float64 maximum cannot overflow the sum.
    """
    mass = np.asarray(mass, dtype=np.float64)
    m = mass.max(axis=-1, keepdims=True) if mass.size else np.ones((*mass.shape[:-1], 1))
    m = np.where(m > 0, m, 1.0)
    scaled = mass / m + eps / m
    return scaled / scaled.sum(axis=-1, keepdims=True)


def kl_divergence(target: np.ndarray, predicted: np.ndarray, base: str = "e") -> np.ndarray:
    """``KL(target || predicted)`` along the last axis of two normalised distributions.

    Terms with ``target == 0`` are 0; a zero ``predicted`` where ``target > 0`` gives ``inf``.
    """
    if base not in LOG_BASES:
        raise InputError(f"base must be 'e' or '2', got {base!r}")
    return rel_entr(target, predicted).sum(axis=-1) / LOG_BASES[base]


# ----------------------------------------------------------------------------- ground truth


def ground_truth_from_dict(data: dict, source: str = "annotation file") -> ImageCategoryCounts:
    """Arrays of a validated LVIS dict (:func:`gumbel_analysis.data.lvis_io.load_lvis_json`)."""
    cats = sorted_categories(data)
    category_ids = np.array([int(c["id"]) for c in cats], dtype=np.int64)
    image_ids = np.sort(np.array([int(im["id"]) for im in data["images"]], dtype=np.int64))
    for name, ids in (("image", image_ids), ("category", category_ids)):
        dup = ids[1:][ids[1:] == ids[:-1]]
        if dup.size:
            raise InputError(f"{source}: duplicate {name} id {int(dup[0])}")
    anns = data["annotations"]
    if not anns:
        raise InputError(f"{source} has no annotations: the target distributions are undefined")
    ann_image = np.fromiter((int(a["image_id"]) for a in anns), np.int64, len(anns))
    ann_category = np.fromiter((int(a["category_id"]) for a in anns), np.int64, len(anns))
    C = len(category_ids)
    key = np.searchsorted(image_ids, ann_image) * C + np.searchsorted(category_ids, ann_category)
    image_key, pair_count = np.unique(key, return_counts=True)
    target_images, pair_row = np.unique(image_key // C, return_inverse=True)
    pair_category = image_key % C
    row_of_image = np.full(len(image_ids), -1, dtype=np.int64)
    row_of_image[target_images] = np.arange(len(target_images))
    pair_count = pair_count.astype(np.float64)
    groups = [c.get("frequency") for c in cats]
    frequency = np.array(groups) if all(g in FREQUENCY_GROUPS for g in groups) else None
    return ImageCategoryCounts(
        source=source,
        image_ids=image_ids,
        category_ids=category_ids,
        category_names=[str(c["name"]) for c in cats],
        image_count=np.array([int(c["image_count"]) for c in cats], dtype=np.int64),
        frequency=frequency,
        target_images=target_images,
        row_of_image=row_of_image,
        pair_row=pair_row,
        pair_category=pair_category,
        pair_count=pair_count,
        pair_key=pair_row * C + pair_category,
        target_total=np.bincount(pair_row, weights=pair_count, minlength=len(target_images)),
    )


def choose_rows(
    gt: ImageCategoryCounts,
    image_ids: Sequence[int] | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
) -> np.ndarray:
    """Rows for Fig. 3: the given image ids in their order, else ``num_images`` drawn at random
    (without replacement, with ``seed``) from the images with ground truth, sorted by id."""
    if image_ids:
        if len(image_ids) > MAX_CHOSEN_IMAGES:
            raise InputError(f"--images takes at most {MAX_CHOSEN_IMAGES} images")
        rows = []
        for image_id in image_ids:
            pos = int(np.searchsorted(gt.image_ids, image_id))
            if pos == len(gt.image_ids) or gt.image_ids[pos] != image_id:
                raise InputError(f"image {image_id} is not in the ground truth {gt.source}")
            if gt.row_of_image[pos] < 0:
                raise InputError(f"image {image_id} has no ground-truth instances (no target)")
            rows.append(int(gt.row_of_image[pos]))
        return np.array(rows, dtype=np.int64)
    if not 0 <= num_images <= MAX_CHOSEN_IMAGES:
        raise InputError(f"--num-images must be in [0, {MAX_CHOSEN_IMAGES}], got {num_images}")
    k = min(num_images, gt.num_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(gt.num_rows, size=k, replace=False)).astype(np.int64)


def match_detections(
    gt: ImageCategoryCounts,
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    scores: np.ndarray,
    source: str = "results file",
) -> IndexedDetections:
    """Map ids to the ground truth's dense indices; an unknown id is an :class:`InputError`."""
    indices = []
    for name, ids, known in (
        ("image", image_ids, gt.image_ids),
        ("category", category_ids, gt.category_ids),
    ):
        index = np.searchsorted(known, ids)
        np.minimum(index, len(known) - 1, out=index)
        unknown = known[index] != ids
        if unknown.any():
            i = int(np.argmax(unknown))
            raise InputError(
                f"results file {source}: detection {i} names {name} id {int(ids[i])}, "
                f"which is not in the ground truth {gt.source}"
            )
        indices.append(index)
    return IndexedDetections(source, indices[0], indices[1], scores, total=len(scores))


def load_detections(
    path: str | os.PathLike,
    gt: ImageCategoryCounts,
    progress: Callable[[int], None] | None = None,
) -> IndexedDetections:
    cols = read_results(path, geometry=False, progress=progress)
    return match_detections(gt, cols.image_id, cols.category_id, cols.score, str(path))


def select_detections(
    det: IndexedDetections, score_threshold: float = 0.0, top_k: int = 0
) -> IndexedDetections:
    """Keep ``score >= score_threshold``, then each image's ``top_k`` highest scores (0: all).

    Ties keep the file's order.
    """
    keep = det.score >= score_threshold
    image, category, score = det.image_index, det.category_index, det.score
    if not keep.all():
        image, category, score = image[keep], category[keep], score[keep]
    if top_k > 0 and len(score):
        order = np.lexsort((-score, image))  # by image, then score descending (stable)
        image_sorted = image[order]
        starts = np.flatnonzero(np.r_[True, image_sorted[1:] != image_sorted[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        rank = np.arange(len(order)) - np.repeat(starts, sizes)
        kept = np.sort(order[rank < top_k])
        image, category, score = image[kept], category[kept], score[kept]
    return IndexedDetections(det.source, image, category, score, det.total)


# ----------------------------------------------------------------------------- one run


def kl_of_run(
    gt: ImageCategoryCounts,
    det: IndexedDetections,
    options: KLOptions,
    label: str,
    chosen_rows: np.ndarray | None = None,
) -> RunKL:
    """Per-row KL(target || predicted) of one run, its summary and the chosen rows' predictions.

    Only the (row, category) pairs with ground truth enter the sum, so nothing of size
    rows x categories is built: each detection is matched to its pair by binary search.
    """
    det = select_detections(det, options.score_threshold, options.top_k)
    C, R, eps = gt.num_categories, gt.num_rows, options.eps
    rows = gt.row_of_image[det.image_index]
    on_target = rows >= 0
    rows, categories = rows[on_target], det.category_index[on_target]
    weights = np.ones(len(rows)) if options.count else det.score[on_target]

    detections_per_row = np.bincount(rows, minlength=R)
    # Each row's masses divided by its largest (p_c is unchanged when eps is divided too): sums
    # of scores near the float64 maximum would overflow to inf and make p_c NaN.
    row_max = np.zeros(R)
    np.maximum.at(row_max, rows, weights)
    row_max[row_max <= 0] = 1.0
    scaled = weights / row_max[rows]
    row_total = np.bincount(rows, weights=scaled, minlength=R)
    key = rows * C + categories
    pos = np.searchsorted(gt.pair_key, key)
    np.minimum(pos, len(gt.pair_key) - 1, out=pos)
    hit = gt.pair_key[pos] == key
    pair_mass = np.bincount(pos[hit], weights=scaled[hit], minlength=len(gt.pair_key))

    target = gt.pair_count / gt.target_total[gt.pair_row]
    # log p_c = log(s_c + eps) - log(S + C eps), with s_c = M m_c for the row's largest mass M:
    # in logs, neither a sum near the float64 maximum nor an eps / M below its minimum is lost.
    log_m = np.log(row_max[gt.pair_row])
    with np.errstate(divide="ignore"):  # log 0 = -inf: no detection of the pair
        log_num = np.logaddexp(np.log(pair_mass) + log_m, math.log(eps))
        log_den = np.logaddexp(np.log(row_total[gt.pair_row]) + log_m, math.log(C) + math.log(eps))
    log_base = LOG_BASES[options.base]
    terms = target * (np.log(target) - (log_num - log_den))  # target > 0 for every pair
    kl = np.bincount(gt.pair_row, weights=terms, minlength=R) / log_base

    target_hist = gt.target_histogram()
    top = float(weights.max()) if len(weights) else 1.0
    top = top if top > 0 else 1.0
    # In units of the largest score (eps too): the same p_c, without overflow.
    predicted_hist = np.bincount(categories, weights=weights / top, minlength=C)
    eps_hist = eps / top
    dataset_kl = float(
        kl_divergence(
            target_hist / target_hist.sum(), smoothed(predicted_hist, eps_hist), options.base
        )
    )

    chosen_rows = np.empty(0, dtype=np.int64) if chosen_rows is None else chosen_rows
    chosen_predicted = np.empty((len(chosen_rows), C))
    for i, row in enumerate(chosen_rows):
        sel = rows == row
        mass = np.bincount(categories[sel], weights=scaled[sel], minlength=C)
        chosen_predicted[i] = smoothed(mass, eps / row_max[row])

    summary = {
        "label": label,
        "results": det.source,
        "detections": det.total,
        "detections_used": len(rows),
        "detections_on_images_without_ground_truth": int(np.count_nonzero(~on_target)),
        "images_without_detections": int(np.count_nonzero(detections_per_row == 0)),
        "kl_mean": float(kl.mean()) if R else math.nan,
        "kl_median": float(np.median(kl)) if R else math.nan,
        "kl_by_group": _group_means(gt, kl),
        "dataset_kl": dataset_kl,
    }
    return RunKL(label, det.source, kl, summary, chosen_predicted)


def _group_means(gt: ImageCategoryCounts, kl: np.ndarray) -> dict | None:
    groups = gt.group_rows()
    if groups is None:
        return None
    return {
        GROUP_NAMES[g]: {
            "images": int(mask.sum()),
            "kl_mean": float(kl[mask].mean()) if mask.any() else math.nan,
        }
        for g, mask in groups.items()
    }


# ----------------------------------------------------------------------------- the command's work


def run_labels(paths: Sequence[str | os.PathLike], labels: Sequence[str] | None) -> list[str]:
    """The given labels, one per results file, else the files' stems (made unique)."""
    if labels:
        if len(labels) != len(paths):
            raise InputError(
                f"--label was given {len(labels)} times for {len(paths)} results files; "
                "give one per file"
            )
        if len(set(labels)) != len(labels):
            raise InputError("--label values must be distinct")
        return list(labels)
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{i + 1}" for i, s in enumerate(stems)]


def compare_runs(
    gt_path: str | os.PathLike,
    result_paths: Sequence[str | os.PathLike],
    labels: Sequence[str] | None = None,
    options: KLOptions | None = None,
    image_ids: Sequence[int] | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    progress: ProgressFactory | None = None,
) -> KLComparison:
    """Read the ground truth and each results file, and compare every run with the target."""
    options = options or KLOptions()
    if not result_paths:
        raise InputError("give at least one results file")
    names = run_labels(result_paths, labels)
    for what, p in [*(("results file", p) for p in result_paths), ("--gt file", gt_path)]:
        if Path(p).is_dir():
            raise InputError(f"{what} {p} is a folder, not a file")
        if not Path(p).is_file():
            raise InputError(f"{what} not found: {p}")
    gt_path = Path(gt_path)
    track = progress or (lambda _description, _total: None)
    advance = track("ground truth", gt_path.stat().st_size)
    data = load_lvis_json(gt_path)
    gt = ground_truth_from_dict(data, str(gt_path))
    chosen = choose_rows(gt, image_ids, num_images, seed)
    comparison = KLComparison(gt, options, chosen)
    comparison.chosen_annotations = _chosen_annotations(data, gt.row_image_ids[chosen])
    del data  # the annotation dict is the largest object; only its arrays are needed now
    if advance:
        advance(gt_path.stat().st_size)
    for path, label in zip(result_paths, names, strict=True):
        det = load_detections(path, gt, track(label, Path(path).stat().st_size))
        comparison.runs.append(kl_of_run(gt, det, options, label, chosen))
        del det
    return comparison


def _chosen_annotations(data: dict, image_ids: np.ndarray) -> dict[int, tuple[dict, list[dict]]]:
    wanted = {int(i) for i in image_ids}
    out = {int(im["id"]): (im, []) for im in data["images"] if int(im["id"]) in wanted}
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        if image_id in out:
            out[image_id][1].append(ann)
    return out
