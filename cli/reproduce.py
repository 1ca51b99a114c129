"""``gumbel reproduce``: the supplementary material's tables and figures on the embedded
benchmark, as one report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from gumbel_analysis.cli.common import (
    JsonOption,
    ProgressOption,
    console,
    err_console,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.cli.training_options import (
    AmpOption,
    CheckpointEveryOption,
    CpusPerJobOption,
    DeviceOption,
    GpusPerJobOption,
    JobsOption,
    LauncherChoice,
    LauncherOption,
    PartitionOption,
    TimeOption,
    WaitOption,
    WorkersOption,
    check_device_available,
)
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.material import DEFAULT_ITEMS
from gumbel_analysis.spec.config import check_fields


def only_help() -> str:
    """--only's help: the registry's items and the default."""
    return (
        f"Comma-separated items: {','.join(material.all_items())}. "
        f"Default: {','.join(DEFAULT_ITEMS)}."
    )


#: How a second stage (DisAlign: its own 2 epochs) is counted beside the schedules.
SECOND_STAGES = "second stages"


def runs_per_schedule(items: tuple[str, ...] | list[str]) -> dict[str, int]:
    """How many runs per seed the items train at each schedule (a shared configuration once),
    second stages apart."""
    runs: dict[str, set[str]] = {}
    for key in items:
        item = material.ITEMS[key]
        for c in item.configs:
            group = SECOND_STAGES if c.first_stage is not None else item.schedule
            runs.setdefault(group, set()).add(c.name)
    schedules = sorted(k for k in runs if k != SECOND_STAGES)
    order = [*schedules, *([SECOND_STAGES] if SECOND_STAGES in runs else [])]
    return {group: len(runs[group]) for group in order}


def every_item_help() -> str:
    """``--only table1,...,fig3: 15 runs at 1x, 15 at 2x, 1 second stage`` from the registry."""
    words = []
    for i, (group, n) in enumerate(runs_per_schedule(material.all_items()).items()):
        if group == SECOND_STAGES:
            words.append(f"{n} second stage{'s' * (n != 1)} of 2 epochs")
        else:
            words.append(f"{n}{' runs' * (i == 0)} at {group}")
    return f"--only {','.join(material.all_items())}: {', '.join(words)}"


@reports_input_errors
def reproduce(
    out: Annotated[
        Path,
        typer.Option(help="Folder of the report, its data and its runs (made if absent)."),
    ] = Path("reproduce"),
    only: Annotated[
        str | None,
        typer.Option(help=only_help()),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Runs per configuration (seeds --seed, +1, ...).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the first run.")] = 0,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Shortened schedules (2 epochs for 1x, 4 for 2x) and detections above 0.05, "
            "to try it out.",
        ),
    ] = False,
    device: DeviceOption = None,
    amp: AmpOption = None,
    workers: WorkersOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    jobs: JobsOption = None,
    launcher: LauncherOption = LauncherChoice.local,
    wait: WaitOption = True,
    partition: PartitionOption = None,
    time_limit: TimeOption = 240,
    gpus_per_job: GpusPerJobOption = 0,
    cpus_per_job: CpusPerJobOption = 2,
    progress: ProgressOption = True,
    as_json: JsonOption = False,
) -> None:
    """Train what the selected tables and figures need, then write OUT/report.html.

    The report is one self-contained HTML file (figures embedded, each table with the command
    that made it) with the figures as PNG in OUT/figures and the tables as Markdown and CSV in
    OUT/tables, and it says which of the paper's claims hold on the benchmark: a claim holds when
    Student's t test of its difference over seeds (paired over the shared seeds) rejects at 5%
    after Holm's adjustment over the report's claims, else it is not established (always with
    one seed).

    The data is the embedded benchmark (96 classes, 43 rare; made in OUT/data). Runs go to
    OUT/runs/CONFIG-SCHEDULE-sSEED and are shared between items; rerun the command and finished
    runs are skipped, killed ones resumed. Time on 2 CPU cores (tiny preset, float32, --jobs 2:
    two runs at once, one thread each), measured on 2026-12-07 on an AMD EPYC (Zen 2): a 1x run
    12-14 min (RFS about twice as long: its epochs repeat images), a 2x run 1.8-1.9 times a 1x
    run; Table 3 with --seeds 3 67 min; every item ({every_item}) at least 8.5 hours per seed, 25
    hours with --seeds 3, projected from those runs (a machine with AVX-512 took about 0.7 times
    as long). Table 4's NorCal row adds 8 evaluations per seed to the report, cached.
    With one job at a time, about 1.3 times as long. The default is Table 3 and Figures 1-3
    ({default_runs} runs).
    """
    from gumbel_analysis.experiments import reproduce as lib
    from gumbel_analysis.experiments.launch import LauncherKind, LaunchOptions
    from gumbel_analysis.experiments.report import write_report

    machine = check_fields(
        device=device, amp=amp, workers=workers, checkpoint_every=checkpoint_every
    )
    check_device_available(device, amp)
    launch = LaunchOptions(
        jobs, LauncherKind(launcher.value), wait, partition, time_limit, gpus_per_job, cpus_per_job
    )
    launch.check()
    items = lib.parse_only(only, DEFAULT_ITEMS)
    start = time.perf_counter()
    quiet = as_json or not progress
    plan = lib.plan_reproduce(
        out, items, seeds, seed=seed, quick=quick, machine=machine, progress=not quiet
    )

    def announce(i: int, n: int, planned: lib.Planned, left: float | None) -> None:
        if quiet:
            return
        action = planned.run.describe_action()
        eta = (
            "time left: known after the first run"
            if left is None
            else (f"about {left / 60:.0f} min left")
        )
        if planned.run.action == "skip":
            err_console.print(f"run {i}/{n}: {planned.run.name}: {action}", markup=False)
            return
        err_console.rule(f"run {i}/{n}: {planned.run.name} · {action} · {eta}")

    runner = launch.make(out, device, not quiet, err_console)
    ended = lib.carry_out(
        plan, launcher=runner, progress=not quiet, console=err_console, announce=announce
    )
    if not ended:  # --no-wait: a report of unfinished runs would be half a report
        if as_json:
            print_json({"out": str(out), "report": None, "submitted": len(plan.runs)})
        return
    if not quiet:
        err_console.rule("report")
    summary = write_report(plan, time.perf_counter() - start)
    if as_json:
        print_json(summary)
        return
    _print_summary(summary)
    failed = [p.run.name for p in plan.runs if p.run.status == "failed"]
    if failed:
        err_console.print(
            f"error: {len(failed)} of {len(plan.runs)} runs failed (non-finite loss): "
            + ", ".join(failed),
            markup=False,
        )
        raise typer.Exit(1)


reproduce.__doc__ = (reproduce.__doc__ or "").format(
    default_runs=sum(runs_per_schedule(DEFAULT_ITEMS).values()), every_item=every_item_help()
)


def _print_summary(summary: dict) -> None:
    table = Table(title="The paper's claims on the embedded benchmark")
    table.add_column("item")
    table.add_column("claim")
    table.add_column("paper", justify="right")
    table.add_column("verdict")
    colour = {"holds": "green", "contradicted": "red"}
    for claim in summary["claims"]:
        style = colour.get(claim["verdict"], "yellow")
        table.add_row(claim["item"], claim["claim"], claim["paper"], Text(claim["text"], style))
    console.print(table)
    console.print(f"report written to {summary['report']}")
    if summary["run_seconds"] is not None:
        console.print(
            f"training and evaluating {summary['runs_timed']} of the {summary['runs']} runs took "
            f"{summary['run_seconds'] / 60:.1f} min of run time, summed over the runs "
            "(timings.json)"
        )
