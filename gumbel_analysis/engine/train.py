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
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from gumbel_analysis.data.dataset import LVISDetection, collate
from gumbel_analysis.data.sampling import build_train_sampler
from gumbel_analysis.data.synthetic import SyntheticSpec
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.config import SAFE_ON_RESUME, TrainConfig, option_name, resolve
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
    rfs_threshold_from_data,
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
from gumbel_analysis.losses.options import flag_of
from gumbel_analysis.model import build_model


class _EpochSampler(Sampler[tuple[int, int]]):
    """One epoch of the training sampler from position ``skip`` on, each index paired with its
    augmentation seed.

    The seed of the sample at position ``p`` of epoch ``e`` on rank ``r`` is a function of
    ``(seed, e, r, p)`` only, so the random flips do not depend on which worker loads a sample,
    how many workers there are, or whether the run was resumed in the middle of the epoch:
    together with the checkpoint's RNG states and position this makes any resume exact.
    """

    def __init__(self, sampler: Sampler[int], skip: int, seed: int, epoch: int, rank: int):
        self.sampler, self.skip = sampler, skip
        self.key = (int(seed), int(epoch), int(rank))

    def __iter__(self):
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield int(index), sample_seed(*self.key, position)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A 63-bit seed for one sample's augmentation (numpy's SeedSequence mixes the four)."""
    words = np.random.SeedSequence([seed, epoch, rank, position]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


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
            # Where the data stands: the sampler's order is a function of (seed, epoch) and
            # each sample's flip of (seed, epoch, rank, position); see _EpochSampler.
            "data": {
                "epoch": self.epoch,
                "position": self.epoch_iteration * self.cfg.batch_size,
                "seed": self.cfg.seed,
                "rank": self.dist.rank,
            },
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
        sampler = _EpochSampler(
            self.sampler,
            skip_batches * self.cfg.batch_size,
            self.cfg.seed,
            self.epoch,
            self.dist.rank,
        )
        # The loader's own generator: making its iterator (and the workers' base seed) must not
        # draw from the global RNG the model's proposal sampling uses, or a resumed run, which
        # makes one more iterator than the uninterrupted one, would drift from it.
        generator = torch.Generator().manual_seed(sample_seed(self.cfg.seed, self.epoch, 2**31, 0))
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            generator=generator,
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
                for images, targets in _one_line_errors(self.loader(self.epoch_iteration)):
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


class _AnnounceLR(HookBase):
    """Print the learning rate after linear scaling once the first step ran (a run refused
    before it prints only its one error line)."""

    def __init__(self, console: Console, run: RunPaths):
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


def _one_line_errors(batches):
    """Iterate a DataLoader; an InputError from a worker (a corrupt image) comes back as torch's
    flattened traceback: keep only its own message."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except InputError as err:
            raise InputError(_worker_message(str(err))) from None
        yield batch


def _worker_message(text: str) -> str:
    if "Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split("InputError: ", 1)[-1]


def _is_stale_temp(path: Path) -> bool:
    """A temporary file of an atomic write (``.NAME.XXXX.tmp*``) that a kill left behind."""
    return path.name.startswith(".") and ".tmp" in path.name and path.is_file()


