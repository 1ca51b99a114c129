"""Planned training runs in a folder of runs, and carrying them out resumably.

``gumbel sweep`` and ``gumbel reproduce`` both describe the runs they need as TrainConfig values
and a folder each. Before anything is written, :func:`plan_run` looks at the folder and decides
what to do with it; :func:`run_plan` does it:

| found | action |
| --- | --- |
| nothing | train |
| a finished run | skip |
| ``last.pt`` (killed after a checkpoint) | resume, as ``gumbel train --resume`` |
| ``config.json`` but no checkpoint | restart: its pre-checkpoint files are removed |
| ``model_final.pt`` without ``metrics.json`` | evaluate |
| a failed run (``diverged.pt``) | skip; it is listed as failed |
| a run of another configuration, or unknown files | InputError, nothing written |
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gumbel_analysis.errors import InputError, TrainingError
from gumbel_analysis.experiments.runs import (
    FAILED,
    FINISHED,
    MACHINE_FIELDS,
    NOT_EVALUATED,
    Run,
    is_run_folder,
    read_run,
    run_status,
    run_temperature,
)
from gumbel_analysis.spec.config import TrainConfig, resolve
from gumbel_analysis.spec.layout import PRE_CHECKPOINT_FILES, RunLayout

#: What is done with each run folder.
TRAIN, RESUME, RESTART, EVALUATE, SKIP = "train", "resume", "restart", "evaluate", "skip"
#: Derived from other fields or from the machine (world size), or, for a second stage, the
#: record of its first (``--from`` is compared). Mixed precision is compared when it is asked
#: for (``--amp`` / ``--no-amp``): a float32 run is not resumed in bfloat16, nor the reverse;
#: left to the machine (on for CUDA), it is not.
_DERIVED_FIELDS = frozenset({"lr", "world_size", "first_stage"})
#: Fields that None derives from the data (the run's config.json holds the derived value).
_DATA_DERIVED_FIELDS = frozenset({"rfs_threshold"})


@dataclass
class PlannedRun:
    path: Path
    values: dict[str, Any]  # TrainConfig.from_dict input
    action: str
    state: str  # the folder's status before the plan ran ("new" if absent)
    seed: int = 0
    temperature: float | None = None  # the Gumbel temperature, for the sweep's figure
    # Run folders that must finish before this one starts (a second stage's first stage).
    after: tuple[Path, ...] = ()
    # Filled by run_plan.
    status: str = ""
    metrics: dict[str, Any] | None = None
    error: str = ""
    seconds: float | None = None  # wall time of what run_plan did (None: skipped)

    @property
    def name(self) -> str:
        return self.path.name

    def describe_action(self) -> str:
        """What is done with the folder, in words (for progress lines)."""
        return {
            TRAIN: "training",
            RESTART: "training again (killed before its first checkpoint)",
            RESUME: "resuming from its last checkpoint",
            EVALUATE: "evaluating its final model",
            SKIP: f"skipped ({self.state})",
        }[self.action]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "temperature": self.temperature,
            "seed": self.seed,
            "found": self.state,
            "action": self.action,
            "status": self.status or None,
            "error": self.error or None,
            "seconds": self.seconds,
            "metrics": self.metrics,
        }


def check_out_folder(out: Path) -> None:
    """``--out`` is a writable folder, or can be made: its nearest existing parent is one."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} exists and is not a folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"--out {out} is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out} cannot be created: {parent} is not a writable folder")


def plan_run(
    path: Path,
    values: dict[str, Any],
    check: Callable[[TrainConfig], Any] | None = None,
    *,
    seed: int = 0,
    temperature: float | None = None,
    after: tuple[Path, ...] = (),
) -> PlannedRun:
    """What to do with ``path`` to get a finished run of ``values`` (TrainConfig fields).

    Every value is checked (and resolved) here, so every error comes before anything is
    written; ``check`` may refuse more, raising InputError for the resolved TrainConfig.
    """
    values = {**values, "seed": seed, "out": str(path), "evaluate": True}
    resolved = resolve(TrainConfig.from_dict(values))
    if check is not None:
        check(resolved)
    wanted = resolved.to_dict()
    if values.get("amp") is None:  # mixed precision left to the machine: not compared
        wanted.pop("amp", None)
    action, state = _action(path, wanted)
    return PlannedRun(
        path, values, action, state, seed=seed, temperature=temperature, after=tuple(after)
    )


