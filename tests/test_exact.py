"""Exact small things (issue 24 item 5): half-TR rounding, the SSIM null within films, linear detrend over volume
times, the gap before the test part, NaN-safe BH, fMRIPrep derivatives only when they hold BOLD."""

from __future__ import annotations

import numpy as np
from scipy import stats

from cinevox.data.layout import derivative_spec
from cinevox.data.prepare import standardise_segment
from cinevox.data.splits import split_film
from cinevox.data.timeline import Placement, delayed_volumes, film_clocks
from cinevox.evaluation.evaluate import ssim_null
from cinevox.metrics import ssim_frames
from cinevox.stats import fdr_bh, perm_p_value, permute_within
from cinevox.utils.timing import to_volume, to_volumes


def test_half_tr_onsets_round_up():
    # Python's round(1.5) == round(2.5) == 2: onsets 3.0 s and 5.0 s at TR 2 s landed on the same volume
    assert [to_volume(t, 2.0) for t in (3.0, 5.0, 4.9, 5.1, 0.0, 0.999)] == [2, 3, 2, 3, 0, 0]
    assert to_volume(1.95, 1.3) == 2  # 1.5 TR in decimal, 1.4999... in binary
    assert to_volumes(np.array([1.0, 3.0, 5.0, 7.0]), 2.0).tolist() == [1, 2, 3, 4]
    a = Placement("r", "a.mp4", 3.0, 0.0, 10.0, "ev.tsv", film="a")
    b = Placement("r", "b.mp4", 5.0, 0.0, 10.0, "ev.tsv", film="b")
    va, vb = delayed_volumes(a, 2.0, 3), delayed_volumes(b, 2.0, 3)
    assert (va.start, vb.start) == (2 + 3, 3 + 3) and len(va) == len(vb) == 5
    # a clip starting half a TR into its file: film TR 1 (half up), the same rule as the volumes
    c = Placement("r", "c.mp4", 0.0, 3.0, 4.0, "ev.tsv", film="c")
    assert film_clocks([c], 2.0)["c"].n_trs == 2 + 2


def test_ssim_null_shuffles_within_films():
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.1, 0.9, (3, 3))
    films = np.repeat(np.array(["A", "B", "C"]), 12)
    true = np.clip(colours[np.searchsorted(["A", "B", "C"], films)][:, :, None, None]
                   + 0.25 * rng.standard_normal((36, 3, 24, 24)), 0, 1)
    pred = np.stack([true[films == f].mean(0) for f in films])  # each film's mean frame: no within-film information
    obs = float(ssim_frames(pred, true).mean())
    null = ssim_null(pred, true, films, 99, np.random.default_rng(1))
    assert null.shape == (99, 36)
    assert perm_p_value(obs, null.mean(1)) > 0.1
    # negative control: the old null shuffled frames across films and called this decoder significant
    across = np.stack([ssim_frames(pred, true[rng.permutation(36)]) for _ in range(99)])
    assert perm_p_value(obs, across.mean(1)) < 0.05
    idx = permute_within(films, np.random.default_rng(2))
    assert sorted(idx.tolist()) == list(range(36)) and (films[idx] == films).all()


def test_linear_detrend_fits_over_volume_times():
    # two clips of one run, volumes 0-19 and 60-79: a pure linear drift in volume time is removed exactly
    times = np.r_[np.arange(20), np.arange(60, 80)]
    rng = np.random.default_rng(0)
    slope, icpt = rng.normal(size=4), rng.normal(size=4)
    noise = 0.01 * rng.standard_normal((40, 4))
    x = icpt + np.outer(times, slope) + noise
    z, raw_mean, sd, constant = standardise_segment(x, "linear", times=times)
    ref = x - np.stack([np.polyval(np.polyfit(times, x[:, v], 1), times) for v in range(4)], 1)
    np.testing.assert_allclose(sd, ref.std(0), rtol=1e-6)
    np.testing.assert_allclose(z, ref / ref.std(0), rtol=1e-4, atol=1e-4)
    # negative control: over row index the drift's jump between the clips stays in (the old fit)
    _, _, sd_rows, _ = standardise_segment(x, "linear")
    assert (sd_rows > 10 * sd).all()


def test_blocked_split_leaves_the_gap_before_test():
    for n, gap, blocks in ((200, 4, 4), (103, 5, 4), (60, 3, 2)):
        lab = split_film(n, False, gap=gap, n_blocks=blocks)
        test = np.flatnonzero(lab == "test")
        used = np.flatnonzero((lab == "train") | (lab == "val"))
        assert test.min() - used.max() > gap, (n, gap, blocks)
        assert (lab[test.min() - gap : test.min()] == "gap").all()
        assert 0.12 < (lab == "val").sum() / test.min() < 0.25


def test_fdr_bh_is_nan_safe():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5, np.nan, 0.002])
    q = fdr_bh(p)
    ok = np.isfinite(p)
    assert np.isnan(q[~ok]).all()
    np.testing.assert_allclose(q[ok], stats.false_discovery_control(p[ok], method="bh"))
    np.testing.assert_allclose(fdr_bh(p[ok]), q[ok])
    assert np.isnan(fdr_bh(np.array([np.nan, np.nan]))).all()


def test_fmriprep_derivatives_only_when_they_hold_bold(tmp_path):
    root = tmp_path / "ds"
    fp = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    fp.mkdir(parents=True)
    (fp / "sub-01_task-movie_desc-confounds_timeseries.tsv").write_text("a\n1\n")
    assert derivative_spec(root, None, "MNI152NLin2009cAsym", None, "preproc") is None  # confounds only: raw
    (fp / "sub-01_task-movie_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz").write_bytes(b"")
    spec = derivative_spec(root, None, "MNI152NLin2009cAsym", None, "preproc")
    assert spec is not None and spec.folder == root / "derivatives" / "fmriprep"
    assert derivative_spec(root, "none", "MNI152NLin2009cAsym", None, "preproc") is None  # --derivatives none
    assert derivative_spec(root, "None", "MNI152NLin2009cAsym", None, "preproc") is None

