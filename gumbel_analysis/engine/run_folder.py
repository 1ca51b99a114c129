"""The run folder: checks before a run writes, the configuration a resumed run continues with,
and the clean-up after a fresh run that failed before its first checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.setup import RunPaths
from gumbel_analysis.errors import InputError
from gumbel_analysis.spec.config import SAFE_ON_RESUME, TrainConfig, option_name
from gumbel_analysis.spec.options import flag_of


def _is_stale_temp(path: Path) -> bool:
    """A temporary file of an atomic write (``.NAME.XXXX.tmp*``) that a kill left behind."""
    return path.name.startswith(".") and ".tmp" in path.name and path.is_file()


def remove_stale_temp_files(root: Path) -> list[Path]:
    """Delete the temporary files a killed atomic write left in ``root``."""
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            if _is_stale_temp(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _check_writable(root: Path) -> None:
    """The run folder (or the folder it will be made in) exists as a folder and is writable;
    the message names the user's path, not a temporary file."""
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"--out {root}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=existing)
    except OSError as err:
        where = "run folder" if existing == root else "folder for the run folder"
        raise InputError(f"{where} {existing} is not writable ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_run_folder(run: RunPaths, resume: bool) -> None:
    """The run folder is writable and, for a fresh run, holds nothing but stale temp files."""
    _check_writable(run.root)
    if resume:
        return
    if run.root.exists() and any(not _is_stale_temp(p) for p in run.root.iterdir()):
        raise InputError(f"run folder {run.root} is not empty; use --resume or another --out")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _saved_config(run: RunPaths) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """The saved config's values, the checkpoint (None before the first one) and the file read."""
    if run.last.exists():
        saved = ckpt.load_checkpoint(run.last)
        return saved.get("config"), saved, str(run.last)
    if run.config.is_file():
        try:
            return json.loads(run.config.read_text()), None, str(run.config)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(
                f"{run.config} is corrupt; start a new run with another --out"
            ) from None
    raise InputError(
        f"nothing to resume in {run.root}: no {run.last.name} or {run.config.name}; "
        "run without --resume"
    )


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


def resume_config(
    run: RunPaths, cfg: TrainConfig, given: Mapping[str, Any] | None
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration a resumed run continues with, and its checkpoint (None: start from
    iteration 0 with the saved config, when the run was stopped before its first checkpoint).

    ``given``: the options the user set for this call. Those in :data:`SAFE_ON_RESUME` are
    applied; any other that differs from the saved config is refused, all listed in one line.
    ``given=None`` (a library call) keeps the saved config but for ``out``.
    """
    if not run.root.is_dir():
        raise InputError(f"nothing to resume: run folder {run.root} does not exist")
    values, saved, source = _saved_config(run)
    base = TrainConfig.from_dict({**(values or {}), "out": cfg.out}, source=source)
    changes, refused = _compare_given(base, given or {})
    if refused:
        raise InputError(
            f"--resume continues {run.root} with its saved options; these differ: "
            f"{'; '.join(refused)}. Drop them, or start a new run with another --out "
            f"(--resume may change {', '.join(option_name(k) for k in SAFE_ON_RESUME)})"
        )
    return dataclasses.replace(base, **changes), saved


def created_files(run: RunPaths) -> list[Path]:
    """The files a run writes before its first checkpoint."""
    return [run.config, run.metrics_log, run.grads, run.last]


def remove_partial_run(run: RunPaths, made_root: bool) -> None:
    """Remove what a fresh run wrote before its first checkpoint, and the folder if it made it
    and it is now empty."""
    for path in created_files(run):
        path.unlink(missing_ok=True)
    remove_stale_temp_files(run.root)
    if made_root and run.root.is_dir() and not any(run.root.iterdir()):
        run.root.rmdir()
