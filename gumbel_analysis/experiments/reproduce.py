"""``gumbel reproduce``: train what the selected tables and figures need, then measure them.

Layout of ``OUT``::

    data/                      the embedded benchmark (material.BENCHMARK), made once
    runs/{config}-{schedule}-s{seed}/   one run folder per configuration and seed
    timings.json               wall time of every run this command trained or evaluated
    figures/ tables/ report.html   written by gumbel_analysis.experiments.report

Each run is planned as ``gumbel sweep`` plans its runs (experiments/plan.py): a finished run is
skipped, a killed one resumed, so a rerun of the command continues where it stopped and a run
that several items need is trained once.

Claims. Every claim of the paper that an item makes ("Gumbel > Sigmoid on APr") is judged on
the runs' per-seed values: Δ = mean − mean₀, and its standard error SE is that of the mean of the
per-seed differences when both sides ran the same seeds (paired: a pair shares its data order,
augmentation and backbone initialisation), else sqrt(s²/n + s₀²/n₀) (Welch). It *holds* when
Δ > 2·SE in the paper's direction, is *contradicted* when Δ < −2·SE, and is *not established*
otherwise, whatever the sign of Δ; with one seed per side there is no spread, so nothing is
established (run with ``--seeds 3``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.data.lvis_io import read_json
from gumbel_analysis.data.synthetic import ANNOTATION_FILES, make_synthetic
from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.material import ALL_ITEMS, ITEMS, Claim, Config, Item
from gumbel_analysis.experiments.plan import (
    SKIP,
    PlannedRun,
    check_out_folder,
    plan_run,
    run_plan,
)
from gumbel_analysis.experiments.runs import FINISHED, Run, read_run
from gumbel_analysis.experiments.table import SPREAD_FACTOR, Stat, compare, summarize
from gumbel_analysis.io import atomic_path

TIMINGS = "timings.json"
HOLDS, CONTRADICTED, NOT_ESTABLISHED, NO_RESULT = (
    "holds",
    "contradicted",
    "not established",
    "no result",
)


def parse_only(text: str | None, default: Sequence[str]) -> list[str]:
    """``table3,fig1`` -> the items in the material's order; InputError for an unknown name."""
    if text is None:
        return list(default)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(f"--only needs item names: {','.join(ALL_ITEMS)}")
    unknown = [n for n in names if n not in ITEMS]
    if unknown:
        raise InputError(f"--only: unknown item {unknown[0]!r}; use {','.join(ALL_ITEMS)}")
    return [n for n in ALL_ITEMS if n in names]


def schedule_tag(schedule: str, quick: bool) -> str:
    return f"{schedule}-quick" if quick else schedule


def run_path(out: Path, config: Config, schedule: str, quick: bool, seed: int) -> Path:
    return out / "runs" / f"{config.name}-{schedule_tag(schedule, quick)}-s{seed}"


@dataclass
class Planned:
    """One configuration at one schedule and seed, and what to do with its folder."""

    config: Config
    schedule: str
    epochs: int
    run: PlannedRun


@dataclass
class Plan:
    out: Path
    items: list[Item]
    seeds: list[int]
    quick: bool
    runs: list[Planned]

    def runs_of(self, config: Config, schedule: str) -> list[Planned]:
        return [p for p in self.runs if p.config.name == config.name and p.schedule == schedule]


def data_folder(out: Path) -> Path:
    return out / "data"


def ensure_data(out: Path, progress: bool = False) -> Path:
    """The benchmark in ``OUT/data``: made if absent, else checked to be the benchmark."""
    folder = data_folder(out)
    if not folder.exists():
        out.mkdir(parents=True, exist_ok=True)
        return make_synthetic(folder, material.BENCHMARK, progress=progress)
    info = read_json(folder / "annotations" / ANNOTATION_FILES["val"]).get("info", {})
    if info.get("key") != material.BENCHMARK.key():
        raise InputError(
            f"{folder} holds another dataset (key {info.get('key')!r}, the benchmark is "
            f"{material.BENCHMARK.key()!r}); use another --out"
        )
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
    from gumbel_analysis.engine.setup import check_loss_config

    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    if seed < 0:
        raise InputError(f"--seed must be at least 0, got {seed}")
    check_out_folder(out)
    selected = [ITEMS[k] for k in items]
    data = ensure_data(out, progress).resolve()
    runs: list[Planned] = []
    seen: set[tuple[str, str]] = set()
    seed_list = list(range(seed, seed + seeds))
    for item in selected:
        epochs = (material.QUICK_EPOCHS if quick else material.EPOCHS)[item.schedule]
        for config in item.configs:
            if (config.name, item.schedule) in seen:
                continue
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
                planned = plan_run(path, values, check_loss_config, seed=s, temperature=None)
                runs.append(Planned(config, item.schedule, epochs, planned))
    return Plan(out, selected, seed_list, quick, runs)


