"""The linear baseline (pymoten motion energy + colour, FIR delays, himalaya banded ridge) and its run folder."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import FAST_RIDGE as FAST
from helpers import republish, sim_config

from cinevox.cli import main
from cinevox.data.dataset import PreparedData
from cinevox.data.features import FeatureConfig, TorchMotionEnergy, film_features, motion_energy, motion_pyramid
from cinevox.data.prepare import prepare
from cinevox.evaluation.compare import compare
from cinevox.report.html import report
from cinevox.training.ridge import RidgeConfig, baseline, delay_features, predict_ridge, sample_blocks


@pytest.fixture(scope="module")
def prepared8(tmp_path_factory):
    """A tiny simulation with longer films, 8 frames per TR (6 fps: pymoten keeps its 0 and 2 Hz filters)."""
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    root = tmp_path_factory.mktemp("p8")
    sim = simulate(root / "bids", preset("tiny", films={"FilmA": 200.0, "FilmB": 200.0, "YouAgain": 40.0}),
                   progress=False)
    return prepare(sim, root / "prepared", sim_config(sim, frames_per_tr=8, snr_top=0.3), progress=False)


def _moten_reference(frames: np.ndarray, fpt: int, fps: int) -> np.ndarray:
    """Motion energy per TR of a whole film, straight from pymoten (luminance, default pyramid), mean per TR."""
    import moten

    lum = moten.io.imagearray2luminance(np.asarray(frames))
    pyr = moten.pyramids.MotionEnergyPyramid(stimulus_vhsize=lum.shape[1:], stimulus_fps=fps,
                                             temporal_frequencies=[0, 2])
    me = pyr.project_stimulus(lum.astype(np.float32))
    return me.reshape(len(me) // fpt, fpt, -1).mean(1)


def test_chunked_motion_energy_equals_the_whole_film(prepared8):
    data = PreparedData(prepared8)
    film = "FilmA"
    frames = data.frames(film)
    ref = _moten_reference(frames, 8, 6)
    pyr = motion_pyramid(32, 8 / 1.3, FeatureConfig())  # 6.15 fps -> 6; 4 Hz >= Nyquist dropped
    assert pyr.nfilters == ref.shape[1]
    got = motion_energy(frames, 8, pyr, 32, chunk_trs=7)  # chunks of 7 TRs with margins
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    fast = motion_energy(frames, 8, pyr, 32, chunk_trs=7, engine=TorchMotionEnergy(pyr, "cpu"))
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-3)  # the torch filter bank: pymoten's numbers (float32)


def test_torch_motion_energy_equals_pymoten_frame_by_frame():
    """pymoten's filter bank on torch, against pymoten itself on a drifting grating and noise (every filter,
    every frame: quadrature pairs, delays at both film edges, log compression), and not equal on the frames
    reversed in time (direction-selective filters see the opposite motion)."""
    rng = np.random.default_rng(3)
    n, size = 60, 20
    yy, xx = np.mgrid[0:size, 0:size]
    grey = np.stack([50 + 40 * np.sin(2 * np.pi * (xx - 0.8 * t) / 7.0) for t in range(n)])
    grey = (grey + rng.normal(0, 5, grey.shape)).astype(np.float32)
    pyr = motion_pyramid(size, 12, FeatureConfig())
    ref = pyr.project_stimulus(grey, dtype="float32")
    got = TorchMotionEnergy(pyr, "cpu").project(grey)
    assert got.shape == ref.shape == (n, pyr.nfilters)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)  # float32 sums; log values up to ~10
    backwards = TorchMotionEnergy(pyr, "cpu").project(grey[::-1].copy())[::-1]
    assert np.abs(backwards - ref).max() > 0.5


def test_delays_cross_splits_but_never_films_or_gaps_in_time():
    samples = pd.DataFrame({"film": ["A"] * 6 + ["B"] * 5,
                            "tr": [0, 1, 2, 3, 4, 5, 0, 1, 2, 5, 6],  # film B jumps from TR 2 to 5
                            "split": ["train", "train", "train", "gap", "test", "test", "train", "train", "val",
                                      "val", "test"]})
    blocks = sample_blocks(samples)
    assert list(blocks) == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    x = np.zeros((11, 1), np.float32)
    x[5, 0] = 1.0  # a spike on the last TR of film A
    x[2, 0] = 2.0  # and on the last train TR before the gap
    x[8, 0] = 3.0  # and just before film B's jump in time
    d = delay_features(x, blocks, (-1, 0, 1, 2))  # columns: x[t+1], x[t], x[t-1], x[t-2]
    assert d[6:, :].max() <= 3.0 and d[6:][d[6:] == 1.0].size == 0  # nothing of film A reaches film B
    assert d[3, 2] == 2.0 and d[4, 3] == 2.0  # the stimulus crosses train -> gap -> test (features only)
    assert d[9:, 2:].sum() == 0  # nor across the jump in time
    # an interleaved split imputes no more lags in fit rows than in test rows
    n = 200
    inter = pd.DataFrame({"film": ["A"] * n, "tr": np.arange(n),
                          "split": np.where(np.arange(n) >= 160, "test", np.where(np.arange(n) % 5 == 0, "val",
                                                                                  "train"))})
    dd = delay_features(np.ones((n, 1), np.float32), sample_blocks(inter), (-1, 0, 1, 2))
    fit, test = inter["split"].isin(["train", "val"]).to_numpy(), (inter["split"] == "test").to_numpy()
    imputed_fit, imputed_test = (dd[fit] == 0).mean(), (dd[test] == 0).mean()
    assert imputed_fit <= 0.02 and imputed_test <= 0.05


def test_planted_motion_energy_voxels_are_recovered(prepared8, tmp_path):
    """Voxels that are a linear function of pymoten features (made here with pymoten) plus noise: the baseline
    reaches their ceiling; pure-noise voxels stay near r = 0 on test."""
    root = tmp_path / "planted"
    shutil.copytree(prepared8, root)
    data = PreparedData(root)
    samples = data.samples
    feats = {f: _moten_reference(data.frames(f), 8, 6) for f in sorted(set(samples.film))}
    x = np.stack([feats[r.film][r.tr] for r in samples.itertuples()])  # (n, F), no delay
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    rng = np.random.default_rng(3)
    n_planted, snr = 6, 4.0  # signal variance / noise variance
    w = np.zeros((x.shape[1], n_planted))  # each planted voxel reads 3 motion-energy channels
    for v in range(n_planted):
        w[rng.choice(x.shape[1], 3, replace=False), v] = rng.uniform(0.5, 1.5, 3)
    signal = x @ w
    signal = (signal - signal.mean(0)) / signal.std(0)
    y = rng.standard_normal((len(samples), data.n_voxels)).astype(np.float32)
    y[:, :n_planted] = signal * np.sqrt(snr) + rng.standard_normal((len(samples), n_planted))
    np.save(root / "voxels.npy", y.astype(np.float32))
    republish(root, "voxels.npy")
    run = baseline(root, tmp_path / "ridge", RidgeConfig(features=FeatureConfig(spaces=("motion",)), delays=(0,),
                                                          **FAST), progress=False)
    test = data.indices("test")
    pred = predict_ridge(run, PreparedData(root), test)
    r = np.array([np.corrcoef(pred[:, v], y[test, v])[0, 1] for v in range(data.n_voxels)])
    ceiling = np.sqrt(snr / (snr + 1))  # corr(noisy planted voxel, its noise-free signal)
    assert r[:n_planted].mean() > ceiling - 0.15 and r[:n_planted].min() > ceiling - 0.25, (r[:n_planted], ceiling)
    # as good as an independent ridge (scikit-learn, same features, alphas and film-grouped folds)
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold

    fit = samples["split"].isin(["train", "val"]).to_numpy()
    xf = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-8)
    folds = list(GroupKFold(n_splits=2).split(xf[fit], groups=samples["film"][fit]))
    ref = RidgeCV(alphas=FAST["alphas"], cv=folds).fit(xf[fit], y[fit, :n_planted]).predict(xf[test])
    r_ref = np.array([np.corrcoef(ref[:, v], y[test, v])[0, 1] for v in range(n_planted)])
    assert r[:n_planted].mean() > r_ref.mean() - 0.02, (r[:n_planted], r_ref)
    assert abs(np.nanmean(r[n_planted:])) < 0.1 and np.nanmean(np.abs(r[n_planted:])) < 0.25


def test_feature_cache_is_keyed_on_options(prepared8, caplog):
    data = PreparedData(prepared8)
    with caplog.at_level(logging.INFO, logger="cinevox"):
        a = film_features(data, FeatureConfig(spaces=("colour",), colour_grid=2), progress=False)
        caplog.clear()
        b = film_features(data, FeatureConfig(spaces=("colour",), colour_grid=2), progress=False)
        assert "cached" in caplog.text
        caplog.clear()
        c = film_features(data, FeatureConfig(spaces=("colour",), colour_grid=3), progress=False)
        assert "cached" not in caplog.text  # other options: recomputed, never reused
    np.testing.assert_array_equal(a["colour"]["FilmA"], b["colour"]["FilmA"])
    assert a["colour"]["FilmA"].shape[1] == 16 and c["colour"]["FilmA"].shape[1] == 36
    # the colour band restated: red mean of the top-left quarter, averaged over the TR's frames
    fr = data.frames("FilmA")[:8].astype(np.float64) / 255
    assert a["colour"]["FilmA"][0, 0] == pytest.approx(fr[:, :16, :16, 0].mean(), rel=1e-5)


def test_evaluate_compare_report_accept_ridge_runs(tiny_ridge, tiny_runs, tmp_path):
    m = json.loads((tiny_ridge / "eval" / "metrics.json").read_text())
    assert m["model"] == "ridge" and "decoder" not in m and m["encoder"]["n_voxels"] > 0
    assert json.loads((tiny_ridge / "manifest.json").read_text())["model"] == "ridge"
    vox = pd.read_csv(tiny_ridge / "eval" / "voxels.csv")
    np.testing.assert_allclose(vox["mse"], 2 * (1 - vox["r"]), atol=1e-5)
    # explainable ceiling = ceiling x corr(stimulus-driven part, shared signal): the informative voxels' shared signal
    # is all stimulus-driven (ratio 1), the others' is 0.3 stimulus-driven by construction of the simulator
    ratio = vox["explainable_ceiling"] / vox["true_ceiling"]
    inf = vox["informative"].astype(bool)
    assert inf.any() and (~inf).any()
    assert ratio[inf].median() > 0.97
    assert 0.15 < ratio[~inf].median() < 0.45
    assert "r_over_explainable_ceiling" in m["encoder"]
    res = compare([tiny_runs["encdec"], tiny_runs["encoder"], tiny_ridge], tmp_path / "cmp")
    assert any(row["model"] == "ridge" and row["run"] == str(tiny_ridge) for row in res["table"])
    assert any(t["run_2"] == str(tiny_ridge) and t["metric"] == "voxel r" for t in res["tests"])
    page = report([tiny_runs["encdec"], tiny_runs["encoder"], tiny_ridge], tmp_path / "rep").read_text()
    assert "CNN against the linear baseline" in page and "scatter_ridge0_cnn0.png" in page
    assert (tmp_path / "rep" / "figures" / "scatter_ridge0_cnn1.png").is_file()
    viewers = list((tmp_path / "rep" / "figures").glob("*_voxel_r_viewer.html"))
    assert len(viewers) == 3 and "brainsprite" in viewers[0].read_text().lower()
    assert main(["saliency", str(tiny_ridge)]) == 2  # no decoder: one clear error


def test_baseline_bad_inputs(tiny_prepared, tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="cinevox"):  # a block shorter than the largest delay
        baseline(tiny_prepared, tmp_path / "r3", RidgeConfig(features=FeatureConfig(spaces=("colour",)),
                                                              delays=(0, 40), **FAST), progress=False)
    assert "not longer than the largest delay" in caplog.text
    root = tmp_path / "noframes"
    shutil.copytree(tiny_prepared, root, ignore=shutil.ignore_patterns("frames", "cache"))
    assert main(["baseline", str(root), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "frames/FilmA.npy is missing" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["baseline", str(tiny_prepared), "--out", str(tmp_path / "r2"), "--features", "sound"]) == 2
    assert "feature spaces" in capsys.readouterr().err


def test_interrupted_baseline_resumes_to_identical_weights(tiny_ridge, tiny_prepared, tmp_path, monkeypatch):
    """Killed after its features were cached (here: the fit raises), a rerun gives the very same model."""
    import himalaya.kernel_ridge as kr

    def killed(self, *a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(kr.MultipleKernelRidgeCV, "fit", killed)
        with pytest.raises(KeyboardInterrupt):
            baseline(tiny_prepared, tmp_path / "r", RidgeConfig(**FAST), progress=False)
    assert not (tmp_path / "r" / "model" / "ridge.npz").exists()
    baseline(tiny_prepared, tmp_path / "r", RidgeConfig(**FAST), progress=False)
    with np.load(tmp_path / "r" / "model" / "ridge.npz") as a, np.load(tiny_ridge / "model" / "ridge.npz") as b:
        for k in b.files:
            np.testing.assert_array_equal(a[k], b[k])
