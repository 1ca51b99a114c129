"""``gumbel temperature``: Fig. 1.i (activation per temperature) and the clip cut-off error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gumbel_analysis.cli.common import (
    JsonOption,
    console,
    old_spelling,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.paper import PAPER_CLIP, PAPER_SIGMAS


@reports_input_errors
def temperature(
    sigma: Annotated[
        list[float] | None,
        typer.Option(
            "--sigma",
            "-s",
            help="Temperatures; several may follow one flag: --sigma 0.8 0.9 1.0. "
            "Default: the paper's 0.8 0.9 1.0 1.1 1.2.",
        ),
    ] = None,
    clip: Annotated[
        tuple[float, float],
        typer.Option(help="Clip range LOW HIGH of the logits (the paper's -4 10)."),
    ] = PAPER_CLIP,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Figure file: .png, .pdf or .svg by its suffix."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", hidden=True, help="Old spelling of --plot.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Draw the temperature curves (Fig. 1.i) and tabulate the clip's cut-off error (Sec. 1.3).

    The figure shows eta(q; sigma) for each temperature beside the Sigmoid, and the log10 error a
    clip bound at q discards. The cut-off error of [low, high] is 1 - eta(high) at the top and
    eta(low) at the bottom: about 4.5e-5 and 1.9e-24 at [-4, 10] with sigma = 1.
    """
    from gumbel_analysis.analysis.plots import check_figure_path
    from gumbel_analysis.analysis.temperature import cutoff_table, plot_temperature
    from gumbel_analysis.math import check_clip_range, check_temperature

    out = old_spelling("--plot", plot, "--out", out)
    sigmas = list(sigma) if sigma else list(PAPER_SIGMAS)
    for s in sigmas:
        check_temperature(s)
    low, high = clip
    check_clip_range(low, high)
    if out is not None:
        check_figure_path(out)
    rows = cutoff_table(sigmas, low, high)
    if out is not None:
        plot_temperature(sigmas, low, high, out)
    if as_json:
        print_json({"clip": [low, high], "rows": rows, "figure": str(out) if out else None})
        return
    table = Table(title=f"Cut-off error of the clip [{low:g}, {high:g}]")
    for col in ("σ", "1 − η(high)", "η(low)", "log10 η(low)"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            f"{row['sigma']:g}",
            f"{row['top_error']:.3e}",
            f"{row['bottom_error']:.3e}",
            f"{row['bottom_error_log10']:.2f}",
        )
    console.print(table)
    if out is not None:
        console.print(f"figure written to {out}")
