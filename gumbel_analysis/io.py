"""Writing files so that a reader never sees half of one: write a temporary file, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gumbel_analysis.errors import InputError


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Validate an output path before any work: its folder exists and its suffix is known."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise InputError(f"output path is a folder: {path}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(
            f"unsupported output type {path.suffix or '(none)'!r} for {path}; "
            f"use one of {', '.join(suffixes)}"
        )
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success, else delete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
