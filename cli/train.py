"""``gumbel train``: Mask R-CNN with a Gumbel, GOL, Sigmoid or Softmax head on LVIS-format data."""

from __future__ import annotations

import functools
import inspect
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from gumbel_analysis.cli.common import (
    JsonOption,
    console,
    err_console,
    fail,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.engine.config import (
    PRESET_DEFAULTS,
    TrainConfig,
    load_config_file,
    merge_loss_options,
)

PresetName = StrEnum("PresetName", {p: p for p in PRESET_DEFAULTS})
LOSS_PANEL = "Loss options (each applies to the losses that declare it)"


class SamplerName(StrEnum):
    random = "random"
    rfs = "rfs"


class Schedule(StrEnum):
    x1 = "1x"
    x2 = "2x"


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
    score_threshold: Annotated[
        float | None,
        typer.Option(
            "--score-threshold",
            help="Evaluation: the model keeps detections scoring above this (LVIS: 1e-4).",
        ),
    ] = None,
    max_dets: Annotated[
        int | None,
        typer.Option(
            "--max-dets",
            help="Evaluation: detections kept per image, by the model and the evaluator "
            "(LVIS: 300).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
    as_json: JsonOption = False,
    **loss_values: Any,
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
        "score_threshold": score_threshold,
        "max_dets": max_dets,
        "seed": seed,
    }
    for key, value in given.items():
        if value is not None:
            values[key] = str(value) if isinstance(value, Path | StrEnum) else value
    # --loss, --activation and the declared loss options (generated by click_command).
    loss_values = {k: str(v) if isinstance(v, StrEnum) else v for k, v in loss_values.items()}
    for key in ("loss", "activation"):
        if loss_values.get(key) is not None:
            values[key] = loss_values[key]
    options = {k: v for k, v in loss_values.items() if k not in ("loss", "activation")}
    values = merge_loss_options(values, {k: v for k, v in options.items() if v is not None})
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


def _loss_parameters() -> list[inspect.Parameter]:
    """``--loss``, ``--activation`` and every declared loss option, from the loss registry."""
    from gumbel_analysis.losses import Activation, all_options, available_losses, loss_entry

    loss_help = (
        "Classification loss; aliases fix the activation: gumbel and sigmoid are bce, gol is "
        "droploss (Eq. 6 variant) and gol-star is eql, with gumbel (see README, Losses)."
    )
    LossName = StrEnum("LossName", {n: n for n in available_losses()})
    ActivationName = StrEnum("ActivationName", {a.value: a.value for a in Activation})
    takes: dict[str, list[str]] = {}
    for name in available_losses():
        entry = loss_entry(name)
        if not entry.activation:  # aliases fix theirs
            takes.setdefault("|".join(entry.activations), []).append(name)
    activation_help = "; ".join(f"{a} for {', '.join(n)}" for a, n in takes.items())
    params = [
        _keyword("loss", LossName, typer.Option(help=loss_help + " Default: gumbel.")),
        _keyword(
            "activation",
            ActivationName,
            typer.Option(help=f"{activation_help}. Default: the loss's first."),
        ),
    ]
    # Which losses declare each option, and with which default (an alias may change it).
    defaults: dict[str, dict[str, list[str]]] = {}
    for name in available_losses():
        entry = loss_entry(name)
        for activation in entry.activations:
            for option in entry.options(activation):
                users = defaults.setdefault(option.name, {}).setdefault(str(option.default), [])
                if name not in users:
                    users.append(name)
    for option in all_options().values():
        kind: Any = {"float": float, "int": int}.get(option.kind)
        if option.kind == "choice":
            kind = StrEnum(f"{option.name}_choices", {c: c for c in option.choices})
        by_default = defaults[option.name]
        users = sorted({n for names in by_default.values() for n in names})
        text = f"{option.help} [{', '.join(users)}]"
        if len(by_default) > 1:
            text += " Default: " + "; ".join(f"{d} ({', '.join(n)})" for d, n in by_default.items())
        elif option.default is not None:
            text += f" Default: {option.default}."
        params.append(
            _keyword(
                option.name,
                kind,
                typer.Option(
                    option.cli_flag, *option.aliases, help=text, rich_help_panel=LOSS_PANEL
                ),
            )
        )
    return params


def _keyword(name: str, kind: Any, option: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def click_command(settings: dict[str, Any]) -> Any:
    """``gumbel train`` as a click command, its loss options generated from the registry."""
    static = [
        p
        for p in inspect.signature(train).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    hints = get_type_hints(train, include_extras=True)
    static = [
        p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY) for p in static
    ]
    at = [p.name for p in static].index("preset") + 1
    params = static[:at] + _loss_parameters() + static[at:]

    @functools.wraps(train)
    def command(**kwargs: Any) -> None:
        return train(**kwargs)

    del command.__wrapped__  # Typer must read the generated signature, not train's
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    sub = typer.Typer(**settings)
    sub.command("train")(command)
    return typer.main.get_command(sub)
