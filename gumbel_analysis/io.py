"""Writing files so that a reader never sees half of one: write a temporary file, then rename.

``tempfile.mkstemp`` creates its file with mode 0600 and ``mkdtemp`` its folder with 0700,
whatever the user's umask; renamed into place they would stay unreadable by anyone else (a
colleague, a web server showing the figures). Here both get the mode an ordinary ``open`` or
``mkdir`` would have given them: 0666 or 0777 less the umask.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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


def check_writable_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise :class:`InputError` unless ``folder`` is an existing folder this process can write
    into (checked by creating and removing a file there, which also catches read-only mounts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} does not exist: {folder}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
    except OSError as err:
        raise InputError(f"{what} is not writable: {folder} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else by
    setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(folder: bool = False) -> int:
    """The mode ``open`` (0666) or ``mkdir`` (0777) gives a new file or folder under the umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success, else delete.

    The file appears with the umask's mode (see the module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    try:
        os.fchmod(fd, umask_mode())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # a writer that replaced the file (h5py, savefig) reset its mode
            os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def make_temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new empty folder in ``parent`` to build ``name`` in before renaming it into place, with
    the umask's mode rather than ``mkdtemp``'s 0700."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, umask_mode(folder=True))
    return tmp


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete what a killed :func:`atomic_path` or :func:`make_temp_dir` for ``path`` left beside
    it: ``.NAME.XXXXXXXX.tmp`` plus ``path``'s suffix (a file) or nothing (a folder); nothing else.
    A command calls it for its own outputs when it starts again."""
    path = Path(path)
    name = re.escape(path.name)
    own = re.compile(rf"\.{name}\.[A-Za-z0-9_]{{8}}\.tmp({re.escape(path.suffix)})?")
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for child in path.parent.iterdir():
        if child.is_symlink() or not own.fullmatch(child.name):
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink(missing_ok=True)
        removed.append(child)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
