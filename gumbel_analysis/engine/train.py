"""The training loop: data -> sampler -> model -> loss -> backward -> hooks -> SGD step.

As in torchvision's ``references/detection/train.py`` the model knows nothing of training;
as in detectron2's ``train_loop.py`` hooks run before_step / after_backward / after_step and the
loop sits in try/finally so every file is closed. ``train(cfg)`` is the whole run: it builds the
pieces from a :class:`TrainConfig`, trains, checkpoints atomically, and evaluates at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from gumbel_analysis.data.dataset import LVISDetection, collate
from gumbel_analysis.data.sampling import build_train_sampler
from gumbel_analysis.data.synthetic import SyntheticSpec
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.config import TrainConfig, resolve
from gumbel_analysis.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
)
from gumbel_analysis.engine.hooks import Checkpointer, MetricsWriter, ProgressBar
from gumbel_analysis.engine.inference import evaluate_run
from gumbel_analysis.engine.setup import (
    RunPaths,
    check_loss_config,
    data_paths,
    loss_label,
    make_loss,
    pick_device,
    resolved_loss_options,
    seed_everything,
)
from gumbel_analysis.errors import InputError, TrainingError
from gumbel_analysis.hooks import (
    GradientLogWriter,
    HookBase,
    HookList,
    PositiveGradientRecorder,
    log_attributes,
)
from gumbel_analysis.hooks.grad_log import CATEGORY_FIELDS
from gumbel_analysis.io import write_text_atomic
from gumbel_analysis.losses import ClassificationLoss
from gumbel_analysis.model import build_model


class _SkipSampler(Sampler[int]):
    """The first epoch after a mid-epoch resume: the same order, without the batches done."""

    def __init__(self, sampler: Sampler[int], skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        yield from it

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class Trainer:
    """Owns the training state and runs the loop; hooks read it through ``hook.trainer``."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        train_set: LVISDetection,
        sampler: Sampler[int],
        device: torch.device,
        dist: DistInfo,
        run: RunPaths,
        hooks: list[HookBase],
    ):
        self.cfg, self.model, self.train_set, self.sampler = cfg, model, train_set, sampler
        self.device, self.dist, self.run = device, dist, run
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.amp = bool(cfg.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.iters_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
        self.max_iter = cfg.epochs * self.iters_per_epoch
        if cfg.max_iters is not None:
            self.max_iter = min(self.max_iter, cfg.max_iters)
        self.epoch = 0  # the epoch in progress (0-based)
        self.iteration = 0  # optimizer steps done
        self.epoch_iteration = 0  # steps done within the current epoch
        self.end_of_epoch = False
        self.epoch_length = self.iters_per_epoch
        self.lr = self.lr_at(0)
        self.storage: dict[str, float] = {}  # the latest losses, for the writers
        self.hooks = HookList(hooks)
        self.hooks.attach(self)

    @property
    def is_last_iteration(self) -> bool:
        return self.iteration >= self.max_iter

    def lr_at(self, iteration: int) -> float:
        """Linear warm-up from ``warmup_factor``, then x0.1 at each step epoch."""
        cfg = self.cfg
        factor = 1.0
        if iteration < cfg.warmup_iters:
            alpha = iteration / cfg.warmup_iters
            factor = cfg.warmup_factor * (1 - alpha) + alpha
        steps = sum(iteration >= s * self.iters_per_epoch for s in cfg.lr_steps)
        return cfg.lr * factor * 0.1**steps

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        return {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "epoch_iteration": self.epoch_iteration,
            "rng": ckpt.rng_state(),
            "config": self.cfg.to_dict(),
            "hooks": {type(h).__name__: h.state_dict() for h in self.hooks.hooks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.epoch_iteration = state["epoch_iteration"]
        self.lr = self.lr_at(self.iteration)
        ckpt.set_rng_state(state["rng"])
        saved = state.get("hooks", {})
        for hook in self.hooks.hooks:
            if type(hook).__name__ in saved:
                hook.load_state_dict(saved[type(hook).__name__])

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run.last, self.state_dict())

    # --- loop --------------------------------------------------------------------------------
    def loader(self, skip_batches: int) -> DataLoader:
        sampler: Sampler[int] = self.sampler
        if skip_batches:
            sampler = _SkipSampler(sampler, skip_batches * self.cfg.batch_size)
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
        )

    def run_step(self, images: list[torch.Tensor], targets: list[dict]) -> None:
        self.hooks.call("before_step")
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [
            {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
            for t in targets
        ]
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        with torch.autocast(self.device.type, enabled=self.amp):
            loss_dict = self.model(images, targets)
        loss = sum(loss_dict.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items())
            raise TrainingError(
                f"non-finite loss at iteration {self.iteration + 1} (epoch {self.epoch + 1}): "
                f"{parts}; state saved to {self.run.root / ckpt.DIVERGED}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.hooks.call("after_backward")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.storage = {"loss": value, **{k: float(v.detach()) for k, v in loss_dict.items()}}
        self.iteration += 1
        self.epoch_iteration += 1
        self.lr = self.lr_at(self.iteration)
        # Advance the epoch before the hooks run, so an epoch-end checkpoint records the next
        # epoch's start: a resumed run then creates exactly the loaders (and draws exactly the
        # random numbers) the uninterrupted run does.
        self.end_of_epoch = self.epoch_iteration >= self.epoch_length
        if self.end_of_epoch:
            self.epoch += 1
            self.epoch_iteration = 0
        self.hooks.call("after_step")

    def train(self) -> None:
        self.model.train()
        try:
            self.hooks.call("before_train")
            while self.epoch < self.cfg.epochs and not self.is_last_iteration:
                self.sampler.set_epoch(self.epoch)
                # Repeat-factor epochs differ in length: each is sized by its own sampler.
                self.epoch_length = math.ceil(len(self.sampler) / self.cfg.batch_size)
                for images, targets in self.loader(self.epoch_iteration):
                    self.run_step(images, targets)
                    if self.end_of_epoch or self.is_last_iteration:
                        break
            self.save_checkpoint()
        except TrainingError:
            # Keep the state that produced the non-finite loss for inspection, beside (never
            # over) the last good checkpoint.
            if self.dist.is_main:
                ckpt.save_checkpoint(self.run.root / ckpt.DIVERGED, self.state_dict())
            raise
        finally:
            self.hooks.after_train()


def _check_run_folder(run: RunPaths, resume: bool) -> None:
    if resume:
        if not run.last.is_file():
            raise InputError(f"nothing to resume: {run.last} does not exist")
        return
    if run.root.exists() and any(run.root.iterdir()):
        raise InputError(f"run folder {run.root} is not empty; use --resume or another --out")


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    console: Console | None = None,
    extra_hooks: list[HookBase] | None = None,
) -> dict[str, Any] | None:
    """Run ``cfg`` end to end; returns the evaluation metrics (rank 0) or None."""
    run = RunPaths(Path(cfg.out))
    device = pick_device(cfg.device)
    dist = init_distributed(device.type)
    try:
        if resume:
            saved = ckpt.load_checkpoint(run.last)
            cfg = TrainConfig.from_dict({**saved["config"], "out": cfg.out})
        if dist.is_main:
            _check_run_folder(run, resume)
        cfg = check_loss_config(resolve(cfg, world_size=dist.world_size))
        if cfg.amp is None:
            cfg = dataclasses.replace(cfg, amp=device.type == "cuda")
        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        seed_everything(cfg.seed + dist.rank)
        if dist.is_main:
            data_paths(cfg.data)  # rank 0 makes the synthetic data before the others look
        barrier(dist)
        data = data_paths(cfg.data)
        train_set = LVISDetection(data.train_ann, data.image_root, train=True, hflip_prob=cfg.hflip)
        val_set = LVISDetection(data.val_ann, data.image_root, train=False)
        if val_set.category_ids != train_set.category_ids:
            raise InputError("the train and val annotation files have different categories")
        loss = make_loss(cfg, train_set.class_frequency, train_set.frequency_groups)
        cfg.loss_options = resolved_loss_options(loss, cfg)
        model = build_model(cfg.preset, loss.num_classes, loss, enh=cfg.enh, weights=cfg.weights)
        model.to(device)
        ddp_model = model
        if dist.enabled:
            ddp_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        sampler = build_train_sampler(
            train_set, cfg.sampler, cfg.seed, cfg.rfs_threshold, dist.world_size, dist.rank
        )
        hooks: list[HookBase] = list(extra_hooks or [])
        if dist.is_main:
            run.root.mkdir(parents=True, exist_ok=True)
            hooks.append(MetricsWriter(run.metrics_log, cfg.log_every))
        recorder = gradient_recorder(cfg, model, loss, dist) if cfg.grad_log else None
        if recorder is not None:
            hooks.append(recorder)  # before the checkpointer: a row written is not pending
        hooks.append(Checkpointer(cfg.checkpoint_every))
        trainer = Trainer(cfg, ddp_model, train_set, sampler, device, dist, run, hooks)
        if dist.is_main and progress:
            trainer.hooks.hooks.append(ProgressBar(trainer.max_iter, console))
            trainer.hooks.attach(trainer)
        if resume:
            trainer.load_state_dict(saved)
        if recorder is not None:
            recorder.scale_fn = trainer.scaler._get_scale_async if trainer.amp else None
            if dist.is_main:
                recorder.writer = open_grad_log(
                    run, cfg, loss, train_set, recorder.last_row_iteration if resume else None
                )
        if dist.is_main:
            write_text_atomic(run.config, json.dumps(cfg.to_dict(), indent=2) + "\n")
        trainer.train()
        barrier(dist)
        if dist.is_main:
            ckpt.save_checkpoint(run.final, {"model": model.state_dict(), "config": cfg.to_dict()})
        if not cfg.evaluate:
            return None
        # every rank predicts its share of the val images; rank 0 merges and evaluates
        return evaluate_run(model, val_set, device, run, cfg, progress, dist=dist)
    finally:
        cleanup(dist)


def gradient_recorder(
    cfg: TrainConfig, model: torch.nn.Module, loss: ClassificationLoss, dist: DistInfo
) -> PositiveGradientRecorder:
    """The recorder on the box classifier's logits (``docs/grad-log.md``); its writer is set
    once the run's state is known."""
    recorder = PositiveGradientRecorder(
        loss.num_classes,
        every=cfg.grad_every,
        weights_fn=lambda: getattr(loss, "last_weights", None),
        reduce_fn=(lambda t: all_reduce_sum(t, dist)) if dist.enabled else None,
    )
    model.roi_heads.on_class_logits = recorder.watch
    return recorder


def open_grad_log(
    run: RunPaths,
    cfg: TrainConfig,
    loss: ClassificationLoss,
    train_set: LVISDetection,
    resume_after: int | None,
) -> GradientLogWriter:
    categories = [{k: c[k] for k in CATEGORY_FIELDS} for c in train_set.categories]
    attributes = log_attributes(
        loss=loss_label(cfg),
        activation=loss.activation,
        num_classes=loss.num_classes,
        temperature=getattr(loss, "temperature", None),
        gumbel_mode=str(getattr(loss, "mode", "") or ""),
        dataset=cfg.data or f"synthetic:{SyntheticSpec().key()}",
        grad_every=cfg.grad_every,
        config=cfg.to_dict(),
    )
    return GradientLogWriter(run.grads, attributes, categories, resume_after)
