"""``gumbel reproduce``: train what the selected tables and figures need, then measure them.

Layout of ``OUT``::

    data/                      the embedded benchmark (material.BENCHMARK), made once
    runs/{config}-{schedule}-s{seed}/   one run folder per configuration and seed
    timings.json               wall time of every run this command trained or evaluated
    figures/ tables/ report.html   written by gumbel_analysis.experiments.report

Each run is planned as ``gumbel sweep`` plans its runs (experiments/plan.py): a finished run is
skipped, a killed one resumed, so a rerun of the command continues where it stopped and a run
that several items need is trained once.

Measuring the runs is ``experiments/measure.py``, judging the claims ``experiments/claims.py``,
the report ``experiments/report.py``; what is planned comes from the items of
``experiments/material.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gumbel_analysis.data.lvis_io import read_json
from gumbel_analysis.data.synthetic import ANNOTATION_FILES, make_synthetic
from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.launch import Launcher, LocalLauncher, runs_progress
from gumbel_analysis.experiments.material import ITEMS, Config, Item, all_items
from gumbel_analysis.experiments.plan import (
    SKIP,
    PlannedRun,
    check_out_folder,
    plan_run,
)
from gumbel_analysis.experiments.runs import FINISHED
from gumbel_analysis.io import atomic_path, remove_leftovers
from gumbel_analysis.spec.config import SECOND_STAGE_EPOCHS

TIMINGS = "timings.json"


def parse_only(text: str | None, default: Sequence[str]) -> list[str]:
    """``table3,fig1`` -> the items in the material's order; InputError for an unknown name."""
    if text is None:
        return list(default)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    known = all_items()
    if not names:
        raise InputError(f"--only needs item names: {','.join(known)}")
    unknown = [n for n in names if n not in ITEMS]
    if unknown:
        raise InputError(f"--only: unknown item {unknown[0]!r}; use {','.join(known)}")
    return [n for n in known if n in names]


def schedule_tag(schedule: str, quick: bool) -> str:
    return f"{schedule}-quick" if quick else schedule


def run_path(out: Path, config: Config | str, schedule: str, quick: bool, seed: int) -> Path:
    """``OUT/runs/CONFIG-SCHEDULE-sSEED`` of a configuration (or its name)."""
    name = config if isinstance(config, str) else config.name
    return out / "runs" / f"{name}-{schedule_tag(schedule, quick)}-s{seed}"


@dataclass
class Planned:
    """One configuration at one schedule and seed, and what to do with its folder."""

    config: Config
    schedule: str
    epochs: int
    run: PlannedRun


@dataclass
class Plan:
    """The runs the selected items need, each once, in the order they are carried out."""

    out: Path
    items: list[Item]
    seeds: list[int]
    quick: bool
    runs: list[Planned]


def data_folder(out: Path) -> Path:
    return out / "data"


def check_data(out: Path) -> Path:
    """``OUT/data``, which holds the benchmark or is still to be made (nothing is written)."""
    folder = data_folder(out)
    if folder.exists():
        info = read_json(folder / "annotations" / ANNOTATION_FILES["val"]).get("info", {})
        if info.get("key") != material.BENCHMARK.key():
            raise InputError(
                f"{folder} holds another dataset (key {info.get('key')!r}, the benchmark is "
                f"{material.BENCHMARK.key()!r}); use another --out"
            )
    return folder


def ensure_data(out: Path, progress: bool = False) -> Path:
    """The benchmark in ``OUT/data``: made if absent, else checked to be the benchmark."""
    folder = check_data(out)
    if not folder.exists():
        remove_leftovers(folder)  # of a reproduce killed while it made the data
        out.mkdir(parents=True, exist_ok=True)
        make_synthetic(folder, material.BENCHMARK, progress=progress)
    return folder


