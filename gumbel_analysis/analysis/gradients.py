"""Per-category gradients of the classifier logits, from gradient logs (supp. Sec. 1.4, Fig. 2).

A gradient log (``RUN/grads.h5``, schema in ``docs/grad-log.md``) holds per row and category the
sum and count of the positive gradients ``dL/dq_c`` (proposals labelled ``c``) and of the
negative ones (``|dL/dq_c|`` of proposals of other labels, counted by the loss's weights).
Definitions, over the rows selected by ``--epoch-range``:

* Mean positive gradient magnitude ``g_c = |sum positive_sum_c| / sum positive_count_c``; a
  category never seen as a positive has no ``g_c`` (NaN, "missing"), never 0.
* Mean negative gradient magnitude ``h_c = sum negative_sum_c / sum negative_count_c``.
* Decibels: ``scale * log10(g_c)`` with ``scale = 20`` by default (a gradient is an amplitude)
  or 10. The positive/negative ratio in dB is ``dB(g_c) - dB(h_c)``.
* Group summary: the mean of the dB values over a group's categories (rare, common, frequent
  and all; a mean of logs, i.e. the dB of the geometric mean of ``g``), missing categories left
  out. The dB of the arithmetic mean of ``g`` is also reported (``groups_db_of_mean``): it is
  dominated by the categories with the largest gradients.
* Differences to the first run (the reference): per group, the mean over the categories present
  in both runs of ``dB_run - dB_reference``. With the same missing categories this equals the
  difference of the group means; the paper reports Gumbel - Sigmoid of about 7 dB on average and
  10 dB for rare categories on LVIS.

Categories, their order and their groups come from the first run; the other runs must record
the same category ids. The figure orders categories by training frequency (``image_count``
descending, ties by id: frequent on the left, rare on the right).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from gumbel_analysis.errors import InputError
from gumbel_analysis.groups import FREQUENCY_GROUPS, GROUP_NAMES
from gumbel_analysis.hooks.grad_log import (
    CATEGORY_FIELDS,
    INDEX_DATASETS,
    SCHEMA,
    SCHEMA_VERSION,
)
from gumbel_analysis.hooks.grad_log import QUANTITIES as ROW_DATASETS
from gumbel_analysis.spec.layout import GRADS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DB_SCALES = (10, 20)
DEFAULT_DB_SCALE = 20
#: The summary's groups: all categories, then each frequency group.
GROUPS = ("all", *FREQUENCY_GROUPS)
#: The format's category fields that the reader needs (``instance_count`` is not read, so a log
#: without it is still accepted).
READ_CATEGORY_FIELDS = tuple(name for name in CATEGORY_FIELDS if name != "instance_count")
#: Rows read at once when summing (1203 categories: about 10 MB per dataset block).
BLOCK_ROWS = 1024
#: A live SWMR writer can make a plain open report "truncated file" for a moment; retry this
#: many times, this many seconds apart, before calling the file truncated.
TRUNCATED_RETRIES = 5
TRUNCATED_PAUSE_S = 0.1

_GROUP_COLORS = {"f": "tab:blue", "c": "tab:orange", "r": "tab:red"}


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class EpochRange:
    """Epochs ``[start, stop)`` (0-based); ``None`` leaves that side open."""

    start: int | None = None
    stop: int | None = None

    def __str__(self) -> str:
        return (
            f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        )

    def mask(self, epoch: np.ndarray) -> np.ndarray:
        keep = np.ones(len(epoch), dtype=bool)
        if self.start is not None:
            keep &= epoch >= self.start
        if self.stop is not None:
            keep &= epoch < self.stop
        return keep


def parse_epochs(spec: str) -> EpochRange:
    """``"A:B"`` -> epochs in ``[A, B)``; ``"A:"``, ``":B"`` and ``":"`` leave a side open;
    ``"A"`` alone is epoch A only."""
    text = spec.strip()
    parts = text.split(":")
    if len(parts) == 1 and parts[0]:
        parts = [parts[0], str(_epoch_number(parts[0], spec) + 1)]
    if len(parts) != 2:
        raise InputError(
            f"--epoch-range must look like A:B, A:, :B or A (epochs [A, B)), got {spec!r}"
        )
    start, stop = (_epoch_number(p, spec) if p.strip() else None for p in parts)
    if start is not None and stop is not None and stop <= start:
        raise InputError(f"--epoch-range {spec} selects no epochs: [A, B) needs B > A")
    return EpochRange(start, stop)


def _epoch_number(text: str, spec: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InputError(
            f"--epoch-range must look like A:B, A:, :B or A with whole epochs, got {spec!r}"
        ) from None
    if value < 0:
        raise InputError(f"--epoch-range takes epochs >= 0 (they are 0-based), got {spec!r}")
    return value


# ----------------------------------------------------------------------------- reading


@dataclass
class GradLog:
    """One gradient log, its rows summed over the selection (arrays of length C, id order)."""

    source: Path
    attrs: dict[str, Any]
    category_ids: np.ndarray
    category_names: list[str]
    frequency: np.ndarray  # 'r', 'c', 'f' (anything else is in no group)
    image_count: np.ndarray
    rows_total: int
    rows: int  # selected
    iterations: tuple[int, int]  # first and last selected row's iteration
    epochs: tuple[int, int]
    positive_sum: np.ndarray
    positive_count: np.ndarray
    negative_sum: np.ndarray
    negative_count: np.ndarray

    @property
    def loss(self) -> str:
        return str(self.attrs.get("loss") or "")

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


def resolve_log_path(path: str | os.PathLike) -> Path:
    """A run folder means its ``grads.h5``; anything else must be a file."""
    path = Path(path)
    if path.is_dir():
        log = path / GRADS
        if not log.is_file():
            raise InputError(
                f"run folder {path} has no gradient log {GRADS} "
                "(trained with --no-grad-log, or before gradient logs existed)"
            )
        return log
    if not path.exists():
        raise InputError(f"no such run folder or gradient log: {path}")
    if not path.is_file():
        raise InputError(f"not a run folder or gradient log file: {path}")
    return path


def _open_read_only(path: Path) -> h5py.File:
    """Open read-only: plainly, or with SWMR when a writer has the file open (or was killed).

    A plain open comes first because it checks the file's size against the size its superblock
    records; a SWMR open skips that check and, on a truncated file, retries its reads for
    minutes. A file still flagged as open for writing (a live or SIGKILLed SWMR writer) is then
    opened with ``swmr=True``. While a SWMR writer extends the file, the size check can fail for
    a moment, so "truncated" is retried briefly before it is believed.
    """
    for attempt in range(TRUNCATED_RETRIES):
        try:
            return h5py.File(path, "r")
        except OSError as err:
            reason = str(err)
            if "already open for write" in reason:
                try:
                    return h5py.File(path, "r", swmr=True)
                except OSError as swmr_err:
                    raise _unreadable(path, swmr_err) from None
            if "truncated file" not in reason or attempt == TRUNCATED_RETRIES - 1:
                raise _unreadable(path, err) from None
            time.sleep(TRUNCATED_PAUSE_S)
    raise AssertionError("unreachable")


def _unreadable(path: Path, err: BaseException) -> InputError:
    reason = str(err)
    # h5py words it "Unable to synchronously open file (truncated file: eof = ...)": keep the
    # part in parentheses, HDF5's own reason.
    if "(" in reason and reason.endswith(")"):
        reason = reason[reason.index("(") + 1 : -1]
    if "truncated file" in reason:
        what = "is truncated"
    elif "signature not found" in reason:
        what = "is not an HDF5 file"
    elif "lock" in reason:
        what = "is locked by a writer that does not use SWMR"
    else:
        what = "is corrupt or unreadable"
    return InputError(f"gradient log {path} {what} ({reason.strip()})")


def read_grad_log(
    path: str | os.PathLike,
    epochs: EpochRange | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GradLog:
    """Read and validate a gradient log and sum its rows whose epoch is in ``epochs``.

    ``path`` is a run folder or an ``.h5`` file. ``progress(done, total)`` is called as blocks
    of rows are summed. Rows a live writer has sized but not yet filled (iteration 0, the
    iterations being 1-based) are left out, as are rows that only some datasets have yet.
    """
    source = resolve_log_path(path)
    f = _open_read_only(source)
    try:
        with f:
            return _read(f, source, epochs, progress)
    except InputError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        # a file that opens but whose objects lie past its end or are damaged
        raise _unreadable(source, err) from None


def _read(
    f: h5py.File,
    source: Path,
    epochs: EpochRange | None,
    progress: Callable[[int, int], None] | None,
) -> GradLog:
    attrs = {k: _attr(v) for k, v in f.attrs.items()}
    if attrs.get("schema") != SCHEMA:
        raise InputError(f"{source} is not a gumbel-analysis gradient log (no schema {SCHEMA!r})")
    version = attrs.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise InputError(f"gradient log {source} has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise InputError(
            f"gradient log {source} has schema version {version}; this gumbel-analysis reads "
            f"version {SCHEMA_VERSION} (upgrade gumbel-analysis)"
        )
    missing = [n for n in (*ROW_DATASETS, *INDEX_DATASETS, "categories") if n not in f]
    if "categories" in f:
        missing += [f"categories/{n}" for n in READ_CATEGORY_FIELDS if n not in f["categories"]]
    if missing:
        raise InputError(f"gradient log {source} lacks {', '.join(missing)}")
    cats = f["categories"]
    ids = np.asarray(cats["id"][()], dtype=np.int64).reshape(-1)
    C = len(ids)
    num_classes = attrs.get("num_classes", C)
    if num_classes != C:
        raise InputError(
            f"gradient log {source} has {C} categories but num_classes = {num_classes}"
        )
    for name in READ_CATEGORY_FIELDS[1:]:  # after id, whose length is C
        if cats[name].shape != (C,):
            raise InputError(f"gradient log {source}: categories/{name} does not have {C} rows")
    if len(np.unique(ids)) != C:
        raise InputError(f"gradient log {source} has duplicate category ids")
    row_sets = {n: f[n] for n in ROW_DATASETS}
    for name, ds in row_sets.items():
        if ds.ndim != 2 or ds.shape[1] != C:
            raise InputError(
                f"gradient log {source}: {name} has shape {ds.shape}, expected (rows, {C})"
            )
    for name in INDEX_DATASETS:
        if f[name].ndim != 1:
            raise InputError(f"gradient log {source}: {name} is not one value per row")
    lengths = [ds.shape[0] for ds in row_sets.values()] + [f[n].shape[0] for n in INDEX_DATASETS]
    rows = min(lengths)
    if max(lengths) - rows > 1 and not f.swmr_mode:
        # a live writer may be one row ahead in some datasets; a closed file must agree
        raise InputError(f"gradient log {source}: its datasets have different numbers of rows")
    iteration = np.asarray(f["iteration"][:rows], dtype=np.int64)
    epoch = np.asarray(f["epoch"][:rows], dtype=np.int64)
    while rows and iteration[rows - 1] == 0:
        rows -= 1  # sized by a live writer, not written yet
    iteration, epoch = iteration[:rows], epoch[:rows]
    if rows == 0:
        raise InputError(
            f"gradient log {source} has no rows yet (the run stopped, or is still, before its "
            "first --grad-every interval)"
        )
    keep = np.ones(rows, dtype=bool) if epochs is None else epochs.mask(epoch)
    if not keep.any():
        raise InputError(
            f"--epoch-range {epochs} selects no rows of {source} (its rows cover epochs "
            f"{int(epoch.min())} to {int(epoch.max())})"
        )
    sums = _sum_rows(row_sets, rows, keep, progress)
    for name, total in sums.items():
        if not np.all(np.isfinite(total)):
            _raise_non_finite(source, row_sets[name], rows, keep, iteration)
    selected_iterations = iteration[keep]
    selected_epochs = epoch[keep]
    return GradLog(
        source=source,
        attrs=attrs,
        category_ids=ids,
        category_names=_strings(cats["name"]),
        frequency=np.array(_strings(cats["frequency"]), dtype=object),
        image_count=np.asarray(cats["image_count"][()], dtype=np.int64),
        rows_total=rows,
        rows=int(keep.sum()),
        iterations=(int(selected_iterations[0]), int(selected_iterations[-1])),
        epochs=(int(selected_epochs.min()), int(selected_epochs.max())),
        **sums,
    )


def _raise_non_finite(
    source: Path, ds: h5py.Dataset, rows: int, keep: np.ndarray, iteration: np.ndarray
) -> None:
    """Name the first selected row with a NaN or infinite value (a diverged run logs them)."""
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, rows)
        block = np.asarray(ds[start:stop], dtype=np.float64)
        bad = ~np.isfinite(block).all(axis=1) & keep[start:stop]
        if bad.any():
            row = start + int(np.argmax(bad))
            raise InputError(
                f"gradient log {source}: {ds.name.lstrip('/')} is not finite (NaN or inf) in row "
                f"{row} (iteration {int(iteration[row])}); the run diverged there? Leave those "
                "rows out with --epoch-range"
            )
    raise InputError(f"gradient log {source}: the sums of {ds.name.lstrip('/')} overflow")


def _sum_rows(
    row_sets: dict[str, h5py.Dataset],
    rows: int,
    keep: np.ndarray,
    progress: Callable[[int, int], None] | None,
) -> dict[str, np.ndarray]:
    """Column sums of the kept rows, read a block at a time (a long LVIS run has many rows)."""
    dtypes = {"positive_count": np.int64}
    sums = {n: np.zeros(ds.shape[1], dtype=dtypes.get(n, np.float64)) for n, ds in row_sets.items()}
    total, done = rows * len(row_sets), 0
    for name, ds in row_sets.items():
        for start in range(0, rows, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, rows)
            block_keep = keep[start:stop]
            if block_keep.any():
                block = np.asarray(ds[start:stop], dtype=sums[name].dtype)
                sums[name] += block[block_keep].sum(axis=0)
            done += stop - start
            if progress is not None:
                progress(done, total)
    return sums


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr(value.reshape(-1)[0])
    return value


def _strings(ds: h5py.Dataset) -> list[str]:
    if ds.dtype.kind in "OS":
        return [str(s) for s in ds.asstr()[()]]
    return [str(s) for s in ds[()]]


# ----------------------------------------------------------------------------- analysis


def to_db(value: np.ndarray, scale: int = DEFAULT_DB_SCALE) -> np.ndarray:
    """``scale * log10(value)``; NaN stays NaN (missing), 0 gives -inf."""
    if scale not in DB_SCALES:
        raise InputError(f"--db-scale must be 10 or 20, got {scale}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return scale * np.log10(np.asarray(value, dtype=np.float64))


def mean_magnitudes(log: GradLog) -> tuple[np.ndarray, np.ndarray]:
    """``g_c = |sum positive_sum| / sum positive_count`` and ``h_c = sum negative_sum /
    sum negative_count``; NaN where the count is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = np.where(
            log.positive_count > 0, np.abs(log.positive_sum) / log.positive_count, np.nan
        )
        negative = np.where(
            log.negative_count > 0, np.abs(log.negative_sum) / log.negative_count, np.nan
        )
    return positive, negative


