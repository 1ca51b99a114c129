"""The files of a run folder, named once.

A run folder is what ``gumbel train --out RUN`` makes. The engine writes its files in this order:
``config.json`` (the resolved configuration) before the first step, ``metrics.jsonl`` (a line
every ``log_every`` iterations) and ``grads.h5`` (the gradient log) while training, ``last.pt``
at each checkpoint, ``diverged.pt`` when the loss becomes non-finite (and the run stops),
``model_final.pt`` when training ends, then ``results.json`` (LVIS format) and ``metrics.json``
when the evaluation ends. Every module that reads or writes one of them asks :class:`RunLayout`.
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
METRICS_LOG = "metrics.jsonl"
GRADS = "grads.h5"
LAST = "last.pt"
DIVERGED = "diverged.pt"
FINAL = "model_final.pt"
RESULTS = "results.json"
METRICS = "metrics.json"

#: What a fresh run writes before its first checkpoint: a run killed then starts again.
PRE_CHECKPOINT_FILES = frozenset({CONFIG, METRICS_LOG, GRADS})


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder's files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics_log(self) -> Path:
        return self.root / METRICS_LOG

    @property
    def grads(self) -> Path:
        return self.root / GRADS

    @property
    def last(self) -> Path:
        return self.root / LAST

    @property
    def diverged(self) -> Path:
        return self.root / DIVERGED

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    def results_for(self, name: str) -> Path:
        """The results of an evaluation on other data (or with a calibration): never the run's
        own ``results.json``."""
        return self.root / f"results.{name}.json"

    def metrics_for(self, name: str) -> Path:
        return self.root / f"metrics.{name}.json"

    @staticmethod
    def results_part(results: Path, rank: int) -> Path:
        """Rank ``rank``'s part of ``results`` while it is predicted (``results.rankK.part.jsonl``
        beside it)."""
        return results.with_name(f"{results.stem}.rank{rank}.part.jsonl")
