"""Device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch


def choose_device(device: str | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- third-party code may use the legacy global RNG
    torch.manual_seed(seed)
