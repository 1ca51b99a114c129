"""Seconds per 1x run of ``gumbel reproduce`` by configuration kind, before and after, in one run.

Each kind (Softmax, Sigmoid, Gumbel, a DropLoss-family method, RFS) is trained on the embedded
benchmark once per variant of the code: ``--before REV`` (a git revision), the working tree, and
with ``--amp`` the working tree with mixed precision (bfloat16 on the CPU). Every run is a
``gumbel train`` process of its variant's source, ``--jobs N`` at a time with ``cores // N``
threads each, as ``gumbel reproduce --jobs N`` runs them; the variants of one kind run side by
side, so drift and contention hit them alike. The ratios are against the first variant.

From the seconds per kind it projects the wall time of the whole material (every item, 1x and
2x runs) at 1 and 3 seeds: each run's measured seconds, ``N`` runs at a time.

    python bench/reproduce_cost.py --before e956ff0 --amp           # full 1x runs: hours
    python bench/reproduce_cost.py --epochs 2 --kinds softmax,gumbel --spec tiny   # a check

With ``--epochs E`` below 12 the 1x cost is the run's seconds plus its training seconds (from
its metrics.jsonl) times ``12 / E - 1``: evaluation and start-up do not grow with the epochs. A
2x run is counted as a 1x run plus its training seconds once more. No
accuracy metric is printed: the benchmark is decided on speed and spread alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gumbel_analysis.data.synthetic import SyntheticSpec, default_cache_root, make_synthetic
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.launch import cpu_cores

REPO = Path(__file__).resolve().parents[1]
#: The configuration kinds and the material's configuration that stands for each.
KINDS = {
    "softmax": material.SOFTMAX,
    "sigmoid": material.SIGMOID,
    "gumbel": material.GUMBEL,
    "droploss": next(c for i in material.ITEMS.values() for c in i.configs if c.loss == "droploss"),
    "rfs": next(c for i in material.ITEMS.values() for c in i.configs if c.sampler == "rfs"),
}
TINY = SyntheticSpec(classes=5, train_images=20, val_images=6, size=64, seed=2)
#: Where a variant's source is assembled: cli/ and hooks/ go inside the package, as installed.
_PACKAGE_PARTS = {"gumbel_analysis": "", "cli": "cli", "hooks": "hooks"}


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


def assemble_source(rev: str | None, into: Path) -> Path:
    """A folder to put first on PYTHONPATH that imports ``gumbel_analysis`` (its cli and hooks
    included) from git revision ``rev``, or from the working tree when ``rev`` is None."""
    if rev is None:
        src = REPO
    else:
        src = into / "checkout"
        src.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, *_PACKAGE_PARTS],
            check=True,
            capture_output=True,
        ).stdout
        archive_path = into / "source.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(src, filter="data")
    package = into / "pythonpath" / "gumbel_analysis"
    shutil.copytree(src / "gumbel_analysis", package, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("cli", "hooks"):
        shutil.copytree(src / part, package / part, ignore=shutil.ignore_patterns("__pycache__"))
    return into / "pythonpath"


def train_command(kind: str, data: Path, out: Path, epochs: int, amp: bool, config: Path) -> list:
    values = {
        **KINDS[kind].values(epochs, "1x"),
        "data": str(data),
        "out": str(out),
        "workers": 0,
        "device": "cpu",
        "seed": 0,
        "amp": amp,
    }
    config.write_text(json.dumps(values))
    return [sys.executable, "-m", "gumbel_analysis", "train", "--config", str(config)]


def training_seconds(run: Path) -> float:
    """Seconds the run's iterations took, from the intervals its metrics.jsonl logged."""
    total, last = 0.0, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        total += record["sec_per_iter"] * (record["iteration"] - last)
        last = record["iteration"]
    return total


