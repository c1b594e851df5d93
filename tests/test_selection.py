"""Voxel selection without the test period (issue 24 item 2): ``--select-on trainval`` ranks voxels by an SNR that
the test TRs do not touch; ``all`` (the paper's rule, the default) sees them."""

from __future__ import annotations

import numpy as np
from helpers import sim_config

from cinevox.data.prepare import plan_preparation, prepare_runs, select_voxels
from cinevox.profiles import CHOICES


def test_selection_on_trainval_does_not_see_the_test_period(tiny_sim, tmp_path):
    assert {c.name: (c.paper, c.authors) for c in CHOICES}["select_on"] == ("all", "all")
    cfg = sim_config(tiny_sim, select_on="trainval")
    cfg.validate()
    plan = plan_preparation(tiny_sim, tmp_path / "p", cfg)
    metas = prepare_runs(plan, progress=False)
    before = select_voxels(plan, metas)
    plan.cfg.select_on = "all"
    before_all = select_voxels(plan, metas)
    # rewrite the test TRs of every cached run with noise: trainval's SNR must not move, all's must
    rng = np.random.default_rng(0)
    split = plan.samples.set_index(["film", "tr"])["split"]
    n_test = 0
    for rp in plan.runs:
        path = plan.out / "cache" / "runs" / f"{rp.run.key}.npz"
        with np.load(path) as z:
            arrays = dict(z)
        test = split.reindex(list(zip(arrays["films"], arrays["film_trs"]))).to_numpy() == "test"
        n_test += int(test.sum())
        arrays["z"][test] = rng.normal(size=arrays["z"][test].shape).astype(np.float32)
        np.savez(path, **arrays)
    assert n_test > 0
    after_all = select_voxels(plan, metas)
    plan.cfg.select_on = "trainval"
    after = select_voxels(plan, metas)
    good = np.isfinite(before["snr"])
    np.testing.assert_allclose(after["snr"][good], before["snr"][good], rtol=1e-10)
    np.testing.assert_array_equal(after["keep"], before["keep"])
    # negative control: the paper's rule moves with the test period
    assert np.abs(after_all["snr"][good] - before_all["snr"][good]).max() > 1e-3 * np.abs(before_all["snr"][good]).max()
    assert not np.allclose(before["snr"][good], before_all["snr"][good])
