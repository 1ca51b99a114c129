"""Building a run's pieces from its configuration: data paths, loss, device, run folder."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gumbel_analysis.data.synthetic import SyntheticSpec, default_cache_root, ensure_synthetic
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.config import TrainConfig
from gumbel_analysis.errors import InputError
from gumbel_analysis.hooks.grad_log import LOG_NAME
from gumbel_analysis.losses import ClassificationLoss, build_loss
from gumbel_analysis.losses.baselines import GumbelBCE
from gumbel_analysis.losses.gol import _DropLossMixin
from gumbel_analysis.losses.registry import loss_class


@dataclass(frozen=True)
class DataPaths:
    train_ann: Path
    val_ann: Path
    image_root: Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.root / ckpt.LAST

    @property
    def final(self) -> Path:
        return self.root / ckpt.FINAL

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def grads(self) -> Path:
        return self.root / LOG_NAME


def data_paths(data: str | None) -> DataPaths:
    """An LVIS-format folder: ``annotations/lvis_v1_{train,val}.json`` and the images under
    ``images/`` (or the folder itself, where LVIS's ``coco_url`` paths such as
    ``train2017/...jpg`` resolve). ``None``: the embedded synthetic dataset, made once and cached.
    """
    root = ensure_synthetic(default_cache_root(), SyntheticSpec()) if data is None else Path(data)
    if root.is_file():
        raise InputError(f"--data {root} is a file; give the LVIS-format folder")
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    ann = root / "annotations"
    paths = DataPaths(
        ann / "lvis_v1_train.json",
        ann / "lvis_v1_val.json",
        root / "images" if (root / "images").is_dir() else root,
    )
    for p in (paths.train_ann, paths.val_ann):
        if not p.is_file():
            raise InputError(f"annotation file not found: {p}")
    return paths


def lambda_from_groups(class_frequency: np.ndarray, groups: list[str]) -> float:
    """GOL's lambda for a dataset: midway between the most frequent rare/common class and the
    least frequent frequent class (for LVIS v1: 100.5 / 100170, ``LVIS_V1_LAMBDA``)."""
    below = [f for f, g in zip(class_frequency, groups, strict=True) if g in ("r", "c")]
    above = [f for f, g in zip(class_frequency, groups, strict=True) if g == "f"]
    if not below or not above:
        raise InputError("cannot derive lambda: the data lacks rare/common or frequent classes")
    lo, hi = max(below), min(above)
    if lo >= hi:
        raise InputError("cannot derive lambda: the frequency groups overlap; pass --lambda")
    return float((lo + hi) / 2)


def make_loss(
    cfg: TrainConfig, class_frequency: np.ndarray, frequency_groups: list[str]
) -> ClassificationLoss:
    """The registry's loss with the options that apply to it, for the training set's classes
    (``f_c`` and the r/c/f group of each, in category-id order)."""
    cls = loss_class(cfg.loss)
    options: dict[str, Any] = {}
    if issubclass(cls, GumbelBCE):
        options.update(temperature=cfg.temperature, mode=cfg.gumbel_mode)
    if issubclass(cls, _DropLossMixin):
        lam = cfg.lambda_
        if lam is None:
            lam = lambda_from_groups(class_frequency, frequency_groups)
        options.update(lambda_=lam, variant=cfg.drop_variant)
    return build_loss(
        cfg.loss,
        len(class_frequency),
        class_frequency=torch.as_tensor(class_frequency),
        **options,
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; use cpu, cuda or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
