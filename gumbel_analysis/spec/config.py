"""What a training run is: one frozen dataclass, each field declared once, resolved once.

Every field of :class:`TrainConfig` carries its :class:`~gumbel_analysis.spec.options.Option`
(flag, type, accepted range, help): building a config checks every field by that one rule system,
the loss and its options against the loss catalogue, and the conflicts between fields, so a bad
value is refused in one line naming its flag before anything runs. Fields left at ``None`` are
derived by :func:`resolve`, once: from the preset's recipe, the schedule, the number of processes,
the device and the training data. The resolved config is what ``config.json`` records, so a run
can be repeated from it alone. No torch here.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.errors import InputError
from gumbel_analysis.groups import common_frequent_border, lambda_from_groups
from gumbel_analysis.spec.losses import LOSSES, loss_entry
from gumbel_analysis.spec.options import Option, flag_of, kind_of
from gumbel_analysis.spec.presets import PRESETS, SCHEDULES, Recipe

_SEED_MAX = 2**31 - 1
#: Epochs of DisAlign's second stage (``--loss disalign``) unless given, at the base rate: its
#: authors train 4500 iterations of batch 16 on LVIS v0.5 (about 1.3 epochs) with one step at
#: 4000, which epoch-granular steps cannot place; 2 epochs without a step come nearest.
SECOND_STAGE_EPOCHS = 2
#: Post-hoc score calibrations (``--calibration``); none scores as the loss does.
CALIBRATIONS = ("none", "norcal")
#: Where ``--device`` may send a run; the format is checked here, availability by the engine.
DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA when there is one)."


def _field(kind: str, default: Any = None, help: str = "", **rule: Any) -> Any:
    """A dataclass field declared with its option (the name is filled in from the field)."""
    option = Option("", kind, default, help, **rule)
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"option": option})
    return field(default=default, metadata={"option": option})


@dataclass(frozen=True)
class TrainConfig:
    """A training run's configuration; ``None`` fields are derived by :func:`resolve`."""

    # Data: an LVIS-format folder (annotations/lvis_v1_{train,val}.json, images), or None for the
    # embedded synthetic dataset.
    data: str | None = _field(
        "str",
        help="LVIS-format folder (annotations/lvis_v1_train.json, lvis_v1_val.json, images). "
        "Default: the embedded synthetic long-tailed dataset, made and cached on first use.",
    )
    preset: str = _field(
        "choice", "tiny", "Model preset (model and training recipe).", choices=tuple(PRESETS)
    )
    loss: str = _field(
        "str",
        "gumbel",
        "Classification loss; aliases fix the activation: gumbel and sigmoid are bce, gol is "
        "droploss (Eq. 6 variant) and gol-star is eql, with gumbel (see README, Losses).",
    )
    # sigmoid or gumbel for the BCE family; None: the loss's own.
    activation: str | None = _field(
        "choice", help="The loss's activation.", choices=("sigmoid", "gumbel", "softmax")
    )
    # The loss's declared options (``loss_entry(loss).options()``), e.g. temperature,
    # gumbel_mode, lambda_ (None: the border of the data's common/frequent groups).
    loss_options: dict[str, Any] = _field("dict", {}, flag=None)  # noqa: RUF009 - a factory
    enh: bool = _field("bool", False, "Test NMS 0.3 and a normalised mask head.")
    # DisAlign's second stage: the first stage's run folder, and its config as it trained.
    from_run: str | None = _field(
        "str",
        help="--loss disalign: the first stage's run folder (its model_final.pt is loaded and "
        "frozen; its preset, activation and Enh are taken).",
        flag="--from",
    )
    first_stage: dict[str, Any] = _field("dict", {}, flag=None)  # noqa: RUF009 - a factory
    weights: str | None = _field("str", help="Local backbone or model weights.")
    sampler: str = _field(
        "choice", "random", "random or rfs (repeat factors).", choices=("random", "rfs")
    )
    # RFS's t: None derives it from the data, as lambda: the border of the common and frequent
    # groups (LVIS v1: 100.5 / 100170, about detectron2's 0.001). A fixed 0.001 repeats nothing
    # on a dataset of under 1000 images, where every class is in more than 0.1% of them.
    rfs_threshold: float | None = _field("float", flag=None, low=0, high=1, low_open=True)
    # Schedule: epochs (or schedule 1x/2x), SGD with linear warm-up and steps.
    schedule: str | None = _field(
        "choice", help="1x (12 epochs) or 2x (24).", choices=tuple(SCHEDULES)
    )
    epochs: int | None = _field(
        "int", help="Epochs (the tiny preset: 12; --loss disalign: 2).", low=1
    )
    lr_steps: tuple[int, ...] | None = _field("steps", flag=None)
    batch_size: int | None = _field("int", help="Images per process.", low=1)
    base_lr: float | None = _field(
        "float",
        help="Base learning rate for a total batch of 16; the run uses it scaled linearly "
        "(lr x batch x processes / 16), printed once training starts and recorded as lr in "
        "config.json.",
        flag="--lr",
        low=0,
        low_open=True,
        extra="the base learning rate for a total batch of 16, scaled linearly with the batch",
    )
    momentum: float = _field("float", 0.9, flag=None, low=0, high=1, high_open=True)
    weight_decay: float = _field("float", 1e-4, flag=None, low=0)
    warmup_iters: int | None = _field("int", flag=None, low=0)
    warmup_factor: float = _field("float", 1e-3, flag=None, low=0, high=1, low_open=True)
    hflip: float = _field("float", 0.5, flag=None, low=0, high=1)
    max_iters: int | None = _field("int", help="Stop after this many iterations.", low=1)
    # Machine.
    device: str = _field(
        "str",
        "auto",
        DEVICE_HELP,
        pattern=r"auto|cpu|cuda(:[0-9]+)?",
        pattern_text="cpu, cuda, cuda:N or auto",
    )
    amp: bool | None = _field(
        "bool",
        help=(
            "Mixed precision: float16 autocast with loss scaling on CUDA, bfloat16 autocast (and "
            "channels-last convolutions) on a CPU with bf16 instructions, in training and "
            "prediction; proposals, losses, boxes, scores and masks stay float32. Default: on "
            "for CUDA, off on the CPU."
        ),
    )
    workers: int | None = _field("int", help="Data loader workers.", low=0)
    seed: int = _field("int", 0, "Random seed.", low=0, high=_SEED_MAX)
    # Output.
    out: str = _field("str", "runs/default", "Run folder. Default: runs/PRESET-LOSS-TIME.")
    log_every: int = _field("int", 20, flag=None, low=1)
    checkpoint_every: int = _field(
        "int",
        0,
        "Also checkpoint every N iterations (0: per epoch only).",
        low=0,
        extra="iterations; 0 checkpoints at epoch ends only",
    )
    grad_log: bool = _field("bool", True, "Record per-class gradients to HDF5.")
    grad_every: int = _field("int", 50, "Iterations per gradient-log row.", low=1)
    grad_stage: int | None = _field(
        "int",
        help="Cascade presets: the box stage (1-3) whose classifier the gradient log records. "
        "Default: the last.",
        low=1,
    )
    evaluate: bool = _field("bool", True, "Evaluate at the end.", flag="--eval")
    # Prediction: detections scoring above score_threshold, at most max_dets per image (the
    # evaluator keeps as many). None: the preset's.
    score_threshold: float | None = _field(
        "float",
        help="Evaluation: the model keeps detections scoring above this (LVIS: 1e-4).",
        low=0,
        high=1,
        high_open=True,
    )
    max_dets: int | None = _field(
        "int",
        help="Evaluation: detections kept per image, by the model and the evaluator (LVIS: 300).",
        low=1,
    )
    # Post-hoc calibration (NorCal): an evaluation of its own, beside the run's own results.
    calibration: str = _field(
        "choice",
        "none",
        "Evaluation: post-hoc score calibration. norcal (Pan et al. 2021) divides each class's "
        "score by its training image count to the power --norcal-gamma and renormalises with "
        "the background; written as results.norcal-gG.json, beside the uncalibrated results.",
        choices=CALIBRATIONS,
    )
    norcal_gamma: float | None = _field(
        "float",
        help="NorCal's exponent gamma (with --calibration norcal; 0: no change). Pick it on a "
        "held-out split, never on the reported val split (docs/calibration.md).",
        low=0,
        high=10,
    )
    # Filled by resolve().
    world_size: int = _field("int", 1, flag=None, low=1)
    lr: float | None = _field("float", flag=None, low=0, low_open=True)

    def __post_init__(self) -> None:
        for name, option in FIELD_OPTIONS.items():
            object.__setattr__(self, name, option.check(getattr(self, name)))
        _check_schedule(self)
        _check_grad_stage(self)
        check_calibration(self.calibration, self.norcal_gamma)
        entry = loss_entry(self.loss)
        if PRESETS[self.preset].cascade_stages and (
            entry.second_stage or self.loss_options.get("loce_mfs")
        ):
            what = "--loce-mfs" if self.loss_options.get("loce_mfs") else f"--loss {self.loss}"
            raise InputError(f"{what} needs Mask R-CNN's heads, not --preset {self.preset}")
        if entry.second_stage and not self.from_run:
            raise InputError(f"--loss {self.loss} needs --from RUN, the first stage's run folder")
        if self.from_run and not entry.second_stage:
            stages = " or ".join(f"--loss {n}" for n, e in LOSSES.items() if e.second_stage)
            raise InputError(f"--from applies to {stages} only (a second stage)")
        entry.resolve(self.activation, self.loss_options)

    @property
    def is_resolved(self) -> bool:
        return self.lr is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> TrainConfig:
        """Build and check a config from a dict of fields (a config file, a checkpoint's
        ``config``); ``source`` names the file in errors about its shape."""
        where = f"configuration file {source}" if source else "the configuration"
        if not isinstance(data, dict):
            raise InputError(
                f"{where} must hold an object of TrainConfig fields, got {kind_of(data)}"
            )
        values = merge_loss_options(data, {})
        if values.get("extra") == {}:  # an empty field of configs written before 2026-12
            del values["extra"]
        unknown = sorted(str(k) for k in set(values) - set(FIELD_OPTIONS))
        if unknown:
            raise InputError(f"unknown configuration keys in {where}: {', '.join(unknown)}")
        return cls(**values)


