import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import undescribed
from scipy import stats
from skimage.metrics import structural_similarity

from cinevox.cli import main
from cinevox.evaluation.compare import compare
from cinevox.evaluation.evaluate import _circular, _permuted, _phase, null_correlations
from cinevox.metrics import pearson_columns, ssim_frames, zscore_by_group
from cinevox.stats import (
    cliffs_delta,
    cliffs_delta_direct,
    explainable_variance_ceiling,
    fdr_bh,
    mann_whitney,
    ncsnr_ceiling,
    perm_p_values,
    split_half_ceiling,
)


def test_pearson_against_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    y[:, 0] += 2 * x[:, 0]
    ref = [stats.pearsonr(x[:, k], y[:, k])[0] for k in range(7)]
    np.testing.assert_allclose(pearson_columns(x, y), ref, rtol=1e-10)


def test_ssim_frames_against_skimage():
    rng = np.random.default_rng(1)
    a = rng.random((4, 3, 24, 32)).astype(np.float32)
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    ref = [structural_similarity(a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), channel_axis=2,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
           for i in range(4)]
    np.testing.assert_allclose(ssim_frames(a, b), ref, atol=1e-4)


def test_mann_whitney_and_cliffs_delta():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.3, 1, 300), rng.normal(0, 1, 200)
    x[:10] = y[:10]  # ties
    res = mann_whitney(x, y)
    ref = stats.mannwhitneyu(x, y, alternative="two-sided")
    assert res["U"] == pytest.approx(ref.statistic) and res["p_value"] == pytest.approx(ref.pvalue)
    assert cliffs_delta(x, y) == pytest.approx(cliffs_delta_direct(x, y), abs=1e-12)
    assert res["cliffs_delta"] == pytest.approx(2 * ref.statistic / (300 * 200) - 1)
    assert cliffs_delta(y + 100, y) == 1.0


def test_fdr_bh_against_reference_values():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # hand computation: sorted 0.005, 0.01, 0.03, 0.04 -> 0.02, 0.02, 0.04, 0.04
    np.testing.assert_allclose(fdr_bh(p), [0.02, 0.04, 0.04, 0.02])


def _ar1(rng, shape, phi=0.8):
    x = np.zeros(shape)
    x[0] = rng.standard_normal(shape[1:])
    for t in range(1, shape[0]):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal(shape[1:])
    return x


def test_nulls_calibrated_for_a_model_predicting_noise():
    """Independent autocorrelated series on short test segments (20-45 TRs per film, as in a small split): the
    circular-shift null over all lags is calibrated; the same null leaving out the lags within 10 % of 0 (a
    "minimum shift", restated here as the negative control) loses the null values nearest the observed alignment
    and over-rejects; shuffling time ignores the autocorrelation and over-rejects more."""
    rng = np.random.default_rng(3)
    lens, n_v = (20, 30, 45), 2000
    films = np.repeat(["A", "B", "C"], lens)
    true = np.concatenate([_ar1(rng, (m, n_v)) for m in lens])
    pred = np.concatenate([_ar1(rng, (m, n_v)) for m in lens])  # independent of true
    true, pred = zscore_by_group(true, films), zscore_by_group(pred, films)
    r = pearson_columns(pred, true)

    def min_shift(k):
        out = np.empty((k, *pred.shape))
        for f in np.unique(films):
            idx = np.flatnonzero(films == f)
            lo = int(np.ceil(0.1 * len(idx)))
            for i, s in enumerate(rng.integers(lo, len(idx) - lo + 1, k)):
                out[i, idx] = np.roll(pred[idx], s, axis=0)
        return out

    p_circ = perm_p_values(r, null_correlations(true, lambda k: _circular(pred, films, rng, k), 199, 1e7))
    p_min = perm_p_values(r, null_correlations(true, min_shift, 199, 1e7))
    p_phase = perm_p_values(r, null_correlations(true, lambda k: _phase(pred, films, rng, k), 199, 1e7))
    p_shuf = perm_p_values(r, null_correlations(true, lambda k: _permuted(pred, rng, k), 199, 1e7))
    fpr = {k: (p < 0.05).mean() for k, p in [("circ", p_circ), ("min", p_min), ("phase", p_phase), ("shuf", p_shuf)]}
    print("false positives at 0.05:", fpr)
    assert 0.03 < fpr["circ"] < 0.07 and 0.03 < fpr["phase"] < 0.07
    assert stats.kstest(p_circ, "uniform").pvalue > 0.001
    assert fpr["min"] > 0.075  # the minimum shift is anti-conservative
    assert fpr["shuf"] > 2 * fpr["circ"]


