"""Predictions of a new video scored against the simulator's known response to it.

``cinevox simulate OUT --preset P --films DIR`` simulates the preset's brains (the same tuning for the same preset
and seed, whatever the films) watching the videos of DIR, and writes each video's true stimulus-driven response,
``derivatives/simulation/stimulus_signal/<film>.npy`` ((n_trs, visual voxels); row t is the response to clip t,
aligned as the prepared samples are).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from cinevox.data.masks import mask_positions
from cinevox.inference.bundle import ModelBundle
from cinevox.metrics import pearson_columns


def truth_for_video(b: ModelBundle, sim_root: str | Path, film: str, pred: np.ndarray) -> dict:
    """Per-voxel correlation of a prediction (n_clips, V) with the true response of the simulated brains.

    Returns ``n_trs``, ``r_mean`` (all the model's voxels), ``r_informative`` and ``r_other`` (the simulator's
    informative voxels and the rest), and ``r_voxels`` (V,)."""
    sim = Path(sim_root) / "derivatives" / "simulation"
    path = sim / "stimulus_signal" / f"{film}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: simulate the video first (cinevox simulate OUT --films DIR)")
    vis = np.asarray(nib.load(sim / "visual_mask.nii.gz").dataobj) > 0
    if vis.shape != b.mask.shape[:3]:
        raise ValueError(f"{sim}: grid {vis.shape} is not the model's {b.mask.shape[:3]}")
    r = mask_positions(vis, b.ijk)
    if (r < 0).any():
        raise ValueError(f"{sim}: {int((r < 0).sum())} of the model's voxels are outside the simulated visual mask")
    truth = np.load(path)[:, r]
    n = min(len(truth), len(pred))
    r_vox = pearson_columns(np.asarray(pred[:n], np.float64), truth[:n].astype(np.float64))
    informative = np.asarray(nib.load(sim / "informative.nii.gz").dataobj)[tuple(b.ijk.T)] > 0
    return {"n_trs": n, "r_mean": float(np.nanmean(r_vox)),
            "r_informative": float(np.nanmean(r_vox[informative])) if informative.any() else float("nan"),
            "r_other": float(np.nanmean(r_vox[~informative])) if (~informative).any() else float("nan"),
            "r_voxels": r_vox}
