"""``gumbel sweep``: the temperature sweep of Sec. 1.2 (Fig. 1.ii), one run per sigma and seed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gumbel_analysis.cli.common import (
    JsonOption,
    ProgressOption,
    console,
    err_console,
    fail,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.cli.training_options import (
    AmpOption,
    BatchSizeOption,
    CheckpointEveryOption,
    CpusPerJobOption,
    DeviceOption,
    EpochsOption,
    GpusPerJobOption,
    GradLogOption,
    JobsOption,
    LauncherChoice,
    LauncherOption,
    MaxItersOption,
    PartitionOption,
    PresetOption,
    ScheduleOption,
    TimeOption,
    WaitOption,
    WorkersOption,
    check_device_available,
    field_option,
    given_fields,
)
from gumbel_analysis.errors import InputError
from gumbel_analysis.io import remove_leftovers
from gumbel_analysis.paper import PAPER_SIGMAS
from gumbel_analysis.spec import loss_entry
from gumbel_analysis.spec.config import check_fields


@reports_input_errors
def sweep(
    out: Annotated[
        Path,
        typer.Option(help="Sweep folder: one run folder per temperature and seed, t0.8-s0, ..."),
    ],
    temperature: Annotated[
        list[float] | None,
        typer.Option(
            "--temperature",
            "-t",
            help="Gumbel temperatures sigma; several may follow one flag: --temperature 0.8 "
            "0.9 1.0. Default: the paper's 0.8 0.9 1.0 1.1 1.2.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Runs per temperature (seeds --seed, +1, ...).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the first run.")] = 0,
    data: field_option(
        "data", "LVIS-format folder, as for gumbel train. Default: the embedded data."
    ) = None,
    preset: PresetOption = None,
    loss: Annotated[
        str,
        typer.Option(
            help="Loss of the catalogue (as gumbel train --loss), with the Gumbel activation: "
            "gumbel, gol, gol-star, or a method with --activation gumbel."
        ),
    ] = "gumbel",
    activation: Annotated[
        str | None,
        typer.Option(
            help="The loss's activation (as gumbel train --activation). Default: its own."
        ),
    ] = None,
    sampler: field_option("sampler", "random (the paper's Fig. 1.ii) or rfs.") = None,
    schedule: ScheduleOption = None,
    epochs: EpochsOption = None,
    max_iters: MaxItersOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
    amp: AmpOption = None,
    workers: WorkersOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    grad_log: GradLogOption = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Figure file (Fig. 1.ii): .png, .pdf or .svg. Default: OUT/figure_1ii.png.",
        ),
    ] = None,
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
    """Train one run per temperature (and seed) into OUT, then draw Fig. 1.ii and its table.

    Runs go to OUT/t{sigma}-s{seed}; each is a run folder as gumbel train makes. Run the same
    command again and finished runs are skipped, runs with a checkpoint resume (as gumbel train
    --resume), runs killed before their first checkpoint start again: a killed sweep goes on
    where it stopped. A run whose loss becomes non-finite is listed as failed (exit status 1 at
    the end); the others still run. The table is that of gumbel table (mean ± sample std over
    seeds); the figure shows AP and APr against sigma, error bars one std.
    """
    from gumbel_analysis.analysis.plots import FIGURE_SUFFIXES, check_figure_path
    from gumbel_analysis.experiments import sweep as lib
    from gumbel_analysis.experiments.launch import (
        LauncherKind,
        LaunchOptions,
        discard_launch_folder,
    )
    from gumbel_analysis.experiments.table import to_rich

    # The run options every run of the sweep shares (out and seed are each run's own).
    base = {k: v for k, v in given_fields(locals()).items() if k not in ("out", "seed")}
    check_fields(**base)
    check_device_available(device, amp)
    launch = LaunchOptions(
        jobs, LauncherKind(launcher.value), wait, partition, time_limit, gpus_per_job, cpus_per_job
    )
    launch.check()
    loss_entry(loss)  # one line naming --loss if the catalogue has no such loss
    temperatures = list(temperature) if temperature else list(PAPER_SIGMAS)
    if data is not None:
        from gumbel_analysis.engine.setup import data_paths

        data_paths(base["data"])
    figure = plot if plot is not None else out / lib.FIGURE_NAME
    if plot is not None:
        check_figure_path(plot)
    elif figure.suffix not in FIGURE_SUFFIXES:  # pragma: no cover - the default is a .png
        raise InputError(f"--plot {figure}: unsupported suffix")
    if figure.exists() and figure.is_dir():
        fail(f"--plot {figure} is a folder")

    plan = lib.plan_sweep(base, temperatures, seeds, seed, out)

    made_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(figure)  # of a sweep killed while it drew the figure
    quiet = as_json or not progress

    def announce(i: int, n: int, item: lib.PlannedRun) -> None:
        if quiet:
            return
        err_console.rule(f"run {i}/{n}: {item.name} (σ = {item.temperature:g}, seed {item.seed})")
        err_console.print(item.describe_action(), markup=False)

    runner = launch.make(out, device, not quiet, err_console)
    try:
        ended = lib.run_sweep(
            plan, launcher=runner, progress=not quiet, console=err_console, announce=announce
        )
    except (InputError, OSError):
        # The first run refused (data only its training reads) or found the disk full: leave
        # no empty OUT behind.
        if made_out and out.is_dir():
            discard_launch_folder(out)
            if not any(out.iterdir()):
                out.rmdir()
        raise
    if not ended:  # --no-wait: the table and figure come with the rerun that collects them
        return
    table = lib.sweep_table(plan)
    points = lib.figure_points(table)
    result = lib.SweepResult(out, plan, table, None, points)
    if points:
        title = f"Fig. 1.ii: {loss} on {preset or 'tiny'}"
        result.figure = lib.plot_sweep(points, figure, title)

    if as_json:
        print_json(result.as_dict())
    else:
        console.print(to_rich(table, f"Temperature sweep in {out}"))
        if result.figure is not None:
            console.print(f"figure written to {result.figure}")
        else:
            console.print("no finished run: no figure")
    if result.failed:
        names = ", ".join(r.name for r in result.failed)
        err_console.print(
            f"error: {len(result.failed)} of {len(plan)} runs failed (non-finite loss): {names}",
            markup=False,
        )
        raise typer.Exit(1)
