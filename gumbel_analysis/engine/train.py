"""``train(cfg)``: one whole run, assembled from its pieces.

It resolves the configuration, builds the data, loss, model and hooks, hands them to the
:class:`~gumbel_analysis.engine.trainer.Trainer` (the loop), checkpoints atomically and evaluates
at the end. A fresh run that fails before its first checkpoint removes what it wrote
(:mod:`gumbel_analysis.engine.run_folder`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from gumbel_analysis.data import lvis_io
from gumbel_analysis.data.dataset import LVISDetection
from gumbel_analysis.data.sampling import build_train_sampler
from gumbel_analysis.data.synthetic import SyntheticSpec
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
)
from gumbel_analysis.engine.first_stage import load_first_stage, with_first_stage
from gumbel_analysis.engine.inference import OutputPaths, evaluate_run
from gumbel_analysis.engine.run_folder import (
    check_run_folder,
    remove_partial_run,
    remove_stale_temp_files,
    resume_config,
)
from gumbel_analysis.engine.setup import (
    check_mixed_precision,
    data_paths,
    flush_denormals,
    make_calibration,
    make_loss,
    pick_device,
    seed_everything,
)
from gumbel_analysis.engine.trainer import Trainer, build_scaler, loss_scale_fn
from gumbel_analysis.errors import InputError, TrainingError
from gumbel_analysis.hooks.base import HookBase
from gumbel_analysis.hooks.grad_log import CATEGORY_FIELDS, GradientLogWriter, log_attributes
from gumbel_analysis.hooks.gradient_recorder import GradientRecorderHook
from gumbel_analysis.hooks.writers import Checkpointer, MetricsWriter, ProgressBar
from gumbel_analysis.io import write_text_atomic
from gumbel_analysis.losses import ClassificationLoss
from gumbel_analysis.model import build_model
from gumbel_analysis.model.calibration import calibration_tag
from gumbel_analysis.spec.config import DataStats, TrainConfig, resolve
from gumbel_analysis.spec.layout import RunLayout
from gumbel_analysis.spec.losses import loss_entry

__all__ = ["Trainer", "build_grad_log_writer", "train"]


@dataclass
class _Cleanup:
    """What a failed run may remove: only a fresh run's files, and the folder if it made it."""

    fresh: bool = False
    made_root: bool = False


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    given: Mapping[str, Any] | None = None,
    progress: bool = True,
    console: Console | None = None,
    extra_hooks: list[HookBase] | None = None,
) -> dict[str, Any] | None:
    """Run ``cfg`` end to end; returns the evaluation metrics (rank 0) or None.

    ``resume``: continue ``cfg.out`` from its last checkpoint (or from iteration 0 with its saved
    config when it has none); ``given`` are the options set for this call, see
    :func:`~gumbel_analysis.engine.run_folder.resume_config`. A fresh run that fails before its
    first checkpoint removes what it wrote, so a plain rerun is accepted.
    """
    run = RunLayout(Path(cfg.out))
    device = pick_device(cfg.device)
    dist = init_distributed(device.type)
    undo = _Cleanup()
    try:
        cfg, saved, device = open_run(run, cfg, dist, device, resume, given)
        undo.fresh = not resume or saved is None
        cfg, device, (train_set, val_set), loss = build_config(cfg, dist, device)
        model, ddp_model = build_training_model(cfg, loss, device, dist)
        sampler = build_train_sampler(
            train_set, cfg.sampler, cfg.seed, cfg.rfs_threshold, dist.world_size, dist.rank
        )
        undo.made_root = make_run_folder(run, dist)
        scaler = build_scaler(cfg, device)
        hooks = build_hooks(
            cfg, run, dist, model, loss, train_set, scaler, device, extra_hooks, progress, console
        )
        trainer = Trainer(cfg, ddp_model, train_set, sampler, device, dist, run, hooks, scaler)
        if saved is not None:
            trainer.load_state_dict(saved)
        if dist.is_main:
            write_text_atomic(run.config, json.dumps(cfg.to_dict(), indent=2) + "\n")
        with flush_denormals():
            trainer.train()
            calibration = make_calibration(cfg, lvis_io.image_counts(train_set.data))
            return finish(cfg, model, val_set, device, run, dist, progress, calibration)
    except Exception as err:
        # A fresh run that failed before its first checkpoint (bad data found late, a corrupt
        # image, a full disk) leaves nothing to resume: remove what it wrote, so that a plain
        # rerun is accepted. A non-finite loss keeps its folder (diverged.pt is for inspection).
        fresh = undo.fresh and not isinstance(err, TrainingError)
        if dist.is_main and fresh and not run.last.exists():
            remove_partial_run(run, undo.made_root)
        raise
    finally:
        cleanup(dist)