def test_noise_ceilings_recover_known_reliability():
    rng = np.random.default_rng(4)
    n_s, n_t, sigma = 8, 3000, np.array([0.5, 1.0, 2.0, 4.0])
    s = rng.standard_normal((n_t, 4))
    data = s[None] + sigma[None, None] * rng.standard_normal((n_s, n_t, 4))
    truth = 1 / np.sqrt(1 + sigma**2 / n_s)  # corr(s, mean over subjects)
    np.testing.assert_allclose(split_half_ceiling(data, 30)["ceiling"], truth, atol=0.03)
    np.testing.assert_allclose(explainable_variance_ceiling(data)["ceiling"], truth, atol=0.03)
    np.testing.assert_allclose(ncsnr_ceiling(data)["ceiling"], truth, atol=0.03)
    data[0, :1000] = np.nan  # a subject missing a film
    assert np.isfinite(split_half_ceiling(data, 10)["ceiling"]).all()


def test_ceilings_in_the_convention_of_r():
    """Two films whose levels differ the same way in every subject: per-film z-scored series (the convention of r,
    which such a difference cannot help) give the within-film ceiling; the raw concatenated series count the
    between-film step as reliable signal and overshoot it."""
    rng = np.random.default_rng(5)
    n_s, n_t, sigma = 6, 3000, np.array([1.0, 2.0, 3.0])
    films = np.repeat([0, 1], n_t // 2)
    s = rng.standard_normal((n_t, 3))
    data = s[None] + 4.0 * films[None, :, None] + sigma * rng.standard_normal((n_s, n_t, 3))
    truth = 1 / np.sqrt(1 + sigma**2 / n_s)
    for fn in (lambda d, g: split_half_ceiling(d, 20, groups=g), lambda d, g: explainable_variance_ceiling(d, g),
               lambda d, g: ncsnr_ceiling(d, g)):
        np.testing.assert_allclose(fn(data, films)["ceiling"], truth, atol=0.05)
        assert (fn(data, None)["ceiling"] > truth + 0.03).all()


def test_evaluate_outputs(tiny_runs, tiny_prepared, tiny_sim):
    run = tiny_runs["encdec"]
    m = json.loads((run / "eval" / "metrics.json").read_text())
    for k in ("r_mean", "r_median", "mse_mean", "null_r_mean", "p_shuffle", "p_circular", "p_phase", "ceiling_mean",
              "r_over_ceiling", "true_ceiling_mean", "r_over_true_ceiling"):
        assert k in m["encoder"], k
    for k in ("ssim_mean", "ssim_median", "mse_mean", "null_ssim_mean", "p_shuffle"):
        assert k in m["decoder"], k
    # one p-value vocabulary (issue 27): no p_value key left in metrics.json; voxels.csv has the same names
    assert not any(k.startswith("p_value") for part in ("encoder", "decoder") for k in m[part]), m
    vox_cols = set(pd.read_csv(run / "eval" / "voxels.csv", nrows=1).columns)
    assert {"p_shuffle", "q_shuffle", "p_circular", "q_circular", "p_phase", "q_phase"} <= vox_cols
    enc_only = json.loads((tiny_runs["encoder"] / "eval" / "metrics.json").read_text())
    assert "decoder" not in enc_only
    vox = pd.read_csv(run / "eval" / "voxels.csv")
    assert len(vox) == m["encoder"]["n_voxels"] == np.load(tiny_prepared / "voxels.npy").shape[1]
    # the reported numbers are the ones in the tables
    assert m["encoder"]["r_median"] == pytest.approx(vox["r"].median(), abs=1e-5)
    frames = pd.read_csv(run / "eval" / "frames.csv")
    assert m["decoder"]["ssim_mean"] == pytest.approx(frames["ssim"].mean(), abs=1e-5)
    # NIfTI maps in the data's MNI space, values at the voxels
    mask = nib.load(tiny_prepared / "mask.nii.gz")
    r_img = nib.load(run / "eval" / "voxel_r.nii.gz")
    np.testing.assert_allclose(r_img.affine, mask.affine)
    assert r_img.header["sform_code"] == 4
    ijk = np.load(tiny_prepared / "voxels_ijk.npy")
    np.testing.assert_allclose(r_img.get_fdata()[tuple(ijk.T)], vox["r"].fillna(0), atol=1e-6)
    assert nib.load(run / "eval" / "noise_ceiling.nii.gz").get_fdata()[tuple(ijk.T)].max() > 0.3
    # the estimated ceiling (r's convention) tracks the simulator's true ceiling voxel by voxel
    assert m["encoder"]["ceiling_vs_true_r"] > 0.3, m["encoder"]["ceiling_vs_true_r"]  # 3 subjects, 58 TRs: 0.45


def test_encoder_learns_on_tiny_data(tiny_runs):
    m = json.loads((tiny_runs["encoder"] / "eval" / "metrics.json").read_text())["encoder"]
    assert m["r_mean"] > m["null_r_mean"] + 0.05 and m["p_shuffle"] <= 0.02


def test_compare_against_scipy(tiny_runs, tmp_path):
    res = compare([tiny_runs["encdec"], tiny_runs["encoder"]], tmp_path)
    t = [x for x in res["tests"] if x["metric"] == "voxel r"][0]
    a = pd.read_csv(tiny_runs["encdec"] / "eval" / "voxels.csv")["r"]
    b = pd.read_csv(tiny_runs["encoder"] / "eval" / "voxels.csv")["r"]
    ref = stats.mannwhitneyu(a, b, alternative="two-sided")
    assert t["U"] == pytest.approx(ref.statistic) and t["p_value"] == pytest.approx(ref.pvalue)
    assert t["cliffs_delta"] == pytest.approx(cliffs_delta_direct(a.to_numpy(), b.to_numpy()))
    table = pd.read_csv(tmp_path / "table1.csv")
    assert table["E_corr (median r)"].iloc[0] == pytest.approx(a.median(), abs=1e-4)
    assert "Cliff's delta" in (tmp_path / "table1.md").read_text()
    # the paired comparison: the mean of per-voxel r differences on the same voxels (the evaluate convention)
    p = res["paired"][0]
    np.testing.assert_allclose(p["mean_diff"], float(np.mean(a - b)), atol=2e-5)
    assert p["ci_low"] <= p["mean_diff"] <= p["ci_high"] and 0 < p["p_value"] <= 1
    assert p["share_a_better"] == pytest.approx(float(np.mean(a > b)), abs=1e-6)
    assert "Paired comparison of voxel r" in (tmp_path / "table1.md").read_text()


def test_report_references_every_figure(tiny_runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(tiny_runs["encdec"]), str(tiny_runs["encoder"]), "--out", str(out), "-q"]) == 0
    html = (out / "index.html").read_text()
    refs = set(re.findall(r'src="(figures/[^"]+)"', html))
    pngs = {f"figures/{p.name}" for p in (out / "figures").glob("*.png")}
    assert pngs and refs == pngs
    for name in ("fig2_encoder", "fig3_decoder", "fig4_reconstructions", "ceiling", "training_curves", "_subjects",
                 "voxel_r_sub-S01"):
        assert any(name in r for r in refs), name
    assert "Table I" in html and "noise ceiling" in html.lower()
    _check_summary(html, json.loads((out / "summary.json").read_text()), [tiny_runs["encdec"], tiny_runs["encoder"]])
    assert not undescribed(out, "OUT", "report")