def group_means(values: np.ndarray, frequency: np.ndarray) -> dict[str, float]:
    """Mean of ``values`` over the present (non-NaN) categories of each group and of all."""
    out = {}
    for group in GROUPS:
        member = np.ones(len(values), dtype=bool) if group == "all" else frequency == group
        present = values[member & ~np.isnan(values)]
        out[group] = float(present.mean()) if present.size else math.nan
    return out


def group_sizes(mask: np.ndarray, frequency: np.ndarray) -> dict[str, int]:
    return {g: int(mask.sum() if g == "all" else (mask & (frequency == g)).sum()) for g in GROUPS}


@dataclass
class RunGradients:
    """One run's per-category magnitudes (aligned to the comparison's categories)."""

    label: str
    log: GradLog
    positive: np.ndarray  # g_c
    negative: np.ndarray  # h_c
    positives: np.ndarray  # sum of positive_count


@dataclass
class GradComparison:
    db_scale: int
    epochs: EpochRange | None
    category_ids: np.ndarray
    category_names: list[str]
    frequency: np.ndarray
    image_count: np.ndarray
    runs: list[RunGradients] = field(default_factory=list)

    def db(self, values: np.ndarray) -> np.ndarray:
        return to_db(values, self.db_scale)

    def frequency_order(self) -> np.ndarray:
        """Category indices by ``image_count`` descending, ties by id (the figure's x axis)."""
        return np.lexsort((self.category_ids, -self.image_count))

    def run_summary(self, run: RunGradients) -> dict:
        positive_db, negative_db = self.db(run.positive), self.db(run.negative)
        ratio_db = positive_db - negative_db
        log = run.log
        missing = np.isnan(run.positive)
        return {
            "label": run.label,
            "source": str(log.source),
            "loss": log.loss or None,
            "activation": log.attrs.get("activation"),
            "temperature": _number(log.attrs.get("temperature")),
            "rows": log.rows,
            "rows_total": log.rows_total,
            "iterations": list(log.iterations),
            "epochs": list(log.epochs),
            "groups": group_means(positive_db, self.frequency),
            "groups_db_of_mean": {
                g: float(self.db(np.array(v)))
                for g, v in group_means(run.positive, self.frequency).items()
            },
            "negative_groups": group_means(negative_db, self.frequency),
            "ratio_groups": group_means(ratio_db, self.frequency),
            "missing": int(missing.sum()),
            "missing_by_group": group_sizes(missing, self.frequency),
            "per_category": [
                {
                    "id": int(self.category_ids[i]),
                    "name": self.category_names[i],
                    "frequency": str(self.frequency[i]),
                    "image_count": int(self.image_count[i]),
                    "positives": int(run.positives[i]),
                    "positive_db": float(positive_db[i]),
                    "negative_db": float(negative_db[i]),
                    "ratio_db": float(ratio_db[i]),
                }
                for i in range(len(self.category_ids))
            ],
        }

    def differences(self) -> list[dict]:
        """Per later run, ``run - first`` per group over the categories present in both."""
        if len(self.runs) < 2:
            return []
        ref = self.runs[0]
        out = []
        for run in self.runs[1:]:
            entry: dict[str, Any] = {
                "label": f"{run.label} - {ref.label}",
                "run": run.label,
                "reference": ref.label,
            }
            for key, attr in (("groups", "positive"), ("negative_groups", "negative")):
                diff = self.db(getattr(run, attr)) - self.db(getattr(ref, attr))
                entry[key] = group_means(diff, self.frequency)
                if key == "groups":
                    entry["categories"] = group_sizes(~np.isnan(diff), self.frequency)
            out.append(entry)
        return out

    def to_dict(self) -> dict:
        return {
            "db_scale": self.db_scale,
            "convention": f"{self.db_scale}*log10(g)",
            "epochs": None if self.epochs is None else str(self.epochs),
            "categories": len(self.category_ids),
            "group_sizes": group_sizes(np.ones(len(self.category_ids), bool), self.frequency),
            "runs": [self.run_summary(r) for r in self.runs],
            "differences": self.differences(),
        }


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _alignment(ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """Indices into ``ids`` that put them in ``target_ids``' order (same set assumed)."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids[order], target_ids)]


def run_name_of_log(source: Path) -> str:
    """The run folder's name for ``RUN/grads.h5``, else the file's stem."""
    source = Path(source)
    if source.name == GRADS:
        return source.resolve().parent.name
    return source.stem


def default_labels(logs: Sequence[GradLog]) -> list[str]:
    """The loss name (file attribute ``loss``), or the run name where there is none. Runs that
    share a loss get ``loss (run name)`` where their names differ; labels still equal get
    `` (2)``, `` (3)``..."""
    names = [run_name_of_log(log.source) for log in logs]
    base = [log.loss or name for log, name in zip(logs, names, strict=True)]
    counts = Counter(base)
    # the run name only helps where runs sharing a loss have different names
    names_of = {b: {n for b2, n in zip(base, names, strict=True) if b2 == b} for b in counts}
    labels = [
        f"{b} ({name})" if counts[b] > 1 and len(names_of[b]) > 1 and b != name else b
        for b, name in zip(base, names, strict=True)
    ]
    seen: set[str] = set()
    unique = []
    for label in labels:
        candidate, k = label, 2
        while candidate in seen:
            candidate, k = f"{label} ({k})", k + 1
        seen.add(candidate)
        unique.append(candidate)
    return unique


def compare_logs(
    logs: Sequence[GradLog],
    labels: Sequence[str] | None = None,
    db_scale: int = DEFAULT_DB_SCALE,
    epochs: EpochRange | None = None,
) -> GradComparison:
    """Put the runs side by side on the first run's categories (see the module docstring)."""
    if not logs:
        raise InputError("give at least one run folder or gradient log")
    if db_scale not in DB_SCALES:
        raise InputError(f"--db-scale must be 10 or 20, got {db_scale}")
    if labels:
        if len(labels) != len(logs):
            raise InputError(f"--label was given {len(labels)} times for {len(logs)} runs")
        if len(set(labels)) != len(labels):
            raise InputError("--label values must be distinct")
        labels = list(labels)
    else:
        labels = default_labels(logs)
    first = logs[0]
    for log in logs[1:]:
        if log.num_classes != first.num_classes or not np.array_equal(
            np.sort(log.category_ids), np.sort(first.category_ids)
        ):
            raise InputError(
                f"{log.source} and {first.source} record different categories "
                f"({log.num_classes} and {first.num_classes}); they cannot be compared"
            )
    comparison = GradComparison(
        db_scale=db_scale,
        epochs=epochs,
        category_ids=first.category_ids,
        category_names=first.category_names,
        frequency=first.frequency,
        image_count=first.image_count,
    )
    for log, label in zip(logs, labels, strict=True):
        positive, negative = mean_magnitudes(log)
        index = _alignment(log.category_ids, first.category_ids)
        comparison.runs.append(
            RunGradients(label, log, positive[index], negative[index], log.positive_count[index])
        )
    return comparison


# ----------------------------------------------------------------------------- figure


def db_label(scale: int, what: str = "|g|") -> str:
    return f"{scale}·log10{what} (dB)"


def gradient_figure(comparison: GradComparison, negatives: bool = False) -> Figure:
    """Fig. 2: mean positive gradient per category in dB, one line per run, categories by
    training frequency with the rare/common/frequent regions shaded. ``negatives`` adds panels
    for the mean negative gradient and the positive/negative ratio. Missing categories are
    gaps (NaN), not zeros."""
    import matplotlib.pyplot as plt

    from gumbel_analysis.analysis.plots import apply_style

    apply_style()
    order = comparison.frequency_order()
    C = len(order)
    x = np.arange(C)
    small = C <= 40
    panels = 3 if negatives else 1
    width = min(14.0, max(7.0, 4.0 + 0.25 * C))
    fig, axes = plt.subplots(
        panels, 1, figsize=(width, 3.6 * panels), sharex=True, squeeze=False, layout="constrained"
    )
    axes = axes[:, 0]
    scale = comparison.db_scale
    style = (
        {"marker": "o", "markersize": 4, "linewidth": 1.2}
        if small
        else {"marker": ".", "markersize": 2.5, "linewidth": 0.7, "alpha": 0.85}
    )
    for run in comparison.runs:
        summary_all = group_means(comparison.db(run.positive), comparison.frequency)["all"]
        missing = int(np.isnan(run.positive).sum())
        notes = [f"mean {summary_all:.1f} dB"] if math.isfinite(summary_all) else []
        notes += [f"{missing} missing"] if missing else []
        label = f"{run.label} ({', '.join(notes)})" if notes else run.label
        positive_db = comparison.db(run.positive)[order]
        axes[0].plot(x, positive_db, label=label, **style)
        if negatives:
            negative_db = comparison.db(run.negative)[order]
            axes[1].plot(x, negative_db, label=run.label, **style)
            axes[2].plot(x, positive_db - negative_db, label=run.label, **style)
    axes[0].set_ylabel(db_label(scale, "|g⁺|"))
    axes[0].set_title(
        "Mean positive gradient per category (Fig. 2)"
        + (f", epochs {comparison.epochs}" if comparison.epochs else ""),
    )
    if negatives:
        axes[1].set_ylabel(db_label(scale, "|g⁻|"))
        axes[1].set_title("Mean negative gradient per category")
        axes[2].set_ylabel(f"|g⁺| / |g⁻| ({scale}·log10, dB)")
        axes[2].set_title("Positive / negative ratio")
        axes[2].axhline(0.0, color="0.3", linewidth=0.8)
    low, high = axes[0].get_ylim()
    axes[0].set_ylim(low, high + 0.12 * (high - low))  # room for the group names
    for i, ax in enumerate(axes):
        _shade_groups(ax, comparison.frequency[order], label=i == 0)
        ax.set_xlim(-0.5, C - 0.5)
    axes[0].legend(loc="best", fontsize=8)
    bottom = axes[-1]
    if small:
        bottom.set_xticks(
            x, [comparison.category_names[i] for i in order], rotation=60, ha="right", fontsize=7
        )
    bottom.set_xlabel(
        "categories by training image count (frequent → rare); gaps: no positives recorded"
    )
    return fig


def _shade_groups(ax, groups: np.ndarray, label: bool) -> None:
    """Shade each run of consecutive categories of one group; name each group at its longest."""
    starts = [0, *(np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist()]
    ends = [*starts[1:], len(groups)]
    longest: dict[str, tuple[int, int]] = {}
    for start, end in zip(starts, ends, strict=True):
        group = groups[start]
        if group not in _GROUP_COLORS:
            continue
        ax.axvspan(start - 0.5, end - 0.5, color=_GROUP_COLORS[group], alpha=0.09, linewidth=0)
        best_start, best_end = longest.get(group, (0, 0))
        if end - start > best_end - best_start:
            longest[group] = (start, end)
    if not label:
        return
    for group, (start, end) in longest.items():
        ax.text(
            (start + end - 1) / 2,
            0.98,
            GROUP_NAMES[group],
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color=_GROUP_COLORS[group],
            fontweight="bold",
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.5},
        )


def plot_gradients(
    comparison: GradComparison, path: str | os.PathLike, negatives: bool = False
) -> Path:
    """Draw :func:`gradient_figure` and save it (PNG, PDF or SVG by suffix, atomically)."""
    from gumbel_analysis.analysis.plots import save_figure

    return save_figure(gradient_figure(comparison, negatives), path)
