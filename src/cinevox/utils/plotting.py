"""Plotting helpers shared by the analysis and report layers (matplotlib Agg, nilearn; imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def brain_map(img, path: Path, title: str, threshold: float | None = None, cmap: str = "cold_hot",
                  vmax: float | None = None) -> Path:
    """A stat map over the MNI152 template (nilearn's bundled copy: no download)."""
    plt = pyplot()
    from nilearn import plotting

    disp = plotting.plot_glass_brain(img, threshold=threshold, colorbar=True, title=title, plot_abs=False,
                                     cmap=cmap, vmax=vmax, display_mode="lzry")
    disp.savefig(str(path), dpi=110)
    disp.close()
    plt.close("all")
    return path


def bars(df: pd.DataFrame, x: str, ys: list[str], path: Path, title: str, ylabel: str,
             errors: str | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(df) + 1.5), 3.8))
    width = 0.8 / len(ys)
    pos = np.arange(len(df))
    for k, y in enumerate(ys):
        ax.bar(pos + k * width - 0.4 + width / 2, df[y], width, label=y,
               yerr=df[errors] if errors and k == 0 else None, capsize=2)
    ax.set_xticks(pos, df[x], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if len(ys) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