#: Each field's option, named: the one declaration of its flag, type, range and help.
FIELD_OPTIONS: dict[str, Option] = {
    f.name: dataclasses.replace(f.metadata["option"], name=f.name)
    for f in dataclasses.fields(TrainConfig)
}

#: Options that ``train --resume`` applies when they differ from the saved run: they change
#: neither the model nor the order of the data (another ``device`` may change the last bits of
#: the floating-point results). Any other difference is refused.
SAFE_ON_RESUME = (
    "device",
    "amp",
    "workers",
    "max_iters",
    "checkpoint_every",
    "log_every",
    "evaluate",
    "calibration",
    "norcal_gamma",
)

#: Top-level keys of earlier config files, now loss options; a value equal to the old default
#: was written by every run whatever its loss, and is dropped.
LEGACY_LOSS_KEYS = {
    "temperature": ("temperature", 1.0),
    "gumbel_mode": ("gumbel_mode", "stable"),
    "lambda_": ("lambda_", None),
    "drop_variant": ("variant", "equation"),
}


def option_name(field_name: str) -> str:
    """``--lr`` for ``base_lr``; ``momentum (config key)`` for a field without a flag."""
    return FIELD_OPTIONS[field_name].cli_flag


def check_fields(**values: Any) -> dict[str, Any]:
    """Each given value (``None``: not given, skipped) checked as the field of that name, for
    commands that take a few of a run's options (``gumbel eval RUN --workers 2``)."""
    return {k: FIELD_OPTIONS[k].check(v) for k, v in values.items() if v is not None}


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


