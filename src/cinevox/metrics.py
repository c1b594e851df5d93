"""Per-voxel and per-frame metrics. Arrays are ``(n_trs, n_voxels)`` and frames ``(n, 3, H, W)``."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ssim

#: The pinned SSIM: Gaussian window 11, sigma 1.5, data range 1 (= skimage with gaussian_weights=True,
#: sigma=1.5, use_sample_covariance=False, data_range=1). SSIM numbers are only comparable when pinned.
SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM averaged over channels. (B, 3, H, W) x2 -> (B,)."""
    return ssim(pred.float(), target.float(), data_range=1.0, size_average=False, win_size=SSIM_WIN_SIZE,
                win_sigma=SSIM_SIGMA)


def pearson_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column. (n, V), (n, V) -> (V,); NaN where a column is constant."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    den = np.sqrt((xc**2).sum(0) * (yc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(0) / den, np.nan)


def pearson_columns_batch(x: np.ndarray, y_batch: np.ndarray) -> np.ndarray:
    """r of ``x`` (n, V) with each of ``y_batch`` (k, n, V) -> (k, V); for permutation nulls."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(0)
    xs = np.sqrt((xc**2).sum(0))
    yc = y_batch - y_batch.mean(1, keepdims=True)
    ys = np.sqrt((yc**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("nv,knv->kv", xc, yc) / (xs[None] * ys)


def mse_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean squared error per column. (n, V) x2 -> (V,)."""
    return ((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2).mean(0)


def ssim_frames(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, batch: int = 256) -> np.ndarray:
    """Pinned SSIM (Gaussian 11, sigma 1.5, range 1) per frame. (n, 3, H, W) x2 in [0, 1] -> (n,)."""
    pred, target = torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    out = [ssim_per_image(pred[i : i + batch], target[i : i + batch]) for i in range(0, len(pred), batch)]
    return torch.cat(out).cpu().numpy().astype(np.float64)


def mse_frames(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(n, 3, H, W) x2 -> (n,)."""
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return (d**2).reshape(len(d), -1).mean(1)


def scoring_groups(films: np.ndarray, min_rows: int = 3) -> np.ndarray:
    """The groups the test series are z-scored and resampled within: each film, except that films with fewer
    than ``min_rows`` test rows (the 1-3 s clips of datasets like BOLD Moments) are pooled into one group, where a
    per-film z-score would leave nothing. For films as long as Emo-FilM's, the films themselves. (n,) -> (n,)."""
    films = np.asarray(films).astype(str)
    names, counts = np.unique(films, return_counts=True)
    short = set(names[counts < min_rows])
    return np.where(np.isin(films, list(short)), "(short stimuli)", films) if short else films


def zscore_by_group(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Z-score each column within each group of rows (ddof 0; a constant segment becomes 0).
    (n, V), (n,) -> (n, V) float64. The paper's E_corr / E_mse are taken on per-film z-scored test series."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    groups = np.asarray(groups)
    for g in np.unique(groups):
        sel = groups == g
        seg = x[sel]
        sd = seg.std(0)
        out[sel] = np.where(sd > 0, (seg - seg.mean(0)) / np.where(sd > 0, sd, 1.0), 0.0)
    return out


def minmax_frames(x: np.ndarray | torch.Tensor, eps: float = 1e-12):
    """Each frame min-max stretched to [0, 1] over its pixels and channels. (n, 3, H, W) -> same type and shape.
    (The authors' clip intensity, their D_mse and their saliency SSIM.)"""
    if isinstance(x, torch.Tensor):
        flat = x.reshape(len(x), -1)
        lo = flat.min(1).values.view(-1, *([1] * (x.dim() - 1)))
        hi = flat.max(1).values.view(-1, *([1] * (x.dim() - 1)))
        return (x - lo) / (hi - lo).clamp_min(eps)
    x = np.asarray(x, np.float64)
    ax = tuple(range(1, x.ndim))
    lo, hi = x.min(axis=ax, keepdims=True), x.max(axis=ax, keepdims=True)
    return (x - lo) / np.maximum(hi - lo, eps)