def plan_reproduce(
    out: Path,
    items: Sequence[str],
    seeds: int,
    *,
    seed: int = 0,
    quick: bool = False,
    machine: dict[str, Any] | None = None,
    progress: bool = False,
) -> Plan:
    """Every run the items need, once each, with what to do with its folder.

    ``machine`` holds the TrainConfig fields that say where runs go (device, workers,
    checkpoint_every). Raises InputError before any training, on a bad value or a folder of
    ``OUT/runs`` holding another configuration.
    """
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    if seed < 0:
        raise InputError(f"--seed must be at least 0, got {seed}")
    check_out_folder(out)
    selected = [ITEMS[k] for k in items]
    data = check_data(out).resolve()
    runs: list[Planned] = []
    seen: set[tuple[str, str]] = set()
    seed_list = list(range(seed, seed + seeds))
    for item in selected:
        epochs = (material.QUICK_EPOCHS if quick else material.EPOCHS)[item.schedule]
        for config in item.configs:
            if (config.name, item.schedule) in seen:
                continue
            if config.first_stage is not None and (config.first_stage, item.schedule) not in seen:
                raise ValueError(f"{config.name}: its first stage {config.first_stage} comes first")
            seen.add((config.name, item.schedule))
            values = {
                **(machine or {}),
                **config.values(epochs if quick else None, item.schedule),
                "data": str(data),
            }
            if quick:
                values["score_threshold"] = material.QUICK_SCORE_THRESHOLD
            for s in seed_list:
                path = run_path(out, config, item.schedule, quick, s)
                after: tuple[Path, ...] = ()
                run_epochs = epochs
                if config.first_stage is not None:  # trains from that seed's first stage
                    first = run_path(out, config.first_stage, item.schedule, quick, s)
                    after = (first.resolve(),)
                    values = {**values, "from_run": str(after[0])}
                    run_epochs = SECOND_STAGE_EPOCHS
                planned = plan_run(path, values, seed=s, temperature=None, after=after)
                runs.append(Planned(config, item.schedule, run_epochs, planned))
    ensure_data(out, progress)  # every run checked: only now is anything written
    return Plan(out, selected, seed_list, quick, runs)


# --- carrying the plan out ------------------------------------------------------------------------


def read_timings(out: Path) -> dict[str, float]:
    path = out / TIMINGS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}  # timings only estimate the time left: a broken file is as none
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}


def _write_timings(out: Path, timings: dict[str, float]) -> None:
    with atomic_path(out / TIMINGS) as tmp:
        Path(tmp).write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")


def seconds_per_epoch(plan: Plan, timings: dict[str, float]) -> float | None:
    """Mean wall time per epoch of the runs timed so far (trained from scratch, in this OUT)."""
    spans = [
        (timings[p.run.name], p.epochs) for p in plan.runs if p.run.name in timings and p.epochs
    ]
    if not spans:
        return None
    return sum(s for s, _ in spans) / sum(e for _, e in spans)


def remaining_seconds(plan: Plan, timings: dict[str, float], start: int) -> float | None:
    """Estimated wall time of the runs from index ``start`` on that still need work."""
    rate = seconds_per_epoch(plan, timings)
    if rate is None:
        return None
    todo = [p for p in plan.runs[start:] if p.run.action != SKIP]
    return rate * sum(p.epochs for p in todo)


def carry_out(
    plan: Plan,
    *,
    launcher: Launcher | None = None,
    progress: bool = True,
    console: Any = None,
    announce: Callable[[int, int, Planned, float | None], None] | None = None,
) -> bool:
    """Train, resume or evaluate every planned run with ``launcher`` (default: one at a time in
    this process, announcing each); record the wall time of each run trained from scratch.
    True when every run has ended (False: SLURM jobs still queued or running, --no-wait)."""
    launcher = launcher or LocalLauncher(1, progress=progress, console=console)
    timings = read_timings(plan.out)

    def done(i: int, run: PlannedRun) -> None:
        planned = plan.runs[i]
        fresh = planned.run.action in ("train", "restart")
        if fresh and run.status == FINISHED and run.seconds is not None:
            # Merged into what the file holds now: another reproduce on the same OUT (its runs
            # are locked apart) may have timed runs since this one read it.
            timings.update(read_timings(plan.out) | {run.name: round(run.seconds, 1)})
            _write_timings(plan.out, timings)
        if bar is not None:
            bar.advance(task)

    runs = [p.run for p in plan.runs]
    if isinstance(launcher, LocalLauncher) and launcher.jobs == 1:
        bar = task = None
        for i, planned in enumerate(plan.runs):
            if announce is not None:
                announce(i + 1, len(plan.runs), planned, remaining_seconds(plan, timings, i))
            launcher.run([planned.run], lambda _, run, i=i: done(i, run))
        return True
    with runs_progress(len(runs), progress, console) as (bar, task):
        return launcher.run(runs, done)