def _check_summary(html: str, summary: dict, runs) -> None:
    """The report's summary (issue 27): first on the page, its numbers the runs' own metrics, text from the data."""
    ms = {str(r): json.loads((r / "eval" / "metrics.json").read_text()) for r in runs}
    best = max(ms, key=lambda r: ms[r]["encoder"]["r_mean"])
    assert summary["best"]["run"] == best
    e = ms[best]["encoder"]
    assert summary["best"]["r_mean"] == e["r_mean"] and summary["best"]["r_over_ceiling"] == e["r_over_ceiling"]
    vox = pd.read_csv(Path(best) / "eval" / "voxels.csv")
    assert summary["best"]["frac_voxels_q05_circular"] == pytest.approx((vox["q_circular"] < 0.05).mean())
    for row in summary["runs"]:
        assert row["r_mean"] == ms[row["run"]]["encoder"]["r_mean"]
    d = summary["data"]
    assert d["n_voxels"] == e["n_voxels"] and d["n_viewers"] == e["n_subjects"]
    # the paired test of the best against the other, sign from the best's side
    (v,) = summary["best_versus"]
    other = next(r for r in ms if r != best)
    diff = (vox["r"] - pd.read_csv(Path(other) / "eval" / "voxels.csv")["r"]).mean()
    assert v["other"] == other and v["mean_diff"] == pytest.approx(diff, abs=1e-4) and v["ci_low"] <= v["ci_high"]
    # first on the page, with those numbers; warnings for what the tiny runs are
    block = html[html.index('id="summary"'):html.index("</div>", html.index('id="summary"'))]
    assert html.index('id="summary"') < html.index("Table I")
    assert f"{e['r_mean']:.3f}" in block and f"{e['r_over_ceiling']:.2f}" in block
    assert f"{d['n_voxels']} voxels" in block and f"TR {d['tr']:g} s" in block
    assert f"{100 * summary['best']['frac_voxels_q05_circular']:.0f} %" in block
    text = " ".join(summary["warnings"])
    assert "simulated data" in text and "short test segments" in text
    random_vgg = [r for r in runs if str(json.loads((r / "manifest.json").read_text()).get("vgg_weights")).startswith(
        "random")]
    assert ("random (untrained) VGG16" in text) == bool(random_vgg)
    # text from the runs, not fixed to the demo or Emo-FilM
    assert "32-frame" not in html and "Emo-FilM subject" not in html
    assert f"clips of {d['frames_per_tr']} frames" in html and d["frames_per_tr"] != 32
    # long tables collapsed: the Mann-Whitney test is in an appendix
    assert html.index("Mann-Whitney U between runs") > html.index("Appendices")


