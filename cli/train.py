"""``gumbel train``: Mask R-CNN with a Gumbel, GOL, Sigmoid or Softmax head on LVIS-format data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gumbel_analysis.cli.common import (
    JsonOption,
    ProgressOption,
    console,
    err_console,
    fail,
    print_json,
    reports_input_errors,
)
from gumbel_analysis.cli.training_options import (
    AmpOption,
    BatchSizeOption,
    CheckpointEveryOption,
    DataOption,
    DeviceOption,
    EpochsOption,
    GradLogOption,
    MaxItersOption,
    PresetOption,
    SamplerOption,
    ScheduleOption,
    WorkersOption,
    field_option,
    given_fields,
    with_loss_options,
)
from gumbel_analysis.spec import TrainConfig, load_config_file, loss_entry, merge_loss_options


@with_loss_options
@reports_input_errors
def train(
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON or TOML file of TrainConfig fields.")
    ] = None,
    data: DataOption = None,
    preset: PresetOption = None,
    enh: field_option("enh") = None,
    sampler: SamplerOption = None,
    epochs: EpochsOption = None,
    schedule: ScheduleOption = None,
    batch_size: BatchSizeOption = None,
    base_lr: field_option("base_lr") = None,
    weights: field_option("weights") = None,
    from_run: field_option("from_run") = None,
    out: field_option("out") = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --out from its last checkpoint (from iteration 0 with its "
            "saved config if it has none). Options given with --resume may change only "
            "--device, --amp, --workers, --max-iters, --checkpoint-every, --eval, --calibration "
            "and --norcal-gamma; any other that "
            "differs from the saved config is refused."
        ),
    ] = False,
    device: DeviceOption = None,
    amp: AmpOption = None,
    workers: WorkersOption = None,
    max_iters: MaxItersOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    grad_log: GradLogOption = None,
    grad_every: field_option("grad_every") = None,
    grad_stage: field_option("grad_stage") = None,
    evaluate: field_option("evaluate") = None,
    score_threshold: field_option("score_threshold") = None,
    max_dets: field_option("max_dets") = None,
    calibration: field_option("calibration") = None,
    norcal_gamma: field_option("norcal_gamma") = None,
    seed: field_option("seed") = None,
    progress: ProgressOption = True,
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
    values.update(given_fields(locals()))
    # --loss, --activation and the declared loss options (added by with_loss_options).
    given_loss = given_fields({k: loss_values.pop(k) for k in ("loss", "activation")})
    values.update(given_loss)
    options = {k: getattr(v, "value", v) for k, v in loss_values.items() if v is not None}
    values = merge_loss_options(values, options)
    if "out" not in values:
        loss = values.get("loss", "gumbel")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        values["out"] = f"runs/{values.get('preset', 'tiny')}-{loss}-{stamp}"
    cfg = TrainConfig.from_dict(values, source=str(config) if config is not None else None)
    from gumbel_analysis.engine.evaluate import metrics_table  # torch: once the options hold
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
    label = loss_entry(cfg.loss).label(metrics.get("activation"))
    console.print(metrics_table(metrics, f"{label} on {cfg.preset}: LVIS metrics (val)"))
    console.print(f"run folder: {cfg.out}")
