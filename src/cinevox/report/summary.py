"""The report's first screen: the answer, read from the runs (never fixed to the demo or to Emo-FilM).

:func:`summarise` gathers the numbers (data, the best model and its paired tests against the others, the share of
voxels significant under the circular-shift null, r / ceiling, warnings) into a dict, also written as
``summary.json`` beside the report; :func:`summary_html` renders it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from cinevox.data.dataset import PreparedData
from cinevox.utils.io import read_json

#: test segments shorter than this (TRs) get a warning: few independent samples per film for r and the nulls
SHORT_TEST_TRS = 50


def data_facts(data: PreparedData) -> dict:
    """What a reader needs to know of the data a run was trained on: its prepared dataset as the run split it
    (:func:`cinevox.training.train.run_data`)."""
    prepared = Path(data.root)
    man = data.manifest
    cfg = man.get("config", {})
    split = data.samples.groupby(["film", "split"]).size().unstack(fill_value=0)
    counts = {f: {k: int(v) for k, v in row.items()} for f, row in split.iterrows()}
    films = sorted(counts)
    test_trs = {f: c.get("test", 0) for f, c in counts.items() if c.get("test", 0)}
    heldout = [f for f, c in counts.items() if c.get("test", 0) and not c.get("train", 0) and not c.get("val", 0)]
    runs = (man.get("inputs") or {}).get("runs") or []
    space = None
    for r in runs:
        bold = r.get("bold") or {}
        m = re.search(r"space-([A-Za-z0-9]+)", str(bold.get("path", bold) if isinstance(bold, dict) else bold))
        if m:
            space = m.group(1)
            break
    mask = nib.load(prepared / "mask.nii.gz")
    code = int(mask.header["sform_code"])
    label = mask.header.get_value_label("sform_code") if code else "no sform"
    zooms = mask.header.get_zooms()[:3]
    return {
        "prepared": str(prepared),
        "n_viewers": len(man.get("subjects") or []),
        "films": films, "n_films": len(films),
        "n_voxels": int(data.n_voxels), "tr": float(man.get("tr", np.nan)),
        "space": f"{space} (NIfTI sform: {label})" if space else f"NIfTI sform: {label}",
        "voxel_size_mm": [round(float(z), 3) for z in zooms],
        "frames_per_tr": int(data.frames_per_tr), "frame_size": int(cfg.get("frame_size") or 0),
        "test_trs": test_trs, "heldout_films": heldout, "split_mode": man.get("split_mode", "films"),
        "simulated": bool(man.get("bids_simulation")),
    }


def _run_kind_warnings(rd: Path) -> list[str]:
    man = read_json(rd / "manifest.json") if (rd / "manifest.json").is_file() else {}
    src = str(man.get("vgg_weights") or "")
    if src.startswith("random"):
        return [f"{rd}: the perceptual loss used a random (untrained) VGG16 ({src}), not ImageNet weights; its "
                "decoder is not trained with the paper's loss (pass --vgg-weights vgg16-397923af.pth)"]
    return []


def summarise(runs: list[tuple[Path, dict]], compare_result: dict) -> dict:
    """``runs``: (run folder, metrics.json) pairs in the report's order; ``compare_result``: what
    :func:`cinevox.evaluation.compare.compare` returned for them."""
    from cinevox.training.train import run_data, run_prepared_dir

    preps, first = [], None
    for rd, _ in runs:
        try:
            preps.append(run_prepared_dir(rd))
            first = first or rd
        except (FileNotFoundError, KeyError, ValueError):
            continue
    facts = data_facts(run_data(first)) if first else {}
    per_run = []
    for rd, m in runs:
        e, d = m.get("encoder") or {}, m.get("decoder") or {}
        per_run.append({"run": str(rd), "model": m["model"], "r_mean": e.get("r_mean"),
                        "r_over_ceiling": e.get("r_over_ceiling"),
                        "frac_voxels_q05_circular": e.get("frac_voxels_q05_circular"),
                        "p_circular": e.get("p_circular"), "ssim_mean": d.get("ssim_mean"),
                        "n_voxels": e.get("n_voxels")})
    scored = [r for r in per_run if r["r_mean"] is not None]
    best = max(scored, key=lambda r: r["r_mean"]) if scored else None
    versus = []
    if best:
        for t in compare_result.get("paired", []):
            if best["run"] not in (t["run_1"], t["run_2"]):
                continue
            sign = 1 if t["run_1"] == best["run"] else -1
            other = t["run_2"] if sign == 1 else t["run_1"]
            lo, hi = sorted((sign * t["ci_low"], sign * t["ci_high"]))
            versus.append({"other": other, "mean_diff": sign * t["mean_diff"], "ci_low": lo, "ci_high": hi,
                           "p_value": t["p_value"], "block_trs": t.get("block_trs")})
    warnings = []
    if facts.get("simulated"):
        warnings.append("simulated data (cinevox simulate): the numbers measure the method on a known truth, not "
                        "a brain")
    for rd, _ in runs:
        warnings += _run_kind_warnings(rd)
    if facts.get("test_trs"):
        lo = min(facts["test_trs"].values())
        if lo < SHORT_TEST_TRS:
            warnings.append(f"short test segments: {lo}-{max(facts['test_trs'].values())} TRs per film (fewer than "
                            f"{SHORT_TEST_TRS}): r per film and the circular-shift null rest on few independent "
                            "samples")
    if len(preps) > 1 and len({str(p) for p in preps}) > 1:
        warnings.append("the runs come from different prepared datasets: their voxels and test TRs differ, so "
                        "they are not compared voxel by voxel")
    return {"data": facts, "runs": per_run, "best": best, "best_versus": versus, "warnings": warnings}


def _f(v, fmt: str = "{:.3f}") -> str:
    return "/" if v is None or not np.isfinite(v) else fmt.format(v)


def summary_html(s: dict) -> str:
    """The summary block: a few sentences, the runs' key numbers, the warnings."""
    d, best = s["data"], s["best"]
    e = html.escape
    parts = ['<div class="summary" id="summary"><h2>Summary</h2>']
    if d:
        test = ", ".join(f"{f} {n}" for f, n in sorted(d["test_trs"].items()))
        held = (f"; held out entirely for test: {', '.join(d['heldout_films'])}" if d["heldout_films"] else "")
        parts.append(
            f"<p><b>Data</b>: {d['n_viewers']} viewers, {d['n_films']} films, {d['n_voxels']} voxels, TR "
            f"{d['tr']:g} s, space {e(d['space'])} ({' x '.join(f'{z:g}' for z in d['voxel_size_mm'])} mm); clips "
            f"of {d['frames_per_tr']} frames of {d['frame_size']} px per TR; test TRs per film: {e(test)}{e(held)}."
            "</p>")
    if best:
        share = best["frac_voxels_q05_circular"]
        text = (f"<b>Best encoding model</b>: <code>{e(best['run'])}</code> ({e(best['model'])}), mean voxel r "
                f"{_f(best['r_mean'])}, {_f(best['r_over_ceiling'], '{:.2f}')} of the noise ceiling (mean r / mean "
                f"ceiling); {_f(None if share is None else 100 * share, '{:.0f}')} % of its voxels have q_circular "
                "&lt; 0.05 (circular-shift null, Benjamini-Hochberg).")
        if s["best_versus"]:
            text += " Paired against the others on the same voxels and test TRs (mean difference of r, 95 % block-" \
                    "bootstrap interval, block-permutation p): " + "; ".join(
                        f"<code>{e(v['other'])}</code> {v['mean_diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
                        f", p = {v['p_value']:.3g}" for v in s["best_versus"]) + "."
        elif len(s["runs"]) > 1:
            text += " No paired test: the other runs do not share its voxels and test TRs."
        parts.append(f"<p>{text}</p>")
    rows = "".join(
        f"<tr><td><code>{e(r['run'])}</code></td><td>{e(r['model'])}</td><td>{_f(r['r_mean'])}</td>"
        f"<td>{_f(r['r_over_ceiling'], '{:.2f}')}</td>"
        f"<td>{_f(None if r['frac_voxels_q05_circular'] is None else 100 * r['frac_voxels_q05_circular'], '{:.0f}')}"
        f"</td><td>{_f(r['ssim_mean'])}</td></tr>" for r in s["runs"])
    parts.append("<table><tr><th>run</th><th>model</th><th>mean r</th><th>r / ceiling</th>"
                 "<th>% voxels q_circular &lt; 0.05</th><th>mean SSIM</th></tr>" + rows + "</table>")
    if s["warnings"]:
        parts.append('<div class="note"><b>Warnings</b><ul>' + "".join(f"<li>{e(w)}</li>" for w in s["warnings"])
                     + "</ul></div>")
    parts.append("</div>")
    return "\n".join(parts)
