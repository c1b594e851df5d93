"""The paper's split: per film, first 80 % of TRs train+validation (4:1), last 20 % test; one film all test.

The authors took every 5th TR as validation, interleaving it with autocorrelated training TRs (a leak);
the default here is contiguous validation blocks separated from training (and from test) by a gap.
"""

from __future__ import annotations

import numpy as np


def split_film(n_trs: int, heldout: bool, test_fraction: float = 0.2, val_fraction: float = 0.2,
               mode: str = "blocked", gap: int = 5, n_blocks: int = 4) -> np.ndarray:
    """Split label of each of a film's TRs: 'train', 'val', 'test' or 'gap' (unused).

    Parameters
    ----------
    n_trs : number of TRs of the film
    heldout : the whole film goes to test
    test_fraction : last fraction of TRs for test
    val_fraction : fraction of train+validation TRs for validation (0.2 = the paper's 4:1)
    mode : 'blocked' (contiguous blocks with gaps) or 'interleaved' (the authors' every 5th TR: 0, 5, 10, ...)
    gap : TRs left out on each side of a validation block and before the test part ('blocked' only)
    n_blocks : number of validation blocks ('blocked' only)

    Returns
    -------
    array of str, shape (n_trs,)
    """
    labels = np.full(n_trs, "train", dtype=object)
    if heldout:
        labels[:] = "test"
        return labels
    n_tv = int(np.floor((1 - test_fraction) * n_trs + 1e-9))
    labels[n_tv:] = "test"
    if mode == "interleaved":
        step = int(round(1 / val_fraction))
        labels[0:n_tv:step] = "val"
        return labels
    if mode != "blocked":
        raise ValueError(f"validation mode must be 'blocked' or 'interleaved', got {mode!r}")
    # the blocks tile the train+validation part less its last ``gap`` TRs, which separate it from test (films
    # too short for that, under 2 TRs per block, keep the last validation block against the test part)
    end = n_tv - gap if n_tv - gap >= 2 * n_blocks else n_tv
    edges = np.linspace(0, end, n_blocks + 1).round().astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        n_val = max(1, int(round((b - a) * val_fraction)))
        v0 = b - n_val
        labels[v0:b] = "val"
        lo = max(a, v0 - gap)
        labels[lo:v0][labels[lo:v0] == "train"] = "gap"
        hi = min(n_tv, b + gap)
        labels[b:hi][labels[b:hi] == "train"] = "gap"
    labels[end:n_tv] = "gap"
    return labels
