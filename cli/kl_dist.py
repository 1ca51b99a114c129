"""``gumbel kl-dist``: predicted vs ground-truth category distributions and their KL (Fig. 3)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from gumbel_analysis.analysis.kl import (
    DEFAULT_EPS,
    DEFAULT_NUM_IMAGES,
    KLComparison,
    KLOptions,
    compare_runs,
)
from gumbel_analysis.analysis.kl_plot import plot_kl_dist
from gumbel_analysis.cli.common import (
    JsonOption,
    ProgressOption,
    SeedOption,
    console,
    err_console,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.errors import InputError
from gumbel_analysis.groups import GROUP_NAMES


@reports_input_errors
def kl_dist(
    results: Annotated[
        list[Path],
        typer.Argument(help="LVIS results JSON files (gumbel eval, detectron2, mmdetection)."),
    ],
    gt: Annotated[Path, typer.Option("--gt", help="LVIS-format ground-truth annotation file.")],
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            help="A name for the results files, one --label per file in order: --label Softmax "
            "--label Sigmoid. Default: the file names.",
        ),
    ] = None,
    labels: Annotated[
        list[str] | None, typer.Option("--labels", hidden=True, help="Old spelling of --label.")
    ] = None,
    images: Annotated[
        list[int] | None,
        typer.Option("--images", help="Image ids for the figure's rows: --images 139 285 632."),
    ] = None,
    num_images: Annotated[
        int | None,
        typer.Option(
            "--num-images",
            help=f"Rows drawn at random with --seed (default {DEFAULT_NUM_IMAGES}).",
        ),
    ] = None,
    seed: SeedOption = 0,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Figure file: .png, .pdf or .svg by its suffix."),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            help="Folder of the images: adds a column with each image and its ground-truth masks.",
        ),
    ] = None,
    eps: Annotated[
        float, typer.Option("--eps", help="Added to every category's predicted mass.")
    ] = DEFAULT_EPS,
    base: Annotated[
        str, typer.Option("--base", help="Logarithm base: e (nats) or 2 (bits).")
    ] = "e",
    score_threshold: Annotated[
        float, typer.Option("--score-threshold", help="Keep detections with score >= this.")
    ] = 0.0,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Keep each image's k highest scores (0: all).")
    ] = 0,
    count: Annotated[
        bool, typer.Option("--count", help="Count detections instead of summing their scores.")
    ] = False,
    show_progress: ProgressOption = True,
    as_json: JsonOption = False,
) -> None:
    """Compare each run's predicted category distribution per image with the target (Fig. 3).

    Images: those of the ground truth with at least one instance. Target of an image: its
    ground-truth instances per category, normalised (not smoothed). Predicted: its detections'
    scores summed per category (--count: detections counted), after --score-threshold and
    --top-k, smoothed over all ground-truth categories as p_c = (s_c + eps) / Σ(s + eps), so an
    image without detections gets the uniform distribution. KL(target ‖ predicted) per image, in
    nats (--base 2: bits). Summary per run: mean and median KL, the mean over images containing a
    rare, common or frequent category (an image can count in several), and the KL between the
    dataset-wide histograms (instances vs predicted mass per category). The run with the lowest
    mean is closest to the target. --plot draws the chosen images' distributions (categories by
    training image count) with KL in each title, and the per-image KL distribution per run.
    """
    labels = [*(label or []), *(labels or [])] or None
    if labels and len(labels) != len(results):
        raise InputError(f"--label was given {len(labels)} times for {len(results)} results files")
    if plot is not None:
        from gumbel_analysis.analysis.plots import check_figure_path  # matplotlib only if needed

        check_figure_path(plot)
    if image_root is not None and not image_root.is_dir():
        raise InputError(f"--image-root is not a folder: {image_root}")
    if images and num_images is not None:
        raise InputError("give either --images or --num-images, not both")
    options = KLOptions(
        eps=eps, base=base, score_threshold=score_threshold, top_k=top_k, count=count
    )
    with Progress(
        TextColumn("reading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not show_progress or as_json,
    ) as progress:

        def track(description: str, total: int):
            task = progress.add_task(description, total=max(total, 1))
            return lambda n: progress.advance(task, n)

        comparison = compare_runs(
            gt,
            results,
            labels,
            options,
            image_ids=images,
            num_images=DEFAULT_NUM_IMAGES if num_images is None else num_images,
            seed=seed,
            progress=track,
        )
    if plot is not None:
        plot_kl_dist(comparison, plot, image_root)
    report = comparison.to_dict()
    for run in report["runs"]:
        if run["detections"] == 0:
            err_console.print(
                f"note: {run['label']} has no detections: every image is at the uniform prediction",
                markup=False,
            )
    report["figure"] = str(plot) if plot is not None else None
    if as_json:
        print_json(report)
        return
    _print_tables(comparison, report)
    if plot is not None:
        console.print(f"figure written to {plot}")


def _print_tables(comparison: KLComparison, report: dict) -> None:
    unit = report["unit"]
    runs = report["runs"]
    groups = comparison.gt.frequency is not None
    caption = (
        f"predicted mass: {report['mass']}, score ≥ {report['score_threshold']:g}, "
        f"top-k {report['top_k'] or 'all'}, eps {report['eps']:g} (prediction only). "
    )
    if groups:
        sizes = "/".join(str(runs[0]["kl_by_group"][n]["images"]) for n in GROUP_NAMES.values())
        caption += f"rare/common/frequent: images containing such a category (n = {sizes}). "
    caption += "dataset: KL of the dataset-wide category histograms."
    table = Table(
        title=f"KL(target ‖ predicted) per image in {unit}, {report['images']} images with "
        f"ground truth, {report['categories']} categories",
        caption=caption,
    )
    table.add_column("run", no_wrap=True)
    columns = ["mean", "median"]
    if groups:
        columns += list(GROUP_NAMES.values())
    columns.append("dataset")
    for col in columns:
        table.add_column(col, justify="right")
    for run in runs:
        cells = [run["label"], _num(run["kl_mean"]), _num(run["kl_median"])]
        if groups:
            cells += [_num(run["kl_by_group"][n]["kl_mean"]) for n in GROUP_NAMES.values()]
        table.add_row(*cells, _num(run["dataset_kl"]))
    console.print(table)
    for run in runs:
        console.print(
            f"{run['label']}: {run['detections_used']:,} of {run['detections']:,} detections "
            f"used ({run['detections_on_images_without_ground_truth']:,} on images without "
            f"ground truth), {run['images_without_detections']:,} images without detections"
        )
    console.print(f"closest to the target (lowest mean KL): {report['closest']}")
    if report["chosen_images"]:
        chosen = Table(title=f"Chosen images: KL in {unit}")
        chosen.add_column("image id", justify="right")
        chosen.add_column("instances", justify="right")
        chosen.add_column("categories", justify="right")
        for run in runs:
            chosen.add_column(run["label"], justify="right")
        for row in report["chosen_images"]:
            chosen.add_row(
                str(row["image_id"]),
                str(row["instances"]),
                str(row["categories"]),
                *(_num(row["kl"][r["label"]]) for r in runs),
            )
        console.print(chosen)


def _num(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.4g}"
