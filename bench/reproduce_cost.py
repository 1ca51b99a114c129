"""Seconds per 1x run of ``gumbel reproduce`` by configuration kind, serial against ``--jobs N``.

Each kind (Softmax, Sigmoid, Gumbel, a DropLoss-family method, RFS) is trained once on the
embedded benchmark, first one run at a time in this process with every core (what
``gumbel reproduce`` did before ``--jobs``), then all kinds again ``--jobs N`` at a time with
``cores // N`` threads each, through the launcher the command uses. The ratio is the
throughput gain, measured in one invocation. From the seconds per kind it projects the wall
time of the whole material (every item, 1x and 2x runs) at 1 and 3 seeds.

    python bench/reproduce_cost.py                      # full 1x runs (12 epochs): hours
    python bench/reproduce_cost.py --epochs 2 --kinds softmax,gumbel --spec tiny   # a check

With ``--epochs E`` below 12 the 1x cost is ``seconds * 12 / E`` (an upper bound: evaluation
does not grow with the epochs), and a 2x run is counted as twice a 1x run (likewise). No
accuracy metric is printed: the benchmark is decided on speed and spread alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gumbel_analysis.data.synthetic import SyntheticSpec, default_cache_root, make_synthetic
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.launch import LocalLauncher, cpu_cores
from gumbel_analysis.experiments.plan import plan_run

#: The configuration kinds and the material's configuration that stands for each.
KINDS = {
    "softmax": material.SOFTMAX,
    "sigmoid": material.SIGMOID,
    "gumbel": material.GUMBEL,
    "droploss": next(c for i in material.ITEMS.values() for c in i.configs if c.loss == "droploss"),
    "rfs": next(c for i in material.ITEMS.values() for c in i.configs if c.sampler == "rfs"),
}
TINY = SyntheticSpec(classes=5, train_images=20, val_images=6, size=64, seed=2)


def kind_of(config: material.Config) -> str | None:
    """The kind whose cost stands for a configuration (None: the mean of the kinds)."""
    if config.sampler == "rfs":
        return "rfs"
    if config.loss in ("droploss", "gol", "gol-star"):
        return "droploss"
    if config.loss in ("softmax", "sigmoid", "gumbel"):
        return config.loss
    return None


def material_runs() -> list[tuple[material.Config, str]]:
    """Every (configuration, schedule) the whole material trains per seed, each once."""
    seen, runs = set(), []
    for item in material.ITEMS.values():
        for config in item.configs:
            if (config.name, item.schedule) not in seen:
                seen.add((config.name, item.schedule))
                runs.append((config, item.schedule))
    return runs


def plans(kinds: list[str], data: Path, root: Path, epochs: int, tag: str) -> list:
    values = {"data": str(data), "workers": 0, "device": "cpu"}
    return [
        plan_run(root / f"{kind}-{tag}", {**values, **KINDS[kind].values(epochs, "1x")}, seed=0)
        for kind in kinds
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=material.EPOCHS["1x"])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--spec", choices=("benchmark", "tiny"), default="benchmark")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or args.epochs < 1 or args.jobs < 1:
        parser.error(f"--kinds from {','.join(KINDS)}; --epochs and --jobs at least 1")
    spec = material.BENCHMARK if args.spec == "benchmark" else TINY
    data = default_cache_root() / f"reproduce-cost-{spec.key()}"
    if not data.exists():
        make_synthetic(data, spec)
    root = Path(tempfile.mkdtemp(prefix="reproduce-cost-"))
    try:
        serial = {}
        for item in plans(kinds, data, root, args.epochs, "serial"):
            LocalLauncher(1, progress=False).run([item])
            serial[item.path.name.rsplit("-", 1)[0]] = item.seconds
        parallel_plans = plans(kinds, data, root, args.epochs, "jobs")
        start = time.perf_counter()
        LocalLauncher(args.jobs, progress=False).run(parallel_plans)
        jobs_wall = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    scale = material.EPOCHS["1x"] / args.epochs
    per_run = {k: s * scale for k, s in serial.items()}  # seconds per 1x run, serial
    gain = sum(serial.values()) / jobs_wall  # runs per unit time, --jobs over serial
    mean = sum(per_run.values()) / len(per_run)
    one_seed = sum(
        per_run.get(kind_of(c) or "", mean) * (2 if schedule == "2x" else 1)
        for c, schedule in material_runs()
    )
    report = {
        "epochs": args.epochs,
        "projected_from_epochs": args.epochs != material.EPOCHS["1x"],
        "spec": spec.key(),
        "cores": cpu_cores(),
        "jobs": args.jobs,
        "seconds_serial": serial,
        "seconds_per_1x_run_serial": per_run,
        "jobs_wall_seconds": jobs_wall,
        "throughput_ratio_jobs_over_serial": gain,
        "material_runs_per_seed": len(material_runs()),
        "projected_hours": {
            "serial_1_seed": one_seed / 3600,
            "serial_3_seeds": 3 * one_seed / 3600,
            "jobs_1_seed": one_seed / gain / 3600,
            "jobs_3_seeds": 3 * one_seed / gain / 3600,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    note = f" (projected from {args.epochs} epochs)" if report["projected_from_epochs"] else ""
    table = Table(title=f"seconds per 1x run{note}, {report['cores']} cores")
    for col in ("kind", "serial s", "1x s"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind in serial:
        table.add_row(kind, f"{serial[kind]:.1f}", f"{per_run[kind]:.1f}")
    console = Console()
    console.print(table)
    console.print(
        f"--jobs {args.jobs}: {len(kinds)} runs in {jobs_wall:.1f} s against "
        f"{sum(serial.values()):.1f} s serial: {gain:.2f}x the throughput"
    )
    hours = report["projected_hours"]
    if report["projected_from_epochs"]:
        console.print(
            f"upper bound: each run's evaluation is counted {scale:g} times; with few epochs "
            "it dominates, so read the throughput ratio, not these hours"
        )
    console.print(
        f"the whole material ({report['material_runs_per_seed']} runs per seed): serial "
        f"{hours['serial_1_seed']:.1f} h per seed, {hours['serial_3_seeds']:.1f} h with 3; "
        f"--jobs {args.jobs} {hours['jobs_1_seed']:.1f} h and {hours['jobs_3_seeds']:.1f} h"
    )


if __name__ == "__main__":
    main()
