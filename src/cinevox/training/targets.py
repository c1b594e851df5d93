"""What a model is trained to predict (``--target``): the viewers' mean, one viewer, or every viewer.

``mean`` (the paper): ``voxels.npy``; with ``--holdout-subjects`` the mean over the other viewers, rebuilt from
``subjects.npy`` one viewer at a time. ``subject:S07``: viewer S07's own series (rows it did not see are left
out of training and validation). ``subjects``: every training viewer's series at once, ``(B, N, V)`` per batch,
NaN where a viewer did not see the clip, gathered from the memory map per batch (host memory stays one batch).
Held-out viewers' rows of ``subjects.npy`` are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cinevox.configs import parse_target
from cinevox.data.dataset import PreparedData

__all__ = ["Targets", "check_viewers", "parse_target", "resolve_targets"]


@dataclass
class Targets:
    mode: str  # "mean" | "subject" | "subjects"
    subjects: list[str]  # the viewers trained on (subjects: the read-outs' order; subject: [S]; mean: all used)
    heldout: list[str]
    rows: np.ndarray  # (n_samples,) bool: rows with a target
    values: np.ndarray | None = None  # (n_samples, V) float32; None: voxels.npy as it is
    gather: Callable[[np.ndarray], np.ndarray] | None = None  # subjects: indices (B,) -> (B, N, V) float32


def check_viewers(data: PreparedData, names: list[str], option: str) -> list[str]:
    """The viewers ``names`` (``S07`` or ``sub-S07``) checked against the prepared dataset's; ValueError naming
    those present. ``option`` is formatted with the bad names (``"--holdout-subjects {}"``)."""
    present = data.subjects
    out = [n.removeprefix("sub-") for n in names]
    bad = [n for n in out if n not in present]
    if bad:
        raise ValueError(f"{option.format(','.join(bad))}: not a viewer of {data.root} (viewers: "
                         f"{', '.join(present)})")
    return out


def resolve_targets(data: PreparedData, target: str, holdout: list[str] | None) -> Targets:
    mode, viewer = parse_target(target)
    heldout = check_viewers(data, list(holdout or []), "--holdout-subjects {}")
    n = len(data.samples)
    if mode == "mean" and not heldout:
        return Targets("mean", data.subjects, [], np.ones(n, bool))
    present = data.subjects
    kept = [s for s in present if s not in heldout]
    if not kept:
        raise ValueError("--holdout-subjects holds out every viewer: nothing left to train on")
    if mode == "subject":
        (viewer,) = check_viewers(data, [viewer], "--target subject:{}")
        if viewer in heldout:
            raise ValueError(f"--target subject:{viewer} is also in --holdout-subjects")
        vals = np.array(data.subject_voxels()[present.index(viewer)], np.float32)
        rows = ~np.isnan(vals).any(1)
        return Targets("subject", [viewer], heldout, rows, np.where(rows[:, None], vals, 0.0).astype(np.float32))
    every = data.subject_voxels()
    idx = [present.index(s) for s in kept]
    if mode == "mean":  # one viewer at a time: never the held-out viewers' rows
        mean, cnt = data.viewers_mean(idx)
        return Targets("mean", kept, heldout, cnt > 0, mean)
    seen = np.zeros(n, bool)
    for j in idx:
        seen |= ~np.isnan(np.asarray(every[j, :, 0]))

    def gather(rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), len(idx), data.n_voxels), np.float32)
        for k, j in enumerate(idx):
            out[order, k] = every[j, np.asarray(rows)[order]]
        return out

    return Targets("subjects", kept, heldout, seen, gather=gather)
