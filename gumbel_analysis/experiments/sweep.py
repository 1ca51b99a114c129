"""The temperature sweep of Sec. 1.2 / Fig. 1.ii: one training run per temperature sigma (Eq. 3)
and seed, in one sweep folder, then AP and AP^r against sigma.

Every run lives in ``OUT/t{sigma}-s{seed}`` and is a plain run folder (``gumbel train --out``).
A rerun of the same sweep looks at each folder first (see :func:`plan_sweep`): finished runs are
skipped, runs with a checkpoint are resumed (the engine's ``--resume``), a run killed before its
first checkpoint is started again, and a trained run without metrics is evaluated. So a killed
sweep continues where it stopped, and more temperatures or seeds can be added later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.errors import InputError, TrainingError
from gumbel_analysis.experiments.runs import (
    CONFIG,
    DIVERGED,
    FAILED,
    FINISHED,
    LAST,
    MACHINE_FIELDS,
    METRICS_LOG,
    NOT_EVALUATED,
    Run,
    is_run_folder,
    read_run,
    run_status,
    run_temperature,
)
from gumbel_analysis.experiments.table import ResultTable, build_table

#: What the sweep does with each run folder.
TRAIN, RESUME, RESTART, EVALUATE, SKIP = "train", "resume", "restart", "evaluate", "skip"
#: Files a run writes before its first checkpoint: a restart removes them (and nothing else).
_PRE_CHECKPOINT_FILES = frozenset({CONFIG, METRICS_LOG, "grads.h5"})
FIGURE_NAME = "figure_1ii.png"


def run_name(temperature: float, seed: int) -> str:
    """``t0.8-s0``: the folder of one run of the sweep."""
    return f"t{temperature:g}-s{seed}"


@dataclass
class PlannedRun:
    temperature: float
    seed: int
    path: Path
    values: dict[str, Any]  # TrainConfig.from_dict input
    action: str
    state: str  # the folder's status before the sweep ("new" if absent)
    # Filled by run_sweep.
    status: str = ""
    metrics: dict[str, Any] | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return self.path.name

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
            "metrics": self.metrics,
        }


@dataclass
class SweepResult:
    out: Path
    runs: list[PlannedRun]
    table: ResultTable
    figure: Path | None = None
    points: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.status == FAILED]

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "figure": str(self.figure) if self.figure else None,
            "runs": [r.as_dict() for r in self.runs],
            "points": self.points,
            "table": self.table.as_dict(),
        }


def check_temperatures(temperatures: Sequence[float]) -> list[float]:
    if not temperatures:
        raise InputError("--temperature needs at least one value")
    seen: list[float] = []
    for t in temperatures:
        if not (math.isfinite(t) and t > 0):
            raise InputError(f"--temperature must be positive and finite, got {t}")
        if any(run_name(t, 0) == run_name(s, 0) for s in seen):
            raise InputError(f"--temperature {t:g} is given twice")
        seen.append(float(t))
    return seen


def check_out_folder(out: Path) -> None:
    """The sweep folder is a folder, or can be made: its nearest existing parent is a writable
    folder."""
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


def plan_sweep(
    base: dict[str, Any],
    temperatures: Sequence[float],
    seeds: int,
    seed: int,
    out: str | os.PathLike,
) -> list[PlannedRun]:
    """One planned run per temperature and seed (``seed, seed + 1, ...``), each with what to do.

    ``base`` holds the TrainConfig fields common to all runs. Raises InputError, before
    anything is written, when a value is invalid or a folder holds something the sweep must not
    touch: a run of another configuration, or a run to restart with unknown files in it.
    """
    from gumbel_analysis.engine.config import TrainConfig, resolve

    temperatures = check_temperatures(temperatures)
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    if seed < 0:
        raise InputError(f"--seed must be at least 0, got {seed}")
    check_loss = _loss_checker()
    out = Path(out)
    check_out_folder(out)
    plan: list[PlannedRun] = []
    for t in temperatures:
        for s in range(seed, seed + seeds):
            path = out / run_name(t, s)
            options = {**base.get("loss_options", {}), "temperature": t}
            values = {**base, "loss_options": options, "seed": s, "out": str(path)}
            values["evaluate"] = True
            resolved = check_loss(resolve(TrainConfig.from_dict(values)))  # fails here, not later
            action, state = _action(path, resolved.to_dict())
            plan.append(PlannedRun(t, s, path, values, action, state))
    return plan


def _loss_checker() -> Callable[[Any], Any]:
    """The engine's check of a config's loss, activation and options, plus: the activation must
    be Gumbel (the only one with a temperature)."""
    from gumbel_analysis.engine.setup import check_loss_config

    def check(cfg: Any) -> Any:
        cfg = check_loss_config(cfg)
        if cfg.activation != "gumbel":
            raise InputError(
                f"--loss {cfg.loss} with the {cfg.activation} activation has no temperature; "
                "sweep a loss with the Gumbel activation (gumbel, gol, gol-star, or "
                "--activation gumbel)"
            )
        return cfg

    return check


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
    if (path / LAST).is_file():
        return RESUME, status
    extra = [p.name for p in path.iterdir() if not _restartable_file(p.name)]
    if extra:
        raise InputError(
            f"{path} has no checkpoint to resume and holds files a restart would not remove "
            f"({', '.join(sorted(extra))}); move them or use another --out"
        )
    return RESTART, status


def _restartable_file(name: str) -> bool:
    # Half-written temporary files of io.atomic_path / checkpoint saves: ".NAME.XXXX.tmp..."
    return name in _PRE_CHECKPOINT_FILES or (name.startswith(".") and ".tmp" in name)


#: Derived from other fields or from the machine (world size, mixed precision on CUDA).
_DERIVED_FIELDS = frozenset({"lr", "world_size", "amp"})


def _check_same_config(run: Run, wanted: dict[str, Any]) -> None:
    """A folder of the sweep must hold a run of the configuration asked for: ``wanted`` is the
    resolved config; every field but the machine's and the derived ones must match, so that an
    option left out on a rerun (its default) does not silently reuse runs made with it. A loss
    option left to the data (None, e.g. lambda) matches what the run derived."""
    for key, value in wanted.items():
        if key in MACHINE_FIELDS or key in _DERIVED_FIELDS:
            continue
        have = run.config.get(key)
        if key == "loss_options":
            have, value = dict(have or {}), {k: v for k, v in value.items() if v is not None}
            have = {k: have.get(k) for k in value}
            have["temperature"] = run_temperature(run.config)  # also a pre-loss_options run
        if isinstance(value, tuple):
            value = list(value)
        if have != value:
            raise InputError(
                f"{run.path} holds a run with {key} = {have!r}, not {value!r}: a sweep folder "
                "holds one configuration; use another --out"
            )


def run_sweep(
    plan: Sequence[PlannedRun],
    *,
    progress: bool = True,
    console: Any = None,
    announce: Callable[[int, int, PlannedRun], None] | None = None,
) -> None:
    """Carry out ``plan`` in order; a run whose loss becomes non-finite is marked failed and the
    sweep goes on. Each run's status and metrics are filled in."""
    from gumbel_analysis.engine.config import TrainConfig
    from gumbel_analysis.engine.inference import evaluate_checkpoint
    from gumbel_analysis.engine.train import train

    for i, item in enumerate(plan, 1):
        if announce is not None:
            announce(i, len(plan), item)
        try:
            if item.action == RESTART:
                for child in item.path.iterdir():
                    child.unlink()
            if item.action in (TRAIN, RESTART, RESUME):
                cfg = TrainConfig.from_dict(item.values)
                train(cfg, resume=item.action == RESUME, progress=progress, console=console)
            elif item.action == EVALUATE:
                evaluate_checkpoint(
                    item.path, device=item.values.get("device", "auto"), progress=progress
                )
        except TrainingError as err:
            item.error = " ".join(str(err).split())
        run = read_run(item.path)
        item.status = run.status
        item.metrics = run.metrics
        if run.status == FAILED and not item.error:
            item.error = f"the loss became non-finite earlier; see {item.path / DIVERGED}"


