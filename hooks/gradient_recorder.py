"""Per-category gradients of a classifier's logits, captured as autograd delivers them.

A tensor hook on the logits sees ``dL/dq`` after every weighting the loss applies (GOL's dropped
negatives arrive as zeros), so any loss is measured the same way. Sums stay on the logits'
device between rows: nothing synchronises with the host per iteration.

Use it in ``gumbel train`` (on by default), or with any model::

    recorder = PositiveGradientRecorder(num_classes=C)
    logits = model(x)
    recorder.watch(logits, labels)     # labels in [0, C]; C (or more) = background
    loss(logits, labels).backward()    # the hook accumulates
    row = recorder.pop()               # [4, C] sums, see QUANTITIES
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from gumbel_analysis.hooks.base import HookBase
from gumbel_analysis.hooks.grad_log import QUANTITIES, GradientLogWriter


class PositiveGradientRecorder(HookBase):
    """Accumulates, per category column c of the first ``num_classes`` columns:

    * ``positive_sum``: sum of ``dL/dq_c`` over proposals labelled c, and ``positive_count``;
    * ``negative_sum``: sum of ``|dL/dq_c|`` over proposals with other labels, and
      ``negative_count``: the sum of their loss weights (1 each unless ``weights_fn`` gives the
      loss's per-element weights, as GOL's dropped negatives have weight 0).

    Gradients are per proposal: autograd's gradient times N (the losses average over the N
    proposals), divided by ``scale_fn()`` (the mixed-precision loss scale) when given.

    As a training-loop hook it writes one row every ``every`` iterations to ``writer`` (rank 0),
    after adding the sums of all ranks when ``reduce_fn`` is given, and the last partial row at
    the end; its unwritten sums are part of the checkpoint, so a resumed run loses nothing.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        writer: GradientLogWriter | None = None,
        every: int = 50,
        weights_fn: Callable[[], torch.Tensor | None] | None = None,
        scale_fn: Callable[[], torch.Tensor | float] | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.num_classes = int(num_classes)
        self.writer, self.every = writer, every
        self.weights_fn, self.scale_fn, self.reduce_fn = weights_fn, scale_fn, reduce_fn
        self.sums: torch.Tensor | None = None  # [4, C] float64 on the logits' device
        self.pending = False  # sums not yet written
        # The iteration of the last row written: a resumed run keeps the rows up to the one
        # its checkpoint saw, and re-adds the sums that were pending then.
        self.last_row_iteration = 0

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

    # --- training-loop hook ------------------------------------------------------------------
    def after_step(self) -> None:
        if self.trainer.iteration % self.every == 0:
            self._write_row()

    def after_train(self) -> None:
        try:
            # A partial last row; after a failure only when the ranks cannot wait on each other.
            if self.pending and (self.trainer.is_last_iteration or self.reduce_fn is None):
                self._write_row()
        finally:
            if self.writer is not None:
                self.writer.close()

    def _write_row(self) -> None:
        if self.sums is None:
            return
        row = self.pop()
        if self.reduce_fn is not None:
            row = self.reduce_fn(row)
        if self.writer is not None:
            # The row ends at the iteration just done; its epoch is that iteration's epoch.
            epoch = self.trainer.epoch - (1 if self.trainer.epoch_iteration == 0 else 0)
            self.writer.append(self.trainer.iteration, max(epoch, 0), row.cpu().numpy())
        self.last_row_iteration = self.trainer.iteration

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


__all__ = ["QUANTITIES", "PositiveGradientRecorder"]
