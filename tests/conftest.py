"""Shared test settings: deterministic torch, few threads (CI has 2 cores)."""

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