def _action(path: Path, wanted: dict[str, Any]) -> tuple[str, str]:
    if not path.exists():
        return TRAIN, "new"
    if not path.is_dir():
        raise InputError(f"{path} exists and is not a folder")
    if not is_run_folder(path):
        if any(path.iterdir()):
            raise InputError(f"{path} is not a run folder and not empty; use another --out")
        return TRAIN, "new"
    run = read_run(path)
    _check_same_config(run, wanted)
    status, _ = run_status(path)
    if status == FINISHED:
        return SKIP, status
    if status == FAILED:
        return SKIP, status  # rerunning the same config diverges again; the table lists it
    if status == NOT_EVALUATED:
        return EVALUATE, status
    if RunLayout(path).last.is_file():
        return RESUME, status
    extra = [p.name for p in path.iterdir() if not _restartable_file(p)]
    if extra:
        raise InputError(
            f"{path} has no checkpoint to resume and holds files a restart would not remove "
            f"({', '.join(sorted(extra))}); move them or use another --out"
        )
    return RESTART, status


def _restartable_file(path: Path) -> bool:
    """A file a run writes before its first checkpoint, or the temporary file of a killed
    atomic write (``.NAME.XXXX.tmp...``): a plain file, never a folder or a link."""
    name = path.name
    written = name in PRE_CHECKPOINT_FILES or (name.startswith(".") and ".tmp" in name)
    return written and path.is_file() and not path.is_symlink()


def _remove_pre_checkpoint_files(path: Path) -> None:
    """What a run killed before its first checkpoint wrote (the plan checked that this is all
    its folder holds)."""
    for child in path.iterdir():
        if _restartable_file(child):
            child.unlink()


def _check_same_config(run: Run, wanted: dict[str, Any]) -> None:
    """A planned folder must hold a run of the configuration asked for: ``wanted`` is the
    resolved config; every field but the machine's and the derived ones must match, so that an
    option left out on a rerun (its default) does not silently reuse runs made with it. A loss
    option left to the data (None, e.g. lambda) matches what the run derived."""
    for key, value in wanted.items():
        if key in MACHINE_FIELDS or key in _DERIVED_FIELDS:
            continue
        if key in _DATA_DERIVED_FIELDS and value is None:  # the run holds what it derived
            continue
        have = run.config.get(key)
        if key == "loss_options":
            have, value = dict(have or {}), {k: v for k, v in value.items() if v is not None}
            have = {k: have.get(k) for k in value}
            if "temperature" in value:  # also a run from before loss_options
                have["temperature"] = run_temperature(run.config)
        if isinstance(value, tuple):
            value = list(value)
        if have != value:
            raise InputError(
                f"{run.path} holds a run with {key} = {have!r}, not {value!r}; use another --out"
            )


def run_plan(
    plan: Sequence[PlannedRun],
    *,
    progress: bool = True,
    console: Any = None,
    announce: Callable[[int, int, PlannedRun], None] | None = None,
) -> None:
    """Carry out ``plan`` in order, in this process; a run whose loss becomes non-finite is
    marked failed and the others still run. Each run's status, metrics and wall time are filled
    in. (``experiments/launch.py`` carries plans out in parallel or on SLURM, under a lock.)"""
    for i, item in enumerate(plan, 1):
        if announce is not None:
            announce(i, len(plan), item)
        carry_out_run(item, progress=progress, console=console)


def carry_out_run(item: PlannedRun, *, progress: bool = False, console: Any = None) -> None:
    """Do what ``item.action`` says with its folder, then fill in its status, metrics, error
    and wall time from the folder."""
    from gumbel_analysis.engine.inference import evaluate_checkpoint
    from gumbel_analysis.engine.train import train

    unfinished = [p for p in item.after if run_status(p)[0] != FINISHED]
    if item.action != SKIP and unfinished:  # a second stage whose first did not finish
        item.status, item.metrics = "", None
        item.error = f"not run: its first stage {unfinished[0]} did not finish"
        return
    start = time.perf_counter()
    try:
        if item.action == RESTART:
            _remove_pre_checkpoint_files(item.path)
        if item.action in (TRAIN, RESTART, RESUME):
            cfg = TrainConfig.from_dict(item.values)
            train(cfg, resume=item.action == RESUME, progress=progress, console=console)
        elif item.action == EVALUATE:
            evaluate_checkpoint(
                item.path, device=item.values.get("device", "auto"), progress=progress
            )
    except TrainingError as err:
        item.error = " ".join(str(err).split())
    if item.action != SKIP:
        item.seconds = time.perf_counter() - start
    run = read_run(item.path)
    item.status = run.status
    item.metrics = run.metrics
    if run.status == FAILED and not item.error:
        item.error = f"the loss became non-finite earlier; see {RunLayout(item.path).diverged}"


__all__ = [
    "EVALUATE",
    "FINISHED",
    "RESTART",
    "RESUME",
    "SKIP",
    "TRAIN",
    "PlannedRun",
    "carry_out_run",
    "check_out_folder",
    "plan_run",
    "run_plan",
]
