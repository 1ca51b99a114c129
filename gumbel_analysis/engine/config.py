"""One dataclass holds a training run's configuration; it is dumped into the run folder.

Values left at ``None`` are resolved from the preset and the data (:func:`resolve`), and the
resolved config is what ``config.json`` records, so a run can be repeated from it alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.errors import InputError

#: Learning-rate steps (in epochs) and length of the paper's schedules.
SCHEDULES = {"1x": (12, (8, 11)), "2x": (24, (16, 22))}

#: Test time as LVIS evaluates (detectron2's LVIS configs): score > 1e-4, 300 per image.
_LVIS_TEST = {"score_threshold": 1e-4, "max_dets": 300}
#: The paper's r50/r101 recipe (batch 16 over 8 GPUs, 500 warm-up iterations).
_FPN_RECIPE = {"batch_size": 2, "warmup_iters": 500, "base_lr": 0.02, "workers": 4, **_LVIS_TEST}

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
        **_LVIS_TEST,
    },
    "r50-fpn": dict(_FPN_RECIPE),
    "r101-fpn": dict(_FPN_RECIPE),
}


#: Options that ``train --resume`` applies when they differ from the saved run: they change
#: neither the model nor the order of the data (another ``device`` may change the last bits of
#: the floating-point results). Any other difference is refused.
SAFE_ON_RESUME = ("device", "workers", "max_iters", "checkpoint_every", "log_every", "evaluate")


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
    # RFS's t: None derives it from the data, as lambda: the border of the common and frequent
    # groups (LVIS v1: 100.5 / 100170, about detectron2's 0.001). A fixed 0.001 repeats nothing
    # on a dataset of under 1000 images, where every class is in more than 0.1% of them.
    rfs_threshold: float | None = None
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (type, finiteness, range, conflicts); raise :class:`InputError` with
        one line naming the option as the command line spells it and the accepted range.

        Runs whenever a config is built (``TrainConfig(...)``, :meth:`from_dict`,
        ``dataclasses.replace``), so nothing downstream sees a bad value.
        """
        for name, rule in _RULES.items():
            value = getattr(self, name)
            if value is None and rule.optional:
                continue
            setattr(self, name, rule.check(name, value))
        _check_conflicts(self)
        # --- loss options: validated by the loss's declared options (see validate_loss_fields).
        validate_loss_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> TrainConfig:
        """Build and validate a config from a dict of fields (a config file, a checkpoint's
        ``config``); ``source`` names the file in errors about its shape."""
        where = f"configuration file {source}" if source else "the configuration"
        if not isinstance(data, dict):
            raise InputError(
                f"{where} must hold an object of TrainConfig fields, got {_kind(data)}"
            )
        values = merge_loss_options(data, {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - known)
        if unknown:
            raise InputError(f"unknown configuration keys in {where}: {', '.join(unknown)}")
        if isinstance(values.get("lr_steps"), list):
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


# ----------------------------------------------------------------------------- validation

#: How the command line spells each field (``train --help``); fields without a flag are named
#: as configuration-file keys.
CLI_NAMES: dict[str, str] = {
    "data": "--data",
    "preset": "--preset",
    "loss": "--loss",
    "activation": "--activation",
    "enh": "--enh",
    "weights": "--weights",
    "sampler": "--sampler",
    "schedule": "--schedule",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "base_lr": "--lr",
    "out": "--out",
    "device": "--device",
    "workers": "--workers",
    "max_iters": "--max-iters",
    "checkpoint_every": "--checkpoint-every",
    "grad_log": "--grad-log",
    "grad_every": "--grad-every",
    "evaluate": "--eval",
    "seed": "--seed",
    "score_threshold": "--score-threshold",
    "max_dets": "--max-dets",
}


def option_name(field_name: str) -> str:
    """``--lr`` for ``base_lr``; ``momentum (config key)`` for a field without a flag."""
    return CLI_NAMES.get(field_name, f"{field_name} (config key)")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if value is None:
        return "null"
    return repr(value)


@dataclass(frozen=True)
class _Rule:
    kind: str  # int, float, bool, str, choice, steps, dict
    optional: bool = False
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive unless high_open
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    extra: str = ""  # appended to the message (what the value means)

    def accepted(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind in ("str", "dict"):
            return {"str": "a string", "dict": "an object"}[self.kind]
        if self.kind == "steps":
            return "a list of increasing epochs >= 1"
        noun = "an integer" if self.kind == "int" else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        return noun + (" " + " and ".join(parts) if parts else "")

    def fail(self, name: str, value: Any) -> InputError:
        got = _kind(value) if not isinstance(value, float) else repr(value)
        extra = f" ({self.extra})" if self.extra else ""
        return InputError(f"{option_name(name)} must be {self.accepted()}{extra}, got {got}")

    def check(self, name: str, value: Any) -> Any:
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise self.fail(name, value)
            return value
        if self.kind in ("str", "choice"):
            if not isinstance(value, str) or (self.kind == "str" and not value):
                raise self.fail(name, value)
            if self.kind == "choice" and value not in self.choices:
                raise self.fail(name, value)
            return value
        if self.kind == "dict":
            if not isinstance(value, dict):
                raise self.fail(name, value)
            return value
        if self.kind == "steps":
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
            ):
                raise self.fail(name, value)
            if any(b <= a for a, b in itertools.pairwise(value)):
                raise self.fail(name, value)
            return tuple(value)
        given = value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, given)
        if self.kind == "int":
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    raise self.fail(name, given)
                value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise self.fail(name, given)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise self.fail(name, given)
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            raise self.fail(name, given)
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


