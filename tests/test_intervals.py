"""Intervals that vary (issue 24 item 4): the block bootstrap of lesion and paired comparison pools films shorter
than a block, so a clip dataset (``--split stimuli``, 3-10-TR films) gets intervals of nonzero width that cover the
truth at about the nominal rate."""

from __future__ import annotations

import numpy as np

from cinevox.stats import block_bootstrap_indices, paired_comparison


def _ar1(rng, shape, phi=0.5):
    x = np.empty(shape)
    x[0] = rng.normal(size=shape[1:])
    for t in range(1, shape[0]):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=shape[1:])
    return x


def _clip_pair(rng, lens, v=6):
    """Two equally good models (true mean difference 0) on clips of ``lens`` TRs: (true, a, b, films)."""
    parts = []
    for n in lens:
        s = _ar1(rng, (n, v))
        parts.append((s + _ar1(rng, (n, v)), s + 1.5 * _ar1(rng, (n, v)), s + 1.5 * _ar1(rng, (n, v))))
    true, a, b = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return true, a, b, np.repeat(np.arange(len(lens)), lens)


def test_short_films_are_pooled_for_the_bootstrap():
    films = np.repeat(np.arange(12), [3, 4, 5, 6, 7, 8, 9, 10, 3, 4, 5, 40])
    idx = block_bootstrap_indices(films, 200, 10, np.random.default_rng(0))
    long_rows = np.flatnonzero(films == 11)
    assert np.isin(idx[:, long_rows], long_rows).all()  # a film longer than a block stays on its own
    short = films < 11
    assert np.isin(idx[:, short], np.flatnonzero(short)).all()
    # the lesion's drop interval: the mean of a per-frame drop over the resampled rows varies (it was a point:
    # each short film was one block, every resample a rotation of it)
    drop = np.random.default_rng(1).normal(size=len(films))
    means = drop[idx[:, short]].mean(1)
    assert means.std() > 0.05


def test_paired_comparison_intervals_on_clips_vary_and_cover():
    rng = np.random.default_rng(0)
    cover, widths = [], []
    for k in range(40):
        true, a, b, films = _clip_pair(rng, rng.integers(3, 11, 30))
        r = paired_comparison(true, a, b, films, n_boot=200, n_perm=9, block=10, seed=k)
        cover.append(r["ci_low"] <= 0 <= r["ci_high"])
        widths.append(r["ci_high"] - r["ci_low"])
    assert min(widths) > 0.01  # zero for every rep before (each clip one block)
    assert 0.85 <= np.mean(cover) <= 1.0, np.mean(cover)  # 0.93 over 200 reps in benchmarks/bench_statistics.py
