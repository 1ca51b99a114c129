"""Writing the gradient log: an HDF5 file of schema ``docs/grad-log.md`` (version 1).

Written in HDF5's single-writer/multiple-reader mode and flushed after every row, so a killed
run (SIGKILL included) leaves a file readers open with ``swmr=True``, short of at most the row in
progress. Opening for a resumed run rewrites the file without the rows past the checkpoint
(through a temporary file and a rename), which also clears the "open for writing" mark a killed
writer leaves behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gumbel_analysis.io import atomic_path

SCHEMA = "gumbel-analysis/grad-log"
SCHEMA_VERSION = 1
#: The per-category quantities, in the order of the recorder's [4, C] sums.
QUANTITIES = ("positive_sum", "positive_count", "negative_sum", "negative_count")
#: The per-row indices; written after the quantities, so a row with an iteration is complete.
INDEX_DATASETS = ("iteration", "epoch")
_DTYPES = {
    "positive_sum": "f8",
    "positive_count": "i8",
    "negative_sum": "f8",
    "negative_count": "f8",
}
CATEGORY_FIELDS = ("id", "name", "frequency", "image_count", "instance_count")


def log_attributes(
    *,
    loss: str,
    activation: str,
    num_classes: int,
    temperature: float | None = None,
    gumbel_mode: str = "",
    dataset: str = "",
    grad_every: int = 1,
    stage: int = 1,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The file attributes of the schema (``stage``: the box stage recorded, 1-based; a
    cascade has several)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "loss": loss,
        "activation": activation,
        "temperature": math.nan if temperature is None else float(temperature),
        "gumbel_mode": gumbel_mode,
        "num_classes": int(num_classes),
        "dataset": dataset,
        "grad_every": int(grad_every),
        "stage": int(stage),
        "config": json.dumps(config or {}),
    }


class GradientLogWriter:
    """Appends rows of per-category sums to ``path``.

    ``categories``: one dict per column with the keys of :data:`CATEGORY_FIELDS`.
    ``resume_after``: reopen an existing log, keeping only rows with ``iteration <=`` it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        attributes: dict[str, Any],
        categories: Sequence[dict[str, Any]],
        resume_after: int | None = None,
    ):
        self.path = Path(path)
        self.num_classes = int(attributes["num_classes"])
        if len(categories) != self.num_classes:
            raise ValueError(f"{len(categories)} categories for {self.num_classes} columns")
        kept = _read_rows(self.path, resume_after) if resume_after is not None else None
        kept_bytes = sum(v.nbytes for v in kept.values()) if kept else 0
        _check_space(self.path, kept_bytes + _row_bytes(self.num_classes))
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w", libver="latest") as f:
            _create(f, attributes, categories, kept)
        self._file = h5py.File(self.path, "a", libver="latest")
        self._file.swmr_mode = True

    @property
    def rows(self) -> int:
        return self._file["iteration"].shape[0]

    def append(self, iteration: int, epoch: int, sums: np.ndarray) -> None:
        """One row: ``sums`` is [4, C] in the order of :data:`QUANTITIES`."""
        sums = np.asarray(sums)
        if sums.shape != (len(QUANTITIES), self.num_classes):
            raise ValueError(f"expected sums of shape (4, {self.num_classes}), got {sums.shape}")
        _check_space(self.path, _row_bytes(self.num_classes))
        n = self.rows
        f = self._file
        for name, values in zip(QUANTITIES, sums, strict=True):
            f[name].resize(n + 1, axis=0)
            f[name][n] = np.rint(values) if _DTYPES[name] == "i8" else values
        # The row's index datasets last: a reader that sees the iteration sees the whole row.
        for name, value in (("epoch", epoch), ("iteration", iteration)):
            f[name].resize(n + 1, axis=0)
            f[name][n] = value
        f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> GradientLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Free space the log keeps in reserve beyond a row's own bytes, for HDF5's chunk and metadata
#: allocations. HDF5 cannot close a file after a write into a full disk failed (it retries the
#: flush at every close, and the process ends in a segmentation fault), so the log refuses the
#: write first, while the file is still whole and closes cleanly.
RESERVED_BYTES = 1 << 20


def _row_bytes(num_classes: int) -> int:
    return 8 * (len(QUANTITIES) * num_classes + 2)


def _check_space(path: Path, need: int) -> None:
    """OSError (no space left, naming ``path``) unless its disk has ``need`` bytes and the
    reserve free."""
    if shutil.disk_usage(path.parent).free < need + RESERVED_BYTES:
        raise OSError(errno.ENOSPC, "No space left on device for the gradient log", str(path))


def _create(f: h5py.File, attributes: dict, categories: Sequence[dict], kept: dict | None) -> None:
    for key, value in attributes.items():
        f.attrs[key] = value
    c = len(categories)
    group = f.create_group("categories")
    for field in CATEGORY_FIELDS:
        values = [cat[field] for cat in categories]
        if field in ("name", "frequency"):
            group.create_dataset(
                field, data=np.array(values, dtype=object), dtype=h5py.string_dtype()
            )
        else:
            group.create_dataset(field, data=np.asarray(values, dtype=np.int64))
    chunk_rows = max(1, min(64, (1 << 16) // max(c, 1)))
    for name in QUANTITIES:
        data = kept[name] if kept else np.zeros((0, c), dtype=_DTYPES[name])
        f.create_dataset(
            name,
            data=data,
            maxshape=(None, c),
            chunks=(chunk_rows, c),
            dtype=_DTYPES[name],
            compression="gzip",
            compression_opts=4,
        )
    for name in INDEX_DATASETS:
        data = kept[name] if kept else np.zeros((0,), dtype="i8")
        f.create_dataset(name, data=data, maxshape=(None,), chunks=(1024,), dtype="i8")


def _read_rows(path: Path, resume_after: int) -> dict[str, np.ndarray] | None:
    """The rows of an existing log up to ``resume_after`` (None if there is no log yet)."""
    if not path.exists():
        return None
    with h5py.File(path, "r", swmr=True) as f:
        # A row is complete once its iteration is written (see append): cut at the shortest.
        n = min(f[name].shape[0] for name in (*QUANTITIES, *INDEX_DATASETS))
        iterations = f["iteration"][:n]
        keep = int(np.searchsorted(iterations, resume_after, side="right"))
        return {name: f[name][:keep] for name in (*QUANTITIES, *INDEX_DATASETS)}
