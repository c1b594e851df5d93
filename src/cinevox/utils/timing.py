"""Times in seconds to volume (TR) indices: one rounding rule for every onset -> volume and time -> TR conversion.

Python's ``round`` rounds halves to even (``round(1.5) == round(2.5) == 2``), so onsets of 3.0 s and 5.0 s at a TR
of 2 s both landed on volume 2. Here halves round up (``floor(t / tr + 0.5)``, with a tolerance of 1e-9 TR for
times such as 1.95 s / 1.3 s that are halves in decimal but not in binary).
"""

from __future__ import annotations

import math

import numpy as np


def to_volume(seconds: float, tr: float) -> int:
    """The index of the TR (or time bin of width ``tr``) nearest ``seconds``, halves rounded up."""
    return int(math.floor(seconds / tr + 0.5 + 1e-9))


def to_volumes(seconds: np.ndarray, tr: float) -> np.ndarray:
    """:func:`to_volume` of each time: (n,) float -> (n,) int64."""
    return np.floor(np.asarray(seconds, float) / tr + 0.5 + 1e-9).astype(np.int64)
