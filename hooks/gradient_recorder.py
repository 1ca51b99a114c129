"""Per-category gradients of a classifier's logits, captured as autograd delivers them.

A tensor hook on the logits sees ``dL/dq`` after every weighting the loss applies (GOL's dropped
negatives arrive as zeros), so any loss is measured the same way. Sums stay on the logits'
device between rows: nothing synchronises with the host per iteration.

With any PyTorch classifier (``docs/grad-log.md`` describes the file; ``gumbel grads`` reads it)::

    with GradientRecorder("grads.h5", categories, every=20, loss="gumbel") as recorder:
        for x, labels in data:
            logits = model(x)
            recorder.watch(logits, labels)  # labels in [0, C]; C (or more) = background
            loss(logits, labels).backward()  # the tensor hook accumulates
            optimizer.step()
            recorder.step()                 # a row every 20 steps; the last partial row on exit

``categories`` are names or dicts with ``id``, ``name``, ``frequency`` (r/c/f),
``image_count`` and ``instance_count``. In ``gumbel train`` the loop's hook,
:class:`GradientRecorderHook`, is a thin adapter that steps it with the trainer's iteration
and epoch and keeps its unwritten sums in the checkpoint.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gumbel_analysis.hooks.base import HookBase
from gumbel_analysis.hooks.grad_log import (
    CATEGORY_FIELDS,
    QUANTITIES,
    GradientLogWriter,
    log_attributes,
)


def log_categories(categories: Sequence[str | dict[str, Any]]) -> list[dict[str, Any]]:
    """The log's category records from names or partial dicts (id i + 1, no group, counts 0)."""
    out = []
    for i, cat in enumerate(categories):
        record = {"name": cat} if isinstance(cat, str) else dict(cat)
        record.setdefault("id", i + 1)
        record.setdefault("name", str(record["id"]))
        record.setdefault("frequency", "")
        record.setdefault("image_count", 0)
        record.setdefault("instance_count", 0)
        out.append({k: record[k] for k in CATEGORY_FIELDS})
    return out


class GradientRecorder:
    """Accumulates, per category column c of the first ``num_classes`` columns:

    * ``positive_sum``: sum of ``dL/dq_c`` over proposals labelled c, and ``positive_count``;
    * ``negative_sum``: sum of ``|dL/dq_c|`` over proposals with other labels, and
      ``negative_count``: the sum of their loss weights (1 each unless ``weights_fn`` gives the
      loss's per-element weights, as GOL's dropped negatives have weight 0).

    Gradients are per proposal: autograd's gradient times N (the losses average over the N
    proposals), divided by ``scale_fn()`` (the mixed-precision loss scale) when given.

    ``path`` and ``categories``: the HDF5 log to write (one row every ``every`` calls of
    :meth:`step`, the last partial row at :meth:`close`); without them the sums are only
    available through :meth:`pop`. ``reduce_fn`` adds the sums of all ranks before a row is
    written (DDP).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        categories: Sequence[str | dict[str, Any]] | None = None,
        *,
        num_classes: int | None = None,
        every: int = 1,
        loss: str = "",
        activation: str = "",
        temperature: float | None = None,
        writer: GradientLogWriter | None = None,
        weights_fn: Callable[[], torch.Tensor | None] | None = None,
        scale_fn: Callable[[], torch.Tensor | float] | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if num_classes is None:
            if categories is None:
                raise ValueError("give the categories (or num_classes)")
            num_classes = len(categories)
        if categories is not None and len(categories) != num_classes:
            raise ValueError(f"{len(categories)} categories for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.every = every
        self.weights_fn, self.scale_fn, self.reduce_fn = weights_fn, scale_fn, reduce_fn
        if path is not None:
            if categories is None:
                raise ValueError("a log needs the categories")
            attributes = log_attributes(
                loss=loss,
                activation=activation,
                num_classes=self.num_classes,
                temperature=temperature,
                grad_every=every,
            )
            writer = GradientLogWriter(path, attributes, log_categories(categories))
        self.writer = writer
        self.sums: torch.Tensor | None = None  # [4, C] float64 on the logits' device
        self.pending = False  # sums not yet written
        self.steps = 0  # calls of step()
        self.epoch = 0
        # The iteration of the last row written: a resumed run keeps the rows up to the one
        # its checkpoint saw, and re-adds the sums that were pending then.
        self.last_row_iteration = 0

    def __enter__(self) -> GradientRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- capture -----------------------------------------------------------------------------
    def watch(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Register the tensor hook on ``logits`` [N, >= C] for this backward pass."""
        if logits.requires_grad:
            logits.register_hook(functools.partial(self._on_grad, labels=labels.detach()))

    def _on_grad(self, grad: torch.Tensor, labels: torch.Tensor) -> None:
        weights = self.weights_fn() if self.weights_fn is not None else None
        scale = self.scale_fn() if self.scale_fn is not None else 1.0
        self.accumulate(grad, labels, weights, scale)

    @torch.no_grad()
    def accumulate(
        self,
        grad: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        scale: torch.Tensor | float = 1.0,
    ) -> None:
        """Add one batch: ``grad`` = dL/dlogits [N, >= C], labels [N] (>= C: background)."""
        c = self.num_classes
        n = grad.shape[0]
        if self.sums is None:
            self.sums = torch.zeros((4, c), dtype=torch.float64, device=grad.device)
        elif self.sums.device != grad.device:  # restored from a checkpoint on the CPU
            self.sums = self.sums.to(grad.device)
        if n == 0:
            return
        # Per-batch reductions in float32 (float64 gradients stay float64); sums in float64.
        work = torch.float64 if grad.dtype == torch.float64 else torch.float32
        g = grad[:, :c].to(work) * (n / scale if torch.is_tensor(scale) else n / float(scale))
        fg = labels < c
        col = labels.clamp(max=c - 1)  # background rows: any column, masked out by fg
        fg64 = fg.to(torch.float64)
        g_pos = g.gather(1, col[:, None]).squeeze(1).double() * fg64
        positive_sum = torch.zeros(c, dtype=torch.float64, device=g.device).index_add_(
            0, col, g_pos
        )
        positive_count = torch.zeros_like(positive_sum).index_add_(0, col, fg64)
        # Negatives: everything in the column minus the positives (dropped ones are zero).
        abs_pos = torch.zeros_like(positive_sum).index_add_(0, col, g_pos.abs())
        negative_sum = g.abs().sum(0).double() - abs_pos
        if weights is None:
            negative_count = n - positive_count
        else:
            w = weights[:, :c].to(work)
            w_pos = w.gather(1, col[:, None]).squeeze(1).double() * fg64
            w_at_pos = torch.zeros_like(positive_sum).index_add_(0, col, w_pos)
            negative_count = w.sum(0).double() - w_at_pos
        self.sums += torch.stack([positive_sum, positive_count, negative_sum, negative_count])
        self.pending = True

    def pop(self) -> torch.Tensor:
        """The sums since the last pop ([4, C] float64, on their device), then zero them."""
        if self.sums is None:
            raise RuntimeError("nothing recorded yet")
        out = self.sums.clone()
        self.sums.zero_()
        self.pending = False
        return out

    # --- rows --------------------------------------------------------------------------------
    def step(self, epoch: int | None = None) -> None:
        """One optimizer step done: write a row every ``every`` steps (``epoch``: the row's
        epoch in the log, default the last one given)."""
        self.steps += 1
        if epoch is not None:
            self.epoch = int(epoch)
        if self.steps % self.every == 0:
            self.write_row(self.steps, self.epoch)

    def close(self) -> None:
        """Write the partial last row, if any, and close the log."""
        try:
            if self.pending:
                self.write_row(self.steps, self.epoch)
        finally:
            if self.writer is not None:
                self.writer.close()

    def write_row(self, iteration: int, epoch: int) -> None:
        """Write the sums since the last row (added over the ranks with ``reduce_fn``)."""
        if self.sums is None:
            return
        row = self.pop()
        if self.reduce_fn is not None:
            row = self.reduce_fn(row)
        if self.writer is not None:
            self.writer.append(iteration, max(epoch, 0), row.cpu().numpy())
        self.last_row_iteration = iteration

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": None if self.sums is None else self.sums.cpu(),
            "pending": self.pending,
            "last_row_iteration": self.last_row_iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("sums") is not None:
            self.sums = state["sums"].clone()
            self.pending = bool(state.get("pending", False))
        self.last_row_iteration = int(state.get("last_row_iteration", 0))