# --- carrying the plan out ------------------------------------------------------------------------


def read_timings(out: Path) -> dict[str, float]:
    path = out / TIMINGS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
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
    progress: bool = True,
    console: Any = None,
    announce: Callable[[int, int, Planned, float | None], None] | None = None,
) -> None:
    """Train, resume or evaluate every planned run in order; record each one's wall time."""
    timings = read_timings(plan.out)
    for i, planned in enumerate(plan.runs):
        if announce is not None:
            announce(i + 1, len(plan.runs), planned, remaining_seconds(plan, timings, i))
        fresh = planned.run.action in ("train", "restart")
        run_plan([planned.run], progress=progress, console=console)
        if fresh and planned.run.status == FINISHED and planned.run.seconds is not None:
            timings[planned.run.name] = round(planned.run.seconds, 1)
            _write_timings(plan.out, timings)


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    delta: float | None = None  # better - worse, at the closest margin
    se: float | None = None
    against: str | None = None  # the configuration of that margin
    n: tuple[int, int] = (0, 0)
    detail: str = ""

    @property
    def seeds_needed(self) -> int | None:
        """Not established with a spread: the seeds per side that would resolve ``delta``."""
        if self.verdict != NOT_ESTABLISHED or self.delta is None or self.se is None:
            return None
        return seeds_to_resolve(self.delta, self.se, min(self.n))

    def as_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim.text,
            "metric": self.claim.metric,
            "paper": self.claim.paper,
            "verdict": self.verdict,
            "delta": self.delta,
            "se": self.se,
            "against": self.against,
            "n": list(self.n),
            "detail": self.detail or None,
            "seeds_needed": self.seeds_needed,
            "text": verdict_text(self),
        }


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
        return summarize(list(self.by_seed(config, schedule, metric).values()))


def measure_runs(plan: Plan) -> Measured:
    """Read every planned run and the AP metrics of the finished ones."""
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


def finished_by_seed(measured: Measured, config: str, schedule: str) -> dict[int, Run]:
    return {
        int(r.seed): r for r in measured.runs.get((config, schedule), []) if r.status == FINISHED
    }


def difference(
    measured: Measured, config: str, other: str, schedule: str, metric: str
) -> tuple[float, float | None]:
    """(Δ, SE) of ``config`` − ``other`` on ``metric``: paired over seeds when both sides have
    the same two or more seeds (a pair shares its data order, augmentation and backbone
    initialisation), else Welch's SE of two independent means (None with one run on a side)."""
    a = measured.by_seed(config, schedule, metric)
    b = measured.by_seed(other, schedule, metric)
    if len(a) >= 2 and set(a) == set(b):
        diffs = [a[s] - b[s] for s in sorted(a)]
        stat = summarize(diffs)
        return stat.mean, stat.std / math.sqrt(stat.n)
    d = compare(summarize(list(a.values())), summarize(list(b.values())))
    return d.delta, d.se


def judge(claim: Claim, measured: Measured, schedule: str) -> Verdict:
    """The claim's verdict on the per-seed values (see the module docstring)."""
    sign = -1.0 if claim.lower_is_better else 1.0
    best = measured.stat(claim.better, schedule, claim.metric)
    margins = []  # (margin in the claim's direction, delta, se, other, n)
    for other in claim.worse:
        base = measured.stat(other, schedule, claim.metric)
        if best is None or base is None:
            missing = claim.better if best is None else other
            return Verdict(claim, NO_RESULT, detail=f"no finished run of {missing}")
        delta, se = difference(measured, claim.better, other, schedule, claim.metric)
        margins.append((sign * delta, delta, se, other, (best.n, base.n)))
    closest = min(margins, key=lambda m: m[0])
    _, delta, se, other, n = closest
    if any(m[2] is None for m in margins):
        return Verdict(claim, NOT_ESTABLISHED, delta, None, other, n, "one seed: no spread")
    against = [m for m in margins if m[0] < -SPREAD_FACTOR * m[2]]
    if against:
        worst = min(against, key=lambda m: m[0] / m[2] if m[2] else m[0])
        return Verdict(claim, CONTRADICTED, worst[1], worst[2], worst[3], worst[4])
    if all(m[0] > SPREAD_FACTOR * m[2] for m in margins):
        return Verdict(claim, HOLDS, delta, se, other, n)
    return Verdict(claim, NOT_ESTABLISHED, delta, se, other, n, "within the seed spread")


#: Above this many seeds, "seeds needed" is reported as "more than".
MAX_SEEDS_NEEDED = 1000