def timed(command: list, pythonpath: Path, threads: int, log: Path) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": str(pythonpath),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    start = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(
            [*command, "--no-progress"],
            env=env,
            cwd=log.parent,  # not this checkout: python -m puts the working folder first
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=material.EPOCHS["1x"])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--before", metavar="REV", help="also time this git revision (first)")
    parser.add_argument("--amp", action="store_true", help="also time the tree with --amp")
    parser.add_argument("--spec", choices=("benchmark", "tiny"), default="benchmark")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or args.epochs < 1 or args.jobs < 1:
        parser.error(f"--kinds from {','.join(KINDS)}; --epochs and --jobs at least 1")
    if args.before is not None:
        found = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--verify", f"{args.before}^{{commit}}"],
            capture_output=True,
            text=True,
        )
        if found.returncode != 0:
            parser.error(f"--before {args.before}: not a git revision of {REPO}")
    spec = material.BENCHMARK if args.spec == "benchmark" else TINY
    data = default_cache_root() / f"reproduce-cost-{spec.key()}"
    if not data.exists():
        make_synthetic(data, spec)
    variants = ([f"before {args.before}"] if args.before else []) + ["tree"]
    variants += ["tree --amp"] if args.amp else []
    threads = max(1, cpu_cores() // args.jobs)
    root = Path(tempfile.mkdtemp(prefix="reproduce-cost-"))
    seconds: dict[str, dict[str, float]] = {v: {} for v in variants}
    training: dict[str, dict[str, float]] = {v: {} for v in variants}
    try:
        paths = {
            v: assemble_source(args.before if v.startswith("before") else None, root / f"src{i}")
            for i, v in enumerate(variants)
        }
        jobs = [(kind, v) for kind in kinds for v in variants]

        def run(job: tuple[str, str]) -> tuple[str, str, float, float]:
            kind, variant = job
            tag = f"{kind}-{variants.index(variant)}"
            command = train_command(
                kind,
                data,
                root / tag,
                args.epochs,
                variant.endswith("--amp"),
                root / f"{tag}.json",
            )
            total = timed(command, paths[variant], threads, root / f"{tag}.log")
            return kind, variant, total, training_seconds(root / tag)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            for kind, variant, total, train in pool.map(run, jobs):
                seconds[variant][kind], training[variant][kind] = total, train
        wall = time.perf_counter() - start
    except subprocess.CalledProcessError as err:
        logs = sorted(root.glob("*.log"))
        tail = logs[-1].read_text()[-2000:] if logs else ""
        sys.exit(f"a run failed ({err.cmd[-1]}):\n{tail}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    scale = material.EPOCHS["1x"] / args.epochs
    per_run = {
        v: {k: s + training[v][k] * (scale - 1) for k, s in seconds[v].items()} for v in variants
    }
    per_1x_training = {v: {k: t * scale for k, t in training[v].items()} for v in variants}
    base = variants[0]
    ratio = {v: {k: per_run[v][k] / per_run[base][k] for k in kinds} for v in variants}

    def material_hours(v: str) -> float:
        costs, extra = per_run[v], per_1x_training[v]  # a 2x run trains twice as long
        mean, mean_extra = sum(costs.values()) / len(costs), sum(extra.values()) / len(extra)
        total = sum(
            costs.get(kind_of(c) or "", mean)
            + (extra.get(kind_of(c) or "", mean_extra) if schedule == "2x" else 0.0)
            for c, schedule in material_runs()
        )
        return total / args.jobs / 3600  # args.jobs runs at a time

    report = {
        "epochs": args.epochs,
        "projected_from_epochs": args.epochs != material.EPOCHS["1x"],
        "spec": spec.key(),
        "cores": cpu_cores(),
        "jobs": args.jobs,
        "threads_per_run": threads,
        "variants": variants,
        "seconds": seconds,
        "training_seconds": training,
        "seconds_per_1x_run": per_run,
        "training_seconds_per_1x_run": per_1x_training,
        "ratio_to_first": ratio,
        "wall_seconds": wall,
        "material_runs_per_seed": len(material_runs()),
        "projected_hours": {
            v: {"1_seed": material_hours(v), "3_seeds": 3 * material_hours(v)} for v in variants
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    note = f" (projected from {args.epochs} epochs)" if report["projected_from_epochs"] else ""
    table = Table(
        title=f"seconds per 1x run{note}, --jobs {args.jobs} on {report['cores']} cores, "
        f"{threads} thread(s) each"
    )
    table.add_column("kind")
    for v in variants:
        table.add_column(f"{v} s", justify="right")
        if v != base:
            table.add_column(f"÷ {base}", justify="right")
    for kind in kinds:
        row = [kind]
        for v in variants:
            row.append(f"{per_run[v][kind]:.0f}")
            if v != base:
                row.append(f"{ratio[v][kind]:.2f}")
        table.add_row(*row)
    console = Console()
    console.print(table)
    if report["projected_from_epochs"]:
        console.print(
            f"1x: each run's seconds plus its training seconds times {scale - 1:g} more "
            "(evaluation and start-up counted once)"
        )
    for v in variants:
        hours = report["projected_hours"][v]
        console.print(
            f"{v}: the whole material ({report['material_runs_per_seed']} runs per seed, "
            f"--jobs {args.jobs}) {hours['1_seed']:.1f} h per seed, {hours['3_seeds']:.1f} h "
            "with 3 seeds"
        )


if __name__ == "__main__":
    main()
