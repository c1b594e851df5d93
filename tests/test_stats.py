"""The paired model comparison: its error rate on simulated nulls with autocorrelated noise (and the inflated
rate of a bootstrap that ignores the autocorrelation), its power, and its pieces against direct restatements."""

from __future__ import annotations

import numpy as np
import pytest

from cinevox.metrics import pearson_columns
from cinevox.stats import block_bootstrap_indices, paired_comparison, time_blocks


def _ar1(rng, shape, phi):
    e = rng.standard_normal(shape)
    x = np.empty(shape)
    x[0] = e[0]
    for t in range(1, shape[0]):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * e[t]
    return x


def _pair(rng, t=120, v=12, phi=0.8, gain_b=1.0):
    """A true series (signal + AR(1) noise), and two models seeing the signal with their own AR(1) errors; model
    b's signal scaled by ``gain_b`` (1: the null, both equally good)."""
    films = np.repeat([0, 1], t // 2)
    signal = _ar1(rng, (t, v), 0.5)
    true = signal + _ar1(rng, (t, v), phi)
    a = signal + 1.5 * _ar1(rng, (t, v), phi)
    b = gain_b * signal + 1.5 * _ar1(rng, (t, v), phi)
    return true, a, b, films


def test_block_indices_stay_in_their_film_and_keep_runs():
    rng = np.random.default_rng(0)
    films = np.repeat([0, 1, 2], [30, 7, 45])
    idx = block_bootstrap_indices(films, 50, 10, rng)
    assert idx.shape == (50, 82)
    assert np.all(films[idx] == films[None, :])  # rows never move between films
    steps = np.diff(idx[:, 40:82], axis=1)  # film 2: mostly +1 steps (blocks of 10), a jump every 10 rows
    assert np.mean((steps == 1) | (steps == -44)) > 0.85


def test_paired_comparison_error_rate_on_nulls_and_power():
    """Null (both models equally good, errors AR(1) with phi 0.8, 120 TRs in 2 films, 12 voxels): the block
    permutation rejects at about alpha (measured over 300 nulls: 0.057); with blocks of 1 TR, ignoring the
    autocorrelation, about 5 times as often (0.27). Power: a model whose signal is 0.4 as strong is found worse."""
    rng = np.random.default_rng(1)
    reps, rej_block, rej_iid = 200, 0, 0
    for k in range(reps):
        true, a, b, films = _pair(rng)
        rej_block += paired_comparison(true, a, b, films, n_boot=9, n_perm=199, block=12, seed=k)["p_value"] < 0.05
        rej_iid += paired_comparison(true, a, b, films, n_boot=9, n_perm=199, block=1, seed=k)["p_value"] < 0.05
    fpr_block, fpr_iid = rej_block / reps, rej_iid / reps
    assert fpr_block <= 0.09, fpr_block
    assert fpr_iid > 2.5 * max(fpr_block, 0.03), (fpr_iid, fpr_block)
    hits = sum(paired_comparison(*_pair(rng, gain_b=0.4), n_boot=9, n_perm=199, block=12, seed=k)["p_value"] < 0.05
               for k in range(30))
    assert hits / 30 >= 0.8


def test_bootstrap_interval_covers_the_truth():
    """Over repeated simulations with a known difference, the block bootstrap's 95 % interval of the mean
    difference covers the expected difference in most of them: measured 0.90 over 100 repetitions for a nominal
    0.95 (a percentile block bootstrap of 2 x 100 autocorrelated TRs is somewhat narrow); asserted >= 0.85."""
    rng = np.random.default_rng(4)
    diffs, cis = [], []
    for k in range(100):
        true, a, b, films = _pair(rng, t=200, gain_b=0.6)
        res = paired_comparison(true, a, b, films, n_boot=199, n_perm=9, block=12, seed=k)
        diffs.append(res["mean_diff"])
        cis.append((res["ci_low"], res["ci_high"]))
    expected = float(np.mean(diffs))  # the difference's expectation, estimated over the repetitions
    coverage = np.mean([lo <= expected <= hi for lo, hi in cis])
    assert coverage >= 0.85, coverage


def test_time_blocks():
    films = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    assert time_blocks(films, 2).tolist() == [0, 0, 1, 2, 2, 3, 3, 4]


def test_paired_bootstrap_summary_restated():
    rng = np.random.default_rng(2)
    true, a, b, films = _pair(rng, gain_b=0.5)
    res = paired_comparison(true, a, b, films, n_boot=99, n_perm=99, block=8)
    d = pearson_columns(a, true) - pearson_columns(b, true)
    assert res["mean_diff"] == pytest.approx(d.mean()) and res["median_diff"] == pytest.approx(np.median(d))
    assert res["share_a_better"] == pytest.approx(np.mean(d > 0))
    assert res["ci_low"] <= res["mean_diff"] <= res["ci_high"]
    swapped = paired_comparison(true, b, a, films, n_boot=99, n_perm=99, block=8)
    assert swapped["mean_diff"] == pytest.approx(-res["mean_diff"])
    assert swapped["ci_low"] == pytest.approx(-res["ci_high"]) and swapped["p_value"] == pytest.approx(res["p_value"])