def test_cli_evaluate_and_compare(tiny_runs, tmp_path, capsys):
    assert main(["evaluate", str(tiny_runs["encoder"]), "--n-perm", "49", "-q"]) == 0
    assert "Encoder: mean test r" in capsys.readouterr().out
    assert main(["compare", str(tiny_runs["encdec"]), str(tiny_runs["encoder"]), "--out", str(tmp_path)]) == 0
    assert "| run |" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_error_rates_measured_on_true_null_voxels(tmp_path):
    """A simulation where half the visual voxels carry no stimulus signal (still reliable, autocorrelated
    non-visual signal): evaluate measures each null's false-positive rate on them. The shuffled-time-course null
    ignores autocorrelation and calls more of them significant than the circular-shift and phase nulls, which stay
    near alpha; the informative voxels are found far more often (power)."""
    from helpers import FAST_RIDGE, sim_config

    from cinevox.data.prepare import prepare
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate
    from cinevox.training.ridge import RidgeConfig, baseline

    sim = simulate(tmp_path / "bids", preset("tiny", null_fraction=0.5, voxel_size=6.0,
                                             films={"FilmA": 120.0, "FilmB": 120.0, "YouAgain": 60.0}), progress=False)
    nulls = nib.load(sim / "derivatives" / "simulation" / "null_voxels.nii.gz").get_fdata() > 0
    vis = nib.load(sim / "derivatives" / "simulation" / "visual_mask.nii.gz").get_fdata() > 0
    assert 0.4 < nulls[vis].mean() < 0.6 and not (nulls & ~vis).any()
    stim = np.load(sim / "derivatives" / "simulation" / "stimulus_signal" / "FilmA.npy")
    assert np.all(stim[:, nulls[vis]] == 0)  # no stimulus-driven response at all
    prep = prepare(sim, tmp_path / "prepared", sim_config(sim, snr_top=1.0), progress=False)
    run = baseline(prep, tmp_path / "ridge", RidgeConfig(**FAST_RIDGE), progress=False)
    m = evaluate(run, EvalConfig(n_perm=199, n_perm_frames=5))["encoder"]["null_calibration"]
    print("null calibration:", m)
    assert m["n_null_voxels"] >= 100
    # 0.072 and 0.075 here; 0.05 on average over 10 seeds (benchmarks/bench_statistics.py)
    assert 0.02 <= m["fpr_circular"] <= 0.085 and 0.02 <= m["fpr_phase"] <= 0.085
    assert m["fpr_shuffle"] >= 2 * m["fpr_circular"]
    assert m["power_circular_informative"] > 3 * max(m["fpr_circular"], 0.02)
    assert m["power_phase_informative"] > 5 * m["fpr_phase"]


def test_old_metrics_keys_stay_readable(tiny_runs, tmp_path):
    """A metrics.json written before issue 27 (p_value, p_value_circular, model "E-D") is read with the new keys by
    cinevox's own readers (compare, report, load_bundle)."""
    import shutil

    from cinevox.evaluation.compare import load_eval

    old = tmp_path / "old_run"
    shutil.copytree(tiny_runs["encdec"] / "eval", old / "eval")
    m = json.loads((old / "eval" / "metrics.json").read_text())
    new = dict(m["encoder"])
    for part, renames in (("encoder", {"p_shuffle": "p_value", "p_circular": "p_value_circular"}),
                          ("decoder", {"p_shuffle": "p_value"})):
        for k_new, k_old in renames.items():
            m[part][k_old] = m[part].pop(k_new)
    m["encoder"].pop("p_phase")
    m["model"] = "E-D"
    (old / "eval" / "metrics.json").write_text(json.dumps(m))
    read, _, _ = load_eval(old)
    assert read["model"] == "encdec"
    assert read["encoder"]["p_shuffle"] == new["p_shuffle"] and read["encoder"]["p_circular"] == new["p_circular"]
    assert read["decoder"]["p_shuffle"] == m["decoder"]["p_value"]