def check_calibration(calibration: str | None, norcal_gamma: float | None) -> None:
    """``--calibration norcal`` comes with its ``--norcal-gamma``, and the gamma with it."""
    if calibration == "norcal" and norcal_gamma is None:
        raise InputError(
            "--calibration norcal needs --norcal-gamma G (pick it on a held-out split, "
            "never on the reported val split)"
        )
    if norcal_gamma is not None and calibration != "norcal":
        raise InputError("--norcal-gamma applies to --calibration norcal only")


def _check_grad_stage(cfg: TrainConfig) -> None:
    if cfg.grad_stage is None:
        return
    stages = PRESETS[cfg.preset].cascade_stages
    if cfg.grad_stage > max(stages, 1):
        has = f"{stages} box stages" if stages else "one box head"
        raise InputError(
            f"--grad-stage {cfg.grad_stage}: --preset {cfg.preset} has {has}; use 1"
            + (f" to {stages}" if stages > 1 else "")
        )


def _check_schedule(cfg: TrainConfig) -> None:
    if cfg.schedule is None:
        return
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
    except RecursionError:
        raise InputError(f"configuration file {path} is nested too deeply") from None
    if not isinstance(data, dict):
        raise InputError(
            f"configuration file {path} must hold an object of TrainConfig fields, "
            f"got {kind_of(data)}"
        )
    return data


