"""The one reader of LVIS/COCO results files, for ``gumbel eval`` and ``gumbel kl-dist``.

A results file is a JSON list of detections ``{"image_id", "category_id", "score", "bbox":
[x, y, w, h], "segmentation": {"size": [h, w], "counts": ...}}`` as detectron2's
``LVISEvaluator``, mmdetection's ``LVISMetric`` (``.bbox.json`` / ``.segm.json``) and this toolkit
write. It accepts what lvis-api and pycocotools accept: integer-valued float ids (``8.0``), extra
keys (nested objects in them too), entries with only a ``bbox`` or only a ``segmentation``,
pretty-printed files, and ``[]`` (no detections). A NaN, infinite or negative score is refused
with one message naming the entry; so is anything else that is not a detection.

The file is decoded by msgspec into a small typed structure (unknown keys are skipped without
building objects), a piece of ``_PIECE_BYTES`` at a time, and kept as columns: numpy arrays,
and the masks' compressed RLE strings in one byte buffer. A piece is cut after a ``}`` followed
by ``, {``; a cut that is not between two detections (inside a string or a nested object) leaves
the first piece unbalanced, so it fails to decode, and the whole file is then decoded at once.
Anything msgspec refuses is decoded again by ``json`` (which also reads ``NaN``) and checked entry
by entry, so that the message names the entry and says what is wrong with it.

Memory stays small on input that is not a list of detections: the file's first bytes must open a
list whose first item is an object (else it is refused before the rest is read, so a 2 GiB file
of zeros costs a few kilobytes); a stretch of ``_MAX_DETECTION_BYTES`` without a boundary between
detections sends the file to the whole-file decoding, which maps a large file rather than reading
it; and above ``_JSON_CHECK_BYTES`` the message is msgspec's (naming the entry), not ``json``'s,
which would build the whole file as Python objects. JSON nested deeper than the decoders go
(msgspec and ``json`` raise RecursionError, even inside an extra key) is refused in one line.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from gumbel_analysis.errors import InputError

_PIECE_BYTES = 64 << 20
_WINDOW_BYTES = 1 << 20
#: A detection (its mask's RLE included) is far smaller: no boundary in this many bytes and the
#: file is decoded whole.
_MAX_DETECTION_BYTES = 64 << 20
#: Data up to this size that msgspec refuses is decoded by ``json`` for a precise message.
_JSON_CHECK_BYTES = 128 << 20
#: The bytes read to check that the file opens a list of objects.
_HEAD_BYTES = 64 << 10
_BOM = b"\xef\xbb\xbf"
_VALUE_START = b'{["-0123456789tfnN'
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")


class RLE(msgspec.Struct):
    """A mask as LVIS/COCO files write it: compressed (``counts`` a string) or not (a list)."""

    size: list[int]
    counts: str | list[int]


class _Entry(msgspec.Struct):
    image_id: int | float
    category_id: int | float
    score: float


class _GeometryEntry(msgspec.Struct):
    image_id: int | float
    category_id: int | float
    score: float
    bbox: list[float] | None = None
    segmentation: RLE | None = None


@dataclass
class Detections:
    """Detections as columns, in file order.

    ``bbox`` is ``[N, 4]`` float64 with NaN rows where an entry has none (or None when geometry
    was not read or no entry has one). Masks: entry ``i``'s compressed RLE counts are
    ``counts[offsets[i]:offsets[i + 1]]`` (empty where it has no mask) and its ``mask_size`` is
    ``(h, w)``; all three are None when no entry has a mask.
    """

    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    bbox: np.ndarray | None = None
    counts: np.ndarray | None = None
    offsets: np.ndarray | None = None
    mask_size: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    @property
    def has_mask(self) -> np.ndarray:
        if self.offsets is None:
            return np.zeros(len(self), dtype=bool)
        return self.mask_size[:, 0] >= 0

    def rle(self, i: int) -> dict:
        """Entry ``i``'s mask as the compressed RLE dict pycocotools reads."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"size": self.mask_size[i].tolist(), "counts": self.counts[a:b].tobytes()}

    def rles(self, indices: np.ndarray) -> list[dict]:
        """Masks of the entries ``indices`` (see :meth:`rle`)."""
        indices = np.asarray(indices, dtype=np.int64)
        buf = self.counts.data
        starts = self.offsets[indices].tolist()
        ends = self.offsets[indices + 1].tolist()
        sizes = self.mask_size[indices].tolist()
        return [
            {"size": size, "counts": bytes(buf[a:b])}
            for size, a, b in zip(sizes, starts, ends, strict=True)
        ]


