"""Run folders: find them, read their ``config.json`` and ``metrics.json``, group them by config.

A run folder is what ``gumbel train --out RUN`` makes; ``config.json`` (the resolved
TrainConfig) marks it. Its state follows from the files the engine writes, in the order
``gumbel_analysis.spec.layout`` describes.

This module imports neither torch nor the engine, so ``gumbel table`` starts fast.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.errors import InputError
from gumbel_analysis.spec.layout import CONFIG, DIVERGED, FINAL, LAST, METRICS, METRICS_LOG
from gumbel_analysis.spec.losses import LOSSES

FINISHED = "finished"
UNFINISHED = "unfinished"
NOT_EVALUATED = "not evaluated"
FAILED = "failed"

#: Config fields that say where or how fast a run ran, not what it computed: runs that differ
#: only in these (and in the seed) are repeats of one configuration.
MACHINE_FIELDS = frozenset(
    {"out", "device", "workers", "log_every", "checkpoint_every", "grad_log", "grad_every"}
)
#: Left out of a configuration's identity: repeats differ in their seed; ``evaluate`` only says
#: whether metrics.json was written at the end.
IGNORED_FIELDS = MACHINE_FIELDS | {"seed", "evaluate"}


# --- where a config keeps its loss's activation and temperature ----------------------------------
# The one place that knows it: configs hold ``temperature`` in ``loss_options`` beside an
# ``activation`` field; those written before held it at the top level, without an activation.
def run_temperature(config: dict[str, Any]) -> float | None:
    """The Gumbel temperature sigma (Eq. 3) a run was trained with, or None."""
    options = config.get("loss_options") or {}
    value = options.get("temperature", config.get("temperature"))
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_activation(config: dict[str, Any]) -> str | None:
    """The run's activation: its ``activation`` field, else its loss's default (None if unknown)."""
    if config.get("activation"):
        return config["activation"]
    entry = LOSSES.get(str(config.get("loss")))
    return entry.default_activation if entry is not None else None


@dataclass
class Run:
    """One run folder as read from disk."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    status: str
    detail: str = ""

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def key_config(self) -> dict[str, Any]:
        """The configuration without seed and machine fields: equal for repeats of one config."""
        return {k: v for k, v in self.config.items() if k not in IGNORED_FIELDS}


def is_run_folder(path: Path) -> bool:
    return (path / CONFIG).is_file()


def run_status(path: Path) -> tuple[str, str]:
    """(status, detail) of a run folder from the files in it (see the module docstring).

    * finished: ``metrics.json`` is there, and not beside a ``last.pt`` without the final model
      (that would be ``gumbel eval`` of a checkpoint taken mid-training). A run whose
      checkpoints were deleted after evaluation stays finished.
    * failed: ``diverged.pt`` and no final model (the loss became non-finite).
    * not evaluated: the final model without ``metrics.json`` (``--no-eval``, or killed while
      evaluating).
    * unfinished: anything else (killed, or still training).
    """
    has = {name: (path / name).is_file() for name in (METRICS, LAST, FINAL, DIVERGED)}
    if has[DIVERGED] and not has[FINAL]:
        return FAILED, f"the loss became non-finite; {DIVERGED} holds the state"
    if has[METRICS] and not (has[LAST] and not has[FINAL]):
        return FINISHED, ""
    if has[FINAL]:
        return NOT_EVALUATED, f"{FINAL} without {METRICS}"
    where = _last_logged_iteration(path / METRICS_LOG)
    detail = f"last logged iteration {where}" if where is not None else "no iteration logged"
    if has[METRICS]:
        detail += f"; its {METRICS} is of a mid-training checkpoint"
    return UNFINISHED, detail


