"""Atomically written files and folders get the mode the user's umask gives (not 0600/0700)."""

from __future__ import annotations

import os
import stat

import pytest

from gumbel_analysis.io import atomic_path, make_temp_dir, write_text_atomic


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_follow_the_umask(tmp_path, umask):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "{}")
    assert mode(path) == 0o666 & ~umask
    with atomic_path(tmp_path / "fig.png") as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "fig.png") == 0o666 & ~umask
    plain = tmp_path / "plain"
    plain.write_text("")  # what open() gives, for comparison
    assert mode(plain) == mode(path)


def test_temporary_folders_follow_the_umask(tmp_path, umask):
    folder = make_temp_dir(tmp_path, "dataset")
    assert mode(folder) == 0o777 & ~umask
    plain = tmp_path / "plain"
    plain.mkdir()
    assert mode(plain) == mode(folder)


def test_the_results_file_of_gumbel_eval_follows_the_umask(tmp_path, umask):
    from gumbel_analysis.engine.evaluate import write_results

    write_results(tmp_path / "results.json", [])
    assert mode(tmp_path / "results.json") == 0o666 & ~umask
