"""One dataclass holds a training run's configuration; it is dumped into the run folder.

Values left at ``None`` are resolved from the preset and the data (:func:`resolve`), and the
resolved config is what ``config.json`` records, so a run can be repeated from it alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.errors import InputError

#: Learning-rate steps (in epochs) and length of the paper's schedules.
SCHEDULES = {"1x": (12, (8, 11)), "2x": (24, (16, 22))}

#: Per-preset defaults that differ from the paper's r50 recipe.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    # The CPU preset trains from scratch on the synthetic data in minutes; its schedule is its own.
    "tiny": {
        "batch_size": 4,
        "epochs": 12,
        "lr_steps": (8, 11),
        "warmup_iters": 100,
        "base_lr": 0.02,
        "workers": 1,
        "score_threshold": 1e-4,
        "max_dets": 300,
    },
    # Test time as LVIS evaluates (detectron2's LVIS configs): score > 1e-4, 300 per image.
    "r50-fpn": {
        "batch_size": 2,
        "warmup_iters": 500,
        "base_lr": 0.02,
        "workers": 4,
        "score_threshold": 1e-4,
        "max_dets": 300,
    },
    "r101-fpn": {
        "batch_size": 2,
        "warmup_iters": 500,
        "base_lr": 0.02,
        "workers": 4,
        "score_threshold": 1e-4,
        "max_dets": 300,
    },
}


@dataclass
class TrainConfig:
    # Data: an LVIS-format folder (annotations/lvis_v1_{train,val}.json, images), or None for the
    # embedded synthetic dataset.
    data: str | None = None
    preset: str = "tiny"
    loss: str = "gumbel"
    activation: str | None = None  # sigmoid or gumbel for the BCE family; None: the loss's own
    # The loss's declared options (``gumbel_analysis.losses.loss_entry(loss).options()``), e.g.
    # temperature, gumbel_mode, lambda_ (None: the border of the data's common/frequent groups).
    loss_options: dict[str, Any] = field(default_factory=dict)
    enh: bool = False
    weights: str | None = None
    sampler: str = "random"
    rfs_threshold: float = 1e-3
    # Schedule: epochs (or schedule 1x/2x), SGD with linear warm-up and steps.
    schedule: str | None = None
    epochs: int | None = None
    lr_steps: tuple[int, ...] | None = None
    batch_size: int | None = None  # per process
    base_lr: float | None = None  # for a total batch of 16, scaled linearly
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int | None = None
    warmup_factor: float = 1e-3
    hflip: float = 0.5
    max_iters: int | None = None  # stop early (tests, smoke runs)
    # Machine.
    device: str = "auto"
    amp: bool | None = None  # mixed precision; default on for CUDA
    workers: int | None = None
    seed: int = 0
    # Output.
    out: str = "runs/default"
    log_every: int = 20
    checkpoint_every: int = 0  # iterations; 0 = only at the end of each epoch
    grad_log: bool = True
    grad_every: int = 50
    evaluate: bool = True
    # Prediction: detections scoring above score_threshold, at most max_dets per image (the
    # evaluator keeps as many). None: the preset's.
    score_threshold: float | None = None
    max_dets: int | None = None
    # Filled by resolve().
    world_size: int = 1
    lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values = merge_loss_options(dict(data), {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown configuration keys: {', '.join(unknown)}")
        if values.get("lr_steps") is not None:
            values["lr_steps"] = tuple(values["lr_steps"])
        return cls(**values)


#: Top-level keys of earlier config files, now loss options; a value equal to the old default
#: was written by every run whatever its loss, and is dropped.
LEGACY_LOSS_KEYS = {
    "temperature": ("temperature", 1.0),
    "gumbel_mode": ("gumbel_mode", "stable"),
    "lambda_": ("lambda_", None),
    "drop_variant": ("variant", "equation"),
}


def merge_loss_options(values: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``values`` with legacy top-level loss keys and then ``options`` merged into
    ``loss_options`` (later wins)."""
    values = dict(values)
    merged = values.get("loss_options") or {}
    if not isinstance(merged, dict):
        raise InputError("configuration key loss_options must be a table of option values")
    merged = dict(merged)
    for key, (name, old_default) in LEGACY_LOSS_KEYS.items():
        if key in values:
            value = values.pop(key)
            if value != old_default:
                merged.setdefault(name, value)
    merged.update(options)
    values["loss_options"] = merged
    return values


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML configuration file into a dict of TrainConfig fields."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"configuration file not found: {path}")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        return json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"configuration file {path} cannot be parsed: {err}") from None


def check_prediction_options(
    score_threshold: float | None, max_dets: int | None, workers: int | None
) -> None:
    """Raise :class:`InputError` naming the option if a prediction setting is out of range."""
    if score_threshold is not None and not (
        isinstance(score_threshold, int | float)
        and not isinstance(score_threshold, bool)
        and math.isfinite(score_threshold)
        and 0.0 <= score_threshold < 1.0
    ):
        raise InputError(f"--score-threshold must be in [0, 1), got {score_threshold!r}")
    if max_dets is not None and (
        isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1
    ):
        raise InputError(f"--max-dets must be a positive integer, got {max_dets!r}")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        raise InputError(f"--workers must be 0 or more, got {workers!r}")


def resolve(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Fill the preset's and the schedule's defaults and scale the learning rate."""
    if cfg.preset not in PRESET_DEFAULTS:
        raise InputError(f"unknown preset {cfg.preset!r}; use one of {', '.join(PRESET_DEFAULTS)}")
    d = PRESET_DEFAULTS[cfg.preset]
    out = dataclasses.replace(cfg)
    if out.schedule is not None:
        if out.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {out.schedule!r}; use 1x or 2x")
        epochs, steps = SCHEDULES[out.schedule]
        out.epochs = out.epochs or epochs
        out.lr_steps = out.lr_steps or steps
    out.epochs = out.epochs or d.get("epochs", SCHEDULES["1x"][0])
    out.lr_steps = tuple(out.lr_steps or d.get("lr_steps", SCHEDULES["1x"][1]))
    for name in ("batch_size", "warmup_iters", "base_lr", "workers", "score_threshold", "max_dets"):
        if getattr(out, name) is None:
            setattr(out, name, d[name])
    check_prediction_options(out.score_threshold, out.max_dets, out.workers)
    if out.epochs < 1 or out.batch_size < 1:
        raise InputError("epochs and batch size must be at least 1")
    if out.sampler not in ("random", "rfs"):
        raise InputError(f"unknown sampler {out.sampler!r}; use random or rfs")
    out.world_size = world_size
    out.lr = out.base_lr * out.batch_size * world_size / 16
    return out
