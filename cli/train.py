"""``gumbel train``: Mask R-CNN with a Gumbel, GOL, Sigmoid or Softmax head on LVIS-format data."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from gumbel_analysis.cli.common import (
    JsonOption,
    console,
    err_console,
    fail,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.engine.config import PRESET_DEFAULTS, TrainConfig, load_config_file

PresetName = StrEnum("PresetName", {p: p for p in PRESET_DEFAULTS})
#: The registry's losses (a test keeps this list equal to ``available_losses()``); spelled out
#: so that ``gumbel --help`` does not import torch.
LOSS_NAMES = ("gumbel", "sigmoid", "softmax", "gol", "gol-star", "droploss", "eql")
LossName = StrEnum("LossName", {n: n for n in LOSS_NAMES})


class GumbelModeName(StrEnum):
    stable = "stable"
    paper = "paper"
    none = "none"


class SamplerName(StrEnum):
    random = "random"
    rfs = "rfs"


class Schedule(StrEnum):
    x1 = "1x"
    x2 = "2x"


class DropVariantName(StrEnum):
    equation = "equation"
    reference = "reference"


@reports_input_errors
def train(
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON or TOML file of TrainConfig fields.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="LVIS-format folder (annotations/lvis_v1_train.json, lvis_v1_val.json, images). "
            "Default: the embedded synthetic long-tailed dataset, made and cached on first use."
        ),
    ] = None,
    preset: Annotated[PresetName | None, typer.Option(help="Model preset. Default: tiny.")] = None,
    loss: Annotated[
        LossName | None, typer.Option(help="Classification loss. Default: gumbel.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Gumbel temperature sigma.")] = None,
    gumbel_mode: Annotated[
        GumbelModeName | None, typer.Option(help="Gumbel loss mode. Default: stable.")
    ] = None,
    lambda_: Annotated[
        float | None,
        typer.Option(
            "--lambda", help="GOL/DropLoss lambda. Default: the data's common/frequent border."
        ),
    ] = None,
    drop_variant: Annotated[
        DropVariantName | None,
        typer.Option(help="GOL background dropping: Eq. 6 or the released code."),
    ] = None,
    enh: Annotated[
        bool | None, typer.Option("--enh/--no-enh", help="Test NMS 0.3 and a normalised mask head.")
    ] = None,
    sampler: Annotated[
        SamplerName | None, typer.Option(help="random or rfs (repeat factors).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (the tiny preset: 12).")] = None,
    schedule: Annotated[Schedule | None, typer.Option(help="1x (12 epochs) or 2x (24).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per process.")] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Base learning rate for a total batch of 16; the run uses it scaled linearly "
            "(lr x batch x processes / 16), printed once training starts and recorded as lr "
            "in config.json."
        ),
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Local backbone or model weights.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder. Default: runs/PRESET-LOSS-TIME.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --out from its last checkpoint (from iteration 0 with its "
            "saved config if it has none). Options given with --resume may change only "
            "--device, --workers, --max-iters, --checkpoint-every and --eval; any other that "
            "differs from the saved config is refused."
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data loader workers.")] = None,
    max_iters: Annotated[int | None, typer.Option(help="Stop after this many iterations.")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Also checkpoint every N iterations (0: per epoch only).")
    ] = None,
    grad_log: Annotated[
        bool | None,
        typer.Option("--grad-log/--no-grad-log", help="Record per-class gradients to HDF5."),
    ] = None,
    grad_every: Annotated[int | None, typer.Option(help="Iterations per gradient-log row.")] = None,
    evaluate: Annotated[
        bool | None, typer.Option("--eval/--no-eval", help="Evaluate at the end.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Train Mask R-CNN with the chosen classification loss, then evaluate it with LVISEval.

    With no option: the tiny preset on the embedded synthetic dataset, on the CPU, in minutes.
    The run folder holds config.json, metrics.jsonl, checkpoints (last.pt, model_final.pt),
    results.json (LVIS format) and metrics.json. Options given here override --config.
    Multi-GPU: torchrun --nproc-per-node N -m gumbel_analysis train ...
    """
    values: dict[str, Any] = load_config_file(config) if config is not None else {}
    if resume and out is None and "out" not in values:
        fail("--resume needs --out RUN_DIR")
    given = {
        "data": data,
        "preset": preset,
        "loss": loss,
        "temperature": temperature,
        "gumbel_mode": gumbel_mode,
        "lambda_": lambda_,
        "drop_variant": drop_variant,
        "enh": enh,
        "sampler": sampler,
        "epochs": epochs,
        "schedule": schedule,
        "batch_size": batch_size,
        "base_lr": lr,
        "weights": weights,
        "out": out,
        "device": device,
        "workers": workers,
        "max_iters": max_iters,
        "checkpoint_every": checkpoint_every,
        "grad_log": grad_log,
        "grad_every": grad_every,
        "evaluate": evaluate,
        "seed": seed,
    }
    for key, value in given.items():
        if value is not None:
            values[key] = str(value) if isinstance(value, Path | StrEnum) else value
    cfg = TrainConfig.from_dict(values, source=str(config) if config is not None else None)
    if out is None and "out" not in values:
        cfg.out = f"runs/{cfg.preset}-{cfg.loss}-{time.strftime('%Y%m%d-%H%M%S')}"
    from gumbel_analysis.engine.evaluate import metrics_table
    from gumbel_analysis.engine.train import train as run_training

    metrics = run_training(
        cfg,
        resume=resume,
        given=values if resume else None,
        progress=progress and not as_json,
        console=err_console,
    )
    if metrics is None:
        return
    if as_json:
        print_json({"run": cfg.out, **metrics})
        return
    console.print(metrics_table(metrics, f"{cfg.loss} on {cfg.preset}: LVIS metrics (val)"))
    console.print(f"run folder: {cfg.out}")
