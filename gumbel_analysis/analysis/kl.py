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

Results files are LVIS/COCO results: a JSON list of objects with ``image_id``, ``category_id`` and
``score`` (``bbox`` or ``segmentation`` may be present and are not decoded). Large files are
parsed with ``json`` in pieces cut at a ``}, {`` between two detections, by forked worker
processes that start before the ground truth is read; only three numbers per detection are kept.
A piece parses only if its cut is a real boundary (a cut inside a string or a nested object
leaves it unbalanced), and any piece that does not parse sends the whole file through one
``json.load`` instead, which also words the error of a truncated file.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import rel_entr

from gumbel_analysis.data.lvis_io import FREQUENCY_GROUPS, load_lvis_json, sorted_categories
from gumbel_analysis.errors import InputError

DEFAULT_EPS = 1e-6
DEFAULT_NUM_IMAGES = 4
#: Rows of Fig. 3 (and of the chosen-images table) at most.
MAX_CHOSEN_IMAGES = 20
#: Natural log of each allowed base: KL in nats ("e") or bits ("2").
LOG_BASES = {"e": 1.0, "2": math.log(2.0)}
UNITS = {"e": "nats", "2": "bits"}
GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}

_CHUNK_BYTES = 32 << 20
_WINDOW_BYTES = 1 << 20
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")

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
class GroundTruth:
    """The arrays of an LVIS ground truth that the distributions need.

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
class Detections:
    """Detections mapped to dense indices of a ground truth (``image_index`` into its image ids)."""

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

    gt: GroundTruth
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
    """``(mass + eps) / sum(mass + eps)`` along the last axis."""
    mass = np.asarray(mass, dtype=np.float64) + eps
    return mass / mass.sum(axis=-1, keepdims=True)


def kl_divergence(target: np.ndarray, predicted: np.ndarray, base: str = "e") -> np.ndarray:
    """``KL(target || predicted)`` along the last axis of two normalised distributions.

    Terms with ``target == 0`` are 0; a zero ``predicted`` where ``target > 0`` gives ``inf``.
    """
    if base not in LOG_BASES:
        raise InputError(f"base must be 'e' or '2', got {base!r}")
    return rel_entr(target, predicted).sum(axis=-1) / LOG_BASES[base]


# ----------------------------------------------------------------------------- ground truth


def ground_truth_from_dict(data: dict, source: str = "annotation file") -> GroundTruth:
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
    return GroundTruth(
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
    gt: GroundTruth,
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


# ----------------------------------------------------------------------------- results files


class _UnchunkableError(Exception):
    """A piece did not parse: parse the whole file at once instead."""


class _BadDetectionError(Exception):
    """Detection ``index`` (counted within its piece) is malformed: ``problem`` says how."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(index, problem)
        self.index, self.problem = index, problem


def read_results(
    path: str | os.PathLike,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image_id``, ``category_id`` (int64) and ``score`` (float64) of every detection in a file.

    See :class:`ResultsParser` for ``workers``; ``progress(n)`` is told each parsed piece's bytes.
    """
    with ResultsParser(workers) as parser:
        return parser.submit(path, progress).result()


class ResultsParser:
    """Parses results files, in forked worker processes when a file has several pieces.

    :meth:`submit` returns at once (the workers start on the pieces), so other work, such as
    loading the ground truth, runs meanwhile; ``.result()`` of what it returns waits for the
    columns. ``workers``: processes (default: the usable CPUs, at most 4; 1 parses in this
    process, when ``.result()`` is called).
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            workers = min(4, cpus)
        if workers < 1:
            raise InputError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ResultsParser:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def submit(
        self, path: str | os.PathLike, progress: Callable[[int], None] | None = None
    ) -> _ParseJob:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"results file not found: {path}")
        try:
            ranges = _piece_ranges(path)
        except _UnchunkableError:
            return _ParseJob(path, None, None, progress)
        if self.workers == 1 or len(ranges) == 1 or "fork" not in mp.get_all_start_methods():
            return _ParseJob(path, ranges, None, progress)
        if self._pool is None:
            # fork: a worker needs nothing from this process but this module (no imports, no
            # pickled data) and only reads its own byte range of the file
            context = mp.get_context("fork")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        futures = [self._pool.submit(_parse_range, path, a, b) for a, b in ranges]
        if progress is not None:
            for future, n in zip(futures, _piece_bytes(path, ranges), strict=True):
                future.add_done_callback(lambda _, n=n: progress(n))
        return _ParseJob(path, ranges, futures, progress)


def _piece_bytes(path: Path, ranges: list[tuple[int, int]]) -> list[int]:
    """The file's bytes, shared out between the pieces (separators and brackets included)."""
    ends = [b for _, b in ranges[:-1]] + [path.stat().st_size]
    return [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]


