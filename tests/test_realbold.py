"""Recorded BOLD (issue 24 item 10): the Sherlock PMC extraction paired with a rendered video it never saw. On its
true-null voxels every voxel-wise null stays near its nominal rate; a known response to the video planted in a third
of the voxels is found; the split-half ceiling is that of the real data. The mask's header (sform code 1, scanner,
on an MNI grid) gives one warning line, and ``--assume-mni`` records it as MNI."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import FAST_RIDGE
from realbold import sherlock_bids

from cinevox.data.dataset import PreparedData
from cinevox.data.masks import mask_positions
from cinevox.data.prepare import PrepareConfig, plan_preparation, prepare


def _cfg(bids, **kw):
    base = dict(films_dir=str(bids / "stimuli"), mask=str(bids / "mask.nii.gz"), delay_trs=0, frame_size=16,
                frames_per_tr=4, gap_trs=2, val_blocks=2, snr_top=1.0)
    base.update(kw)
    return PrepareConfig(**base)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from conftest import SHARED

    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training.ridge import RidgeConfig, baseline

    src = SHARED / "real" / "sherlock_pmc"
    if not src.is_dir():
        pytest.skip(f"recorded BOLD not found at {src}")
    root = tmp_path_factory.mktemp("realbold")
    info = sherlock_bids(src, root / "bids", subjects=(1, 2, 3), n_trs=240,
                         plant=0.5)
    prep = prepare(root / "bids", root / "prep", _cfg(root / "bids", assume_mni=True), progress=False)
    run = baseline(prep, root / "ridge", RidgeConfig(**FAST_RIDGE), progress=False)
    metrics = evaluate(run, EvalConfig(n_perm=99, n_perm_frames=5))["encoder"]
    data = PreparedData(prep)
    crop = np.asarray(nib.load(root / "bids" / "mask.nii.gz").dataobj) > 0
    planted = info["planted"][mask_positions(crop, data.voxels_ijk())]
    return root, prep, pd.read_csv(run / "eval" / "voxels.csv"), planted, metrics


def test_real_bold_nulls_power_and_ceiling(real_run):
    root, prep, vox, planted, metrics = real_run
    assert len(vox) == 481 and planted.sum() == 160
    for null in ("p_circular", "p_phase", "p_shuffle"):
        assert (vox[null][~planted] < 0.05).mean() <= 0.1, null  # true nulls: recorded BOLD, unrelated video
    for null in ("p_phase", "p_shuffle"):
        assert (vox[null][planted] < 0.05).mean() >= 0.8, null  # the planted response is found
    # the split-half ceiling of the real data: its shared (film-driven) signal, above 0 without any planting
    ceiling = vox["ceiling"].to_numpy()
    assert 0.02 < np.nanmean(ceiling[~planted]) < np.nanmean(ceiling[planted])
    assert int(nib.load(prep / "mask.nii.gz").header["sform_code"]) == 4  # --assume-mni: recorded as MNI


def test_scanner_space_header_is_one_warning_line(real_run, caplog):
    root = real_run[0]
    cfg = _cfg(root / "bids")
    cfg.validate()
    with caplog.at_level(logging.WARNING, logger="cinevox"):
        plan = plan_preparation(root / "bids", root / "plan_only", cfg)
    lines = [r.getMessage() for r in caplog.records if "sform code 1" in r.getMessage()]
    assert len(lines) == 1 and "--assume-mni" in lines[0] and "\n" not in lines[0]
    assert plan.space_code == 1