def read_results(
    path: str | os.PathLike,
    geometry: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Detections:
    """Read a results file (see the module docstring) into :class:`Detections`.

    ``geometry``: keep ``bbox`` and ``segmentation`` (for evaluation); without it only image,
    category and score are kept (for ``kl-dist``). ``progress(n)`` is told each piece's bytes.
    Raises :class:`InputError` naming the file and, where one is at fault, the entry.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file not found: {path}")
    try:
        return _read(path, geometry, progress)
    except RecursionError:
        raise InputError(f"results file {path} is not valid JSON: nested too deeply") from None
    except OSError as err:
        raise InputError(f"cannot read results file {path}: {err.strerror}") from None


def _read(path: Path, geometry: bool, progress: Callable[[int], None] | None) -> Detections:
    reader = _Reader(path, geometry)
    _check_head(path, reader)
    try:
        ranges = _piece_ranges(path)
    except _UnchunkableError:
        ranges = None
    if ranges is not None:
        try:
            done = 0  # bytes reported, separators and brackets included
            with path.open("rb") as f:
                for a, b in ranges:
                    f.seek(a)
                    reader.add_piece(b"[" + f.read(b - a) + b"]")
                    if progress is not None:
                        progress(b - done)
                        done = b
            if progress is not None:
                progress(path.stat().st_size - done)
            return reader.finish()
        except _UnchunkableError:
            reader = _Reader(path, geometry)
    data = _read_whole(path)
    try:
        try:
            reader.add_piece(data, whole=True)
        except _UnchunkableError:
            _raise_json_error(path, data)
        if progress is not None:
            progress(len(data))
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
    return reader.finish()


def results_from_entries(entries: list, geometry: bool = True) -> Detections:
    """:class:`Detections` of a list of result entries (dicts), checked as a file's are."""
    if not isinstance(entries, list):
        raise InputError("results must be a list of LVIS result entries (dicts)")
    reader = _Reader(None, geometry)
    kind = _GeometryEntry if geometry else _Entry
    try:
        typed = msgspec.json.decode(msgspec.json.encode(entries), type=list[kind])
    except (TypeError, ValueError, OverflowError, msgspec.MsgspecError):
        # the original entries, not a JSON round trip (which writes NaN as null), are checked
        typed = [reader._check(e, i) for i, e in enumerate(entries)]
    except RecursionError:
        raise InputError("results are nested too deeply to be LVIS result entries") from None
    if typed:
        reader.parts.append(reader._columns(typed))
    return reader.finish()


def _read_whole(path: Path) -> bytes | mmap.mmap:
    """The file's bytes; a large file mapped, not read (msgspec decodes a buffer in place)."""
    if path.stat().st_size <= _JSON_CHECK_BYTES:
        return path.read_bytes()
    with path.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _check_head(path: Path, reader: _Reader) -> None:
    """Refuse, from its first bytes, a file that does not open a list of objects (``[`` then
    ``{`` or ``]``), before any more of it is read."""
    with path.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    full = len(head) < _HEAD_BYTES  # the whole file
    text = head.removeprefix(_BOM).lstrip()
    if not text:
        if full:
            raise InputError(f"results file {path} is not valid JSON (truncated?): it is empty")
        return  # 64 KiB of white space: the readers word it
    first = text[:1]
    if first != b"[":
        if first in _VALUE_START:
            raise _not_a_list(path)
        raise InputError(f"results file {path} is not valid JSON: it starts with {_byte(first)}")
    item = text[1:].lstrip()[:1]
    if item in (b"{", b"]") or (not item and not full):
        return
    if not item:
        raise InputError(f"results file {path} is not valid JSON (truncated?): no closing ]")
    if item in _VALUE_START:
        raise reader.error(0, "is not an object {image_id, category_id, score, ...}")
    raise InputError(f"results file {path} is not valid JSON: its list starts with {_byte(item)}")


def _byte(char: bytes) -> str:
    if char.isascii() and char.decode().isprintable():
        return repr(char.decode())
    return f"byte 0x{char[0]:02x}"


def _not_a_list(path: Path) -> InputError:
    return InputError(
        f"results file {path} is not a list of detections (LVIS results format: "
        "[{image_id, category_id, score, bbox or segmentation}, ...])"
    )


class _UnchunkableError(Exception):
    """A piece did not decode: decode the whole file at once instead."""


def _piece_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of about ``_PIECE_BYTES`` inside the top-level ``[ ]``, each cut after a
    ``}`` followed by ``, {``; an empty list for ``[]``."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(4096)
        start = len(head) - len(head.lstrip())
        if head[start : start + 1] != b"[":
            raise _UnchunkableError  # not a list: the whole-file path words the error
        f.seek(max(0, size - 4096))
        tail = f.read().rstrip()
        end = max(0, size - 4096) + len(tail) - 1  # the closing "]"
        if not tail.endswith(b"]") or end <= start:
            raise _UnchunkableError
        f.seek(start + 1)
        if not f.read(min(end - start - 1, 4096)).strip():
            if end - start - 1 <= 4096:
                return []  # "[]", maybe with white space
            raise _UnchunkableError
        ranges, begin, at = [], start + 1, start + 1 + _PIECE_BYTES
        while at < end:
            f.seek(at)
            window = f.read(_WINDOW_BYTES)
            found = _BOUNDARY.search(window)
            if found is None:
                at += max(len(window) - 64, 1)  # overlap: a boundary may straddle windows
                if at - begin > _PIECE_BYTES + _MAX_DETECTION_BYTES and at < end:
                    raise _UnchunkableError  # no detection is this long: not a list of them
                continue
            cut = at + found.start() + 1
            if cut >= end:
                break
            ranges.append((begin, cut))
            begin = at + found.end() - 1  # the next detection's "{"
            at = begin + _PIECE_BYTES
    ranges.append((begin, end))
    return ranges


def _raise_json_error(path: Path, data: bytes | mmap.mmap) -> None:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as err:
        raise InputError(
            f"results file {path} is not valid JSON (truncated?): {err.msg} at line {err.lineno}"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"results file {path} is not a text JSON file") from None
    if not isinstance(value, list):
        raise _not_a_list(path)
    raise AssertionError("a list the reader could not decode")  # pragma: no cover


class _Reader:
    """Collects the columns piece by piece; entry indices count from the file's first entry."""

    def __init__(self, path: Path | None, geometry: bool) -> None:
        self.path, self.geometry = path, geometry
        self.count = 0
        self.parts: list[dict[str, Any]] = []

    def error(self, index: int, problem: str) -> InputError:
        where = "results" if self.path is None else f"results file {self.path}"
        return InputError(f"{where}: detection {index} {problem}")

    def add_piece(self, data: bytes, whole: bool = False) -> None:
        kind = _GeometryEntry if self.geometry else _Entry
        try:
            entries = msgspec.json.decode(data, type=list[kind])
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            if whole and len(data) > _JSON_CHECK_BYTES:
                raise self._decode_error(err) from None
            entries = self._slow(data, whole)
        if entries:
            self.parts.append(self._columns(entries))
        self.count += len(entries)

    def _decode_error(self, err: msgspec.MsgspecError) -> InputError:
        """msgspec's own message on a large file, naming the entry where it names one."""
        found = re.search(r"at `\$\[(\d+)\]", str(err))
        if isinstance(err, msgspec.ValidationError) and found:
            return self.error(int(found.group(1)), f"is refused: {err}")
        if isinstance(err, msgspec.ValidationError):
            return _not_a_list(self.path)
        return InputError(f"results file {self.path} is not valid JSON (truncated?): {err}")

    def _slow(self, data: bytes, whole: bool) -> list:
        """``json`` decoding and a check of each entry: says which entry is wrong and how."""
        try:
            values = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _UnchunkableError from None
        if not isinstance(values, list):
            if whole:
                _raise_json_error(self.path, data)
            raise _UnchunkableError
        return [self._check(value, self.count + i) for i, value in enumerate(values)]

    def _check(self, value: Any, index: int) -> _GeometryEntry | _Entry:
        if not isinstance(value, dict):
            raise self.error(index, "is not an object {image_id, category_id, score, ...}")
        for key in ("image_id", "category_id", "score"):
            if key not in value:
                raise self.error(index, f"has no {key}")
        fields = {}
        for key in ("image_id", "category_id"):
            v = value[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not _integral(v):
                raise self.error(index, f"has {key} {v!r}; an id is an integer")
            fields[key] = v
        score = value["score"]
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise self.error(index, _score_problem(score))
        fields["score"] = float(score)
        if not self.geometry:
            return _Entry(**fields)
        bbox, segm = value.get("bbox"), value.get("segmentation")
        if bbox is not None and not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in bbox)
        ):
            raise self.error(index, f"has bbox {bbox!r}; a bbox is [x, y, w, h]")
        if segm is not None:
            if not (
                isinstance(segm, dict)
                and isinstance(segm.get("size"), list)
                and len(segm["size"]) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in segm["size"])
                and (
                    isinstance(segm.get("counts"), str)
                    or (
                        isinstance(segm.get("counts"), list)
                        and all(isinstance(x, int) for x in segm["counts"])
                    )
                )
            ):
                raise self.error(
                    index, "has a segmentation that is not an RLE {size: [h, w], counts}"
                )
            segm = RLE(size=segm["size"], counts=segm["counts"])
        return _GeometryEntry(**fields, bbox=bbox and [float(x) for x in bbox], segmentation=segm)

    def _columns(self, entries: list) -> dict[str, Any]:
        first = self.count
        columns: dict[str, Any] = {}
        for key in ("image_id", "category_id"):
            values = np.asarray([getattr(e, key) for e in entries])
            if values.dtype.kind == "f":
                bad = ~(np.isfinite(values) & (np.floor(values) == values))
                if bad.any():
                    i = int(np.argmax(bad))
                    raise self.error(
                        first + i, f"has {key} {float(values[i])!r}; an id is an integer"
                    )
                values = values.astype(np.int64)
            columns[key] = values.astype(np.int64, copy=False)
        scores = np.fromiter((e.score for e in entries), dtype=np.float64, count=len(entries))
        bad = ~(np.isfinite(scores) & (scores >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise self.error(first + i, _score_problem(float(scores[i])))
        columns["score"] = scores
        if not self.geometry:
            return columns
        boxes = [e.bbox for e in entries]
        if any(b is not None for b in boxes):
            nan4 = [math.nan] * 4
            bad = [i for i, b in enumerate(boxes) if b is not None and len(b) != 4]
            if bad:
                raise self.error(
                    first + bad[0], f"has bbox {boxes[bad[0]]!r}; a bbox is [x, y, w, h]"
                )
            columns["bbox"] = np.array([nan4 if b is None else b for b in boxes], dtype=np.float64)
        segms = [e.segmentation for e in entries]
        if any(s is not None for s in segms):
            columns.update(self._masks(segms, first))
        missing = [
            i for i, (b, s) in enumerate(zip(boxes, segms, strict=True)) if b is None and s is None
        ]
        if missing:
            raise self.error(first + missing[0], "has neither a bbox nor a segmentation")
        return columns

    def _masks(self, segms: list, first: int) -> dict[str, np.ndarray]:
        sizes = np.full((len(segms), 2), -1, dtype=np.int64)
        strings = []
        for i, s in enumerate(segms):
            if s is None:
                strings.append("")
                continue
            if len(s.size) != 2 or min(s.size) < 0:
                raise self.error(first + i, f"has a mask of size {s.size}; a size is [h, w]")
            sizes[i] = s.size
            counts = s.counts
            if not isinstance(counts, str):  # uncompressed RLE: compress it as pycocotools does
                import pycocotools.mask as mask_utils

                if sum(counts) != s.size[0] * s.size[1] or min(counts, default=0) < 0:
                    raise self.error(
                        first + i, "has an uncompressed RLE that does not fill its size"
                    )
                counts = mask_utils.frPyObjects({"size": s.size, "counts": counts}, *s.size)[
                    "counts"
                ].decode("ascii")
            strings.append(counts)
        lengths = np.fromiter((len(c) for c in strings), dtype=np.int64, count=len(strings))
        try:
            buffer = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            i = next(i for i, c in enumerate(strings) if not c.isascii())
            raise self.error(first + i, "has RLE counts that are not ASCII") from None
        return {"mask_size": sizes, "lengths": lengths, "counts": buffer}

    def finish(self) -> Detections:
        parts = self.parts
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return Detections(empty, empty.copy(), np.zeros(0, dtype=np.float64))
        cat = np.concatenate
        out = Detections(
            cat([p["image_id"] for p in parts]),
            cat([p["category_id"] for p in parts]),
            cat([p["score"] for p in parts]),
        )
        self.parts = []
        if not self.geometry:
            return out
        sizes = [len(p["score"]) for p in parts]
        if any("bbox" in p for p in parts):
            out.bbox = cat(
                [p.get("bbox", np.full((n, 4), np.nan)) for p, n in zip(parts, sizes, strict=True)]
            )
        if any("counts" in p for p in parts):
            # copied part by part, each freed once copied: the masks are the bulk of the memory
            total = sum(len(p["counts"]) for p in parts if "counts" in p)
            out.counts = np.empty(total, dtype=np.uint8)
            at = 0
            for p in parts:
                block = p.pop("counts", None)
                if block is not None:
                    out.counts[at : at + len(block)] = block
                    at += len(block)
                del block
            lengths = cat(
                [p.get("lengths", np.zeros(n, np.int64)) for p, n in zip(parts, sizes, strict=True)]
            )
            out.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            out.mask_size = cat(
                [
                    p.get("mask_size", np.full((n, 2), -1, np.int64))
                    for p, n in zip(parts, sizes, strict=True)
                ]
            )
        return out


def _integral(value: int | float) -> bool:
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def _score_problem(score: Any) -> str:
    return f"has score {score!r}; a score is a finite number >= 0"