_SEED_MAX = 2**31 - 1
_RULES: dict[str, _Rule] = {
    "data": _Rule("str", optional=True),
    "preset": _Rule("choice", choices=tuple(PRESET_DEFAULTS)),
    "enh": _Rule("bool"),
    "weights": _Rule("str", optional=True),
    "sampler": _Rule("choice", choices=("random", "rfs")),
    "rfs_threshold": _Rule("float", optional=True, low=0, high=1, low_open=True),
    "schedule": _Rule("choice", optional=True, choices=tuple(SCHEDULES)),
    "epochs": _Rule("int", optional=True, low=1),
    "lr_steps": _Rule("steps", optional=True),
    "batch_size": _Rule("int", optional=True, low=1),
    "base_lr": _Rule(
        "float",
        optional=True,
        low=0,
        low_open=True,
        extra="the base learning rate for a total batch of 16, scaled linearly with the batch",
    ),
    "momentum": _Rule("float", low=0, high=1, high_open=True),
    "weight_decay": _Rule("float", low=0),
    "warmup_iters": _Rule("int", optional=True, low=0),
    "warmup_factor": _Rule("float", low=0, high=1, low_open=True),
    "hflip": _Rule("float", low=0, high=1),
    "max_iters": _Rule("int", optional=True, low=1),
    "device": _Rule("str"),
    "amp": _Rule("bool", optional=True),
    "workers": _Rule("int", optional=True, low=0),
    "seed": _Rule("int", low=0, high=_SEED_MAX),
    "out": _Rule("str"),
    "log_every": _Rule("int", low=1),
    "checkpoint_every": _Rule("int", low=0, extra="iterations; 0 checkpoints at epoch ends only"),
    "grad_log": _Rule("bool"),
    "grad_every": _Rule("int", low=1),
    "evaluate": _Rule("bool"),
    "score_threshold": _Rule("float", optional=True, low=0, high=1, high_open=True),
    "max_dets": _Rule("int", optional=True, low=1),
    "activation": _Rule("choice", optional=True, choices=("sigmoid", "gumbel", "softmax")),
    "loss_options": _Rule("dict"),
    "world_size": _Rule("int", low=1),
    "lr": _Rule("float", optional=True, low=0, low_open=True),
    "extra": _Rule("dict"),
}


def _check_conflicts(cfg: TrainConfig) -> None:
    device = cfg.device
    if not (
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise InputError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if cfg.schedule is not None:
        epochs, steps = SCHEDULES[cfg.schedule]
        if cfg.epochs is not None and cfg.epochs != epochs:
            raise InputError(
                f"--epochs {cfg.epochs} conflicts with --schedule {cfg.schedule} "
                f"({epochs} epochs); give one of them"
            )
        if cfg.lr_steps is not None and tuple(cfg.lr_steps) != steps:
            raise InputError(
                f"lr_steps {list(cfg.lr_steps)} conflicts with --schedule {cfg.schedule} "
                f"(steps at epochs {list(steps)}); give one of them"
            )


def validate_loss_fields(cfg: TrainConfig) -> None:
    """``--loss``, ``--activation`` and the loss options against the loss's declaration (the
    loss registry, ``gumbel_analysis.losses``): one line naming the flag that does not apply or
    is out of range."""
    if not isinstance(cfg.loss, str) or not cfg.loss:
        raise InputError(f"--loss must be a loss name, got {_kind(cfg.loss)}")
    from gumbel_analysis.losses import loss_entry  # torch: only once a config is built

    loss_entry(cfg.loss).resolve(cfg.activation, cfg.loss_options)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML configuration file into a dict of TrainConfig fields."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--config is a folder, not a file: {path}")
    if not path.is_file():
        raise InputError(f"configuration file not found: {path}")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"configuration file {path} cannot be parsed: {err}") from None
    if not isinstance(data, dict):
        raise InputError(
            f"configuration file {path} must hold an object of TrainConfig fields, "
            f"got {_kind(data)}"
        )
    return data


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
    out.world_size = world_size
    out.lr = effective_lr(out.base_lr, out.batch_size, world_size)
    out.validate()  # the filled fields too (score_threshold, max_dets, workers, ...)
    return out


def effective_lr(base_lr: float, batch_size: int, world_size: int = 1) -> float:
    """The linear scaling rule (Goyal et al., 2017): ``base_lr`` is for a total batch of 16."""
    return base_lr * batch_size * world_size / 16
