"""``cinevox report RUN... --out DIR``: one HTML page (inline CSS, PNG figures beside it)."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cinevox.data.dataset import PreparedData
from cinevox.evaluation.compare import compare, load_eval, run_labels
from cinevox.report import figures
from cinevox.report.summary import summarise, summary_html
from cinevox.utils.io import read_json, versions, write_json, write_text_atomic

logger = logging.getLogger(__name__)

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee;margin:.4em 0}pre{background:#f7f7f7;padding:.6em;font-size:.75em;overflow-x:auto;
max-height:30em}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.key{background:#eef6ee;border-left:4px solid #3a3;padding:.5em 1em}
td,th{overflow-wrap:break-word}td:first-child{overflow-wrap:anywhere}
.summary{border:2px solid #3a3;padding:0 1em .5em;margin:1em 0}
.summary h2{margin-top:.5em}details{margin:.6em 0}summary{cursor:pointer;font-weight:600}"""


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    head = "".join(f"<th>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in df.columns)  # wraps at _
    body = []
    for _, row in df.iterrows():
        cells = []
        for v in row:
            if isinstance(v, (float, np.floating)):
                cells.append("/" if not np.isfinite(v) else floatfmt.format(v))
            else:
                cells.append(html.escape(str(v)))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _tables_fit(df: pd.DataFrame, keys: list[str], floatfmt: str = "{:.3f}", max_cols: int = 9) -> list[str]:
    """A wide table as several tables of at most ``max_cols`` columns, each repeating the ``keys`` columns, so
    that every one fits the page."""
    rest = [c for c in df.columns if c not in keys]
    step = max(1, max_cols - len(keys))
    return [_table(df[keys + rest[i:i + step]], floatfmt) for i in range(0, len(rest), step)] or [_table(df, floatfmt)]


def _method_text(facts: dict, run_dirs: list[Path]) -> str:
    """What the models are and what the test split is, from the runs' data (no dataset's facts fixed in)."""
    if not facts:
        return "Metrics on each run's test split."
    clip = f"clips of {facts['frames_per_tr']} frames per TR"
    text = (f"Temporal-CNN encoder ({clip} to voxels) and decoder (voxels to the clip's middle frame), after David, "
            "Chan et al.; the linear baseline is a banded ridge on motion-energy and colour features. ")
    held = facts.get("heldout_films") or []
    if facts.get("split_mode") == "stimuli":
        text += f"Metrics on the test split: whole stimuli held out for test ({', '.join(sorted(facts['test_trs']))})."
    else:
        try:
            from cinevox.training.train import run_prepared_dir

            frac = read_json(run_prepared_dir(run_dirs[0]) / "manifest.json")["config"].get("test_fraction", 0.2)
        except (FileNotFoundError, KeyError, ValueError):
            frac = 0.2
        trained = [f for f in facts["test_trs"] if f not in held]
        parts = ([f"the last {100 * frac:.0f} % of each training film ({len(trained)} films)"] if trained else []) + \
            ([f"the whole held-out film{'s' if len(held) > 1 else ''} ({', '.join(held)})"] if held else [])
        text += f"Metrics on the test split: {' and '.join(parts) or 'none'}."
    return text


def _img(rel: str, alt: str) -> str:
    return f'<img src="{html.escape(rel)}" alt="{html.escape(alt)}">'


def _fmt_p(p: float) -> str:
    return f"{p:.3g}"


def headline(m: dict, simulation: bool = True) -> str:
    """One plain sentence per part: effect, null, p, and where the encoder stands against the ceiling; with
    ``simulation``, also the checks only a simulation allows (:func:`simulation_checks`)."""
    parts = []
    e = m.get("encoder")
    if e:
        # led by the circular-shift null (it keeps fMRI autocorrelation); the shuffled null after it, as such
        circ = e.get("null_circular_r_mean")
        s = (f"Encoder: mean test r = {e['r_mean']:.3f} (median {e['r_median']:.3f}) against "
             + (f"{circ:.3f} " if circ is not None else "")
             + f"for circularly shifted time courses (p_circular = {_fmt_p(e['p_circular'])}, {e['n_perm']} "
             f"shifts; the shuffled null, anti-conservative under fMRI autocorrelation: {e['null_r_mean']:.3f}, "
             f"p_shuffle = {_fmt_p(e['p_shuffle'])}).")
        if "ceiling_mean" in e:
            s += (f" The noise ceiling (split-half, {e['n_subjects']} subjects) averages {e['ceiling_mean']:.3f}: the "
                  f"model reaches {100 * e['r_over_ceiling']:.0f} % of it.")
        if simulation:
            s += simulation_checks(m)
        parts.append(s)
    d = m.get("decoder")
    if d:
        parts.append(f"Decoder (fed {d['decoder_input']}): mean SSIM = {d['ssim_mean']:.3f} against "
                     f"{d['null_ssim_mean']:.3f} for shuffled frames (p_shuffle = {_fmt_p(d['p_shuffle'])}).")
    return " ".join(parts)


def simulation_checks(m: dict) -> str:
    """The sentences only a simulation allows (explainable and true ceilings, false-positive rates on true null
    voxels), and the advice on which p-values to use; "" without an encoder."""
    e = m.get("encoder")
    s = ""
    if e:
        if "r_over_explainable_ceiling" in e:
            s += (f" Against the stimulus-explainable ceiling of this simulation (what any function of the film can "
                  f"reach, mean {e['explainable_ceiling_mean']:.3f}): r / explainable ceiling = "
                  f"{e['r_over_explainable_ceiling']:.2f}"
                  + (f", {e['r_over_explainable_ceiling_informative']:.2f} on the planted informative voxels"
                     if "r_over_explainable_ceiling_informative" in e else "") + ".")
        if "true_ceiling_mean" in e:
            s += (f" On this simulation the true ceiling averages {e['true_ceiling_mean']:.3f} "
                  f"(r / true ceiling = {e['r_over_true_ceiling']:.2f}; estimated vs true ceiling across voxels: "
                  f"r = {e.get('ceiling_vs_true_r', float('nan')):.2f}).")
        cal = e.get("null_calibration")
        if cal:
            s += (f" Measured on this simulation's {cal['n_null_voxels']} true null voxels (no stimulus signal), the "
                  f"per-voxel tests at alpha 0.05 call {100 * cal.get('fpr_phase', float('nan')):.1f} % of them "
                  f"significant with the phase-randomised null, {100 * cal['fpr_circular']:.1f} % with the "
                  f"circular-shift null and {100 * cal['fpr_shuffle']:.1f} % with the shuffled null; the shuffled "
                  "null ignores fMRI autocorrelation and is anti-conservative: use the circular-shift or "
                  "phase-randomised p-values (p_circular / q_circular, p_phase / q_phase).")
        else:
            s += (" Per-voxel p-values: use the circular-shift or phase-randomised nulls' (p_circular / q_circular, "
                  "p_phase / q_phase); the shuffled null ignores fMRI autocorrelation and is anti-conservative "
                  "(measured on simulated true nulls, ridge and CNN encoders, 19-46-TR test segments: 0.05 false "
                  "positives at alpha 0.05 for the circular-shift and phase nulls, 0.13-0.17 for the shuffled one).")
    return s


def report(run_dirs: list[str | Path], out_dir: str | Path, title: str = "cinevox report") -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/figures/*.png``; returns the HTML path."""
    out = Path(out_dir)
    figdir = out / "figures"
    run_dirs = [Path(r) for r in run_dirs]
    for rd in run_dirs:  # every run readable before anything is written
        load_eval(rd)
    figdir.mkdir(parents=True, exist_ok=True)
    sections, histories = [], {}
    cmp = compare(run_dirs, out)
    summary = summarise([(rd, load_eval(rd)[0]) for rd in run_dirs], cmp)
    write_json(out / "summary.json", summary)
    facts = summary["data"]
    # runs are keyed by their folder; their display names are unique (two runs of one model in folders of one name)
    labels = dict(zip(map(str, run_dirs), run_labels(run_dirs, [load_eval(rd)[0] for rd in run_dirs])))
    for k, rd in enumerate(run_dirs):
        m, vox, fr = load_eval(rd)
        label = labels[str(rd)]
        tag = f"run{k}"
        s = [f"<h2>{html.escape(label)}</h2>", f"<p><code>{html.escape(str(rd))}</code></p>",
             f'<p class="key">{html.escape(headline(m, simulation=False))}</p>']
        checks = simulation_checks(m).strip()
        if checks:
            s.append(f"<details><summary>Simulation-only checks (known truth)</summary><p>{html.escape(checks)}</p>"
                     "</details>")
        if (rd / "history.csv").is_file():
            histories[str(rd)] = pd.read_csv(rd / "history.csv")
        if vox is not None:
            p = figures.fig_encoder(vox, m, figdir / f"{tag}_fig2_encoder.png")
            s += ["<h3>Encoding (Fig. 2)</h3>", _img(f"figures/{p.name}", "encoder r per film")]
            if "ceiling" in vox:
                p = figures.fig_ceiling(vox, figdir / f"{tag}_ceiling.png")
                n_sub = m.get("encoder", {}).get("n_subjects", facts.get("n_viewers", "the"))
                s += ["<h3>Noise ceiling</h3>", f"<p>The {n_sub} subjects are the repeats (a subject's own repeats "
                      "of a film, if any, are averaged first): split-half reliability of the subject average "
                      "(Spearman-Brown to all subjects), its square root is the ceiling on r. Explainable variance "
                      "gives a second estimate. " + _selection_rule(rd) + "</p>",
                      _img(f"figures/{p.name}", "ceiling")]
            r_img = rd / "eval" / "voxel_r.nii.gz"
            if r_img.is_file():
                try:
                    p = figures.fig_brain_map(nib.load(r_img), figdir / f"{tag}_voxel_r.png", "voxel r (test)",
                                              threshold=None, vmax=1.0)
                    s.append(_img(f"figures/{p.name}", "voxel r map"))
                    v = figures.brain_viewer(nib.load(r_img), figdir / f"{tag}_voxel_r_viewer.html",
                                             f"{label}: voxel r (test)")
                    s.append(f'<p><a href="figures/{v.name}">Interactive brain viewer of this r map</a> '
                             f'(nilearn view_img; the NIfTI is <code>{html.escape(str(r_img))}</code>).</p>')
                except Exception as err:  # plotting must not sink the report
                    logger.warning("brain map for %s failed: %s", rd, err)
        if fr is not None:
            p = figures.fig_decoder(fr, m, figdir / f"{tag}_fig3_decoder.png")
            s += ["<h3>Decoding (Fig. 3)</h3>", _img(f"figures/{p.name}", "decoder SSIM per film")]
            recon_path = rd / "eval" / "recon.npy"
            if recon_path.is_file():
                truth, films = _test_frames(rd, m)
                p = figures.fig_reconstructions(truth, np.load(recon_path).transpose(0, 2, 3, 1), films,
                                                figdir / f"{tag}_fig4_reconstructions.png")
                s += ["<h3>Reconstructions (Fig. 4)</h3>", _img(f"figures/{p.name}", "reconstructions")]
        s += _partition_section(rd, m)
        s += _saliency_section(rd, figdir, tag)
        s += _lesion_section(rd, figdir, tag)
        s += _concepts_section(rd, figdir, tag)
        s += _subjects_section(rd, figdir, tag, m)
        s += _provenance(rd, m)
        sections.append("\n".join(s))
    versus = _versus_section(run_dirs, figdir, labels)
    curves = ""
    if histories:
        p = figures.fig_curves({labels[r]: h for r, h in histories.items()}, figdir / "training_curves.png")
        curves = "<h2>Training curves</h2>" + _img(f"figures/{p.name}", "training curves")
    table1 = pd.read_csv(out / "table1.csv")
    tests = pd.read_csv(out / "tests.csv") if (out / "tests.csv").stat().st_size > 1 else pd.DataFrame()
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", summary_html(summary),
            f"<p>{html.escape(_method_text(facts, run_dirs))}</p>",
            "<h2>Table I: metrics per run</h2><p>Medians over voxels (r, E_mse) and test frames (SSIM, D_mse), as "
            "the paper's Table I; the ceiling columns are ratios of means.</p>", _table(table1)]
    paired = pd.read_csv(out / "paired.csv") if (out / "paired.csv").is_file() and \
        (out / "paired.csv").stat().st_size > 1 else pd.DataFrame()
    if len(paired):
        page += ["<h2>Paired comparison of voxel r</h2><p>Run 1 minus run 2 on the same voxels and test TRs: mean "
                 "and median difference of r, a 95 % interval from a block bootstrap of test time within films, "
                 "and a block-permutation p-value (blocks keep the fMRI autocorrelation; voxels are never resampled, "
                 "being paired and spatially dependent).</p>",
                 _table(paired[["run_1", "run_2", "mean_diff", "ci_low", "ci_high", "median_diff", "p_value",
                                "share_a_better", "share_b_better", "block_trs"]], "{:.4g}")]
    appendix = []
    if len(tests):
        appendix += ["<details><summary>The paper's test: Mann-Whitney U between runs</summary><p>For comparison "
                     "with the paper: Mann-Whitney U (two-sided, unpaired) on the per-voxel r / per-frame SSIM "
                     "distributions, with Cliff's delta. It treats two models' voxels as independent samples; the "
                     "paired comparison above is the valid one for voxel r.</p>",
                     _table(tests[["metric", "run_1", "run_2", "n1", "n2", "U", "p_value", "cliffs_delta"]],
                            "{:.4g}"), "</details>"]
    appendix.append(f"<details><summary>Software versions</summary><pre>{html.escape(json.dumps(versions(), indent=1))}"
                    "</pre></details>")
    page += versus + sections + [curves, "<h2>Appendices</h2>", *appendix, "</body></html>"]
    path = out / "index.html"
    write_text_atomic(path, "\n".join(page))
    logger.info("report written to %s (%d runs, %d comparisons)", path, len(run_dirs), len(cmp["tests"]))
    return path


def _versus_section(run_dirs: list[Path], figdir: Path, labels: dict[str, str]) -> list[str]:
    """CNN encoders against the linear baseline: per-voxel r scatter and the numbers side by side; ``labels``: the
    runs' unique display names by folder."""
    evals = []
    for rd in run_dirs:
        m, vox, _ = load_eval(rd)
        if vox is not None and "r" in vox:
            evals.append((labels[str(rd)], m, vox))
    ridges = [e for e in evals if e[1]["model"] == "ridge"]
    cnns = [e for e in evals if e[1]["model"] != "ridge"]
    if not ridges or not cnns:
        return []
    s = ["<h2>CNN against the linear baseline</h2>",
         "<p>The field's standard encoding model (motion-energy and colour features, FIR delays, banded ridge with "
         "per-voxel regularisation, <code>cinevox baseline</code>) on the same voxels and test TRs. Each dot is a "
         "voxel; above the diagonal the second model predicts it better.</p>"]
    rows = []
    for lab, m, _vox in evals:
        e = m["encoder"]
        rows.append({"run": lab, "mean r": e["r_mean"], "median r": e["r_median"],
                     "r informative": e.get("r_mean_informative", np.nan),
                     "r / noise ceiling": e.get("r_over_ceiling", np.nan),
                     "r / explainable ceiling": e.get("r_over_explainable_ceiling", np.nan),
                     "r / explainable (informative)": e.get("r_over_explainable_ceiling_informative", np.nan)})
    s.append(_table(pd.DataFrame(rows).dropna(axis=1, how="all")))
    for k, (rlab, _, rvox) in enumerate(ridges):
        for j, (clab, _, cvox) in enumerate(cnns):
            if len(cvox) != len(rvox):
                continue
            hi = cvox["informative"].to_numpy(bool) if "informative" in cvox else None
            p = figures.fig_r_scatter(rvox["r"].to_numpy(), cvox["r"].to_numpy(), rlab, clab,
                                      figdir / f"scatter_ridge{k}_cnn{j}.png", hi, "planted informative voxels")
            s.append(_img(f"figures/{p.name}", f"{clab} vs {rlab}"))
    return s


def _selection_rule(rd: Path) -> str:
    """One sentence: which TRs the voxel selection of the run's prepared data saw (``--select-on``)."""
    from cinevox.training.train import run_prepared_dir

    try:
        man = read_json(run_prepared_dir(rd) / "manifest.json")
    except (OSError, ValueError, KeyError):
        return ""
    rule = man.get("select_on") or man.get("config", {}).get("select_on") or "all"
    if rule == "trainval":
        return ("The voxels were selected by an SNR on the training and validation TRs only "
                "(<code>--select-on trainval</code>): the test period played no part in the selection.")
    return ("The voxels were selected by an SNR on every TR, test included (<code>--select-on all</code>, the "
            "paper's rule), which biases the ceiling on test TRs of the selected voxels upward.")


def _test_frames(rd: Path, m: dict) -> tuple[np.ndarray, np.ndarray]:
    from cinevox.training.train import run_holdout_film, run_prepared_dir

    data = PreparedData(run_prepared_dir(rd), holdout_film=run_holdout_film(rd))  # a --cv films fold: its film
    idx = data.indices("test")
    mid = (data.frames_per_tr - 1) // 2
    truth = np.stack([data.clip(i)[mid] for i in idx])
    return truth, data.samples.iloc[idx]["film"].to_numpy()


def _step_figure(src: Path, figdir: Path, tag: str, alt: str) -> list[str]:
    """A figure a step wrote in its own folder, copied beside the report: ``[<img>]``, or [] when it is missing."""
    if not src.is_file():
        return []
    (figdir / f"{tag}_{src.name}").write_bytes(src.read_bytes())
    return [_img(f"figures/{tag}_{src.name}", alt)]


def _partition_section(rd: Path, m: dict) -> list[str]:
    """A banded ridge's variance partition: each band's split R^2 and chosen alphas, per region, and the
    partition against the simulator's true channel shares."""
    part = (m.get("encoder") or {}).get("partition")
    if not part:
        return []
    bands = part["bands"]
    s = ["<h3>Variance partition among feature spaces</h3>",
         "<p>Each voxel's test prediction split among the bands of the banded ridge (himalaya's split R<sup>2</sup>: "
         "the bands' scores sum to the whole prediction's R<sup>2</sup>; maps <code>eval/split_&lt;band&gt;.nii.gz"
         "</code>). The alpha of a band is the voxel's regularisation divided by the band's kernel weight.</p>"]
    rows = []
    cv = rd / "ridge_cv.csv"
    cvt = pd.read_csv(cv) if cv.is_file() else None
    for b in bands:
        row = {"band": b, "split R2 mean": part["r2_mean"][b]}
        if cvt is not None and f"alpha_{b}" in cvt:
            row["median alpha"] = float(cvt[f"alpha_{b}"].median())
            row["mean kernel weight"] = float(cvt[f"weight_{b}"].mean())
        rows.append(row)
    s.append(_table(pd.DataFrame(rows), "{:.4g}"))
    reg = rd / "eval" / "split_regions.csv"
    if reg.is_file():
        s += ["<p>Mean split R<sup>2</sup> per region:</p>", _table(pd.read_csv(reg), "{:.4g}")]
    t = part.get("truth")
    if t:
        s.append(f"<p>Known truth (the simulator's channels as bands): the estimated shares of the "
                 f"{t['n_voxels']} informative voxels correlate with their true channel shares at r = "
                 f"{t['r_pooled']:.3f} (median per voxel {t['r_voxel_median']:.3f}); control, "
                 f"{html.escape(t['control'])}: mean {t['control_r_pooled_mean']:.3f}, 95th percentile "
                 f"{t['control_r_pooled_q95']:.3f} (p = {t['p_perm']:.3g}).</p>")
    return s


def _saliency_section(rd: Path, figdir: Path, tag: str) -> list[str]:
    sal = rd / "saliency"
    if not (sal / "regions.csv").is_file():
        return []
    s = ["<h3>Saliency (Fig. 5, Table II)</h3>"]
    summary = read_json(sal / "summary.json") if (sal / "summary.json").is_file() else {}
    if summary:
        s.append(f"<p>{html.escape(summary.get('text', ''))}</p>")
    for name in ("fig5_saliency.png", "fig5_salient_top.png"):
        s += _step_figure(sal / name, figdir, tag, name)
    grouped = sal / "regions_grouped.csv"
    if grouped.is_file():
        s += ["<p>Paper regions (A: voxels in mask, B: salient voxels):</p>", _table(pd.read_csv(grouped), "{:.1f}")]
    s += ["<details><summary>Full AAL3 resolution</summary>", _table(pd.read_csv(sal / "regions.csv"), "{:.1f}"),
          "</details>"]
    return s


def _subjects_section(rd: Path, figdir: Path, tag: str, m: dict, max_maps: int = 6) -> list[str]:
    """Per-viewer panel (``eval/subjects.csv``): r per viewer, ceiling, held-out viewers, map thumbnails."""
    path = rd / "eval" / "subjects.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    for col in [c for c in table if c.startswith("n_")]:  # counts stay integers beside the NaN of other viewers
        table[col] = table[col].astype("Int64").astype(str).replace("<NA>", "/")
    info = m.get("subjects") or {}
    target = info.get("target") or {}
    s = ["<h3>Per viewer</h3>",
         f"<p>Each viewer's test series scored against the prediction used for that viewer (target "
         f"<code>{html.escape(str(target.get('mode', 'mean')))}</code>; held out: "
         f"{html.escape(', '.join(target.get('heldout') or []) or 'none')}). Ceiling: "
         f"{html.escape(info.get('ceiling_method', ''))}.</p>"]
    try:
        p = figures.fig_subjects(table, figdir / f"{tag}_subjects.png")
        s.append(_img(f"figures/{p.name}", "per-viewer r" if "r_mean" in table else "per-viewer SSIM"))
        for subj in table["subject"].head(max_maps):
            img = rd / "eval" / f"voxel_r_sub-{subj}.nii.gz"
            if img.is_file():
                q = figures.fig_brain_map(nib.load(img), figdir / f"{tag}_voxel_r_sub-{subj}.png",
                                          f"sub-{subj}: voxel r", threshold=None, vmax=1.0)
                s.append(f'<img src="figures/{q.name}" alt="sub-{html.escape(str(subj))} r map" '
                         'style="width:32%">')
    except Exception as err:  # plotting must not sink the report
        logger.warning("per-viewer panel for %s failed: %s", rd, err)
    s.append(_table(table))
    return s


def _lesion_section(rd: Path, figdir: Path, tag: str) -> list[str]:
    les = rd / "lesion"
    if not (les / "lesion.csv").is_file():
        return []
    summ = json.loads((les / "summary.json").read_text()) if (les / "summary.json").is_file() else {}
    s = ["<h3>Virtual lesions</h3>", "<p>Each region's voxels are perturbed before decoding; the drop of three "
         "per-frame scores is compared with random voxel sets of the same size (z, percentile, p = (k + 1) / (n + 1)), "
         "with a 95 % interval from a block bootstrap of the test TRs: <b>ident</b>, identification of each true "
         "frame among the test frames (chance 0.5); <b>corr</b>, the frame's pixel correlation with its "
         "reconstruction; <b>ssim</b>, the paper's SSIM, which rewards a decoder pulled toward its mean image (so "
         "an SSIM 'drop' can be negative for a region the decoder does use).</p>"]
    if "auc_planted" in summ:
        s.append("<p>Simulated data: ROC AUC of each score's drops for the planted (informative) regions against the "
                 "others: " + ", ".join(f"{k} {v:.2f}" for k, v in summ["auc_planted"].items()) + ".</p>")
    s += _step_figure(les / "lesion.png", figdir, tag, "lesion")
    table = pd.read_csv(les / "lesion.csv")
    keys = [c for c in ("rank", "region", "n_voxels") if c in table.columns]
    s += ["<details><summary>Lesion table, every column (<code>lesion/lesion.csv</code>)</summary>",
          *_tables_fit(table, keys, "{:.4g}"), "</details>"]
    return s


def _concepts_section(rd: Path, figdir: Path, tag: str) -> list[str]:
    con = rd / "concepts"
    if not (con / "summary.json").is_file():
        return []
    summary = read_json(con / "summary.json")
    layer = summary["default_layer"]
    s = ["<h3>Concepts (TCAV)</h3>",
         f"<p>For each concept ({html.escape(', '.join(summary['concepts']))}), {summary['n_random']} linear concept "
         f"activation vectors at the encoder's <code>{html.escape(layer)}</code> layer, each against its own random "
         "set of training clips; the TCAV score is the fraction of test clips whose predicted activity rises along "
         "the concept direction. A concept's mean score is ranked among those of pseudo-concepts, random sets of "
         "training clips treated exactly like a concept "
         f"({html.escape(summary.get('test', {}).get('method', 'permutation test'))}); q: "
         "Benjamini-Hochberg over the whole family "
         f"({html.escape(summary.get('test', {}).get('fdr_family', {}).get('voxel', 'concepts x layers x voxels'))})."
         " Maps: <code>concepts/tcav_&lt;concept&gt;.nii.gz</code>.</p>"]
    s += _step_figure(con / "tcav_regions.png", figdir, tag, "TCAV per region")
    if summary.get("validation"):
        rows = [{"concept": c, **{f"AUC {lay}": v[lay]["auc"] for lay in summary["layers"]},
                 **{f"Spearman {lay}": v[lay]["spearman"] for lay in summary["layers"]}}
                for c, v in summary["validation"].items()]
        s += ["<p>Against the simulator's known tuning: ROC AUC of each concept's per-voxel TCAV score for the "
              "quarter of voxels most selective for the matching channel (0.5 = chance), and the rank correlation "
              "with that selectivity. These measure informativeness only: a map that merely finds the "
              "stimulus-driven voxels scores well on every concept.</p>", _table(pd.DataFrame(rows))]
    spec = summary.get("specificity") or {}
    s.append("<details><summary>TCAV specificity matrices and the decoder's concept regions</summary>")
    if spec.get("layers"):
        lay = spec["layers"].get(layer) or next(iter(spec["layers"].values()))
        band = lay.get("random_band", {})
        s += [f"<p>Concept specificity within the {spec['n_informative']} informative voxels: rows are the true "
              "concepts, columns each concept's TCAV effect map (its score minus the random-vs-random CAVs' score), "
              "entries ROC AUC. A method that recovers the tuning has a diagonal above its row (goal: "
              f"{html.escape(spec['goal'])}). The random-CAV column is the same map made of random CAVs only (half "
              "against the other half, mean over 200 splits)"
              + (": its 95 % band, " + html.escape(", ".join(f"{c} {b['lo']:.2f}-{b['hi']:.2f}"
                                                            for c, b in band.items()))
                 + ", is how far from 0.5 a map of no concept lands by chance" if band else "") + ".</p>",
              _table(pd.DataFrame(lay["matrix"]).T.reset_index(names="truth \\ map"))]
        oracle = spec.get("oracle", {}).get("margins")
        if oracle:
            s += ["<p>The truth's own overlap bounds these margins: maps equal to the true selectivities would lead "
                  "their rows by " + html.escape(", ".join(f"{c} {v['margin']:+.2f}" for c, v in oracle.items()))
                  + " (concepts whose voxels share a region family, such as faces and colour in the fusiform, "
                  "cannot be told apart by much more).</p>"]
        if lay.get("within_family"):
            s += ["<p>Within each region family (which removes what a map gains by telling the families apart; "
                  "random CAVs should sit at 0.5 here):</p>",
                  _table(pd.DataFrame(lay["within_family"]["matrix"]).T.reset_index(names="truth \\ map"))]
        why = {"measured voxels": "where it fails, the concept's per-clip measure does not single out the voxels "
                                  "tuned to it, whatever the model",
               "model predictions": "where it fails, the model did not learn the voxels' tuning to the concept, and "
                                    "no attribution of it can pass"}
        for name, ref in spec.get("reference", {}).items():
            s += [f"<p>The same test on the {html.escape(name)} (r of each voxel with the concept's per-clip "
                  f"measure): {why.get(name, '')}.</p>",
                  _table(pd.DataFrame(ref["matrix"]).T.reset_index(names="truth \\ map"))]
        s += ["<p>These clip-wide measures are a weak reference (a voxel's tuning is to its receptive field). The "
              "tuning probe of <code>benchmarks/bench_statistics.py --run</code> regresses each voxel's predictions "
              "on the simulator's own channel drives at its receptive field: where it fails, the model did not learn "
              "the tuning, and no attribution of it can pass.</p>"]
    if (con / "decoder_regions.csv").is_file():
        dec = pd.read_csv(con / "decoder_regions.csv")
        dec = dec[dec["region"] != "unlabelled"]
        wide = dec.pivot(index="concept", columns="region", values="B_over_A_pct")
        s += ["<p>Decoder: the share of each region's voxels among the top voxels of "
              "|d concept(reconstruction) / d voxel| (B / A, %), per frame-measurable concept:</p>",
              *_tables_fit(wide.reset_index(), ["concept"], "{:.0f}")]
    s.append("</details>")
    return s


def _provenance(rd: Path, m: dict) -> list[str]:
    s = ["<details><summary>How this run was made (config, data manifest, versions)</summary>"]
    for name, path in (("run", rd / "manifest.json"), ("evaluation", rd / "eval" / "manifest.json")):
        if path.is_file():
            s.append(f"<h4>{name}</h4><pre>{html.escape(path.read_text())}</pre>")
    try:
        from cinevox.training.train import run_prepared_dir

        man = read_json(run_prepared_dir(rd) / "manifest.json")
        man = {k: v for k, v in man.items() if k != "inputs"} | {"n_input_runs": len(man["inputs"].get("runs", []))}
        s.append(f"<h4>prepared data</h4><pre>{html.escape(json.dumps(man, indent=1))}</pre>")
    except (FileNotFoundError, KeyError) as err:
        s.append(f"<p class='note'>prepared data manifest unavailable: {html.escape(str(err))}</p>")
    s.append("</details>")
    return s