def open_run(
    run: RunLayout,
    cfg: TrainConfig,
    dist: DistInfo,
    device: torch.device,
    resume: bool,
    given: Mapping[str, Any] | None,
) -> tuple[TrainConfig, dict[str, Any] | None, torch.device]:
    """The config to run (a resumed run's saved one, see ``resume_config``), its checkpoint
    (None: from iteration 0) and device, once rank 0 checked the run folder and cleared it of
    a killed write's temporary files."""
    saved = None
    if resume:
        cfg, saved = resume_config(run, cfg, given)
        device = pick_device(cfg.device)
    if dist.is_main:
        check_run_folder(run, resume)
        remove_stale_temp_files(run.root)  # the run is accepted: clear a killed write's
    return cfg, saved, device


def build_config(
    cfg: TrainConfig, dist: DistInfo, device: torch.device
) -> tuple[TrainConfig, torch.device, tuple[LVISDetection, LVISDetection], ClassificationLoss]:
    """The configuration step: the datasets, then ``cfg`` resolved once from the preset, the
    processes, the device and the training data (``spec.config.resolve``: lambda and the RFS
    threshold come from its groups), the process's device, and the loss built for it."""
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(cfg.seed + dist.rank)
    cfg = with_first_stage(cfg)  # DisAlign: the first stage's preset, data and activation
    train_set, val_set = build_data(cfg, dist)
    stats = DataStats(train_set.class_frequency, train_set.frequency_groups)
    cfg = resolve(cfg, world_size=dist.world_size, device_type=device.type, data=stats)
    check_mixed_precision(cfg.amp, device)
    loss = make_loss(cfg, train_set.class_frequency, train_set.frequency_groups)
    return cfg, device, (train_set, val_set), loss


def build_data(cfg: TrainConfig, dist: DistInfo) -> tuple[LVISDetection, LVISDetection]:
    """The training set (with its flips) and the validation set, which must share categories."""
    if dist.is_main:
        data_paths(cfg.data)  # rank 0 makes the synthetic data before the others look
    barrier(dist)
    data = data_paths(cfg.data)
    train_set = LVISDetection(data.train_ann, data.image_root, train=True, hflip_prob=cfg.hflip)
    val_set = LVISDetection(data.val_ann, data.image_root, train=False)
    if val_set.category_ids != train_set.category_ids:
        raise InputError("the train and val annotation files have different categories")
    return train_set, val_set


