"""The loop's writers: metrics to ``metrics.jsonl``, checkpoints, the progress bar.

Each is a :class:`~gumbel_analysis.hooks.base.HookBase`. Recording is separate from writing, as
in detectron2: the loop puts each step's losses into the trainer's ``storage`` (an
:class:`~gumbel_analysis.hooks.events.EventStorage`) and these hooks read them from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gumbel_analysis.hooks.base import HookBase
from gumbel_analysis.io import write_text_atomic


class MetricsWriter(HookBase):
    """Appends one JSON line every ``every`` iterations (rank 0): iteration, epoch, lr, losses,
    seconds per iteration. On resume, lines past the checkpoint are dropped so none repeats."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = Path(path), max(1, every)
        self._file = None
        self._t0 = time.perf_counter()
        self._it0 = 0

    def before_train(self) -> None:
        start = self.trainer.iteration
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _iteration(line) is not None and _iteration(line) <= start
            ]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        self._t0, self._it0 = time.perf_counter(), start

    def after_step(self) -> None:
        it = self.trainer.iteration
        if it % self.every and not self.trainer.is_last_iteration:
            return
        now = time.perf_counter()
        record = {
            "iteration": it,
            "epoch": self.trainer.epoch,
            "lr": self.trainer.lr,
            **{k: round(v, 6) for k, v in self.trainer.storage.latest().items()},
            "sec_per_iter": round((now - self._t0) / max(it - self._it0, 1), 4),
        }
        self._t0, self._it0 = now, it
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def after_train(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _iteration(line: str) -> int | None:
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None  # a line cut by a kill (or not one of ours): drop it


class Checkpointer(HookBase):
    """Saves the full training state at each epoch's end and every ``every`` iterations."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self) -> None:
        t = self.trainer
        if t.end_of_epoch or (self.every and t.iteration % self.every == 0):
            t.save_checkpoint()


class ProgressBar(HookBase):
    """A rich progress bar: iteration, epoch, loss, learning rate, ETA.

    ``total``: the iterations of the run; None (the default) takes the trainer's ``max_iter``
    when training starts, so the bar can be built before the trainer.
    """

    def __init__(self, console: Console | None = None, total: int | None = None):
        self.total = total
        self.progress = Progress(
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def before_train(self) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "train",
            total=self.trainer.max_iter if self.total is None else self.total,
            completed=self.trainer.iteration,
            epoch=self.trainer.epoch,
            loss=float("nan"),
            lr=self.trainer.lr,
        )

    def after_step(self) -> None:
        t = self.trainer
        self.progress.update(
            self.task,
            completed=t.iteration,
            epoch=f"{t.epoch + 1}/{t.cfg.epochs}",
            loss=t.storage.latest().get("loss", float("nan")),
            lr=t.lr,
        )

    def after_train(self) -> None:
        self.progress.stop()
