"""Shared fixtures. ``../shared/data`` holds real atlases and videos; tests using it skip without it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    logging.getLogger("cinevox").setLevel(logging.INFO)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real reference data not found at {SHARED}")
    return SHARED
