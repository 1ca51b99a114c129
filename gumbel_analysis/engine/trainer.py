"""The training loop: data -> sampler -> model -> loss -> backward -> hooks -> SGD step.

As in torchvision's ``references/detection/train.py`` the model knows nothing of training; as
in detectron2's ``train_loop.py`` the :class:`Trainer` owns the state and runs the loop, hooks
(attached once, when the trainer is made) run before_step / after_backward / after_step, and the
loop sits in try/finally so every file is closed. Each step's losses go into ``trainer.storage``
(an :class:`~gumbel_analysis.hooks.events.EventStorage`), where the writers read them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from gumbel_analysis.data.dataset import LVISDetection, collate
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.distributed import DistInfo
from gumbel_analysis.engine.setup import autocast_dtype
from gumbel_analysis.errors import InputError, TrainingError
from gumbel_analysis.hooks.base import HookBase, HookList
from gumbel_analysis.hooks.events import EventStorage
from gumbel_analysis.spec.config import TrainConfig
from gumbel_analysis.spec.layout import RunLayout


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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield int(index), sample_seed(*self.key, position)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A 63-bit seed for one sample's augmentation (numpy's SeedSequence mixes the four)."""
    words = np.random.SeedSequence([seed, epoch, rank, position]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def build_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """The mixed-precision loss scaler: enabled when ``cfg.amp`` asks for it on CUDA."""
    return torch.amp.GradScaler("cuda", enabled=bool(cfg.amp) and device.type == "cuda")


def loss_scale_fn(
    scaler: torch.amp.GradScaler, device: torch.device
) -> Callable[[], torch.Tensor] | None:
    """A function giving the scaler's current loss scale as a tensor on ``device`` without
    waiting for the device (None when the scaler is disabled: the scale is 1).

    Through the public ``GradScaler.scale``: the scale times a one is the scale itself, exactly
    (``get_scale()`` would copy it to the host at every call).
    """
    if not scaler.is_enabled():
        return None
    one = torch.ones((), dtype=torch.float32, device=device)
    return lambda: scaler.scale(one)


class Trainer:
    """Owns the training state and runs the loop; hooks read it through ``hook.trainer``.

    ``hooks`` are attached here, once; ``scaler`` defaults to :func:`build_scaler`'s.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        train_set: LVISDetection,
        sampler: Sampler[int],
        device: torch.device,
        dist: DistInfo,
        run: RunLayout,
        hooks: Iterable[HookBase],
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.cfg, self.model, self.train_set, self.sampler = cfg, model, train_set, sampler
        self.device, self.dist, self.run = device, dist, run
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scaler = build_scaler(cfg, device) if scaler is None else scaler
        self.amp = bool(cfg.amp)
        self.amp_dtype = autocast_dtype(device)
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
        self.storage = EventStorage()  # the step's losses, for the writers
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
    def _bare_model(self) -> torch.nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: weights, optimizer, scaler,
        position, RNG states, the data's position, the config and the hooks' states."""
        return {
            "model": self._bare_model().state_dict(),
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
            "hooks": {h.checkpoint_name: h.state_dict() for h in self.hooks.hooks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s ``state``."""
        self._bare_model().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.epoch_iteration = state["epoch_iteration"]
        self.lr = self.lr_at(self.iteration)
        ckpt.set_rng_state(state["rng"])
        saved = state.get("hooks", {})
        for hook in self.hooks.hooks:
            if hook.checkpoint_name in saved:
                hook.load_state_dict(saved[hook.checkpoint_name])

    def save_checkpoint(self) -> None:
        """Save the state to ``last.pt`` (rank 0)."""
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run.last, self.state_dict())

    # --- loop --------------------------------------------------------------------------------
    def loader(self, skip_batches: int) -> DataLoader:
        """The current epoch's batches from batch ``skip_batches`` on."""
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

    def _to_device(
        self, images: list[torch.Tensor], targets: list[dict]
    ) -> tuple[list[torch.Tensor], list[dict]]:
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [
            {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
            for t in targets
        ]
        return images, targets

    def _check_finite(self, value: float, loss_dict: dict[str, torch.Tensor]) -> None:
        if not math.isfinite(value):
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items())
            raise TrainingError(
                f"non-finite loss at iteration {self.iteration + 1} (epoch {self.epoch}, counted "
                f"from 0 as in metrics.jsonl): {parts}; state saved to {self.run.diverged}"
            )

    def _advance(self) -> None:
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

    def run_step(self, images: list[torch.Tensor], targets: list[dict]) -> None:
        """One iteration: forward, backward, SGD step, with the hooks around it."""
        self.hooks.call("before_step")
        self.storage.begin_iteration(self.iteration + 1)
        images, targets = self._to_device(images, targets)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            loss_dict = self.model(images, targets)
        loss = sum(loss_dict.values())
        value = float(loss.detach())
        self._check_finite(value, loss_dict)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.hooks.call("after_backward")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.storage.put_scalars(loss=value, **{k: float(v.detach()) for k, v in loss_dict.items()})
        self._advance()
        self.hooks.call("after_step")

    def _run_epochs(self) -> None:
        while self.epoch < self.cfg.epochs and not self.is_last_iteration:
            self.sampler.set_epoch(self.epoch)
            # Repeat-factor epochs differ in length: each is sized by its own sampler.
            self.epoch_length = math.ceil(len(self.sampler) / self.cfg.batch_size)
            for images, targets in _one_line_errors(self.loader(self.epoch_iteration)):
                self.run_step(images, targets)
                if self.end_of_epoch or self.is_last_iteration:
                    break

    def train(self) -> None:
        """Train to ``max_iter`` and save the last checkpoint; ``after_train`` always runs."""
        self.model.train()
        try:
            self.hooks.call("before_train")
            self._run_epochs()
            self.save_checkpoint()
        except TrainingError:
            # Keep the state that produced the non-finite loss for inspection, beside (never
            # over) the last good checkpoint.
            if self.dist.is_main:
                ckpt.save_checkpoint(self.run.diverged, self.state_dict())
            raise
        finally:
            self.hooks.after_train()


def _one_line_errors(batches: Iterable) -> Iterator:
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
