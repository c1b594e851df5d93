"""Statistics: permutation p-values, Mann-Whitney U, Cliff's delta, FDR and noise ceilings.

Noise ceilings use per-subject data ``(n_subjects, n_trs, n_voxels)`` with NaN where a subject did not see a
film (REFERENCE section 7; subjects are the repeats).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from cinevox.metrics import pearson_columns


def perm_p_value(observed: float, null: np.ndarray, greater: bool = True) -> float:
    """``(k + 1) / (n + 1)`` with ``k`` the null values at least as extreme as ``observed``."""
    null = np.asarray(null)
    k = int(np.sum(null >= observed)) if greater else int(np.sum(null <= observed))
    return (k + 1) / (len(null) + 1)


def perm_p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Per-column ``(k + 1) / (n + 1)``. (V,), (n_perm, V) -> (V,)."""
    return ((null >= observed[None]).sum(0) + 1) / (len(null) + 1)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values."""
    p = np.asarray(p, float)
    n = len(p)
    order = np.argsort(p)
    adj = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adj, 1.0)
    return out


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


def _zscore_nan(x: np.ndarray) -> np.ndarray:
    mu = np.nanmean(x, axis=1, keepdims=True)
    sd = np.nanstd(x, axis=1, keepdims=True)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def split_half_ceiling(data: np.ndarray, n_splits: int = 50, seed: int = 0) -> dict:
    """Split-half reliability with Spearman-Brown, as a ceiling on Pearson r of the N-subject mean.

    Parameters
    ----------
    data : (n_subjects, n_trs, n_voxels), NaN where a subject has no data

    Returns
    -------
    dict with ``r_half`` (V,), ``reliability`` (V,) and ``ceiling`` (V,) = sqrt(max(reliability, 0))
    """
    rng = np.random.default_rng(seed)
    n = data.shape[0]
    if n < 2:
        raise ValueError("a split-half noise ceiling needs at least two subjects")
    zs = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2 :]
        with warnings.catch_warnings():  # TRs where a half has nobody (missing films) are dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            ma, mb = np.nanmean(data[a], 0), np.nanmean(data[b], 0)  # (T, V)
        ok = np.isfinite(ma).all(1) & np.isfinite(mb).all(1)
        r = np.clip(pearson_columns(ma[ok], mb[ok]), -0.999999, 0.999999)
        zs.append(np.arctanh(r))
    r_half = np.tanh(np.nanmean(zs, axis=0))
    rel = 2 * r_half / (1 + r_half)
    return {"r_half": r_half, "reliability": rel, "ceiling": np.sqrt(np.clip(rel, 0, None))}


def explainable_variance_ceiling(data: np.ndarray) -> dict:
    """Explainable variance (Gallant lab) and the ceiling on r of the N-subject mean.

    ``ev = var_t(mean_s z) / mean_s(var_t z)``; ``ev_c = ev - (1 - ev) / (N - 1)``;
    ``R2max = N ev_c / (1 + (N - 1) ev_c)``; ceiling = sqrt(R2max).
    """
    z = _zscore_nan(np.asarray(data, np.float32))
    n = np.mean(np.isfinite(z[..., 0]).sum(0))  # subjects per TR, on average
    ev = np.nanvar(np.nanmean(z, 0), axis=0) / np.nanmean(np.nanvar(z, axis=1), axis=0)
    ev_c = ev - (1 - ev) / (n - 1)
    r2 = n * ev_c / (1 + (n - 1) * ev_c)
    return {"ev": ev, "ev_corrected": ev_c, "ceiling": np.sqrt(np.clip(r2, 0, None)), "n_subjects": float(n)}


def ncsnr_ceiling(data: np.ndarray) -> dict:
    """NSD-style noise-ceiling SNR: ``NC = ncsnr^2 / (ncsnr^2 + 1/N)`` (a ceiling on R^2 of the mean)."""
    z = _zscore_nan(np.asarray(data, np.float32))
    n = np.mean(np.isfinite(z[..., 0]).sum(0))
    sigma2 = np.nanmean(np.nanvar(z, axis=0, ddof=1), axis=0)
    ncsnr = np.sqrt(np.clip(1 - sigma2, 0, None)) / np.sqrt(sigma2)
    nc = ncsnr**2 / (ncsnr**2 + 1 / n)
    return {"ncsnr": ncsnr, "nc": nc, "ceiling": np.sqrt(nc)}
