"""Options that ``gumbel train`` and ``gumbel sweep`` share: one spelling, one meaning, one help.

(``gumbel train`` adds its loss options from the loss registry, see ``cli/train.py``.)
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gumbel_analysis.engine.config import PRESET_DEFAULTS

PresetName = StrEnum("PresetName", {p: p for p in PRESET_DEFAULTS})


class SamplerName(StrEnum):
    random = "random"
    rfs = "rfs"


class Schedule(StrEnum):
    x1 = "1x"
    x2 = "2x"


DataOption = Annotated[
    Path | None,
    typer.Option(
        help="LVIS-format folder (annotations/lvis_v1_train.json, lvis_v1_val.json, images). "
        "Default: the embedded synthetic long-tailed dataset, made and cached on first use."
    ),
]
PresetOption = Annotated[PresetName | None, typer.Option(help="Model preset. Default: tiny.")]
SamplerOption = Annotated[SamplerName | None, typer.Option(help="random or rfs (repeat factors).")]
EpochsOption = Annotated[int | None, typer.Option(help="Epochs (the tiny preset: 12).")]
ScheduleOption = Annotated[Schedule | None, typer.Option(help="1x (12 epochs) or 2x (24).")]
BatchSizeOption = Annotated[int | None, typer.Option(help="Images per process.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda or auto.")]
WorkersOption = Annotated[int | None, typer.Option(help="Data loader workers.")]
MaxItersOption = Annotated[int | None, typer.Option(help="Stop after this many iterations.")]
CheckpointEveryOption = Annotated[
    int | None, typer.Option(help="Also checkpoint every N iterations (0: per epoch only).")
]
GradLogOption = Annotated[
    bool | None,
    typer.Option("--grad-log/--no-grad-log", help="Record per-class gradients to HDF5."),
]
