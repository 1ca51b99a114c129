"""``gumbel table``: result tables as Tables 1-4 of the supplementary, from run folders."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gumbel_analysis.cli.common import JsonOption, console, print_json, reports_input_errors
from gumbel_analysis.errors import InputError


class TableFormat(StrEnum):
    rich = "rich"
    markdown = "markdown"
    latex = "latex"
    csv = "csv"


@reports_input_errors
def table(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN...",
            help="Run folders (made by gumbel train --out RUN), or folders holding run folders "
            "(a sweep folder): every run folder below them is read.",
        ),
    ],
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Run folder (or folder of seeds of one configuration) to compare every row "
            "with: adds (Δ) to each cell and marks * where Student's t test of Δ rejects at 5%."
        ),
    ] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option(
            "--group-by",
            help="Config fields that make a row, e.g. --group-by loss temperature (default: "
            "every field but the seed and the machine's). Runs that differ in other fields "
            "are then averaged together; --json lists those fields under 'varying'. "
            "Put the runs before --group-by.",
        ),
    ] = None,
    fmt: Annotated[TableFormat, typer.Option("--format", help="Output format.")] = TableFormat.rich,
    digits: Annotated[int, typer.Option(help="Decimals of the AP values.", min=0, max=6)] = 1,
    as_json: JsonOption = False,
) -> None:
    """One row per configuration with AP, APr, APc, APf (mask) and APb (box), in %.

    Runs that differ only in their seed (or device, workers, logging) are one row: **mean ±
    s**, s the sample standard deviation (ddof = 1) over the row's n runs; with n = 1 s is
    shown as –. With --baseline each cell adds (Δ), the difference of the means, marked * when
    Student's t test of it rejects at a two-sided 5% level: paired over seeds when the row and
    the baseline ran the same seeds (df = n - 1), else Welch's (Welch-Satterthwaite df); --json
    gives SE, t, df and p. ? when either side has one run (no spread to test with).
    Unfinished, failed (diverged) and not-evaluated runs are listed as rows of their own, never
    dropped.
    """
    from gumbel_analysis.experiments.runs import read_runs
    from gumbel_analysis.experiments.table import build_table, render, to_rich

    if group_by is not None and not group_by:
        raise InputError("--group-by needs at least one field")
    found = read_runs(runs)
    base = read_runs([baseline], option="--baseline") if baseline is not None else None
    result = build_table(found, baseline=base, group_by=group_by, digits=digits)
    if as_json:
        print_json(result.as_dict())
        return
    if fmt is TableFormat.rich:
        n_runs = sum(len(r.runs) for r in result.rows)
        n_rows = len(result.finished_rows)
        title = (
            f"{n_rows} configuration{'s' * (n_rows != 1)} from {n_runs} run{'s' * (n_runs != 1)}"
        )
        console.print(to_rich(result, title))
        return
    # Plain text for files and pipes: no rich wrapping or markup.
    print(render(result, fmt.value), end="")