@dataclass
class _ParseJob:
    path: Path
    ranges: list[tuple[int, int]] | None  # None: parse the whole file at once
    futures: list | None  # one per range when workers parse it
    progress: Callable[[int], None] | None

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        path = self.path
        try:
            try:
                columns = self._join_pieces()
            except _UnchunkableError:
                columns = _parse_whole(path)
        except _BadDetectionError as err:
            raise InputError(f"results file {path}: detection {err.index} {err.problem}") from None
        finally:
            for future in self.futures or []:
                future.cancel()
        image_ids, category_ids, scores = columns
        if len(scores) == 0:
            raise InputError(f"results file {path} has no detections")
        bad = ~(np.isfinite(scores) & (scores >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"results file {path}: detection {i} has score {scores[i]}; need >= 0")
        return image_ids, category_ids, scores

    def _join_pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pieces' columns in file order.

        A piece that fails to parse means a cut was not between two detections, or the file is
        broken: either way :class:`_UnchunkableError` sends the whole file to ``json.load``.
        Pieces are taken in file order, so a piece after a bad cut (which may start inside a
        string) is never looked at before the piece whose failure revealed that cut.
        """
        if self.ranges is None:
            raise _UnchunkableError
        parts: list[tuple[array, array, array]] = []
        sizes = _piece_bytes(self.path, self.ranges)
        for k, (a, b) in enumerate(self.ranges):
            try:
                if self.futures is not None:
                    parts.append(self.futures[k].result())
                else:
                    parts.append(_parse_range(self.path, a, b))
                    if self.progress is not None:
                        self.progress(sizes[k])
            except _BadDetectionError as err:  # its index counts within the piece
                before = sum(len(p[2]) for p in parts)
                raise _BadDetectionError(before + err.index, err.problem) from None
        columns = []
        for k, typecode in enumerate(("q", "q", "d")):
            columns.append(np.concatenate([np.frombuffer(p[k], dtype=typecode) for p in parts]))
        return tuple(columns)


def _piece_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of about ``_CHUNK_BYTES`` between the ``[`` and ``]`` of the top-level list,
    each cut after a ``}`` that is followed by ``, {``."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(4096)
        start = len(head) - len(head.lstrip())
        if head[start : start + 1] != b"[":
            raise _UnchunkableError  # not a list (or empty): json.load words the error
        f.seek(max(0, size - 4096))
        tail = f.read().rstrip()
        end = max(0, size - 4096) + len(tail) - 1
        if not tail.endswith(b"]") or end <= start:
            raise _UnchunkableError  # truncated
        ranges, begin, at = [], start + 1, start + 1 + _CHUNK_BYTES
        while at < end:
            f.seek(at)
            window = f.read(_WINDOW_BYTES)
            found = _BOUNDARY.search(window)
            if found is None:
                at += max(len(window) - 64, 1)  # overlap: a boundary may straddle windows
                continue
            cut = at + found.start() + 1
            if cut >= end:
                break
            ranges.append((begin, cut))
            begin = at + found.end() - 1  # the next detection's "{"
            at = begin + _CHUNK_BYTES
    ranges.append((begin, end))
    return ranges


def _parse_range(path: Path, start: int, end: int) -> tuple[array, array, array]:
    with path.open("rb") as f:
        f.seek(start)
        piece = f.read(end - start)
    columns, hook = _collector()
    try:
        values = json.loads(b"[" + piece + b"]", object_hook=hook)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _UnchunkableError from None
    del piece
    _check_parsed(values, len(columns[2]))
    return columns


def _parse_whole(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    columns, hook = _collector()
    try:
        with path.open("rb") as f:
            values = json.load(f, object_hook=hook)
    except json.JSONDecodeError as err:
        raise InputError(
            f"results file {path} is not valid JSON (truncated?): {err.msg} at line {err.lineno}"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"results file {path} is not a text JSON file") from None
    if not isinstance(values, list):
        raise InputError(
            f"results file {path} is not a list of detections (LVIS results format: "
            "[{image_id, category_id, score, ...}, ...])"
        )
    _check_parsed(values, len(columns[2]))
    return tuple(np.frombuffer(c, dtype=c.typecode) for c in columns)


def _collector() -> tuple[tuple[array, array, array], Callable[[dict], dict | None]]:
    """Columns and the ``object_hook`` filling them: a detection becomes None (nothing of it is
    kept but three numbers); any other object (a segm RLE) is returned as it is."""
    columns = (array("q"), array("q"), array("d"))
    add_image, add_category, add_score = (c.append for c in columns)
    scores = columns[2]

    def hook(obj: dict) -> dict | None:
        if "score" not in obj:
            return obj
        try:
            image_id, category_id, score = obj["image_id"], obj["category_id"], obj["score"]
        except KeyError as err:
            raise _BadDetectionError(len(scores), f"has no {err.args[0]}") from None
        try:
            add_image(image_id)
            add_category(category_id)
            add_score(score)
        except (TypeError, OverflowError):
            index = len(scores)  # the score is appended last: this detection's index
            for name, value in (("image_id", image_id), ("category_id", category_id)):
                if type(value) is not int:
                    raise _BadDetectionError(index, f"has {name} {value!r}") from None
            raise _BadDetectionError(index, f"has score {score!r}") from None
        return None

    return columns, hook


def _check_parsed(values: list, parsed: int) -> None:
    """Every top-level value became None (a detection) and nothing else added a detection."""
    if values.count(None) != len(values):
        i = next(i for i, v in enumerate(values) if v is not None)
        raise _BadDetectionError(i, "is not an object with image_id, category_id and score")
    if parsed != len(values):
        raise _BadDetectionError(len(values), "holds nested objects with a score")


def match_detections(
    gt: GroundTruth,
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    scores: np.ndarray,
    source: str = "results file",
) -> Detections:
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
    return Detections(source, indices[0], indices[1], scores, total=len(scores))


def load_detections(
    path: str | os.PathLike,
    gt: GroundTruth,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Detections:
    image_ids, category_ids, scores = read_results(path, progress, workers)
    return match_detections(gt, image_ids, category_ids, scores, str(path))


def select_detections(det: Detections, score_threshold: float = 0.0, top_k: int = 0) -> Detections:
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
    return Detections(det.source, image, category, score, det.total)


# ----------------------------------------------------------------------------- one run


def evaluate_run(
    gt: GroundTruth,
    det: Detections,
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
    row_total = np.bincount(rows, weights=weights, minlength=R)
    key = rows * C + categories
    pos = np.searchsorted(gt.pair_key, key)
    np.minimum(pos, len(gt.pair_key) - 1, out=pos)
    hit = gt.pair_key[pos] == key
    pair_mass = np.bincount(pos[hit], weights=weights[hit], minlength=len(gt.pair_key))

    target = gt.pair_count / gt.target_total[gt.pair_row]
    predicted = (pair_mass + eps) / (row_total[gt.pair_row] + C * eps)
    log_base = LOG_BASES[options.base]
    kl = np.bincount(gt.pair_row, weights=rel_entr(target, predicted), minlength=R) / log_base

    target_hist = gt.target_histogram()
    predicted_hist = np.bincount(categories, weights=weights, minlength=C)
    dataset_kl = float(
        kl_divergence(target_hist / target_hist.sum(), smoothed(predicted_hist, eps), options.base)
    )

    chosen_rows = np.empty(0, dtype=np.int64) if chosen_rows is None else chosen_rows
    chosen_predicted = np.empty((len(chosen_rows), C))
    for i, row in enumerate(chosen_rows):
        sel = rows == row
        mass = np.bincount(categories[sel], weights=weights[sel], minlength=C)
        chosen_predicted[i] = smoothed(mass, eps)

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


def _group_means(gt: GroundTruth, kl: np.ndarray) -> dict | None:
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
                f"--labels gave {len(labels)} labels for {len(paths)} results files; "
                "give one per file"
            )
        if len(set(labels)) != len(labels):
            raise InputError("--labels must be distinct")
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
    workers: int | None = None,
) -> KLComparison:
    """Read the ground truth and each results file, and compare every run with the target.

    ``workers``: processes parsing the results files (see :class:`ResultsParser`); they start
    before the ground truth is read.
    """
    options = options or KLOptions()
    if not result_paths:
        raise InputError("give at least one results file")
    names = run_labels(result_paths, labels)
    for p in result_paths:
        if not Path(p).is_file():
            raise InputError(f"results file not found: {p}")
    gt_path = Path(gt_path)
    if not gt_path.is_file():
        raise InputError(f"annotation file not found: {gt_path}")
    track = progress or (lambda _description, _total: None)
    with ResultsParser(workers) as parser:
        # the workers parse the results files while this process reads the ground truth
        jobs = [
            parser.submit(path, track(label, Path(path).stat().st_size))
            for path, label in zip(result_paths, names, strict=True)
        ]
        advance = track("ground truth", gt_path.stat().st_size)
        data = load_lvis_json(gt_path)
        gt = ground_truth_from_dict(data, str(gt_path))
        chosen = choose_rows(gt, image_ids, num_images, seed)
        comparison = KLComparison(gt, options, chosen)
        comparison.chosen_annotations = _chosen_annotations(data, gt.row_image_ids[chosen])
        del data  # the annotation dict is the largest object; only its arrays are needed now
        if advance:
            advance(gt_path.stat().st_size)
        for job, label in zip(jobs, names, strict=True):
            det = match_detections(gt, *job.result(), source=str(job.path))
            comparison.runs.append(evaluate_run(gt, det, options, label, chosen))
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


# ----------------------------------------------------------------------------- Fig. 3

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
