"""``cinevox compare RUN...``: Table I (the paper's median metrics per run, keyed by run path); the paper's
Mann-Whitney U and Cliff's delta; and
a paired comparison of voxel r between runs on the same voxels and test TRs (block bootstrap interval and block
permutation p-value over test time within films, :func:`cinevox.stats.paired_comparison`).

The paper compared models with an unpaired Mann-Whitney U on per-voxel r. The voxels of two models are the same
voxels (paired) and spatially dependent, so that p-value is not valid inference for "model A beats model B"; it is
kept, labelled as the paper's test, for comparison with the paper."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from cinevox.data.dataset import PreparedData
from cinevox.metrics import scoring_groups, zscore_by_group
from cinevox.stats import mann_whitney, paired_comparison
from cinevox.utils.io import read_json, write_json, write_text_atomic
from cinevox.utils.names import upgrade_metrics


def run_label(run_dir: Path, metrics: dict) -> str:
    """A run's display name: its model kind and voxel count, then its folder (``encdec (237 voxels) runs/seed1``).
    Tables key runs by their path (two runs of one model with different seeds never collide)."""
    kind = metrics["model"]
    label = _kind_voxels(run_dir, metrics)
    return label if run_dir.name.lower() == kind.lower() else f"{label} {run_dir.name}"


def _kind_voxels(run_dir: Path, metrics: dict) -> str:
    kind = metrics["model"]
    n = metrics.get("encoder", {}).get("n_voxels")
    if n is None:
        n = len(pd.read_csv(run_dir / "eval" / "voxels.csv")) if (run_dir / "eval" / "voxels.csv").is_file() else ""
    return f"{kind} ({n} voxels)" if n != "" else kind


def run_labels(run_dirs: list[Path], metrics: list[dict]) -> list[str]:
    """Unique display names of runs, in their order: :func:`run_label`, where two runs would share it (two runs of
    one model in folders of one name) its folder replaced by the shortest path suffix that tells them apart
    (``encdec (237 voxels) a/encdec``); the same folder given twice is numbered."""
    labels = [run_label(Path(rd), m) for rd, m in zip(run_dirs, metrics)]
    clash = [i for i, lab in enumerate(labels) if labels.count(lab) > 1]
    if not clash:
        return labels
    parts = [Path(run_dirs[i]).resolve().parts for i in clash]
    for k in range(1, max(len(p) for p in parts) + 1):
        suffixes = [Path(*p[-k:]).as_posix() for p in parts]
        if len(set(suffixes)) == len(suffixes):
            break
    for i, suffix in zip(clash, suffixes):
        labels[i] = f"{_kind_voxels(Path(run_dirs[i]), metrics[i])} {suffix}"
    twice = {lab for lab in labels if labels.count(lab) > 1}  # the same folder given twice
    return [f"{lab} #{i + 1}" if lab in twice else lab for i, lab in enumerate(labels)]


def load_eval(run_dir: str | Path) -> tuple[dict, pd.DataFrame | None, pd.DataFrame | None]:
    run_dir = Path(run_dir)
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        step = (read_json(run_dir / "manifest.json").get("step") if (run_dir / "manifest.json").is_file() else None)
        if step == "prepare":
            raise FileNotFoundError(f"{run_dir} is a prepared dataset, not a run: train and evaluate a model on it "
                                    f"first (`cinevox train {run_dir} --out RUN`, `cinevox evaluate RUN`), then give "
                                    "RUN")
        if step in ("train", "baseline") or (run_dir / "checkpoints").is_dir():
            raise FileNotFoundError(f"{path} does not exist: run `cinevox evaluate {run_dir}` first")
        raise FileNotFoundError(f"{run_dir} is not an evaluated run (no eval/metrics.json): give the folder of "
                                "`cinevox train --out RUN` or `cinevox baseline --out RUN`, after `cinevox evaluate "
                                "RUN`")
    vox = run_dir / "eval" / "voxels.csv"
    fr = run_dir / "eval" / "frames.csv"
    return (upgrade_metrics(read_json(path)), pd.read_csv(vox) if vox.is_file() else None,
            pd.read_csv(fr) if fr.is_file() else None)


def _prepared_of(run_dir: Path) -> str | None:
    man = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else {}
    return (man.get("inputs") or {}).get("prepared")


def paired_runs(a: Path, b: Path, n_boot: int = 1000, n_perm: int = 1000, block: int = 10, seed: int = 0
                ) -> dict | None:
    """:func:`cinevox.stats.paired_comparison` of two evaluated runs of one prepared dataset (None otherwise)."""
    pa, pb = a / "eval" / "pred_voxels.npy", b / "eval" / "pred_voxels.npy"
    prep = _prepared_of(a)
    if not (pa.is_file() and pb.is_file()) or prep is None or prep != _prepared_of(b):
        return None
    from cinevox.training.train import run_holdout_film

    held = run_holdout_film(a)
    if held != run_holdout_film(b):  # --cv films folds: paired on the same held-out film only
        return None
    data = PreparedData(prep, holdout_film=held)
    test = data.indices("test")
    films = scoring_groups(data.samples["film"].to_numpy()[test])  # short clips pooled
    va, vb = np.load(pa), np.load(pb)
    if va.shape != vb.shape or va.shape != (len(test), data.n_voxels):
        return None
    vt = zscore_by_group(np.asarray(data.voxels[test], np.float32), films)
    return paired_comparison(vt, zscore_by_group(va, films), zscore_by_group(vb, films), films, n_boot, n_perm,
                             block, seed)


def compare(run_dirs: list[str | Path], out_dir: str | Path, n_boot: int = 1000, n_perm: int = 1000,
            block: int = 10) -> dict:
    """Writes ``table1.csv``, ``table1.md``, ``tests.csv`` (the paper's Mann-Whitney U), ``paired.csv`` (the
    paired comparison of voxel r) and ``compare.json`` in ``out_dir``."""
    if len(run_dirs) < 1:
        raise ValueError("compare needs at least one run")
    out = Path(out_dir)
    runs = []
    for rd in run_dirs:
        m, vox, fr = load_eval(rd)
        runs.append({"label": str(rd), "metrics": m, "voxels": vox, "frames": fr, "dir": str(rd)})
    if len({r["dir"] for r in runs}) < len(runs):
        raise ValueError("compare: a run is given twice: " + ", ".join(r["dir"] for r in runs))
    rows = []
    for r in runs:
        e, d = r["metrics"].get("encoder", {}), r["metrics"].get("decoder", {})
        rows.append({"run": r["label"], "model": r["metrics"]["model"], "n_voxels": e.get("n_voxels"),
                     "E_corr (median r)": e.get("r_median"), "E_mse (median)": e.get("mse_median"),
                     "D_ssim (median)": d.get("ssim_median"), "D_mse (median)": d.get("mse_median"),
                     "mean r / mean ceiling": e.get("r_over_ceiling"), "ceiling (mean)": e.get("ceiling_mean"),
                     **({"mean r / mean explainable ceiling": e["r_over_explainable_ceiling"]}
                        if "r_over_explainable_ceiling" in e else {})})
    table = pd.DataFrame(rows)
    tests = []
    for a, b in itertools.combinations(runs, 2):
        for metric, frame_key, col in (("voxel r", "voxels", "r"), ("frame SSIM", "frames", "ssim")):
            if a[frame_key] is None or b[frame_key] is None:
                continue
            res = mann_whitney(a[frame_key][col].to_numpy(), b[frame_key][col].to_numpy())
            tests.append({"metric": metric, "run_1": a["label"], "run_2": b["label"],
                          "median_1": float(np.nanmedian(a[frame_key][col])),
                          "median_2": float(np.nanmedian(b[frame_key][col])), **res})
    tests_df = pd.DataFrame(tests)
    paired = []
    for a, b in itertools.combinations(runs, 2):
        res = paired_runs(Path(a["dir"]), Path(b["dir"]), n_boot, n_perm, block)
        if res is not None:
            paired.append({"run_1": a["label"], "run_2": b["label"], **res})
    paired_df = pd.DataFrame(paired)
    write_text_atomic(out / "paired.csv", paired_df.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "table1.csv", table.to_csv(index=False, float_format="%.4f"))
    write_text_atomic(out / "tests.csv", tests_df.to_csv(index=False, float_format="%.6g"))
    md = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        md.append("| " + " | ".join("/" if pd.isna(v) else (f"{v:.3f}" if isinstance(v, float) else str(v))
                                    for v in row) + " |")
    if len(paired_df):
        md += ["", f"Paired comparison of voxel r (run 1 - run 2, same voxels and test TRs): 95 % interval from a "
                   f"block bootstrap of test time within films ({block}-TR blocks, {n_boot} resamples), p from "
                   f"{n_perm} block permutations:", "",
               "| run 1 | run 2 | mean diff | 95 % interval | median diff | p | run 1 better | run 2 better |",
               "|---|---|---|---|---|---|---|---|"]
        for t in paired:
            md.append(f"| {t['run_1']} | {t['run_2']} | {t['mean_diff']:.4f} | [{t['ci_low']:.4f}, {t['ci_high']:.4f}] "
                      f"| {t['median_diff']:.4f} | {t['p_value']:.3g} | {100 * t['share_a_better']:.0f} % | "
                      f"{100 * t['share_b_better']:.0f} % |")
    if len(tests_df):
        md += ["", "The paper's test: Mann-Whitney U (two-sided, unpaired) and Cliff's delta; it treats the voxels of "
                   "two models as independent samples, which they are not (same voxels, spatially dependent):", "",
               "| metric | run 1 | run 2 | n1 x n2 | U | p | Cliff's delta |", "|---|---|---|---|---|---|---|"]
        for t in tests:
            md.append(f"| {t['metric']} | {t['run_1']} | {t['run_2']} | {t['n1']} x {t['n2']} | {t['U']:.0f} | "
                      f"{t['p_value']:.3g} | {t['cliffs_delta']:.3f} |")
    write_text_atomic(out / "table1.md", "\n".join(md) + "\n")
    result = {"table": rows, "tests": tests, "paired": paired, "runs": [r["dir"] for r in runs]}
    write_json(out / "compare.json", result)
    return result
