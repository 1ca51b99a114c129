"""The run folder: checks before a run writes, the configuration a resumed run continues with,
and the clean-up after a fresh run that failed before its first checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.errors import InputError
from gumbel_analysis.spec.config import SAFE_ON_RESUME, TrainConfig, resume_values
from gumbel_analysis.spec.layout import RunLayout


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


def check_run_folder(run: RunLayout, resume: bool) -> None:
    """The run folder is writable and, for a fresh run, holds nothing but stale temp files."""
    _check_writable(run.root)
    if resume:
        return
    if run.root.exists() and any(not _is_stale_temp(p) for p in run.root.iterdir()):
        raise InputError(f"run folder {run.root} is not empty; use --resume or another --out")


def _saved_config(run: RunLayout) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """The saved config's values, the checkpoint (None before the first one) and the file read.

    A corrupt ``config.json`` is refused even beside a checkpoint (nothing is rebuilt behind the
    user's back), and so is a checkpoint whose configuration is not the folder's."""
    recorded = _read_config_json(run) if run.config.is_file() else None
    if run.last.exists():
        saved = ckpt.load_checkpoint(run.last)
        if recorded is not None:
            _check_same_run(run, saved.get("config") or {}, recorded)
        return saved.get("config"), saved, str(run.last)
    if recorded is not None:
        return recorded, None, str(run.config)
    raise InputError(
        f"nothing to resume in {run.root}: no {run.last.name} or {run.config.name}; "
        "run without --resume"
    )


def _read_config_json(run: RunLayout) -> dict[str, Any]:
    try:
        values = json.loads(run.config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        values = None
    if not isinstance(values, dict):
        raise InputError(f"{run.config} is corrupt; start a new run with another --out")
    return values


#: Fields a checkpoint and its folder's config.json may disagree on: where the folder is, what a
#: resume may change, and what follows from the machine (processes, their lr, mixed precision):
#: config.json is rewritten at each start, the checkpoint only at the next checkpoint.
_MAY_DIFFER = frozenset({"out", "world_size", "lr", "amp", *SAFE_ON_RESUME})


def _as_json(value: Any) -> Any:
    """``value`` as config.json holds it: tuples as lists, at any depth (a second stage's
    ``first_stage`` is a whole config, with its ``lr_steps``)."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    return value


def _check_same_run(run: RunLayout, checkpoint: dict[str, Any], recorded: dict[str, Any]) -> None:
    """The checkpoint holds a state of the run its folder's config.json describes."""
    for key in sorted((set(checkpoint) | set(recorded)) - _MAY_DIFFER):
        have, want = _as_json(checkpoint.get(key)), _as_json(recorded.get(key))
        if have != want:
            raise InputError(
                f"{run.last} is not a checkpoint of the run in {run.config} ({key} is {have!r} "
                f"in the checkpoint, {want!r} in the config); start a new run with another --out"
            )


def resume_config(
    run: RunLayout, cfg: TrainConfig, given: Mapping[str, Any] | None
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration a resumed run continues with, and its checkpoint (None: start from
    iteration 0 with the saved config, when the run was stopped before its first checkpoint).

    ``given``: the options the user set for this call. Those in ``spec.config.SAFE_ON_RESUME`` are
    applied; any other that differs from the saved config is refused, all listed in one line.
    ``given=None`` (a library call) keeps the saved config but for ``out``.
    """
    if not run.root.is_dir():
        raise InputError(f"nothing to resume: run folder {run.root} does not exist")
    values, saved, source = _saved_config(run)
    return resume_values(values or {}, given, run.root, cfg.out, source), saved


def created_files(run: RunLayout) -> list[Path]:
    """The files a run writes before its first checkpoint."""
    return [run.config, run.metrics_log, run.grads, run.last]


def remove_partial_run(run: RunLayout, made_root: bool) -> None:
    """Remove what a fresh run wrote before its first checkpoint, and the folder if it made it
    and it is now empty."""
    for path in created_files(run):
        path.unlink(missing_ok=True)
    remove_stale_temp_files(run.root)
    if made_root and run.root.is_dir() and not any(run.root.iterdir()):
        run.root.rmdir()
