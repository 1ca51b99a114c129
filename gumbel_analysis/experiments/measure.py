"""Measuring what ``gumbel reproduce`` ran: the per-seed values of every metric of every planned
run, and what an item of the material sees when it measures and draws (:class:`ItemContext`,
:class:`Measurement`).

An item's ``measure`` adds the values it computes itself (Fig. 2's gradients, Fig. 3's KL
divergences) to :class:`Measured`, so that its claims are judged on them like on AP; its
``draw`` writes its figures from what ``measure`` returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gumbel_analysis.experiments import stats
from gumbel_analysis.experiments.runs import FINISHED, Run, read_run
from gumbel_analysis.experiments.stats import Delta, Stat

if TYPE_CHECKING:
    from gumbel_analysis.experiments.material import Item
    from gumbel_analysis.experiments.reproduce import Plan
    from gumbel_analysis.experiments.tabular import Table


@dataclass
class Measured:
    """Per configuration (name, schedule): its runs and per-seed values of every metric."""

    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    values: dict[tuple[str, str, str], dict[int, float]] = field(default_factory=dict)

    def add(self, config: str, schedule: str, metric: str, seed: int, value: float) -> None:
        self.values.setdefault((config, schedule, metric), {})[int(seed)] = float(value)

    def by_seed(self, config: str, schedule: str, metric: str) -> dict[int, float]:
        return self.values.get((config, schedule, metric), {})

    def stat(self, config: str, schedule: str, metric: str) -> Stat | None:
        """Mean and sample std over seeds (None without a value)."""
        return stats.summarize(list(self.by_seed(config, schedule, metric).values()))

    def difference(self, config: str, other: str, schedule: str, metric: str) -> Delta | None:
        """``config`` − ``other`` on ``metric``, paired over shared seeds (stats.difference)."""
        a = self.by_seed(config, schedule, metric)
        return stats.difference(a, self.by_seed(other, schedule, metric))

    def finished(self, config: str, schedule: str) -> dict[int, Run]:
        """The configuration's finished runs by seed."""
        runs = self.runs.get((config, schedule), [])
        return {int(r.seed): r for r in runs if r.status == FINISHED}

    def paired_seeds(self, names: Sequence[str], schedule: str) -> list[list[Run]]:
        """Per seed that every named configuration finished: their runs, in the order of names."""
        by_seed = [self.finished(n, schedule) for n in names]
        common = sorted(set.intersection(*(set(b) for b in by_seed))) if by_seed else []
        return [[b[s] for b in by_seed] for s in common]


def measure_runs(plan: Plan) -> Measured:
    """Read every planned run and the metrics (AP, APr, ...) of the finished ones."""
    measured = Measured()
    for planned in plan.runs:
        key = (planned.config.name, planned.schedule)
        run = read_run(planned.run.path) if planned.run.path.exists() else None
        if run is None:
            continue
        measured.runs.setdefault(key, []).append(run)
        if run.status != FINISHED:
            continue
        for metric, value in (run.metrics or {}).items():
            if isinstance(value, int | float) and math.isfinite(value):
                measured.add(*key, metric, run.seed, value)
    return measured


@dataclass
class ItemContext:
    """What an item's ``measure`` and ``draw`` see."""

    item: Item
    measured: Measured
    data: Path  # the benchmark's folder (annotations/, images/)
    figures: Path  # where ``draw`` writes its PNG files


@dataclass
class Measurement:
    """What an item's ``measure`` found beyond the runs' own metrics."""

    tables: list[Table] = field(default_factory=list)  # shown below the item's metrics table
    drawable: Any = None  # what its ``draw`` needs (Fig. 2: the first seed's comparison)


class Figure(NamedTuple):
    caption: str
    path: Path


def measure_nothing(ctx: ItemContext) -> Measurement:
    """The measure of an item whose values are the runs' metrics (the tables)."""
    return Measurement()


def draw_nothing(ctx: ItemContext, measurement: Measurement) -> list[Figure]:
    """The draw of an item without figures."""
    return []