def build_training_model(
    cfg: TrainConfig, loss: ClassificationLoss, device: torch.device, dist: DistInfo
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model on ``device``, and the module the loop trains (DDP-wrapped when distributed)."""
    model = build_model(
        cfg.preset, loss.num_classes, loss, enh=cfg.enh, weights=cfg.weights, seed=cfg.seed
    )
    if loss.adjusts_logits:  # DisAlign's second stage starts from the first's weights
        load_first_stage(model, cfg)
    model.to(device)
    if cfg.amp and device.type == "cpu":
        # oneDNN's bfloat16 convolutions are about 10% faster on NHWC tensors (measured on the
        # tiny preset); the layout changes no result beyond rounding.
        model.to(memory_format=torch.channels_last)
    if not dist.enabled:
        return model, model
    ddp_model = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return model, ddp_model


def make_run_folder(run: RunLayout, dist: DistInfo) -> bool:
    """Make the run folder (rank 0); True if this call made it."""
    if not dist.is_main:
        return False
    made = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    return made


def build_hooks(
    cfg: TrainConfig,
    run: RunLayout,
    dist: DistInfo,
    model: torch.nn.Module,
    loss: ClassificationLoss,
    train_set: LVISDetection,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    extra_hooks: list[HookBase] | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> list[HookBase]:
    """Every hook of the run, in the order they are called: the caller's, the metrics writer,
    the gradient recorder, the checkpointer, the learning-rate line, the progress bar."""
    hooks: list[HookBase] = list(extra_hooks or [])
    if dist.is_main:
        hooks.append(MetricsWriter(run.metrics_log, cfg.log_every))
    if cfg.grad_log:
        # Before the checkpointer: a row written is not pending in the checkpoint.
        hooks.append(
            build_gradient_recorder(cfg, run, dist, model, loss, train_set, scaler, device)
        )
    hooks.append(Checkpointer(cfg.checkpoint_every))
    if dist.is_main and console is not None:
        hooks.append(_AnnounceLR(console, run))
    if dist.is_main and progress:
        hooks.append(ProgressBar(console))
    return hooks


def build_gradient_recorder(
    cfg: TrainConfig,
    run: RunLayout,
    dist: DistInfo,
    model: torch.nn.Module,
    loss: ClassificationLoss,
    train_set: LVISDetection,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> GradientRecorderHook:
    """The recorder on the box classifier's logits (``docs/grad-log.md``), registered on the
    model's RoI heads; rank 0's opens the log when training starts."""
    heads = model.roi_heads
    if cfg.grad_stage is not None:  # checked by the config against the preset's stages
        heads.recorded_stage = cfg.grad_stage - 1
    recorder = GradientRecorderHook(
        loss.num_classes,
        every=cfg.grad_every,
        open_writer=(
            functools.partial(
                build_grad_log_writer, run, cfg, loss, train_set, stage=heads.recorded_stage + 1
            )
            if dist.is_main
            else None
        ),
        weights_fn=lambda: getattr(heads.recorded_loss, "last_weights", None),
        # Gradients of the scaled loss are divided by the scale of the step's backward.
        scale_fn=loss_scale_fn(scaler, device),
        reduce_fn=(lambda t: all_reduce_sum(t, dist)) if dist.enabled else None,
    )
    model.roi_heads.register_class_logits_hook(recorder.watch)
    return recorder


def build_grad_log_writer(
    run: RunLayout,
    cfg: TrainConfig,
    loss: ClassificationLoss,
    train_set: LVISDetection,
    resume_after: int | None,
    stage: int = 1,
) -> GradientLogWriter:
    """The run's gradient log, ``grads.h5``, open for writing (``stage``: the box stage it
    records, 1-based; ``resume_after``: keep the rows
    up to that iteration of an existing log; None: a new log)."""
    categories = [{k: c[k] for k in CATEGORY_FIELDS} for c in train_set.categories]
    attributes = log_attributes(
        loss=loss_entry(cfg.loss).label(cfg.activation),
        activation=loss.activation,
        num_classes=loss.num_classes,
        temperature=getattr(loss, "temperature", None),
        gumbel_mode=str(getattr(loss, "mode", "") or ""),
        dataset=cfg.data or f"synthetic:{SyntheticSpec().key()}",
        grad_every=cfg.grad_every,
        stage=stage,
        config=cfg.to_dict(),
    )
    return GradientLogWriter(run.grads, attributes, categories, resume_after)


def finish(
    cfg: TrainConfig,
    model: torch.nn.Module,
    val_set: LVISDetection,
    device: torch.device,
    run: RunLayout,
    dist: DistInfo,
    progress: bool,
    calibration: torch.nn.Module | None = None,
) -> dict[str, Any] | None:
    """Save the final weights (rank 0) and, if asked, evaluate them on the val set: as they
    are (the run's own results) and, with ``calibration``, calibrated into files of its own."""
    barrier(dist)
    if dist.is_main:
        ckpt.save_checkpoint(run.final, {"model": model.state_dict(), "config": cfg.to_dict()})
    if not cfg.evaluate:
        return None
    # every rank predicts its share of the val images; rank 0 merges and evaluates
    metrics = evaluate_run(model, val_set, device, run, cfg, progress, dist=dist)
    if calibration is not None:
        tag = calibration_tag(calibration.gamma)
        outputs = OutputPaths(run.results_for(tag), run.metrics_for(tag))
        evaluate_run(model, val_set, device, run, cfg, progress, outputs, dist, calibration)
    return metrics


class _AnnounceLR(HookBase):
    """Print the learning rate after linear scaling once the first step ran (a run refused
    before it prints only its one error line)."""

    def __init__(self, console: Console, run: RunLayout):
        self.console, self.run, self.done = console, run, False

    def after_step(self) -> None:
        if self.done:
            return
        self.done = True
        cfg = self.trainer.cfg
        self.console.print(
            f"learning rate {cfg.lr:g} = --lr {cfg.base_lr:g} x {cfg.batch_size} images x "
            f"{cfg.world_size} process(es) / 16 (linear scaling; recorded as lr in "
            f"{self.run.config})",
            markup=False,
            highlight=False,
        )
