"""Options that ``gumbel train`` and ``gumbel sweep`` share: one spelling, one meaning, one help.

(``gumbel train`` adds its loss options from the loss registry, see ``cli/train.py``.)
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gumbel_analysis.engine.config import PRESET_DEFAULTS
from gumbel_analysis.errors import InputError

PresetName = StrEnum("PresetName", {p: p for p in PRESET_DEFAULTS})


class SamplerName(StrEnum):
    random = "random"
    rfs = "rfs"


class Schedule(StrEnum):
    x1 = "1x"
    x2 = "2x"


def check_counts_and_device(
    device: str | None, counts: tuple[tuple[str, int | None, int], ...]
) -> None:
    """Before anything is written: each (flag, value, least) given is at least ``least``, and
    ``--device`` is cpu, cuda[:N] or auto. Raises InputError naming the flag."""
    for name, value, least in counts:
        if value is not None and value < least:
            raise InputError(f"{name} must be at least {least}, got {value}")
    if device is not None and device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise InputError(f"unknown --device {device!r}; use cpu, cuda or auto")


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
