"""Checkpoints written atomically (temporary file + rename) and read with a clear error."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gumbel_analysis.errors import InputError
from gumbel_analysis.io import atomic_path
from gumbel_analysis.spec.config import TrainConfig

FORMAT = "gumbel-analysis-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a partial file."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    except (OSError, RuntimeError) as err:
        # torch.save reports a full disk as a RuntimeError naming its own archive member; say
        # what failed, for which path (the user's, not the temporary file).
        code = getattr(err, "errno", None) or (errno.ENOSPC if _disk_full(path) else errno.EIO)
        cause = os.strerror(code) if code else str(err)
        raise OSError(code, f"cannot write checkpoint ({cause})", str(path)) from None
    return path


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < 64 * 2**20
    except OSError:
        return False


def load_checkpoint(path: str | os.PathLike, check: bool = True) -> dict[str, Any]:
    """Read a checkpoint; with ``check`` (the default) refuse non-finite weights or an invalid
    config (:func:`check_state`)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise InputError(
            f"checkpoint {path} is corrupt or unreadable ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a gumbel-analysis checkpoint")
    if check:
        check_state(state, path)
    return state


def check_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose weights are not finite (a diverged run's) or whose config is
    invalid (an unknown loss, a value out of range), naming the checkpoint and what is wrong."""
    model = state.get("model")
    if isinstance(model, dict):
        bad = [
            name
            for name, value in model.items()
            if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all()
        ]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise InputError(
                f"checkpoint {path} has non-finite weights (NaN or inf) in {bad[0]}{more}"
            )
    if "config" in state:
        try:
            TrainConfig.from_dict(state["config"])
        except InputError as err:
            raise InputError(f"checkpoint {path} has an invalid config: {err}") from None


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
