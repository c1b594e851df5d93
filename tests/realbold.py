"""A BIDS dataset from recorded BOLD: the Sherlock posterior-medial-cortex extraction in ``../shared/data/real``
(17 subjects, 481 voxels, TR 1.5 s, already shifted 3 TRs for the hemodynamic delay), paired with a rendered video
it never saw. Every voxel is then a true null for that video, with real autocorrelation, real inter-subject
covariance and real non-visual shared signal; ``plant`` adds a known response to the video in a share of voxels
(the positive control). Used by ``tests/test_realbold.py`` and ``benchmarks/bench_statistics.py``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cinevox.data.video import write_video

TR = 1.5


def sherlock_bids(src: Path, out: Path, subjects=(1, 2, 3), n_trs: int = 200, start: int = 0, fps: float = 8.0,
                  size: int = 32, plant: float = 0.0, plant_share: float = 1 / 3, seed: int = 0) -> dict:
    """Write ``out`` (BIDS: ``sub-XX/func/sub-XX_task-sherlock_bold.nii.gz`` on the mask's bounding box with the
    mask's own header codes, sform 1 and qform 0; events with the film row; ``stimuli/film.mp4``; ``mask.nii.gz``
    cropped likewise). The video: one random grey level per TR (plus pixel noise). ``plant`` > 0 adds ``plant``
    x the z-scored grey level of each TR's clip to a random ``plant_share`` of the voxels of every subject (the data
    are z-scored per voxel, so ``plant`` is the planted response's SD relative to the recorded signal's).
    Returns ``{"planted": (481,) bool in the mask's C order, "levels": (n_trs,)}``."""
    import scipy.io as sio

    rng = np.random.default_rng(seed)
    mimg = nib.load(src / "pmc_nn.nii")
    mask = np.asarray(mimg.dataobj) > 0
    lo, hi = np.argwhere(mask).min(0) - 1, np.argwhere(mask).max(0) + 2
    crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = mimg.affine.copy()
    affine[:3, 3] += mimg.affine[:3, :3] @ lo
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(json.dumps({"Name": "sherlock-pmc", "BIDSVersion": "1.8.0"}))

    def with_codes(img):  # the extraction's header: sform code 1 (scanner), qform code 0, on an MNI grid
        img.header.set_sform(affine, 1)
        img.header.set_qform(affine, 0)
        return img

    nib.save(with_codes(nib.Nifti1Image(crop.astype(np.uint8), affine)), out / "mask.nii.gz")
    levels = rng.uniform(0.15, 0.85, n_trs)
    n_frames = int(np.ceil((n_trs + 1) * TR * fps))
    per_frame = levels[np.minimum((np.arange(n_frames) / fps / TR).astype(int), n_trs - 1)]
    frames = np.clip(per_frame[:, None, None, None] + 0.05 * rng.standard_normal((n_frames, size, size, 3)), 0, 1)
    (out / "stimuli").mkdir(exist_ok=True)
    write_video(out / "stimuli" / "film.mp4", [frames.astype(np.float32)], fps, size, size)
    n_vox = int(mask.sum())
    planted = np.zeros(n_vox, bool)
    if plant > 0:
        planted[rng.choice(n_vox, int(round(plant_share * n_vox)), replace=False)] = True
    drive = (levels - levels.mean()) / levels.std()
    # rdata's voxel order: the mask's nonzero voxels in MATLAB (column-major) order
    order_f = np.ravel_multi_index(np.nonzero(mask.T)[::-1], mask.shape, order="C")
    c_pos = np.searchsorted(np.flatnonzero(mask.ravel()), order_f)  # rdata row -> C-order position
    ijk = np.argwhere(crop)  # C order
    for s in subjects:
        x = sio.loadmat(src / f"pmc_nn_sherlock_movie_s{s}.mat")["rdata"][:, start : start + n_trs].astype(np.float64)
        c = np.empty_like(x)
        c[c_pos] = x  # (481, n_trs) in C order
        c[planted] += plant * drive[None, :]
        vol = np.zeros((*crop.shape, n_trs), np.float32)
        vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = (1000.0 + 10.0 * c).astype(np.float32)  # a baseline, as BOLD has
        func = out / f"sub-{s:02d}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        img = with_codes(nib.Nifti1Image(vol, affine))
        img.header.set_zooms((3.0, 3.0, 3.0, TR))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, func / f"sub-{s:02d}_task-sherlock_bold.nii.gz")
        (func / f"sub-{s:02d}_task-sherlock_bold.json").write_text(json.dumps({"RepetitionTime": TR}))
        pd.DataFrame({"onset": [0.0], "duration": [n_trs * TR], "trial_type": ["film"],
                      "stim_file": ["film.mp4"]}).to_csv(func / f"sub-{s:02d}_task-sherlock_events.tsv", sep="\t",
                                                         index=False)
    return {"planted": planted, "levels": levels}