def seeds_to_resolve(delta: float, se: float, seeds: int) -> int | None:
    """Seeds per side at which a difference of ``|delta|`` would exceed ``SPREAD_FACTOR``
    standard errors, if the per-seed spread stays as measured with ``seeds`` seeds.

    SE shrinks as 1/sqrt(seeds) (paired or Welch, with equal seeds per side), so the smallest
    n' with ``|delta| > SPREAD_FACTOR * se * sqrt(seeds / n')`` is
    ``floor(seeds * (SPREAD_FACTOR * se / |delta|)^2) + 1``. None for a zero difference, and
    above MAX_SEEDS_NEEDED, MAX_SEEDS_NEEDED + 1 (read: more than MAX_SEEDS_NEEDED).
    """
    if delta == 0 or seeds < 1:
        return None
    ratio = seeds * (SPREAD_FACTOR * se / abs(delta)) ** 2
    if ratio >= MAX_SEEDS_NEEDED:
        return MAX_SEEDS_NEEDED + 1

    def resolves(count: int) -> bool:
        return abs(delta) > SPREAD_FACTOR * se * math.sqrt(seeds / count)

    # floor(ratio) - 1 cannot resolve even with rounding; step up from floor(ratio), which
    # decides an exact boundary (ratio an integer) the way the criterion is evaluated
    needed = max(1, math.floor(ratio))
    while not resolves(needed):
        needed += 1
    return needed


_METRIC_WORDS = {"kl_mean": ("KL", " nats", 3)}


def verdict_text(v: Verdict, digits: int = 1) -> str:
    """``holds: ΔAPr = +3.2 ± 1.1 (SE), 3 and 3 seeds`` and the like."""
    if v.verdict == NO_RESULT:
        return f"no result ({v.detail})"
    metric = v.claim.metric
    name, unit, digits = _METRIC_WORDS.get(metric, (metric, "", digits))
    if metric.startswith("grad_"):
        group = {"all": "all", "r": "rare", "c": "common", "f": "frequent"}[metric[5:]]
        name, unit, digits = f"gradient ({group})", " dB", 2
    label = material.CONFIG_LABELS.get(v.against or "", v.against)
    against = f" vs {label}" if len(v.claim.worse) > 1 else ""
    text = f"{v.verdict}: Δ{name}{against} = {v.delta:+.{digits}f}{unit}"
    if v.se is not None:
        text += f" ± {v.se:.{digits}f} (SE), {v.n[0]} and {v.n[1]} seeds"
    if v.detail == "one seed: no spread":
        return text + " (one seed: no spread; use --seeds 3)"
    text += f"; {v.detail}" if v.detail else ""
    if v.seeds_needed is not None:
        more = "more than " if v.seeds_needed > MAX_SEEDS_NEEDED else "about "
        count = min(v.seeds_needed, MAX_SEEDS_NEEDED)
        text += f" (a difference this size needs {more}{count} seeds per side)"
    return text


def _paired_seeds(measured: Measured, names: Sequence[str], schedule: str) -> list[list[Run]]:
    """Per seed that every named configuration finished: their runs, in the order of names."""
    by_seed = [finished_by_seed(measured, n, schedule) for n in names]
    common = sorted(set.intersection(*(set(b) for b in by_seed))) if by_seed else []
    return [[b[s] for b in by_seed] for s in common]


def measure_gradients(measured: Measured, item: Item) -> Any:
    """Fig. 2: per seed, the mean positive gradient (dB) per frequency group of each of the
    item's runs, added to ``measured`` as ``grad_all``, ``grad_r``, ...; returns the comparison
    of the first seed (for the figure), or None."""
    from gumbel_analysis.analysis.gradients import GROUPS, compare_logs, read_grad_log

    names = [c.name for c in item.configs]
    first = None
    for runs in _paired_seeds(measured, names, item.schedule):
        comparison = compare_logs(
            [read_grad_log(r.path) for r in runs], [c.label for c in item.configs]
        )
        summary = comparison.to_dict()["runs"]
        for name, entry in zip(names, summary, strict=True):
            for group in GROUPS:
                value = entry["groups"][group]
                if math.isfinite(value):
                    measured.add(name, item.schedule, f"grad_{group}", runs[0].seed, value)
        first = first or comparison
    return first


def measure_kl(measured: Measured, item: Item, data: Path) -> Any:
    """Fig. 3: per seed, each run's mean per-image KL(target || predicted), added to
    ``measured`` as ``kl_mean``; returns the comparison of the first seed, or None."""
    from gumbel_analysis.analysis.kl import compare_runs

    names = [c.name for c in item.configs]
    gt = data / "annotations" / ANNOTATION_FILES["val"]
    first = None
    for runs in _paired_seeds(measured, names, item.schedule):
        comparison = compare_runs(
            gt, [r.path / "results.json" for r in runs], [c.label for c in item.configs]
        )
        for name, entry in zip(names, comparison.to_dict()["runs"], strict=True):
            if math.isfinite(entry["kl_mean"]):
                measured.add(name, item.schedule, "kl_mean", runs[0].seed, entry["kl_mean"])
        first = first or comparison
    return first
