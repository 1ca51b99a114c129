"""``gumbel eval``: LVIS results JSON and metrics of a run or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gumbel_analysis.cli.common import JsonOption, console, print_json, reports_input_errors
from gumbel_analysis.errors import InputError


@reports_input_errors
def evaluate(
    source: Annotated[Path, typer.Argument(help="A run folder or a checkpoint file.")],
    data: Annotated[
        Path | None, typer.Option(help="LVIS-format folder; default: the run's own data.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a trained model on its val set with the official LVISEval.

    Writes results.json (bbox and segm, the LVIS results format every LVIS tool reads) and
    metrics.json (AP, AP50, AP75, APs, APm, APl, APr, APc, APf, APb) beside the checkpoint.
    """
    if batch_size is not None and batch_size < 1:  # before anything is read or replaced
        raise InputError(f"--batch-size must be an integer >= 1, got {batch_size}")
    from gumbel_analysis.engine.evaluate import metrics_table
    from gumbel_analysis.engine.inference import evaluate_checkpoint

    metrics, run = evaluate_checkpoint(
        source,
        data=str(data) if data is not None else None,
        device=device,
        batch_size=batch_size,
        progress=progress and not as_json,
    )
    if as_json:
        print_json(metrics)
        return
    console.print(metrics_table(metrics, f"{metrics.get('loss', '')}: LVIS metrics (val)"))
    console.print(f"results: {run.results}  metrics: {run.metrics}")
