"""``gumbel eval``: LVIS metrics of a results file, a run or a checkpoint."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from gumbel_analysis.cli.common import (
    JsonOption,
    ProgressOption,
    console,
    err_console,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.cli.training_options import field_option
from gumbel_analysis.errors import InputError
from gumbel_analysis.io import check_writable_folder, write_text_atomic
from gumbel_analysis.spec.config import FIELD_OPTIONS, check_calibration, check_fields
from gumbel_analysis.spec.layout import RunLayout
from gumbel_analysis.spec.presets import Recipe

_RESULTS_SUFFIXES = (".json",)


@reports_input_errors
def evaluate(
    source: Annotated[
        Path,
        typer.Argument(
            help="An LVIS results JSON file (with --gt), a run folder or a checkpoint file."
        ),
    ],
    gt: Annotated[
        Path | None,
        typer.Option("--gt", help="LVIS-format ground-truth annotation file (results files)."),
    ] = None,
    iou_type: Annotated[
        list[str] | None,
        typer.Option("--iou-type", help="segm, bbox or both (--iou-type segm bbox, the default)."),
    ] = None,
    evaluator: Annotated[
        str,
        typer.Option(
            "--evaluator",
            help="fast (default; lvis-api's numbers category by category) or lvis (the "
            "official LVISEval, the reference: same numbers, slower, more memory).",
        ),
    ] = "fast",
    max_dets: Annotated[
        int | None,
        typer.Option(
            "--max-dets",
            help="Detections kept per image, by the evaluator and, for a run, by the model "
            "(LVIS: 300). Default: 300; for a run, its configuration's.",
        ),
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(
            "--score-threshold",
            help="Runs: the model keeps detections scoring above this (LVIS: 1e-4). Default: "
            "the run's configuration.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Runs: LVIS-format folder to evaluate on; default: the run's own data."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for metrics.json (and a model's results.json). Default for a run: "
            "beside the checkpoint (results.<variant>.json when --data, --score-threshold, "
            "--max-dets or --iou-type differ from the run's); for a results file: nothing "
            "written.",
        ),
    ] = None,
    calibration: field_option(
        "calibration",
        "Runs: post-hoc score calibration. norcal (Pan et al. 2021): each class's score divided "
        "by its training image count to the power --norcal-gamma, renormalised with the "
        "background (per class for Sigmoid and Gumbel heads); written as "
        "results.norcal-gG.json, never over the run's own.",
    ) = None,
    norcal_gamma: field_option(
        "norcal_gamma", "Runs: " + FIELD_OPTIONS["norcal_gamma"].help
    ) = None,
    device: field_option("device", "Runs: " + FIELD_OPTIONS["device"].help) = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Runs: images per batch (per process).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Runs: data loader workers (per process). Default: the run's."),
    ] = None,
    progress: ProgressOption = True,
    as_json: JsonOption = False,
) -> None:
    """LVIS AP (AP, AP50, AP75, APs, APm, APl, APr, APc, APf) for masks and boxes (APb).

    A results file (the JSON list that detectron2's LVISEvaluator, mmdetection's LVISMetric
    (.bbox.json / .segm.json) and this toolkit write) is evaluated against --gt; box-only
    results or ground truth give box AP only, with a note. Mask object sizes come from the masks,
    as detectron2 evaluates LVIS. The numbers are lvis-api 0.5.3's (--evaluator lvis runs it).

    A run folder or checkpoint is first run over its val set (or --data's): results.json and
    metrics.json are written beside the checkpoint; with other --data, score threshold, maximum
    detections or IoU types their names say so (results.<data>.json, results.score0.05.json,
    results.dets100-bbox.json), so the run's own files are never replaced. Under
    torchrun (torchrun --nproc-per-node N -m gumbel_analysis eval RUN) each process predicts its
    share of the images and the first merges the results and evaluates them.
    """
    iou_types = tuple(iou_type or ("segm", "bbox"))
    unknown = [t for t in iou_types if t not in ("segm", "bbox")]
    if unknown:
        raise InputError(f"--iou-type must be segm or bbox, got {unknown[0]!r}")
    if evaluator not in ("fast", "lvis"):
        raise InputError(f"--evaluator must be fast or lvis, got {evaluator!r}")
    # The run's options, checked as gumbel train checks them.
    check_fields(
        max_dets=max_dets,
        score_threshold=score_threshold,
        workers=workers,
        batch_size=batch_size,
        device=device,
        norcal_gamma=norcal_gamma,
    )
    calibration = None if calibration is None else str(calibration)
    check_calibration(calibration, norcal_gamma)
    if out is not None:
        check_writable_folder(out, "--out folder")
    if source.is_file() and source.suffix.lower() in _RESULTS_SUFFIXES:
        run_only = {
            "--score-threshold": score_threshold,
            "--workers": workers,
            "--batch-size": batch_size,
            "--data": data,
            "--device": device,
            "--calibration": calibration,
        }
        for name, value in run_only.items():
            if value is not None:
                raise InputError(f"{name} is for a run; a results file is evaluated as it is")
        if out is not None and RunLayout(out).config.is_file():
            raise InputError(
                f"--out {out} is a run folder (it holds {RunLayout(out).config.name}): its "
                f"{RunLayout(out).metrics.name} would be replaced by {source.name}'s metrics; "
                "use another folder"
            )
        max_dets = Recipe.max_dets if max_dets is None else max_dets
        _evaluate_file(source, gt, iou_types, evaluator, max_dets, out, progress, as_json)
        return
    if gt is not None:
        raise InputError("--gt is for a results file; a run is evaluated on its --data")
    if not source.exists():
        raise InputError(f"run folder, checkpoint or results file not found: {source}")

    from gumbel_analysis.engine.inference import evaluate_checkpoint
    from gumbel_analysis.evaluation.metrics import metrics_table

    metrics, paths = evaluate_checkpoint(
        source,
        data=str(data) if data is not None else None,
        device=device or "auto",
        batch_size=batch_size,
        workers=workers,
        score_threshold=score_threshold,
        max_dets=max_dets,
        progress=progress and not as_json,
        out=out,
        iou_types=iou_types,
        evaluator=evaluator,
        calibration=calibration,
        norcal_gamma=norcal_gamma,
    )
    if metrics is None:  # a torchrun process other than the first: it predicted its share
        return
    if as_json:
        print_json(metrics)
        return
    console.print(metrics_table(metrics, f"{metrics.get('loss', '')}: LVIS metrics (val)"))
    console.print(f"results: {paths.results}  metrics: {paths.metrics}")


def _evaluate_file(source, gt, iou_types, evaluator, max_dets, out, progress, as_json) -> None:
    from gumbel_analysis.evaluation.metrics import evaluate_results, metrics_table

    if gt is None:
        raise InputError("a results file needs --gt, the LVIS annotation file it answers")
    if not gt.is_file():
        raise InputError(f"--gt annotation file not found: {gt}")
    notes: list[str] = []
    with (
        Progress(console=err_console, transient=True, disable=not progress or as_json) as bar,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)  # the notes are printed below
        metrics = evaluate_results(
            gt,
            source,
            iou_types=iou_types,
            max_dets=max_dets,
            evaluator=evaluator,
            progress=bar,
            notes=notes,
        )
    report = {"results": str(source), "gt": str(gt), "evaluator": evaluator, **metrics}
    report["notes"] = notes
    if out is not None:
        write_text_atomic(RunLayout(out).metrics, json.dumps(report, indent=2) + "\n")
    if as_json:
        print_json(report)
        return
    for note in notes:
        err_console.print(f"note: {note}", markup=False)
    console.print(metrics_table(metrics, f"{source.name}: LVIS metrics"))
    if out is not None:
        console.print(f"metrics: {RunLayout(out).metrics}")
