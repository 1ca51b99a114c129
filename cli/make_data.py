"""``gumbel make-data``: write the synthetic long-tailed dataset in the LVIS v1 format."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gumbel_analysis.cli.common import (
    JsonOption,
    ProgressOption,
    SeedOption,
    console,
    old_spelling,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.data.lvis_io import read_json
from gumbel_analysis.data.synthetic import (
    ANNOTATION_FILES,
    SyntheticSpec,
    frequency_thresholds,
    group_summary,
    make_synthetic,
)
from gumbel_analysis.groups import FREQUENCY_GROUPS, GROUP_NAMES

_DEFAULT = SyntheticSpec()


@reports_input_errors
def make_data(
    out: Annotated[Path, typer.Argument(help="Folder to create (absent or empty).")],
    classes: Annotated[int, typer.Option("--classes", help="Categories.")] = _DEFAULT.classes,
    train_images: Annotated[
        int | None,
        typer.Option(  # None: --images may stand in; the shown default is the spec's
            "--train-images",
            help=f"Training images. [default: {_DEFAULT.train_images}]",
            show_default=False,
        ),
    ] = None,
    images: Annotated[
        int | None, typer.Option("--images", hidden=True, help="Old spelling of --train-images.")
    ] = None,
    val_images: Annotated[
        int, typer.Option("--val-images", help="Validation images.")
    ] = _DEFAULT.val_images,
    val_min_images: Annotated[
        int,
        typer.Option(
            "--val-min-images",
            help="Validation images per class, at least (more make APr steadier).",
        ),
    ] = _DEFAULT.val_min_images,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = _DEFAULT.size,
    seed: SeedOption = _DEFAULT.seed,
    heldout: Annotated[
        int,
        typer.Option(
            "--heldout",
            help="K >= 1: write the K-th held-out split as the val split instead: the same "
            "training split, other validation images, for choosing a setting (NorCal's "
            "--norcal-gamma) away from the split results are reported on.",
        ),
    ] = _DEFAULT.heldout,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty OUT.")
    ] = False,
    progress: ProgressOption = True,
    as_json: JsonOption = False,
) -> None:
    """Write a synthetic long-tailed instance-segmentation dataset in the LVIS v1 format.

    OUT gets annotations/lvis_v1_{train,val}.json and images/{train,val}/*.png (file_name is
    relative to images/). Classes are shape x colour x texture combinations; their training image
    counts fall geometrically with a random rank from 45% of the images to one, so all three LVIS
    groups exist: rare <= images/100, common <= images/10, frequent above (LVIS's 10 and 100 per
    1000 images). The same parameters give byte-identical files. `gumbel train` without --data
    makes the default one itself.
    """
    train_images = old_spelling("--train-images", train_images, "--images", images)
    spec = SyntheticSpec(
        classes=classes,
        train_images=_DEFAULT.train_images if train_images is None else train_images,
        val_images=val_images,
        size=size,
        seed=seed,
        val_min_images=val_min_images,
        heldout=heldout,
    )
    make_synthetic(out, spec, progress=progress and not as_json, overwrite=overwrite)
    train = read_json(out / "annotations" / ANNOTATION_FILES["train"])
    val = read_json(out / "annotations" / ANNOTATION_FILES["val"])
    groups = group_summary(train, val)
    rare, common = frequency_thresholds(spec.train_images)
    report = {
        "out": str(out),
        "key": spec.key(),
        "spec": dataclasses.asdict(spec),
        "thresholds": {"rare_max_images": rare, "common_max_images": common},
        "groups": groups,
        "total": {
            "classes": classes,
            "train_images": len(train["images"]),
            "train_instances": len(train["annotations"]),
            "val_images": len(val["images"]),
            "val_instances": len(val["annotations"]),
        },
    }
    if as_json:
        print_json(report)
        return
    table = Table(
        title=f"Synthetic LVIS dataset in {out}",
        caption=f"Training images per class: rare <= {rare}, common {rare + 1}-{common}, "
        f"frequent > {common}. Images: those with an object of the group.",
    )
    table.add_column("group")
    for column in ("classes", "train images", "train instances", "val images", "val instances"):
        table.add_column(column, justify="right")
    rows = [(f"{GROUP_NAMES[g]} ({g})", groups[g]) for g in FREQUENCY_GROUPS]
    rows.append(("all", report["total"]))
    for name, row in rows:
        table.add_row(
            name,
            str(row["classes"]),
            str(row["train_images"]),
            str(row["train_instances"]),
            str(row["val_images"]),
            str(row["val_instances"]),
        )
    console.print(table)
