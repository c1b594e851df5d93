"""Per-viewer data, models and scores (issue 26)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import republish
from scipy.stats import pearsonr, zscore

from cinevox.data.dataset import PreparedData
from cinevox.models.subjects import SubjectEncoder, ViewerEncoder
from cinevox.training import TrainConfig, train
from cinevox.training.targets import resolve_targets
from cinevox.training.train import NonFiniteLossError


def test_targets_one_viewer_and_mean_without_heldout(tiny_prepared_subjects):
    data = PreparedData(tiny_prepared_subjects)
    every = np.load(tiny_prepared_subjects / "subjects.npy")
    one = resolve_targets(data, "subject:sub-S02", None)
    assert one.subjects == ["S02"] and one.rows.all()
    np.testing.assert_array_equal(one.values, every[1])
    mean = resolve_targets(data, "mean", ["S04"])
    np.testing.assert_allclose(mean.values, every[:3].mean(0), atol=1e-6)
    assert not np.allclose(mean.values, np.asarray(data.voxels), atol=1e-3)  # not the 4-viewer mean
    both = resolve_targets(data, "subjects", ["S02"])
    idx = np.array([7, 3, 50])
    np.testing.assert_array_equal(both.gather(idx), every[[0, 2, 3]][:, idx].transpose(1, 0, 2))


def test_heldout_viewer_rows_never_reach_training(tiny_prepared_subjects, tmp_path):
    """S04's rows are made infinite: training that held S04 out finishes; the same training with S04 in stops on a
    non-finite loss (the control: it would read them)."""
    prep = shutil.copytree(tiny_prepared_subjects, tmp_path / "prep", ignore=shutil.ignore_patterns("cache"))
    every = np.load(prep / "subjects.npy", mmap_mode="r+")
    every[3] = np.inf
    every.flush()
    del every
    republish(prep, "subjects.npy")
    base = dict(model="encoder", epochs=1, batch_size=8, tensorboard=False, max_steps=1)
    for k, target in enumerate(("subjects", "mean", "subject:S01")):
        train(prep, tmp_path / f"ok{k}", TrainConfig(target=target, holdout_subjects=["S04"], **base), progress=False)
    with pytest.raises(NonFiniteLossError):
        train(prep, tmp_path / "bad", TrainConfig(target="subjects", **base), progress=False)


def test_one_trunk_pass_serves_every_viewer():
    torch.manual_seed(0)
    model = SubjectEncoder(n_voxels=37, n_subjects=3, rank=5, n_frames=4, frame_size=16).eval()
    clip = torch.rand(2, 3, 16, 16, 4)
    avg, per = model.forward_subjects(clip)
    assert per.shape == (2, 3, 37)
    torch.testing.assert_close(per, avg[:, None].expand_as(per))  # the read-outs start at the average viewer
    with torch.no_grad():
        model.heads.normal_()
        model.head_bias.normal_()
    calls = []
    model.conv4.register_forward_hook(lambda *a: calls.append(1))
    avg, per = model.forward_subjects(clip)
    assert len(calls) == 1  # one trunk pass for the three viewers
    for j in range(3):
        torch.testing.assert_close(per[:, j], ViewerEncoder(model, j)(clip))
    torch.testing.assert_close(model(clip), avg)  # forward is the average head
    assert not torch.allclose(per[:, 0], per[:, 1])
    viewer = ViewerEncoder(model, 2)
    for layer in ("pool2", "temporal", "conv4"):  # concepts read a viewer's read-out from any layer
        torch.testing.assert_close(viewer.head(viewer.activations(clip, layer), layer), per[:, 2])


def _restated_r(pred, true, films):
    """Per-film z-scored Pearson r per voxel (the paper's convention), restated with scipy."""
    p, t = pred.copy(), true.copy()
    for f in set(films):
        s = films == f
        p[s], t[s] = zscore(p[s], axis=0), zscore(t[s], axis=0)
    return np.array([pearsonr(p[:, v], t[:, v])[0] for v in range(p.shape[1])])


def test_evaluate_per_viewer_subjects_run(tiny_subject_run, tiny_prepared_subjects):
    data = PreparedData(tiny_prepared_subjects)
    m = json.loads((tiny_subject_run / "eval" / "metrics.json").read_text())["subjects"]
    table = pd.read_csv(tiny_subject_run / "eval" / "subjects.csv").set_index("subject")
    assert list(table.index) == ["S01", "S02", "S03", "S04"] and "leave-one-out" in m["ceiling_method"]
    assert table.loc["S04", "role"] == "heldout" and table.loc["S04", "head"] == "average"
    assert (table.loc[["S01", "S02", "S03"], "head"] == "viewer").all()
    test = data.indices("test")
    films = data.samples.film.to_numpy()[test]
    subj = np.asarray(data.subjects_test(), np.float64)
    # S02's map: its own read-out against its own test series
    from cinevox.training.train import load_run_model

    model = load_run_model(tiny_subject_run)[0]
    loader = torch.utils.data.DataLoader(__import__("cinevox.data.dataset", fromlist=["x"]).ClipDataset(
        data, indices=test), batch_size=16)
    with torch.no_grad():
        pred = torch.cat([ViewerEncoder(model, 1)(c) for c, _, _ in loader]).numpy().astype(np.float64)
    r = _restated_r(pred, subj[1], films)
    ijk = data.voxels_ijk()
    vol = nib.load(tiny_subject_run / "eval" / "voxel_r_sub-S02.nii.gz").get_fdata()
    np.testing.assert_allclose(vol[tuple(ijk.T)], r, atol=1e-4)
    assert table.loc["S02", "r_mean"] == pytest.approx(r.mean(), abs=1e-4)
    ceil = _restated_r(subj[[0, 2, 3]].mean(0), subj[1], films)
    assert table.loc["S02", "ceiling_loo_mean"] == pytest.approx(ceil.mean(), abs=1e-4)
    # the held-out viewer's fitted head saw its training TRs only
    assert table.loc["S04", "n_train_fitted"] == len(data.indices("train"))
    assert np.isfinite(table.loc["S04", "r_mean_fitted_head"])
    assert (tiny_subject_run / "eval" / "voxel_r_sub-S04.nii.gz").is_file()


def test_evaluate_per_viewer_mean_model(tiny_runs, tiny_prepared):
    """The mean model (runs before issue 26 too) is scored on every viewer's own series."""
    data = PreparedData(tiny_prepared)
    table = pd.read_csv(tiny_runs["encoder"] / "eval" / "subjects.csv").set_index("subject")
    assert list(table.index) == data.subjects and (table["head"] == "model").all()
    test = data.indices("test")
    films = data.samples.film.to_numpy()[test]
    pred = np.load(tiny_runs["encoder"] / "eval" / "pred_voxels.npy").astype(np.float64)
    y = np.asarray(data.subjects_test()[2], np.float64)
    assert table.loc["S03", "r_mean"] == pytest.approx(_restated_r(pred, y, films).mean(), abs=1e-4)


def test_predict_and_export_per_viewer(tiny_subject_run, tiny_sim_subjects, tmp_path, capsys):
    """predict --subject S02 is S02's read-out, the default the average head; a held-out viewer has no read-out;
    an exported MODEL_DIR keeps the heads and says which."""
    from cinevox.cli import main
    from cinevox.inference.bundle import export_model, load_bundle, select_viewer
    from cinevox.inference.predict import predict_clips

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 255, (5, 4, 32, 32, 3), dtype=np.uint8)
    one = predict_clips(select_viewer(load_bundle(tiny_subject_run, "cpu"), "S02"), clips)
    avg = predict_clips(select_viewer(load_bundle(tiny_subject_run, "cpu"), None), clips)
    model = load_run_model_cpu(tiny_subject_run)
    x = torch.from_numpy(clips).float().div(255).permute(0, 4, 2, 3, 1)
    with torch.no_grad():
        avg_ref, per_ref = model.forward_subjects(x)
    np.testing.assert_allclose(one, per_ref[:, 1].numpy(), atol=1e-5)
    np.testing.assert_allclose(avg, avg_ref.numpy(), atol=1e-5)
    assert not np.allclose(one, avg, atol=1e-4)
    with pytest.raises(ValueError, match=r"no read-out for this viewer .*viewers with one: S01, S02, S03"):
        select_viewer(load_bundle(tiny_subject_run, "cpu"), "S04")
    video = tiny_sim_subjects / "stimuli" / "YouAgain.mp4"
    assert main(["predict", str(tiny_subject_run), str(video), "--out", str(tmp_path / "p"), "--subject", "S02",
                 "-q"]) == 0
    assert json.loads((tmp_path / "p" / "YouAgain_pred.json").read_text())["head"] == "sub-S02"
    out = export_model(tiny_subject_run, tmp_path / "model")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["heads"]["subjects"] == ["S01", "S02", "S03"]
    assert "average-viewer head" in (out / "README.md").read_text()
    np.testing.assert_allclose(predict_clips(select_viewer(load_bundle(out, "cpu"), "S02"), clips), one, atol=1e-5)


def load_run_model_cpu(run):
    from cinevox.training.train import load_run_model

    return load_run_model(run, device="cpu")[0]


def test_report_per_viewer_panel(tiny_subject_run, tmp_path):
    from cinevox.report.html import report

    page = report([tiny_subject_run], tmp_path / "rep").read_text()
    assert "<h3>Per viewer</h3>" in page and "leave-one-out" in page and "held out: S04" in page
    assert (tmp_path / "rep" / "figures" / "run0_subjects.png").is_file()
    assert (tmp_path / "rep" / "figures" / "run0_voxel_r_sub-S04.png").is_file()