def _last_logged_iteration(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return int(json.loads(lines[-1])["iteration"]) if lines else None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return None  # a detail for the reader only; the status does not depend on it


#: The keys of metrics.json that hold an AP (``AP``, ``APr``, ``APb``, ``bbox/AP50``, ...): what
#: ``gumbel table`` and ``gumbel reproduce`` read. The evaluator writes each as a number, or null
#: where LVIS leaves it undefined (no ground truth in that group).
METRIC_KEY = re.compile(r"(bbox/)?AP\w*")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise InputError(f"{path} is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, an int over 4300 digits
        raise InputError(f"{path} is not valid JSON: {err}") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object")
    return data


def check_metrics(path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` (read from ``path``) with every AP (see :data:`METRIC_KEY`) a finite number or
    null, else an InputError naming the file and the key: a string, list, boolean, NaN or
    infinity would otherwise show the run as finished with a blank AP, or drop its seed."""
    for key, value in metrics.items():
        if not METRIC_KEY.fullmatch(key) or value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise InputError(
                f"{path}: {key} is {shown}; a metric is a finite number or null (undefined)"
            )
    return metrics


def read_run(path: str | os.PathLike) -> Run:
    """Read one run folder; a corrupt config.json or metrics.json is an InputError."""
    path = Path(path)
    if not is_run_folder(path):
        raise InputError(f"not a run folder (no {CONFIG}): {path}")
    config = _read_json_object(path / CONFIG)
    status, detail = run_status(path)
    metrics = None
    if status == FINISHED:
        metrics = check_metrics(path / METRICS, _read_json_object(path / METRICS))
    return Run(path, config, metrics, status, detail)


def find_runs(paths: Iterable[str | os.PathLike], option: str = "RUN") -> list[Path]:
    """Run folders named by ``paths``: a run folder itself, or every run folder below a folder
    (a sweep folder, a folder of runs), in name order. Each run appears once."""
    found: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise InputError(f"{option} {path} does not exist")
        if not path.is_dir():
            raise InputError(f"{option} {path} is not a folder")
        below = [path] if is_run_folder(path) else _runs_below(path)
        if not below:
            raise InputError(f"{option} {path} holds no run folder (no {CONFIG} in it or below)")
        for run in below:
            real = run.resolve()
            if real not in seen:
                seen.add(real)
                found.append(run)
    return found


def _runs_below(folder: Path, seen: set[Path] | None = None) -> list[Path]:
    """Run folders below ``folder``, in name order. Each real folder is walked once (``seen``
    holds the resolved ones), so links back to a parent folder neither loop nor multiply."""
    seen = {folder.resolve()} if seen is None else seen
    out: list[Path] = []
    try:
        children = sorted(folder.iterdir())
    except OSError as err:
        raise InputError(f"cannot read folder {folder}: {err.strerror}") from None
    for child in children:
        if child.name.startswith(".") or not child.is_dir():
            continue
        real = child.resolve()
        if real in seen:
            continue
        seen.add(real)
        if is_run_folder(child):
            out.append(child)  # a run folder's own subfolders are not searched
        else:
            out.extend(_runs_below(child, seen))
    return out


def read_runs(paths: Sequence[str | os.PathLike], option: str = "RUN") -> list[Run]:
    return [read_run(p) for p in find_runs(paths, option)]


def config_key(config: dict[str, Any], fields: Sequence[str] | None = None) -> str:
    """A hashable identity of a configuration: all fields but the ignored ones, or only
    ``fields`` (names of config fields, or ``activation`` / ``temperature`` read through the
    accessors above)."""
    if fields is None:
        chosen = {k: v for k, v in config.items() if k not in IGNORED_FIELDS}
        if chosen.get("sampler", "random") != "rfs":  # the threshold does nothing then
            chosen.pop("rfs_threshold", None)
    else:
        chosen = {name: field_value(config, name) for name in fields}
    return json.dumps(chosen, sort_keys=True, default=str)


def field_value(config: dict[str, Any], name: str) -> Any:
    if name == "temperature":
        return run_temperature(config)
    if name == "activation":
        return run_activation(config)
    return config.get(name)


@dataclass
class Group:
    """Finished runs of one configuration (they differ in their seed or machine only)."""

    key: str
    runs: list[Run] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].key_config()


def group_runs(runs: Sequence[Run], fields: Sequence[str] | None = None) -> list[Group]:
    """Finished runs grouped by configuration (see :func:`config_key`), in first-seen order."""
    groups: dict[str, Group] = {}
    for run in runs:
        if run.finished:
            key = config_key(run.config, fields)
            groups.setdefault(key, Group(key)).runs.append(run)
    return list(groups.values())