def remove_stale_temp_files(root: Path) -> list[Path]:
    """Delete the temporary files a killed atomic write left in ``root``."""
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            if _is_stale_temp(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _check_writable(root: Path) -> None:
    """The run folder (or the folder it will be made in) exists as a folder and is writable;
    the message names the user's path, not a temporary file."""
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"--out {root}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=existing)
    except OSError as err:
        where = "run folder" if existing == root else "folder for the run folder"
        raise InputError(f"{where} {existing} is not writable ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _check_run_folder(run: RunPaths, resume: bool) -> None:
    _check_writable(run.root)
    if resume:
        return
    if run.root.exists() and any(not _is_stale_temp(p) for p in run.root.iterdir()):
        raise InputError(f"run folder {run.root} is not empty; use --resume or another --out")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def resume_config(
    run: RunPaths, cfg: TrainConfig, given: Mapping[str, Any] | None
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration a resumed run continues with, and its checkpoint (None: start from
    iteration 0 with the saved config, when the run was stopped before its first checkpoint).

    ``given``: the options the user set for this call. Those in :data:`SAFE_ON_RESUME` are
    applied; any other that differs from the saved config is refused, all listed in one line.
    ``given=None`` (a library call) keeps the saved config but for ``out``.
    """
    if not run.root.is_dir():
        raise InputError(f"nothing to resume: run folder {run.root} does not exist")
    saved: dict[str, Any] | None = None
    if run.last.exists():
        saved = ckpt.load_checkpoint(run.last)
        values = saved.get("config")
        source = str(run.last)
    elif run.config.is_file():
        try:
            values = json.loads(run.config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(
                f"{run.config} is corrupt; start a new run with another --out"
            ) from None
        source = str(run.config)
    else:
        raise InputError(
            f"nothing to resume in {run.root}: no {run.last.name} or {run.config.name}; "
            "run without --resume"
        )
    base = TrainConfig.from_dict({**(values or {}), "out": cfg.out}, source=source)
    changes, refused = {}, []
    for key, value in (given or {}).items():
        if key == "out" or value is None:
            continue
        if key == "loss_options":  # each given option against the saved (resolved) one
            for name, option in value.items():
                saved_option = base.loss_options.get(name)
                if not _same(option, saved_option):
                    refused.append(f"{flag_of(name)} {option} (saved: {saved_option})")
            continue
        old = getattr(base, key)
        if _same(value, old):
            continue
        if key in SAFE_ON_RESUME:
            changes[key] = value
        else:
            refused.append(f"{option_name(key)} {value} (saved: {old})")
    if refused:
        raise InputError(
            f"--resume continues {run.root} with its saved options; these differ: "
            f"{'; '.join(refused)}. Drop them, or start a new run with another --out "
            f"(--resume may change {', '.join(option_name(k) for k in SAFE_ON_RESUME)})"
        )
    return dataclasses.replace(base, **changes), saved


def _created_files(run: RunPaths) -> list[Path]:
    return [run.config, run.metrics_log, run.grads, run.last]


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
    :func:`resume_config`. A fresh run that fails before its first checkpoint removes what it
    wrote, so a plain rerun is accepted.
    """
    run = RunPaths(Path(cfg.out))
    device = pick_device(cfg.device)
    dist = init_distributed(device.type)
    fresh = False
    made_root = False
    try:
        saved = None
        if resume:
            cfg, saved = resume_config(run, cfg, given)
            device = pick_device(cfg.device)
        if dist.is_main:
            _check_run_folder(run, resume)
            remove_stale_temp_files(run.root)  # the run is accepted: clear a killed write's
        fresh = not resume or saved is None
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
        if cfg.sampler == "rfs" and cfg.rfs_threshold is None:
            cfg.rfs_threshold = rfs_threshold_from_data(train_set)
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
            made_root = not run.root.exists()
            run.root.mkdir(parents=True, exist_ok=True)
            hooks.append(MetricsWriter(run.metrics_log, cfg.log_every))
        recorder = gradient_recorder(cfg, model, loss, dist) if cfg.grad_log else None
        if recorder is not None:
            hooks.append(recorder)  # before the checkpointer: a row written is not pending
        hooks.append(Checkpointer(cfg.checkpoint_every))
        if dist.is_main and console is not None:
            hooks.append(_AnnounceLR(console, run))
        trainer = Trainer(cfg, ddp_model, train_set, sampler, device, dist, run, hooks)
        if dist.is_main and progress:
            trainer.hooks.hooks.append(ProgressBar(trainer.max_iter, console))
            trainer.hooks.attach(trainer)
        if saved is not None:
            trainer.load_state_dict(saved)
        if recorder is not None:
            recorder.scale_fn = trainer.scaler._get_scale_async if trainer.amp else None
            if dist.is_main:
                recorder.writer = open_grad_log(
                    run, cfg, loss, train_set, recorder.last_row_iteration if saved else None
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
    except Exception as err:
        # A fresh run that failed before its first checkpoint (bad data found late, a corrupt
        # image, a full disk) leaves nothing to resume: remove what it wrote, so that a plain
        # rerun is accepted. A non-finite loss keeps its folder (diverged.pt is for inspection).
        if dist.is_main and fresh and not isinstance(err, TrainingError) and not run.last.exists():
            for path in _created_files(run):
                path.unlink(missing_ok=True)
            remove_stale_temp_files(run.root)
            if made_root and run.root.is_dir() and not any(run.root.iterdir()):
                run.root.rmdir()
        raise
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
