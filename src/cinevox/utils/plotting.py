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


def timeline_figure(table: pd.DataFrame, path: Path, max_runs: int = 60) -> Path:
    """One row per run, one bar per stimulus placement at its place in the run (s), coloured by film, with the
    split of its TRs written on it. ``table``: :func:`cinevox.data.timeline.timeline_table`."""
    plt = pyplot()
    keys = list(dict.fromkeys(table["bold"]))[:max_runs]
    films = sorted(set(table["film"]))
    cmap = plt.get_cmap("tab20")
    colour = {f: cmap(k % 20) for k, f in enumerate(films)}
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.28 * len(keys)))
    for y, key in enumerate(keys):
        rows = table[table["bold"] == key]
        if "run_s" in rows:  # the whole run, behind its stimuli
            ax.barh(y, rows["run_s"].iloc[0], left=0, height=0.9, color="0.9", edgecolor="0.6", lw=0.3)
        for _, r in rows.iterrows():
            ax.barh(y, r["offset"] - r["onset"], left=r["onset"], color=colour[r["film"]], edgecolor="k", lw=0.3)
            label = f"{r['film']} {r['stim_start']:g}-{r['stim_end']:g} s" + (f" [{r['split']}]" if r["split"] else "")
            ax.text(r["onset"], y, " " + label, va="center", fontsize=5, clip_on=True)
    ax.set_yticks(range(len(keys)), [k.split("_bold")[0].split("_space-")[0] for k in keys], fontsize=5)
    ax.invert_yaxis()
    ax.set_xlabel("time in the run (s); grey: the whole run")
    ax.set_xlim(left=0)
    more = f" (first {max_runs} of {table['bold'].nunique()} runs)" if table["bold"].nunique() > max_runs else ""
    ax.set_title(f"stimulus timeline: {len(table)} placements, {len(films)} film{'s' * (len(films) != 1)}{more}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
