"""Statistics: permutation p-values, Mann-Whitney U, Cliff's delta, FDR and noise ceilings.

Noise ceilings use per-subject data ``(n_subjects, n_trs, n_voxels)`` with NaN where a subject did not see a
film (REFERENCE section 7; subjects are the repeats).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from cinevox.metrics import pearson_columns, scoring_groups, zscore_by_group


def perm_p_value(observed: float, null: np.ndarray, greater: bool = True) -> float:
    """``(k + 1) / (n + 1)`` with ``k`` the null values at least as extreme as ``observed``."""
    null = np.asarray(null)
    k = int(np.sum(null >= observed)) if greater else int(np.sum(null <= observed))
    return (k + 1) / (len(null) + 1)


def perm_p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Per-column ``(k + 1) / (n + 1)``. (V,), (n_perm, V) -> (V,)."""
    return ((null >= observed[None]).sum(0) + 1) / (len(null) + 1)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over the finite ones: NaN in, NaN out (a test that was not made is not
    counted in the family), the rest as if the NaNs were absent."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    n = int(ok.sum())
    if n == 0:
        return out
    q = p[ok]
    order = np.argsort(q)
    adj = q[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    res = np.empty(n)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def permute_within(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(len(groups))`` that moves each row only among the rows of its own group
    (a film): (n,) labels -> (n,) int indices."""
    groups = np.asarray(groups)
    idx = np.arange(len(groups))
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        idx[rows] = rows[rng.permutation(len(rows))]
    return idx


def cliffs_delta(x: np.ndarray, y: np.ndarray) -> float:
    """Cliff's delta = P(x > y) - P(x < y), from ranks (equals the direct pairwise count, ties counted 0)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n, m = len(x), len(y)
    ranks = stats.rankdata(np.concatenate([x, y]))
    u = ranks[:n].sum() - n * (n + 1) / 2  # U of x: pairs x > y plus half the ties
    return 2 * u / (n * m) - 1


def cliffs_delta_direct(x: np.ndarray, y: np.ndarray, chunk: int = 2048) -> float:
    """Cliff's delta by counting all pairs (reference implementation, O(n m))."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    total = 0
    for i in range(0, len(x), chunk):
        xi = x[i : i + chunk, None]
        total += int(np.sum(xi > y[None])) - int(np.sum(xi < y[None]))
    return total / (len(x) * len(y))


def mann_whitney(x: np.ndarray, y: np.ndarray) -> dict:
    """Two-sided Mann-Whitney U with Cliff's delta."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    res = stats.mannwhitneyu(x, y, alternative="two-sided")
    return {"U": float(res.statistic), "p_value": float(res.pvalue), "cliffs_delta": cliffs_delta(x, y),
            "n1": len(x), "n2": len(y)}


def block_bootstrap_indices(groups: np.ndarray, n_boot: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, T) row indices of a circular moving-block bootstrap within each group (film): each film's rows are
    rebuilt from blocks of ``block`` consecutive rows (circularly wrapped) drawn with replacement, so that
    autocorrelation up to ``block`` TRs survives resampling and rows never move between films.

    A group of at most ``block`` rows would be one block, every resample a rotation of it, and an interval over it
    a point: such groups (the clips of a ``--split stimuli`` dataset, 3-10-TR films) are pooled into one group
    (:func:`cinevox.metrics.scoring_groups`), and every group holds at least two blocks: one shorter than
    ``2 block`` rows is resampled in blocks of half its length (an 11-TR film in blocks of 10 was about one
    rotation of itself, and its interval covered 0.4)."""
    groups = scoring_groups(groups, block + 1)
    out = np.empty((n_boot, len(groups)), np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        n = len(rows)
        b = _group_block(n, block)
        n_blocks = int(np.ceil(n / b))
        starts = rng.integers(0, n, (n_boot, n_blocks))
        pos = (starts[:, :, None] + np.arange(b)) % n  # (n_boot, n_blocks, b)
        out[:, rows] = rows[pos.reshape(n_boot, -1)[:, :n]]
    return out


def _group_block(n: int, block: int) -> int:
    """The block length used within a group of ``n`` rows (:func:`block_bootstrap_indices`): at least two blocks."""
    return min(block, max(1, n // 2))


def _bootstrap_groups(groups: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The groups as :func:`block_bootstrap_indices` forms them (films of at most ``block`` rows pooled): their
    sizes and block lengths, ``(n (G,), b (G,))`` ints."""
    sizes = np.unique(scoring_groups(groups, block + 1), return_counts=True)[1]
    return sizes, np.array([_group_block(int(n), block) for n in sizes], np.int64)


def hac_white_noise_share(groups: np.ndarray, block: int) -> float:
    """E[:func:`hac_mean_variance`] / Var(mean) for white noise, exactly: each group's Bartlett estimator on its
    centred rows has expectation ``sigma^2 [(n - 1) - 2 sum_{k=1}^{b-1} (1 - k/b)(1 - k/n)] / N^2`` (centring and
    the kernel both lose variance; about ``(n - b) / n`` of it when n >> b), against ``sigma^2 n / N^2``."""
    sizes, lengths = _bootstrap_groups(groups, block)
    kept = 0.0
    for n, b in zip(sizes, lengths):
        k = np.arange(1, b)
        kept += (n - 1) - 2 * float(((1 - k / b) * (1 - k / n)).sum())
    return max(kept, 1e-3) / max(int(sizes.sum()), 1)


def hac_degrees_of_freedom(groups: np.ndarray, block: int) -> float:
    """Degrees of freedom of :func:`hac_mean_variance`: the number of blocks (of :func:`block_bootstrap_indices`)
    less the number of groups, each group's centring costing one (at least 1). A group's last, shorter block counts
    as its share of a block (``n / b`` blocks per group, not ``ceil(n / b)``: a 21-TR film in blocks of 10 is 2.1
    blocks, not 3), so the count moves smoothly with the film length. With 4 films of 11-30 test TRs that is
    4-8: the standard error is itself uncertain, and the bootstrap of the t-statistic, drawn from the same few
    blocks, does not widen its quantiles enough (the paired interval covered 0.87-0.92 on films of 11-20 TRs for a
    nominal 0.95 on AR(1) nulls; with the Student-t quantiles as a floor 0.94-0.97,
    ``benchmarks/bench_statistics.py --coverage-reps``)."""
    sizes, lengths = _bootstrap_groups(groups, block)
    return max(float((sizes / lengths).sum()) - len(sizes), 1.0)


def hac_mean_variance(x: np.ndarray, groups: np.ndarray, block: int) -> np.ndarray:
    """Variance of the mean of ``x`` over its last axis from the within-group autocovariances, Bartlett-weighted up
    to the bootstrap's block length (the Newey-West estimator, each group centred on its own mean, as the block
    bootstrap keeps each group's rows in it): ``sum_g sum_{|k| < b} (1 - |k| / b) sum_t z_t z_{t+k} / N^2``.
    Groups as :func:`block_bootstrap_indices` forms them (films of at most ``block`` rows pooled).
    x (..., T), groups (T,) -> (...) (never negative: the Bartlett kernel is positive semi-definite)."""
    x = np.asarray(x, np.float64)
    groups = scoring_groups(groups, block + 1)
    total = np.zeros(x.shape[:-1])
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        z = x[..., rows] - x[..., rows].mean(-1, keepdims=True)
        b = _group_block(len(rows), block)
        total = total + (z * z).sum(-1)
        for k in range(1, b):
            total = total + 2 * (1 - k / b) * (z[..., k:] * z[..., :-k]).sum(-1)
    return total / x.shape[-1] ** 2


def block_bootstrap_t_interval(x: np.ndarray, groups: np.ndarray, idx: np.ndarray, block: int,
                               level: float = 0.95, widen: str = "exact", student_floor: bool = True
                               ) -> tuple[float, float]:
    """Studentized block-bootstrap interval of the mean of a per-TR series (the lesion's per-frame drop).

    ``idx`` (n_boot, T) are resamples of :func:`block_bootstrap_indices` (same ``groups`` and ``block``). Each
    resample's mean is studentized by its own :func:`hac_mean_variance` (the same estimator, recomputed on the
    resampled series: the "naive" block bootstrap of the t-statistic, Goncalves & Vogelsang 2011), and the interval
    is ``mean - q_hi se, mean - q_lo se`` with ``q`` the t's quantiles and ``se`` the estimator on the data.

    Why not the percentile interval of the resampled means: with blocks of 10 TRs in films of 30-60 test TRs, the
    block bootstrap's variance is biased low (lags beyond the block are lost, lags within it are Bartlett-weighted,
    and each film is centred on its own mean: a bias of about block / film length) and its interval misses the
    randomness of that variance; on AR(1) nulls (coefficient 0.5) the percentile interval covered 0.71-0.84 for a
    nominal 0.95, this one 0.91-0.96 (``benchmarks/bench_statistics.py --coverage-reps``, films of 11-60 TRs).
    The t-statistic's bootstrap carries both: the estimator is biased low on a resample much as on the data, which
    widens the t's quantiles, and the t's tails carry the estimator's randomness (fixed-b asymptotics, Kiefer &
    Vogelsang 2005). With few blocks per film that is not enough, and the interval is widened by ``1 / sqrt(s)``,
    ``s`` the share of the mean's variance the estimator keeps on white noise (:func:`hac_white_noise_share`,
    exact: 0.61 for an 11-TR film in blocks of 5, 0.77 for 40 TRs in blocks of 10; ``widen="blocks"``: the rougher
    ``(N - sum of block lengths) / N``): a bias correction exact under white noise and
    approximate under autocorrelation. The t's quantiles are never nearer 0 than Student's t with
    :func:`hac_degrees_of_freedom` (blocks less groups): with 2-3 blocks per film the bootstrap's t, drawn from those
    same blocks, is too light-tailed (``student_floor=False``: the bootstrap's quantiles alone). A resample whose
    standard error falls below a tenth of the data's (a few repeated rows of a tiny test set) is studentized by that
    tenth, so that t stays finite. A constant series gives the point ``(mean, mean)``.
    x (T,), groups (T,), idx (n_boot, T) -> (low, high)."""
    x = np.asarray(x, np.float64)
    m = float(x.mean())
    se = float(np.sqrt(hac_mean_variance(x, groups, block)))
    xb = x[idx]
    floor = max(0.1 * se, 1e-12 * max(float(np.abs(x).max(initial=0.0)), 1e-300))
    t = (xb.mean(1) - m) / np.maximum(np.sqrt(hac_mean_variance(xb, groups, block)), floor)
    q_lo, q_hi = np.percentile(t, [50 * (1 - level), 50 * (1 + level)])
    if student_floor:  # never narrower than Student's t (few blocks)
        q = float(stats.t.ppf(0.5 + level / 2, hac_degrees_of_freedom(groups, block)))
        q_lo, q_hi = min(float(q_lo), -q), max(float(q_hi), q)
    if widen == "exact":
        se = se / np.sqrt(hac_white_noise_share(groups, block))
    elif widen == "blocks":  # the rougher N / (N - sum of block lengths): wider for films of 11-40 TRs
        sizes, lengths = _bootstrap_groups(groups, block)
        n = int(sizes.sum())
        se = se * np.sqrt(n / max(n - int(lengths.sum()), 1))
    else:
        raise ValueError(f"widen must be 'exact' or 'blocks', got {widen!r}")
    return m - float(q_hi) * se, m - float(q_lo) * se


def _r_columns_batched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column for a batch: (B, T, V) x2 -> (B, V)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def time_blocks(groups: np.ndarray, block: int) -> np.ndarray:
    """Block id of each row: consecutive runs of ``block`` rows within each group (film)."""
    groups = np.asarray(groups)
    out = np.empty(len(groups), np.int64)
    nxt = 0
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        ids = np.arange(len(rows)) // max(1, block)
        out[rows] = nxt + ids
        nxt += int(ids.max()) + 1 if len(rows) else 0
    return out


def _paired_t_interval(true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, groups: np.ndarray,
                       idx: np.ndarray, block: int, level: float = 0.95, student_floor: bool = True
                       ) -> tuple[float, float]:
    """The interval of :func:`paired_comparison` relative to its mean difference: (T, V) x3, (T,), (n_boot, T)
    -> (low, high) offsets.

    On series z-scored within each film, a voxel's r is the mean over TRs of ``za_t zy_t``; its influence at TR t
    of film g is ``za_t zy_t - r_g (za_t^2 + zy_t^2) / 2 + (r_g - r)`` (the product less the film's z-scores' own
    share, ``r_g`` the voxel's r within the film; checked against finite differences), so the mean r difference
    over voxels moves with the mean of the per-TR series ``u_t = mean_v [influence of a - influence of b]`` (T,).
    The interval is :func:`block_bootstrap_t_interval` of ``u`` (each resample studentized by the HAC standard
    error of its own ``u``, widened for the films' centring)."""
    zg = scoring_groups(groups)
    u = np.zeros(len(true))
    step = max(1, int(2e6 // max(len(true), 1)))  # voxels at a time (memory)
    films = [np.flatnonzero(zg == g) for g in np.unique(zg)]

    def influence(z: np.ndarray, zy: np.ndarray) -> np.ndarray:  # (T, v): each TR's influence on each voxel's r
        out = z * zy
        r = out.mean(0)
        for rows in films:
            rg = out[rows].mean(0)
            out[rows] += -rg * (z[rows] ** 2 + zy[rows] ** 2) / 2 + (rg - r)
        return out

    for j in range(0, true.shape[1], step):
        zy, za, zb = (zscore_by_group(x[:, j : j + step], zg) for x in (true, pred_a, pred_b))
        u += (influence(za, zy) - influence(zb, zy)).sum(1)
    u /= true.shape[1]
    lo, hi = block_bootstrap_t_interval(u, groups, idx, block, level, widen="blocks", student_floor=student_floor)
    m = float(u.mean())
    return lo - m, hi - m


def paired_comparison(true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, groups: np.ndarray,
                      n_boot: int = 1000, n_perm: int = 1000, block: int = 10, seed: int = 0,
                      budget: float = 2e7) -> dict:
    """Paired comparison of two models' per-voxel Pearson r on the same voxels and test TRs.

    The unit is each voxel's ``r_a - r_b``, summarised by its mean (and median) over voxels. Voxels are never
    resampled (they are paired and spatially dependent): the uncertainty comes from test *time*, in blocks of
    ``block`` consecutive TRs within each film, so that temporal autocorrelation is kept.

    - 95 % interval of the mean difference: studentized moving-block bootstrap of test time within films
      (:func:`block_bootstrap_indices`; films shorter than a block pooled; the same resampled TRs for both models
      and every voxel) of the per-TR influence series of the mean r difference, widened for the films' centring
      (:func:`_paired_t_interval`), around ``mean_diff``. The percentile interval of the resampled r differences,
      used before, covered 0.75-0.91 on AR(1) nulls of 11- to 60-TR films (blocks of 10 TRs: too few blocks for
      its variance); this one 0.94-0.97 there, 0.91 with AR(1) 0.7 (its t quantiles floored by Student's t, see
      :func:`block_bootstrap_t_interval`)
      (``benchmarks/bench_statistics.py --coverage-reps``, ``tests/test_intervals.py``).
    - p-value (two-sided): block permutation. Under the null the two models' predictions are exchangeable, so
      each time block's predictions are swapped between the models at random; ``p = (k + 1) / (n_perm + 1)`` with
      k the permutations whose |mean difference| reaches the observed one.

    Error rates on simulated nulls with AR(1) errors are measured in ``tests/test_stats.py`` (about alpha with
    blocks longer than the autocorrelation; several times alpha with blocks of one TR).

    Parameters
    ----------
    true, pred_a, pred_b : (T, V) series in the r convention (per-film z-scored; ``d`` is formed from copies
        z-scored within :func:`cinevox.metrics.scoring_groups` of ``groups``, which leaves such series as they are)
    groups : (T,) film of each TR
    """
    true, pred_a, pred_b = (np.asarray(x, np.float64) for x in (true, pred_a, pred_b))
    rng = np.random.default_rng(seed)
    d = pearson_columns(pred_a, true) - pearson_columns(pred_b, true)
    observed = float(np.nanmean(d))
    per = max(1, int(budget // max(true.size, 1)))
    idx = block_bootstrap_indices(groups, n_boot, block, rng)
    finite = np.isfinite(d)
    if finite.any():
        lo, hi = _paired_t_interval(*(x[:, finite] for x in (true, pred_a, pred_b)), groups, idx, block)
        lo, hi = max(observed + lo, -2.0), min(observed + hi, 2.0)  # an r difference lies in [-2, 2]
    else:
        lo = hi = np.nan
    blocks = time_blocks(groups, block)
    swaps = rng.random((n_perm, int(blocks.max()) + 1)) < 0.5
    null = []
    for i in range(0, n_perm, per):
        m = swaps[i : i + per][:, blocks][:, :, None]  # (b, T, 1): swap this TR's predictions
        a, b = np.where(m, pred_b[None], pred_a[None]), np.where(m, pred_a[None], pred_b[None])
        t = np.broadcast_to(true[None], a.shape)
        null.append(np.nanmean(_r_columns_batched(a, t) - _r_columns_batched(b, t), axis=1))
    null = np.concatenate(null)
    return {"mean_diff": observed, "median_diff": float(np.nanmedian(d)), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float((np.sum(np.abs(null) >= abs(observed) - 1e-12) + 1) / (n_perm + 1)),
            "share_a_better": float(np.mean(d[finite] > 0)), "share_b_better": float(np.mean(d[finite] < 0)),
            "n_voxels": int(finite.sum()), "n_trs": len(true), "n_boot": n_boot, "n_perm": n_perm,
            "block_trs": block}


def _zscore_nan(x: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each subject's series z-scored over time (axis 1), NaN-aware; with ``groups`` (T,), within each group
    (film) separately: the convention of r (per-film z-scored test series)."""
    if groups is None:
        mu = np.nanmean(x, axis=1, keepdims=True)
        sd = np.nanstd(x, axis=1, keepdims=True)
        return (x - mu) / np.where(sd > 0, sd, 1.0)
    out = np.empty_like(x)
    groups = np.asarray(groups)
    with warnings.catch_warnings():  # a subject who missed a film: all-NaN segment, stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        for g in np.unique(groups):
            sel = groups == g
            out[:, sel] = _zscore_nan(x[:, sel])
    return out


def split_half_ceiling(data: np.ndarray, n_splits: int = 50, seed: int = 0, groups: np.ndarray | None = None) -> dict:
    """Split-half reliability with Spearman-Brown, as a ceiling on Pearson r of the N-subject mean.

    Parameters
    ----------
    data : (n_subjects, n_trs, n_voxels), NaN where a subject has no data
    groups : (n_trs,) film of each TR, optional: then every series (each subject's, each half's mean) is z-scored
        within each film before correlating, the convention of cinevox's r (per-film z-scored test series)

    Returns
    -------
    dict with ``r_half`` (V,), ``reliability`` (V,) and ``ceiling`` (V,) = sqrt(max(reliability, 0))
    """
    rng = np.random.default_rng(seed)
    n = data.shape[0]
    if n < 2:
        raise ValueError("a split-half noise ceiling needs at least two subjects")
    if groups is not None:
        data = _zscore_nan(np.asarray(data, np.float32), groups)
    zs = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2 :]
        with warnings.catch_warnings():  # TRs where a half has nobody (missing films) are dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            ma, mb = np.nanmean(data[a], 0), np.nanmean(data[b], 0)  # (T, V)
        ok = np.isfinite(ma).all(1) & np.isfinite(mb).all(1)
        ma, mb = ma[ok], mb[ok]
        if groups is not None:
            ma, mb = zscore_by_group(ma, np.asarray(groups)[ok]), zscore_by_group(mb, np.asarray(groups)[ok])
        r = np.clip(pearson_columns(ma, mb), -0.999999, 0.999999)
        zs.append(np.arctanh(r))
    r_half = np.tanh(np.nanmean(zs, axis=0))
    rel = 2 * r_half / (1 + r_half)
    return {"r_half": r_half, "reliability": rel, "ceiling": np.sqrt(np.clip(rel, 0, None))}


def explainable_variance_ceiling(data: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """Explainable variance (Gallant lab) and the ceiling on r of the N-subject mean.

    ``ev = var_t(mean_s z) / mean_s(var_t z)``; ``ev_c = ev - (1 - ev) / (N - 1)``;
    ``R2max = N ev_c / (1 + (N - 1) ev_c)``; ceiling = sqrt(R2max). ``groups``: z-score within films (r's
    convention).
    """
    z = _zscore_nan(np.asarray(data, np.float32), groups)
    n = np.mean(np.isfinite(z[..., 0]).sum(0))  # subjects per TR, on average
    ev = np.nanvar(np.nanmean(z, 0), axis=0) / np.nanmean(np.nanvar(z, axis=1), axis=0)
    ev_c = ev - (1 - ev) / (n - 1)
    r2 = n * ev_c / (1 + (n - 1) * ev_c)
    return {"ev": ev, "ev_corrected": ev_c, "ceiling": np.sqrt(np.clip(r2, 0, None)), "n_subjects": float(n)}


def ncsnr_ceiling(data: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """NSD-style noise-ceiling SNR: ``NC = ncsnr^2 / (ncsnr^2 + 1/N)`` (a ceiling on R^2 of the mean).
    ``groups``: z-score within films (r's convention)."""
    z = _zscore_nan(np.asarray(data, np.float32), groups)
    n = np.mean(np.isfinite(z[..., 0]).sum(0))
    sigma2 = np.nanmean(np.nanvar(z, axis=0, ddof=1), axis=0)
    ncsnr = np.sqrt(np.clip(1 - sigma2, 0, None)) / np.sqrt(sigma2)
    nc = ncsnr**2 / (ncsnr**2 + 1 / n)
    return {"ncsnr": ncsnr, "nc": nc, "ceiling": np.sqrt(nc)}