@dataclass(frozen=True)
class DataStats:
    """What resolution needs of the training set: each class's image frequency ``f_c`` and
    r/c/f group, in category-id order."""

    class_frequency: Sequence[float]
    frequency_groups: Sequence[str]


#: The fields a preset's recipe fills where a run leaves them None (epochs and steps: by the
#: schedule first).
_FROM_RECIPE = tuple(
    f.name for f in dataclasses.fields(Recipe) if f.name not in ("epochs", "lr_steps")
)


def recipe_values(cfg: TrainConfig, names: Sequence[str]) -> dict[str, Any]:
    """``cfg``'s value of each named field, its preset's recipe's where ``cfg`` has None."""
    recipe = PRESETS[cfg.preset].recipe
    return {n: getattr(recipe, n) if getattr(cfg, n) is None else getattr(cfg, n) for n in names}


def resolve(
    cfg: TrainConfig,
    world_size: int = 1,
    device_type: str | None = None,
    data: DataStats | None = None,
) -> TrainConfig:
    """The run's every derived value, once: the preset's recipe and the schedule where a field is
    None, the learning rate scaled linearly, the loss's activation and options with defaults
    filled, mixed precision (on for ``device_type`` cuda) and, given the training ``data``,
    lambda and the RFS threshold (the border of its common and frequent groups)."""
    recipe = PRESETS[cfg.preset].recipe
    epochs, steps = (recipe.epochs, recipe.lr_steps)
    if loss_entry(cfg.loss).second_stage:  # a second stage has its own, short schedule
        epochs, steps = SECOND_STAGE_EPOCHS, ()
    epochs, steps = SCHEDULES[cfg.schedule] if cfg.schedule else (epochs, steps)
    filled = recipe_values(cfg, _FROM_RECIPE)
    activation, options = loss_entry(cfg.loss).resolve(cfg.activation, cfg.loss_options)
    amp = cfg.amp if cfg.amp is not None or device_type is None else device_type == "cuda"
    out = cfg.replace(
        **filled,
        epochs=cfg.epochs or epochs,
        lr_steps=tuple(cfg.lr_steps or steps),
        activation=activation,
        loss_options=options,
        world_size=world_size,
        lr=effective_lr(filled["base_lr"], filled["batch_size"], world_size),
        amp=amp,
    )
    return out if data is None else _derive_from_data(out, data)


def _derive_from_data(cfg: TrainConfig, data: DataStats) -> TrainConfig:
    changes: dict[str, Any] = {}
    groups = list(data.frequency_groups)
    if "lambda_" in cfg.loss_options and cfg.loss_options["lambda_"] is None:
        try:
            border = lambda_from_groups(data.class_frequency, groups)
        except ValueError as err:
            raise InputError(f"--loss {cfg.loss}: {err}") from None
        changes["loss_options"] = {**cfg.loss_options, "lambda_": border}
    if cfg.sampler == "rfs" and cfg.rfs_threshold is None:
        try:
            border = common_frequent_border(data.class_frequency, groups, "the RFS threshold")
        except ValueError as err:
            raise InputError(f"--sampler rfs: {err}; set rfs_threshold in --config") from None
        changes["rfs_threshold"] = border
    return cfg.replace(**changes) if changes else cfg


def effective_lr(base_lr: float, batch_size: int, world_size: int = 1) -> float:
    """The linear scaling rule (Goyal et al., 2017): ``base_lr`` is for a total batch of 16."""
    return base_lr * batch_size * world_size / 16


def resume_values(
    saved: Mapping[str, Any], given: Mapping[str, Any] | None, root: Path, out: str, source: str
) -> TrainConfig:
    """The configuration a resumed run continues with: the ``saved`` one (read from ``source``)
    with ``out`` and the options given for this call that :data:`SAFE_ON_RESUME` allows; any
    other given option that differs from the saved one is refused, all listed in one line."""
    base = TrainConfig.from_dict({**saved, "out": out}, source=source)
    changes, refused = _compare_given(base, given or {})
    if refused:
        raise InputError(
            f"--resume continues {root} with its saved options; these differ: "
            f"{'; '.join(refused)}. Drop them, or start a new run with another --out "
            f"(--resume may change {', '.join(option_name(k) for k in SAFE_ON_RESUME)})"
        )
    return base.replace(**changes)


def _compare_given(base: TrainConfig, given: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The given options to apply (safe on resume) and those refused, as the user spelled them."""
    changes, refused = {}, []
    for key, value in given.items():
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
    return changes, refused


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b
