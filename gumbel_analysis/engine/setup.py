"""Building a run's pieces from its configuration: data paths, loss, device, run folder."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gumbel_analysis.data.synthetic import SyntheticSpec, default_cache_root, ensure_synthetic
from gumbel_analysis.errors import InputError
from gumbel_analysis.losses import ClassificationLoss, build_loss
from gumbel_analysis.model.calibration import NorCal
from gumbel_analysis.spec.config import TrainConfig


@dataclass(frozen=True)
class DataPaths:
    train_ann: Path
    val_ann: Path
    image_root: Path


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


def make_loss(
    cfg: TrainConfig, class_frequency: np.ndarray, frequency_groups: list[str]
) -> ClassificationLoss:
    """The catalogue's loss with the config's activation and options, for the training set's
    classes (``f_c`` and the r/c/f group of each, in category-id order)."""
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


def make_calibration(cfg: TrainConfig, image_counts: np.ndarray) -> NorCal | None:
    """The test-time score calibration ``cfg`` asks for (None for ``calibration`` none), for
    the training set's ``N_c`` (images per class, category-id order)."""
    if cfg.calibration != "norcal":
        return None
    return NorCal(image_counts, float(cfg.norcal_gamma))


def pick_device(name: str) -> torch.device:
    """The torch device of a checked ``--device`` (``TrainConfig`` checks its spelling); one line
    when CUDA is asked for on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def check_mixed_precision(amp: bool | None, device: torch.device) -> None:
    """``--amp`` on the CPU autocasts to bfloat16, which oneDNN runs only on a CPU with bf16
    instructions (AVX512-BF16 or AMX); elsewhere it would emulate them, slower than float32."""
    if amp and not mixed_precision_available(device):
        raise InputError(
            "--amp: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); run without --amp"
        )


def mixed_precision_available(device: torch.device) -> bool:
    """Whether ``--amp`` can run natively on ``device``: CUDA, or a CPU with bf16 instructions."""
    return device.type != "cpu" or cpu_supports_bf16()


def autocast_dtype(device: torch.device) -> torch.dtype:
    """What ``--amp`` autocasts to: float16 on CUDA (behind a loss scaler), bfloat16 on the CPU
    (float32's exponent range: no scaling needed)."""
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def cpu_supports_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU."""
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


_flush_depth = 0


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Inside: denormal floats (nonzero, below 1.2e-38 in float32) read and written as zero by
    this thread's CPU arithmetic (``torch.set_flush_denormal``); off again when the outermost
    such block ends.

    Why: the Gumbel loss's gradient at a very negative logit x is about ``exp(x - exp(-x))``,
    denormal in float32 for x < -4.4 (55% of a trained ``tiny`` model's classifier gradients),
    and the CPU multiplies denormals about 100 times slower: the classifier's backward matrix
    products took 16 ms instead of 0.15. Every update such a value makes is far below the
    precision of the parameter it reaches: 20 training steps from a trained Gumbel model gave
    bit-identical parameters with and without it (measured). The intra-op threads other than
    the caller keep their setting, so the gain is that of single-threaded runs (``--jobs``).
    """
    global _flush_depth
    _flush_depth += 1
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
