"""Building a run's pieces from its configuration: data paths, loss, device, run folder."""

from __future__ import annotations

import dataclasses
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
from gumbel_analysis.losses import ClassificationLoss, build_loss, loss_entry


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


def check_loss_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its activation and every declared loss option filled and checked (InputError
    naming the flag for an option that does not apply or is out of range)."""
    activation, options = loss_entry(cfg.loss).resolve(cfg.activation, cfg.loss_options)
    return dataclasses.replace(cfg, activation=activation, loss_options=options)


def loss_label(cfg: TrainConfig) -> str:
    """The loss as reports name it: ``eqlv2/gumbel``, or the name alone where it fixes its
    activation (``gumbel``, ``gol``, ``softmax``)."""
    entry = loss_entry(cfg.loss)
    if len(entry.activations) == 1 or cfg.activation is None:
        return cfg.loss
    return f"{cfg.loss}/{cfg.activation}"


def make_loss(
    cfg: TrainConfig, class_frequency: np.ndarray, frequency_groups: list[str]
) -> ClassificationLoss:
    """The registry's loss with the config's activation and options, for the training set's
    classes (``f_c`` and the r/c/f group of each, in category-id order)."""
    cfg = check_loss_config(cfg)
    try:
        return build_loss(
            cfg.loss,
            len(class_frequency),
            torch.as_tensor(np.asarray(class_frequency, dtype=np.float64)),
            list(frequency_groups),
            activation=cfg.activation,
            **cfg.loss_options,
        )
    except InputError:
        raise
    except ValueError as err:  # the data does not suit the loss (e.g. lambda cannot be derived)
        raise InputError(f"--loss {cfg.loss}: {err}") from None


def rfs_threshold_from_data(train_set: Any) -> float:
    """RFS's t for ``rfs_threshold`` None: the border of the data's common and frequent groups
    (``math.common_frequent_border``; LVIS v1: 100.5 / 100170)."""
    from gumbel_analysis.math import common_frequent_border

    try:
        return common_frequent_border(
            np.asarray(train_set.class_frequency, dtype=np.float64),
            list(train_set.frequency_groups),
            "the RFS threshold",
        )
    except ValueError as err:
        raise InputError(f"--sampler rfs: {err}; set rfs_threshold in --config") from None


def resolved_loss_options(loss: ClassificationLoss, cfg: TrainConfig) -> dict[str, Any]:
    """The options to record in config.json: as given, with a derived lambda filled in."""
    options = dict(cfg.loss_options)
    if "lambda_" in options and options["lambda_"] is None and hasattr(loss, "lambda_"):
        options["lambda_"] = float(loss.lambda_)
    return options


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