def sweep_table(plan: Sequence[PlannedRun], digits: int = 1) -> ResultTable:
    """The sweep's table (one row per temperature, mean and spread over seeds)."""
    runs = [read_run(item.path) for item in plan if is_run_folder(item.path)]
    return build_table(runs, digits=digits)


def figure_points(table: ResultTable) -> list[dict[str, Any]]:
    """Per temperature: AP and APr mean, std and n (the finished rows only), sorted by sigma."""
    points = []
    for row in table.finished_rows:
        t = row.descriptors.get("temperature")
        if t is None:
            continue
        point: dict[str, Any] = {"temperature": t}
        for m in ("AP", "APr"):
            stat = row.metrics.get(m)
            point[m] = stat.as_dict() if stat else None
        points.append(point)
    return sorted(points, key=lambda p: p["temperature"])


def plot_sweep(points: Sequence[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Fig. 1.ii: AP and APr against sigma, error bars one sample std over seeds (none where a
    temperature has one run). Written atomically by its suffix."""
    from gumbel_analysis.analysis.plots import apply_style, plt, save_figure

    apply_style()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for metric, marker in (("AP", "o"), ("APr", "s")):
        pts = [(p["temperature"], p[metric]) for p in points if p[metric] is not None]
        if not pts:
            continue
        xs = [t for t, _ in pts]
        ys = [s["mean"] for _, s in pts]
        err = [s["std"] if s["std"] is not None else 0.0 for _, s in pts]
        ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=f"{metric} (mask)")
    ax.set_xlabel("temperature σ")
    ax.set_ylabel("AP (%)")
    ax.set_xticks(sorted({p["temperature"] for p in points}))
    ax.set_title(title)
    # Below the axes: inside, the legend can hide the error bars it explains.
    ax.legend(
        title="error bars: ±1 sample std over seeds",
        title_fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=2,
        frameon=False,
    )
    return save_figure(fig, path)