class GradientRecorderHook(GradientRecorder, HookBase):
    """The training loop's hook: a :class:`GradientRecorder` (positives and negatives) stepped
    with the trainer's iteration and epoch (a row every ``every`` iterations, the partial last
    row at the end); its unwritten sums travel in the checkpoint (``state_dict``).

    ``open_writer(resume_after)``: opens the log when training starts, once a resumed run's state
    is loaded: ``resume_after`` is the iteration of the last row the checkpoint saw (rows past it
    are dropped), None for a run from iteration 0. Or give an open ``writer``; neither: no file
    (another rank's recorder, whose sums are added into rank 0's rows).
    """

    # Checkpoints name this hook's state by the class's earlier name: runs saved before the
    # rename resume with their pending sums and rows.
    state_key = "PositiveGradientRecorder"

    def __init__(
        self,
        num_classes: int,
        *,
        writer: GradientLogWriter | None = None,
        open_writer: Callable[[int | None], GradientLogWriter] | None = None,
        every: int = 50,
        weights_fn: Callable[[], torch.Tensor | None] | None = None,
        scale_fn: Callable[[], torch.Tensor | float] | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__(
            num_classes=num_classes,
            every=every,
            writer=writer,
            weights_fn=weights_fn,
            scale_fn=scale_fn,
            reduce_fn=reduce_fn,
        )
        self.open_writer = open_writer

    def _row_epoch(self) -> int:
        # The row ends at the iteration just done; its epoch is that iteration's epoch.
        t = self.trainer
        return t.epoch - (1 if t.epoch_iteration == 0 else 0)

    def before_train(self) -> None:
        if self.open_writer is not None and self.writer is None:
            resumed = self.trainer.iteration > 0
            self.writer = self.open_writer(self.last_row_iteration if resumed else None)

    def after_step(self) -> None:
        if self.trainer.iteration % self.every == 0:
            self.write_row(self.trainer.iteration, self._row_epoch())

    def after_train(self) -> None:
        try:
            # A partial last row; after a failure only when the ranks cannot wait on each other.
            if self.pending and (self.trainer.is_last_iteration or self.reduce_fn is None):
                self.write_row(self.trainer.iteration, self._row_epoch())
        finally:
            if self.writer is not None:
                self.writer.close()


__all__ = ["QUANTITIES", "GradientRecorder", "GradientRecorderHook", "log_categories"]
