"""Leave-one-film-out cross-validation (``--cv films``): no fold ever fits on its held-out film, out-of-film r is
the r of each held-out film's TRs and beats its controls, folds resume one by one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_train_config
from helpers import FAST_RIDGE, republish

from cinevox.data.dataset import PreparedData
from cinevox.evaluation.cv_films import cv_films
from cinevox.evaluation.evaluate import EvalConfig
from cinevox.training.ridge import MODEL_FILE, RidgeConfig, baseline, predict_ridge


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return (a * b).mean(0)


def test_ridge_fold_never_fits_on_its_held_out_film(tiny_prepared, tmp_path, monkeypatch):
    """The held-out film's voxels and stimulus features are NaN: any use of its rows in the feature z-scoring, the
    ridge's cross-validation or its fit would make the fitted arrays NaN (the prepared split fits on them)."""
    import cinevox.training.ridge as ridge

    prep = Path(shutil.copytree(tiny_prepared, tmp_path / "prepared"))
    samples = pd.read_csv(prep / "samples.csv")
    held = (samples["film"] == "FilmA").to_numpy()
    vox = np.load(prep / "voxels.npy")
    vox[held] = np.nan
    np.save(prep / "voxels.npy", vox)
    republish(prep, "voxels.npy")
    real = ridge.film_features

    def poisoned(data, cfg, progress=True):
        feats = real(data, cfg, progress)
        return {s: {f: (np.full_like(x, np.nan) if f == "FilmA" else x) for f, x in per.items()}
                for s, per in feats.items()}

    monkeypatch.setattr(ridge, "film_features", poisoned)
    cfg = RidgeConfig(**FAST_RIDGE)
    run = baseline(prep, tmp_path / "fold", cfg, progress=False, holdout_film="FilmA")
    with np.load(run / MODEL_FILE) as z:
        for k in z.files:
            assert np.isfinite(z[k]).all(), k
    data = PreparedData(prep, holdout_film="FilmA")
    test = data.indices("test")
    assert set(data.samples.loc[test, "film"]) == {"FilmA"} and held[test].all() and len(test) == held.sum()
    # the negative control: the prepared split fits on FilmA's train and validation rows, and its arrays are NaN
    try:
        bad = baseline(prep, tmp_path / "no_fold", cfg, progress=False)
        with np.load(bad / MODEL_FILE) as z:
            finite = bool(np.isfinite(z["weights"]).all())
    except Exception:  # noqa: BLE001 - a solver may refuse NaN outright: also a sign that the rows were used
        finite = False
    assert not finite


def test_cnn_folds_train_only_on_other_films_and_resume(tiny_prepared, vgg_file, tmp_path, monkeypatch):
    """Every batch a fold trains or validates on is recorded: none holds a TR of its held-out film, every other
    film with training TRs is trained on; cv_films.csv's r is numpy's r over every TR of the held-out film."""
    import cinevox.evaluation.cv_films as cvmod
    from cinevox.training.batches import ClipBatches

    samples = pd.read_csv(tiny_prepared / "samples.csv")
    seen: dict[str, set] = {}
    current: list[str | None] = [None]
    real_train, real_stream = cvmod.train, ClipBatches.stream

    def spy_train(*a, holdout_film=None, **kw):
        current[0] = holdout_film
        try:
            return real_train(*a, holdout_film=holdout_film, **kw)
        finally:
            current[0] = None

    def spy_stream(self, batches, *a, **kw):
        batches = [list(b) for b in batches]
        if current[0] is not None:
            seen.setdefault(current[0], set()).update(samples.loc[[i for b in batches for i in b], "film"])
        return real_stream(self, batches, *a, **kw)

    monkeypatch.setattr(cvmod, "train", spy_train)
    monkeypatch.setattr(ClipBatches, "stream", spy_stream)
    out = tmp_path / "cv"
    cfg = tiny_train_config(vgg_file, model="encoder", epochs=1, batch_size=16, lr=1e-3, max_steps=1)
    table = cv_films(tiny_prepared, out, "train", cfg, EvalConfig(n_perm=19), progress=False)
    films = ["FilmA", "FilmB", "YouAgain"]
    assert list(table["film"]) == [*films, "mean"]
    for f in films:
        assert f not in seen[f], (f, seen[f])
        assert seen[f] == {"FilmA", "FilmB"} - {f}  # YouAgain is all test in prepare: never trained on
    on_disk = pd.read_csv(out / "cv_films.csv")
    assert list(on_disk["film"]) == [*films, "mean"]
    for f in films:
        row = on_disk.set_index("film").loc[f]
        rows = (samples["film"] == f).to_numpy()
        assert row["n_trs"] == rows.sum()
        pred = np.load(out / "folds" / f / "eval" / "pred_voxels.npy")
        true = np.load(tiny_prepared / "voxels.npy")[rows]
        r = _pearson_columns(pred.astype(np.float64), true.astype(np.float64))
        assert row["r_mean"] == pytest.approx(np.nanmean(r), abs=1e-4)
        assert 0 <= row["share_p05_circular"] <= 1
    assert on_disk.iloc[-1]["r_mean"] == pytest.approx(on_disk.iloc[:3]["r_mean"].mean(), abs=1e-5)
    # resume: finished folds are reused (not retrained); a fold killed after training is only evaluated again
    ck = out / "folds" / "YouAgain" / "checkpoints" / "last.pt"
    stamp = ck.stat().st_mtime_ns
    (out / "folds" / "YouAgain" / "fold.json").unlink()
    shutil.rmtree(out / "folds" / "YouAgain" / "eval")
    seen.clear()
    again = cv_films(tiny_prepared, out, "train", cfg, EvalConfig(n_perm=19), progress=False)
    assert not seen  # no batch was trained on
    assert ck.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.drop(columns=["seconds_fit", "seconds_evaluate"]),
                                  table.drop(columns=["seconds_fit", "seconds_evaluate"]))
    with pytest.raises(ValueError, match="other options"):
        cv_films(tiny_prepared, out, "train", tiny_train_config(vgg_file, model="encoder", epochs=2), progress=False)