def test_compare_keys_runs_by_path(tiny_runs, tmp_path):
    """Two runs of one model in folders of the same name (two seeds: seed1/encdec, seed2/encdec) stay two rows."""
    import shutil

    runs = []
    for seed in ("seed1", "seed2"):
        rd = tmp_path / seed / "encdec"
        shutil.copytree(tiny_runs["encdec"] / "eval", rd / "eval")
        shutil.copy(tiny_runs["encdec"] / "manifest.json", rd / "manifest.json")
        runs.append(rd)
    res = compare(runs, tmp_path / "cmp", n_boot=20, n_perm=20)
    assert [row["run"] for row in res["table"]] == [str(r) for r in runs]
    assert [(t["run_1"], t["run_2"]) for t in res["paired"]] == [(str(runs[0]), str(runs[1]))]
    assert res["paired"][0]["mean_diff"] == pytest.approx(0, abs=1e-6)  # the same predictions
    table = pd.read_csv(tmp_path / "cmp" / "table1.csv")
    assert table["run"].is_unique and set(table["model"]) == {"encdec"}
    # "median" only on medians: the ratio of means is named as such
    assert not [c for c in table.columns if "median" in c and "ceiling" in c]


def test_report_keeps_two_runs_of_one_model_apart(tiny_runs, tiny_ridge, tmp_path, monkeypatch):
    """Two runs of one model in folders of one name (a/encoder, b/encoder): the report keys runs by folder, so both
    training curves, both rows of the CNN-vs-ridge table and both headings are there, under unique names."""
    import shutil

    from cinevox.report import figures

    runs = []
    for sub in ("a", "b"):
        dst = tmp_path / sub / "encoder"
        shutil.copytree(tiny_runs["encoder"], dst, ignore=shutil.ignore_patterns("saliency", "lesion", "concepts"))
        runs.append(dst)
    h = pd.read_csv(runs[1] / "history.csv")
    h["train_loss"] += 1.0  # b's curve differs from a's
    h.to_csv(runs[1] / "history.csv", index=False)
    m = json.loads((runs[0] / "eval" / "metrics.json").read_text())
    labels = [f"encoder ({m['encoder']['n_voxels']} voxels) {sub}/encoder" for sub in ("a", "b")]
    drawn = {}
    real = figures.fig_curves

    def spy(histories, path):
        drawn.update(histories)
        return real(histories, path)

    monkeypatch.setattr(figures, "fig_curves", spy)
    out = tmp_path / "report"
    assert main(["report", str(runs[0]), str(runs[1]), str(tiny_ridge), "--out", str(out), "-q"]) == 0
    page = (out / "index.html").read_text()
    assert set(drawn) == set(labels[:2])  # both curves, not one overwritten by the other
    assert drawn[labels[1]]["train_loss"].iloc[0] == pytest.approx(drawn[labels[0]]["train_loss"].iloc[0] + 1.0)
    for lab in labels[:2]:
        assert page.count(f"<h2>{lab}</h2>") == 1  # its own heading
        assert f"<td>{lab}</td>" in page  # its own row in the CNN-vs-ridge table
    # the names: the shortest path suffix that tells runs apart, only where the usual name would clash
    from cinevox.evaluation.compare import run_labels

    assert run_labels(runs + [tiny_ridge], [m, m, {"model": "ridge", "encoder": {"n_voxels": 5}}]) == [
        *labels, "ridge (5 voxels)"]
    assert run_labels([runs[0], runs[0]], [m, m])[1].endswith("#2")


def test_headline_leads_with_the_circular_shift_null(tiny_runs):
    """The run's headline leads with the circular-shift null and its p (the shuffled null is anti-conservative under
    fMRI autocorrelation), the shuffled one after it."""
    from cinevox.report.html import headline

    m = json.loads((tiny_runs["encoder"] / "eval" / "metrics.json").read_text())
    e = m["encoder"]
    text = headline(m, simulation=False)
    assert text.index("p_circular") < text.index("p_shuffle")
    assert text.index(f"against {e['null_circular_r_mean']:.3f} for circularly shifted") < text.index("p_circular")
    assert f"p_circular = {e['p_circular']:.3g}" in text and f"p_shuffle = {e['p_shuffle']:.3g}" in text
