"""The temperature sweep of Sec. 1.2 / Fig. 1.ii: one training run per temperature sigma (Eq. 3)
and seed, in one sweep folder, then AP and AP^r against sigma.

Every run lives in ``OUT/t{sigma}-s{seed}`` and is a plain run folder (``gumbel train --out``).
A rerun of the same sweep looks at each folder first (see :func:`plan_sweep`): finished runs are
skipped, runs with a checkpoint are resumed (the engine's ``--resume``), a run killed before its
first checkpoint is started again, and a trained run without metrics is evaluated. So a killed
sweep continues where it stopped, and more temperatures or seeds can be added later.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments.launch import Launcher, LocalLauncher, runs_progress
from gumbel_analysis.experiments.plan import (  # noqa: F401 - the sweep's vocabulary
    EVALUATE,
    RESTART,
    RESUME,
    SKIP,
    TRAIN,
    PlannedRun,
    check_out_folder,
    plan_run,
)
from gumbel_analysis.experiments.runs import FAILED, is_run_folder, read_run
from gumbel_analysis.experiments.table import ResultTable, build_table
from gumbel_analysis.spec.losses import TEMPERATURE_OPTION

FIGURE_NAME = "figure_1ii.png"


def run_sweep(
    plan: list[PlannedRun],
    *,
    launcher: Launcher | None = None,
    progress: bool = True,
    console: Any = None,
    announce: Callable[[int, int, PlannedRun], None] | None = None,
) -> bool:
    """Carry out the sweep's runs with ``launcher`` (default: one at a time in this process,
    announcing each). True when every run has ended (False: SLURM jobs still out)."""
    launcher = launcher or LocalLauncher(1, progress=progress, console=console)
    if isinstance(launcher, LocalLauncher) and launcher.jobs == 1:
        for i, item in enumerate(plan, 1):
            if announce is not None:
                announce(i, len(plan), item)
            launcher.run([item])
        return True
    if plan:
        # The embedded data is made (and cached) here, once, before any child or job starts:
        # children racing to make it would each write a copy.
        from gumbel_analysis.engine.setup import data_paths

        data_paths(plan[0].values.get("data"))
    with runs_progress(len(plan), progress, console) as (bar, task):
        return launcher.run(plan, lambda i, run: bar.advance(task) if bar is not None else None)


def run_name(temperature: float, seed: int) -> str:
    """``t0.8-s0``: the folder of one run of the sweep."""
    return f"t{temperature:g}-s{seed}"


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
    """Each sigma checked by the Gumbel activation's declared ``--temperature`` option, once."""
    if not temperatures:
        raise InputError("--temperature needs at least one value")
    seen: list[float] = []
    for t in temperatures:
        t = TEMPERATURE_OPTION.check(t)
        if any(run_name(t, 0) == run_name(s, 0) for s in seen):
            raise InputError(f"--temperature {t:g} is given twice")
        seen.append(float(t))
    return seen


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
            options = {**base.get("loss_options", {}), "temperature": t}
            values = {**base, "loss_options": options}
            plan.append(plan_run(out / run_name(t, s), values, check_loss, seed=s, temperature=t))
    return plan


def _loss_checker() -> Callable[[Any], Any]:
    """A sweep's check of a resolved config: the activation must be Gumbel (the only one with a
    temperature)."""

    def check(cfg: Any) -> Any:
        if cfg.activation != "gumbel":
            raise InputError(
                f"--loss {cfg.loss} with the {cfg.activation} activation has no temperature; "
                "sweep a loss with the Gumbel activation (gumbel, gol, gol-star, or "
                "--activation gumbel)"
            )
        return cfg

    return check


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