def test_ridge_out_of_film_r_beats_its_controls(tiny_prepared, tmp_path):
    """The simulation plants stimulus-driven responses: the ridge fitted without a film predicts it (r well above 0)
    and above two controls on the same TRs: its own prediction shifted in time by half the film, and a ridge
    fitted on training voxels whose time courses were shuffled."""
    out = tmp_path / "cv"
    table = cv_films(tiny_prepared, out, "baseline", RidgeConfig(**FAST_RIDGE), EvalConfig(n_perm=99),
                     progress=False).set_index("film")
    samples = pd.read_csv(tiny_prepared / "samples.csv")
    vox = np.load(tiny_prepared / "voxels.npy").astype(np.float64)
    # control 2: a ridge fitted, fold by fold, on a copy whose voxel rows are shuffled (within each film's train +
    # validation rows, so every fold's training pairs frames with the wrong TRs); scored on the true voxels
    shuf = Path(shutil.copytree(tiny_prepared, tmp_path / "shuffled"))
    rng = np.random.default_rng(0)
    sv = vox.astype(np.float32).copy()
    for f in samples["film"].unique():
        rows = np.flatnonzero(((samples["film"] == f) & samples["split"].isin(["train", "val"])).to_numpy())
        sv[rows] = sv[rng.permutation(rows)]
    np.save(shuf / "voxels.npy", sv)
    republish(shuf, "voxels.npy")
    for f in ("FilmA", "FilmB", "YouAgain"):
        rows = (samples["film"] == f).to_numpy()
        pred = np.load(out / "folds" / f / "eval" / "pred_voxels.npy").astype(np.float64)
        r = np.nanmean(_pearson_columns(pred, vox[rows]))
        assert table.loc[f, "r_mean"] == pytest.approx(r, abs=1e-4)
        shifted = np.nanmean(_pearson_columns(np.roll(pred, len(pred) // 2, axis=0), vox[rows]))
        fold = baseline(shuf, tmp_path / f"shuffled_{f}", RidgeConfig(**FAST_RIDGE), progress=False, holdout_film=f)
        ctrl = predict_ridge(fold, PreparedData(shuf, holdout_film=f), np.flatnonzero(rows)).astype(np.float64)
        r_ctrl = np.nanmean(_pearson_columns(ctrl, vox[rows]))
        assert r > 0.1 and r > shifted + 0.1 and r > r_ctrl + 0.1, (f, r, shifted, r_ctrl)
        assert table.loc[f, "share_p05_circular"] > 0
    assert table.loc["mean", "share_p05_circular"] > 0.1  # 0.05 expected by chance
