"""Reading LVIS/COCO results files fast: ``image_id``, ``category_id`` and ``score`` only.

A results file is a JSON list of objects with ``image_id``, ``category_id`` and ``score``
(``bbox`` or ``segmentation`` may be present and are not decoded). Large files are parsed with
``json`` in pieces cut at a ``}, {`` between two detections, by forked worker processes that start
at once (so the caller can read its ground truth meanwhile); only three numbers per detection are
kept. A piece parses only if its cut is a real boundary (a cut inside a string or a nested object
leaves it unbalanced), and any piece that does not parse sends the whole file through one
``json.load`` instead, which also words the error of a truncated file.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
from array import array
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gumbel_analysis.data.lvis_io import read_json
from gumbel_analysis.errors import InputError

_CHUNK_BYTES = 32 << 20
_WINDOW_BYTES = 1 << 20
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")


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
    values = read_json(path, "results file", object_hook=hook)
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
