"""Figures as PNG files. matplotlib (Agg) and nilearn plotting are imported inside the functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cinevox.utils.plotting import bars as fig_bars  # noqa: F401 -- re-exported for the report
from cinevox.utils.plotting import brain_map as fig_brain_map  # noqa: F401
from cinevox.utils.plotting import pyplot as _plt


def _strip(ax, groups: list[tuple[str, np.ndarray, str]], null: np.ndarray, rng) -> None:
    for x, (_name, vals, colour) in enumerate(groups):
        vals = vals[np.isfinite(vals)]
        ax.scatter(x + rng.uniform(-0.25, 0.25, len(vals)), vals, s=3, c=colour, alpha=0.5, linewidths=0)
        ax.hlines(np.median(vals), x - 0.3, x + 0.3, colors="red", lw=1.5)
    x = len(groups)
    null = null[np.isfinite(null)]
    ax.scatter(x + rng.uniform(-0.25, 0.25, len(null)), null, s=3, c="c", alpha=0.5, linewidths=0)
    ax.axhline(null.mean(), color="c", lw=1)
    ax.set_xticks(range(len(groups) + 1), [g[0] for g in groups] + ["null"], rotation=45, ha="right")


def _strip_figure(groups, null: np.ndarray, ylabel: str, title: str, path: Path, seed: int) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(groups), 4))
    _strip(ax, groups, null, np.random.default_rng(seed))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig_encoder(voxels: pd.DataFrame, metrics: dict, path: Path) -> Path:
    """Fig. 2: per-voxel r per test film (black), all test TRs (green), shuffled null (cyan)."""
    films = [c[2:] for c in voxels.columns if c.startswith("r_") and c not in ("r_null_example", "r_over_ceiling")]
    groups = [(f, voxels[f"r_{f}"].to_numpy(), "k") for f in films] + [("all test", voxels["r"].to_numpy(), "g")]
    e = metrics["encoder"]
    return _strip_figure(groups, voxels["r_null_example"].to_numpy(), "Pearson r (predicted vs measured)",
                         f"Encoder: mean r {e['r_mean']:.3f}, MSE {e['mse_mean']:.3f} (N = {e['n_voxels']} voxels)",
                         path, 0)


def fig_decoder(frames: pd.DataFrame, metrics: dict, path: Path) -> Path:
    """Fig. 3: per-frame SSIM per test film (black), all test frames (blue), shuffled-frame null (cyan)."""
    groups = [(f, g["ssim"].to_numpy(), "k") for f, g in frames.groupby("film")]
    groups.append(("all test", frames["ssim"].to_numpy(), "b"))
    d = metrics["decoder"]
    return _strip_figure(groups, frames["ssim_null_example"].to_numpy(), "SSIM (reconstruction vs frame)",
                         f"Decoder: mean SSIM {d['ssim_mean']:.3f}, MSE {d['mse_mean']:.3f} "
                         f"(N = {d['n_frames']} frames)", path, 1)


def fig_reconstructions(truth: np.ndarray, recon: np.ndarray, films: np.ndarray, path: Path, n: int = 12) -> Path:
    """Fig. 4: ground truth | reconstruction pairs. truth, recon: uint8 (n, S, S, 3)."""
    plt = _plt()
    idx = np.linspace(0, len(truth) - 1, min(n, len(truth))).astype(int)
    cols = 4
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.3, rows * 1.45))
    axes = np.atleast_2d(axes)
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        axes[r, 2 * c].imshow(truth[i])
        axes[r, 2 * c].set_title(str(films[i])[:10], fontsize=6)
        axes[r, 2 * c + 1].imshow(recon[i])
    fig.suptitle("ground truth | reconstruction", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig_ceiling(voxels: pd.DataFrame, path: Path) -> Path:
    """r against the noise ceiling per voxel (and the estimated against the true ceiling on simulations)."""
    plt = _plt()
    has_true = "true_ceiling" in voxels
    fig, axes = plt.subplots(1, 2 + has_true, figsize=(4.2 * (2 + has_true), 3.8))
    ax = axes[0]
    ax.scatter(voxels["ceiling"], voxels["r"], s=4, alpha=0.5)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("noise ceiling (split-half)")
    ax.set_ylabel("model r")
    ax.set_title("r against the ceiling", fontsize=9)
    ax = axes[1]
    ratio = voxels["r_over_ceiling"].dropna()
    ax.hist(ratio.clip(-0.5, 1.5), bins=40, color="0.4")
    ax.axvline(ratio.median(), color="r")
    ax.set_xlabel("r / ceiling")
    ax.set_title(f"median r / ceiling {ratio.median():.2f}", fontsize=9)
    if has_true:
        ax = axes[2]
        ax.scatter(voxels["true_ceiling"], voxels["ceiling"], s=4, alpha=0.5, label="split-half")
        if "ceiling_ev" in voxels:
            ax.scatter(voxels["true_ceiling"], voxels["ceiling_ev"], s=4, alpha=0.5, label="explainable var.")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("true ceiling (simulator)")
        ax.set_ylabel("estimated ceiling")
        ax.legend(fontsize=7)
        ax.set_title("estimated vs true ceiling", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig_curves(histories: dict[str, pd.DataFrame], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, (label, h) in enumerate(histories.items()):
        c = f"C{k}"
        ax.plot(h["epoch"], h["train_loss"], c=c, label=f"{label} train")
        ax.plot(h["epoch"], h["val_loss"], c=c, ls="--", label=f"{label} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig_r_scatter(r_x: np.ndarray, r_y: np.ndarray, label_x: str, label_y: str, path: Path,
                  highlight: np.ndarray | None = None, highlight_name: str = "informative") -> Path:
    """Per-voxel r of one model against another (same voxels), identity line; ``highlight`` voxels in colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ok = np.isfinite(r_x) & np.isfinite(r_y)
    hi = np.zeros(len(r_x), bool) if highlight is None else np.asarray(highlight, bool)
    ax.scatter(r_x[ok & ~hi], r_y[ok & ~hi], s=5, c="0.45", alpha=0.6, linewidths=0, label="other voxels")
    if hi.any():
        ax.scatter(r_x[ok & hi], r_y[ok & hi], s=6, c="tab:orange", alpha=0.8, linewidths=0, label=highlight_name)
    lo, top = float(min(r_x[ok].min(), r_y[ok].min(), 0)), float(max(r_x[ok].max(), r_y[ok].max(), 0.1))
    ax.plot([lo, top], [lo, top], "k--", lw=0.8)
    ax.set_xlabel(f"{label_x}: test r")
    ax.set_ylabel(f"{label_y}: test r")
    above = float(np.mean(r_y[ok] > r_x[ok]))
    ax.set_title(f"{100 * above:.0f} % of voxels above the diagonal", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def brain_viewer(img, path: Path, title: str) -> Path | None:
    """An interactive brain viewer (nilearn ``view_img``: a self-contained HTML page) of a voxel map."""
    from nilearn import plotting

    data = np.asarray(img.dataobj, np.float64)
    vmax = float(np.nanmax(np.abs(data))) or 1.0
    view = plotting.view_img(img, threshold=None, vmax=vmax, symmetric_cmap=True, cmap="cold_hot", title=title,
                             black_bg=False, colorbar=True)
    view.save_as_html(str(path))
    return path


def fig_subjects(table: pd.DataFrame, path: Path) -> Path:
    """Per-viewer panel: each viewer's mean r (by role), its leave-one-out inter-subject ceiling, and a held-out
    viewer's r through a fitted head; right: the distribution of the viewers' r. A decoder's runs (no r): the
    viewers' SSIM and the held-out viewers' through a fitted alignment."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(max(5.0, 0.45 * len(table) + 3.0), 3.6),
                             gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    x = np.arange(len(table))
    colours = {"trained": "0.35", "target": "tab:green", "heldout": "tab:orange", "other": "0.7"}
    score, name = ("r_mean", "r") if "r_mean" in table else ("ssim_mean", "SSIM")
    if score in table:
        ax.bar(x, table[score], color=[colours.get(r, "0.5") for r in table["role"]], label=f"{name} (mean)")
    if "ceiling_loo_mean" in table and score == "r_mean":
        ax.scatter(x, table["ceiling_loo_mean"], marker="_", s=200, c="k", label="leave-one-out ceiling")
    if f"{score}_fitted_head" in table:
        ax.scatter(x, table[f"{score}_fitted_head"], marker="o", s=18, c="tab:red", label="fitted head (held out)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, table["subject"], rotation=90, fontsize=7)
    ax.set_ylabel(name)
    ax.legend(fontsize=7)
    ax.set_title("per viewer (grey trained, orange held out, green the run's target)", fontsize=8)
    ax = axes[1]
    if score in table:
        ax.hist(table[score].dropna(), bins=max(5, len(table) // 2), color="0.4", orientation="horizontal")
    ax.set_xlabel("viewers")
    ax.set_title(f"{name} distribution", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
