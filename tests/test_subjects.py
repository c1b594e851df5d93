"""Per-viewer data, models and scores (issue 26)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import republish
from scipy.stats import pearsonr, zscore

from cinevox.data.dataset import PreparedData
from cinevox.models.subjects import (
    SubjectDecoder,
    SubjectEncoder,
    SubjectEncoderDecoder,
    ViewerDecoder,
    ViewerEncoder,
    ViewerEncoderDecoder,
)
from cinevox.training import TrainConfig, train
from cinevox.training.targets import resolve_targets
from cinevox.training.train import NonFiniteLossError, Step


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


def test_heldout_viewer_rows_never_reach_training(tiny_prepared_subjects, vgg_file, tmp_path):
    """S04's rows are made infinite: training that held S04 out finishes; the same training with S04 in stops on a
    non-finite loss (the control: it would read them). Encoders and the shared decoder alike."""
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
    from conftest import tiny_train_config

    dec = dict(model="decoder", epochs=1, max_steps=2, target="subjects")
    train(prep, tmp_path / "okdec", tiny_train_config(vgg_file, holdout_subjects=["S04"], **dec), progress=False)
    with pytest.raises(NonFiniteLossError):
        train(prep, tmp_path / "baddec", tiny_train_config(vgg_file, **dec), progress=False)


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
    torch.testing.assert_close(per.mean(1), avg, atol=1e-5, rtol=1e-5)  # ... the mean of the viewers' read-outs
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


def test_evaluate_per_viewer_ssim_of_a_mean_encoder_decoder(tiny_runs, tiny_prepared):
    """An encoder-decoder trained on the mean: each viewer's SSIM is its decoder fed that viewer's own test voxels."""
    from cinevox.evaluation.predict import predict
    from cinevox.metrics import ssim_frames
    from cinevox.training.train import load_run_model

    data = PreparedData(tiny_prepared)
    table = pd.read_csv(tiny_runs["encdec"] / "eval" / "subjects.csv").set_index("subject")
    model = load_run_model(tiny_runs["encdec"], device="cpu")[0]
    frames = predict(model, "encdec", data, data.indices("test"))["frames_true"]
    scores = []
    for j, s in enumerate(data.subjects):
        y = np.asarray(data.subjects_test()[j], np.float32)
        with torch.no_grad():
            rec = model.decoder(torch.tensor(y)).numpy()
        scores.append(ssim_frames(rec, frames).mean())
        assert table.loc[s, "ssim_mean"] == pytest.approx(scores[-1], abs=1e-5)
    assert np.std(scores) > 0  # the viewers' voxels, not the mean's


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


# ------------------------------------------------------------------ shared decoders (per-viewer input layers)
def test_decoder_input_layers_start_at_the_average_and_stay_per_viewer():
    torch.manual_seed(0)
    dec = SubjectDecoder(n_voxels=23, n_subjects=3, rank=4, frame_size=16).eval()
    x = torch.randn(5, 23)
    viewers = torch.tensor([0, 1, 2, -1, 1])
    torch.testing.assert_close(dec(x, viewers), dec(x))  # every viewer begins as the average viewer
    with torch.no_grad():
        dec.in_heads.normal_()
        dec.in_bias.normal_()
    out = dec(x, viewers)
    for k, j in enumerate(viewers.tolist()):
        ref = dec(x[k : k + 1]) if j < 0 else ViewerDecoder(dec, j)(x[k : k + 1])
        torch.testing.assert_close(out[k : k + 1], ref)
    # restated: viewer j's input layer is fc(x) + lift(x @ D[j]) + d[j], D and d the corrections minus their mean
    heads, bias = dec.in_heads - dec.in_heads.mean(0), dec.in_bias - dec.in_bias.mean(0)
    h = dec.fc(x[1:2]) + dec.lift(x[1:2] @ heads[1]) + bias[1]
    torch.testing.assert_close(dec.input_layer(x[1:2], viewers[1:2]), h)
    assert not torch.allclose(out[1], ViewerDecoder(dec, 0)(x[1:2])[0])  # another viewer's layer differs
    # the average input layer is the mean of the viewers' (the corrections sum to 0)
    layers = torch.stack([dec.input_layer(x, torch.full((5,), j)) for j in range(3)])
    torch.testing.assert_close(layers.mean(0), dec.fc(x), atol=1e-5, rtol=1e-5)
    free = SubjectDecoder(n_voxels=23, n_subjects=3, rank=4, frame_size=16, centered=False).eval()
    free.load_state_dict(dec.state_dict())  # the control: free corrections do not average to fc
    layers = torch.stack([free.input_layer(x, torch.full((5,), j)) for j in range(3)])
    assert not torch.allclose(layers.mean(0), free.fc(x), atol=1e-3)
    # a viewer's row moves its own correction by G and, through the mean, each other one by -G / (N - 1)
    dec.zero_grad()
    dec(x[:1], torch.tensor([2])).sum().backward()
    g = dec.in_heads.grad
    assert g[2].abs().sum() > 0
    torch.testing.assert_close(g[0], -g[2] / 2)
    torch.testing.assert_close(g[1], -g[2] / 2)
    dec.zero_grad()
    dec(x[:1], torch.tensor([-1])).sum().backward()
    assert dec.in_heads.grad.abs().sum() == 0 and dec.fc.weight.grad.abs().sum() > 0
    # the encoder-decoder: one trunk pass, frame p = clip rows[p] through viewer pick[p]'s pipeline
    ed = SubjectEncoderDecoder(23, 3, 4, n_frames=4, frame_size=16).eval()
    with torch.no_grad():
        for prm in (ed.encoder.heads, ed.decoder.in_heads, ed.decoder.in_bias):
            prm.normal_()
    clip = torch.rand(2, 3, 16, 16, 4)
    calls = []
    ed.encoder.conv4.register_forward_hook(lambda *a: calls.append(1))
    avg, per, frames = ed(clip, subjects=True, pick=torch.tensor([2, -1, 0]), rows=torch.tensor([0, 0, 1]))
    assert len(calls) == 1 and frames.shape == (3, 3, 16, 16)
    torch.testing.assert_close(frames[0], ViewerEncoderDecoder(ed, 2)(clip)[1][0])
    torch.testing.assert_close(frames[1], ed(clip)[1][0])
    torch.testing.assert_close(frames[2], ViewerEncoderDecoder(ed, 0)(clip)[1][1])


def test_decoder_side_draws_one_seen_viewer_per_clip_whatever_the_process():
    """Each clip is decoded once, through a viewer who saw it; the draw depends on (seed, epoch, sample) only, so a
    batch split over two processes draws as one process does; validation draws alike every epoch, without dropout."""
    torch.manual_seed(0)
    dec = SubjectDecoder(n_voxels=7, n_subjects=4, rank=2, frame_size=8)
    picks, inputs = [], []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = dec

        def forward(self, x, viewer):
            picks.append(viewer.clone())
            inputs.append(x.clone())
            return self.dec(x, viewer)

    spy = Spy().train()
    step = Step("decoder", torch.nn.MSELoss(), subject_dropout=0.25, subjects=True, seed=3)
    n = 400
    voxels = torch.randn(n, 4, 7)
    seen = torch.rand(n, 4) < 0.6
    seen[torch.arange(n), torch.randint(0, 4, (n,))] = True
    voxels[~seen] = float("nan")
    frame = torch.rand(n, 3, 8, 8)
    samples = list(range(1000, 1000 + n))
    seen[:, 0] = torch.arange(n) % 3 == 0  # viewer 0 missed two clips in three (before: a dropped row read its NaN)
    seen[~seen.any(1), 1] = True
    voxels = torch.where(seen[..., None], torch.randn(n, 4, 7), float("nan"))
    loss = step(spy, None, voxels, frame, samples, epoch=2)[0]
    assert torch.isfinite(loss)
    whole = picks.pop()
    x = inputs[-1]  # every row, dropped ones too, reads the voxels of a viewer who saw the clip
    assert any(torch.equal(x[i], voxels[i, j]) for i in range(n) if whole[i] < 0 for j in range(4) if seen[i, j])
    assert all(any(torch.equal(x[i], voxels[i, j]) for j in range(4) if seen[i, j]) for i in range(n))
    step(spy, None, voxels[:150], frame[:150], samples[:150], epoch=2)
    step(spy, None, voxels[150:], frame[150:], samples[150:], epoch=2)
    torch.testing.assert_close(torch.cat(picks[-2:]), whole)  # two processes' halves draw as one process
    used = whole >= 0
    assert seen[torch.arange(n)[used], whole[used]].all()  # only viewers who saw the clip
    assert abs((~used).float().mean().item() - 0.25) < 0.07  # subject dropout: the average input layer
    step(spy, None, voxels, frame, samples, epoch=3)
    assert not torch.equal(picks[-1], whole)  # another epoch, other draws
    counts = torch.bincount(whole[used & seen.all(1)], minlength=4).float()  # among clips every viewer saw
    assert counts.min() > 0.5 * counts.mean()
    spy.eval()
    step(spy, None, voxels, frame, samples, epoch=4)
    step(spy, None, voxels, frame, samples, epoch=5)
    val = picks[-1]
    torch.testing.assert_close(picks[-2], val)  # the same draw every validation
    assert (val >= 0).all() and seen[torch.arange(n), val].all()  # no dropout, a viewer who saw the clip


def test_shared_decoder_recovers_each_viewers_own_voxel_code():
    """Planted: three viewers see the same frames through conflicting voxel codes (x_j = z R_j B + noise, R_j a
    rotation of the latent per viewer: no single linear input layer decodes them all). A shared decoder trained
    with --target subjects' step decodes each viewer through its own input layer far better than through another
    viewer's (the off-diagonal), and on average far better than through the average input layer."""
    torch.set_num_threads(1)  # tiny ops: one thread is 30x faster than two on a busy machine
    g = torch.Generator().manual_seed(1)
    n, d, v, nv = 384, 3, 12, 3
    z = torch.randn(n, d, generator=g)
    frames = torch.sigmoid(z @ torch.randn(d, 3 * 8 * 8, generator=g)).reshape(n, 3, 8, 8)
    rots = torch.linalg.qr(torch.randn(nv, d, d, generator=g))[0]
    x = torch.einsum("nd,jde,ev->njv", z, rots, torch.randn(d, v, generator=g))
    x = x + 0.05 * torch.randn(n, nv, v, generator=g)
    torch.manual_seed(0)
    dec = SubjectDecoder(v, nv, rank=d, frame_size=8, channels=8)
    step = Step("decoder", torch.nn.MSELoss(), subject_dropout=0.25, subjects=True)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for epoch in range(60):
        for b in range(0, 320, 64):
            dec.train()
            loss = step(dec, None, x[b : b + 64], frames[b : b + 64], range(b, b + 64), epoch)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
    dec.eval()
    with torch.no_grad():
        def mse(j, layer):
            out = dec(x[320:, j]) if layer is None else ViewerDecoder(dec, layer)(x[320:, j])
            return float(((out - frames[320:]) ** 2).mean())

        own = np.array([mse(j, j) for j in range(nv)])
        avg = np.array([mse(j, None) for j in range(nv)])
        other = np.array([[mse(j, k) for k in range(nv) if k != j] for j in range(nv)])
    assert (own < 0.3 * other.min(1)).all(), (own, other)
    assert own.mean() < 0.2 * avg.mean(), (own, avg)


def test_shared_decoders_per_viewer_scores_and_analyses(tiny_subject_decoders, tiny_prepared_subjects, tmp_path):
    """evaluate: SSIM per viewer through the viewer's input layer (decoder) or pipeline (encdec), the average one
    for the held-out viewer and its fitted alignment; lesion --subject reads the viewer's own voxels; export and
    decode --subject go through the viewer's input layer."""
    from helpers import undescribed

    from cinevox.analysis.lesion import LesionConfig, lesion
    from cinevox.analysis.saliency import decoder_inputs
    from cinevox.data.dataset import ClipDataset
    from cinevox.inference.bundle import export_model, load_bundle, select_viewer
    from cinevox.inference.decode import decode_scans
    from cinevox.metrics import ssim_frames
    from cinevox.training.train import load_run_model

    data = PreparedData(tiny_prepared_subjects)
    test = data.indices("test")
    subj = np.asarray(data.subjects_test(), np.float32)
    loader = torch.utils.data.DataLoader(ClipDataset(data, indices=test), batch_size=64)
    clips, _, frames = next(iter(loader))
    assert len(clips) == len(test)
    for kind, run in tiny_subject_decoders.items():
        table = pd.read_csv(run / "eval" / "subjects.csv").set_index("subject")
        assert table.loc["S04", "head"] == "average" and (table.loc[["S01", "S02", "S03"], "head"] == "viewer").all()
        model = load_run_model(run, device="cpu")[0]
        with torch.no_grad():
            if kind == "decoder":
                mine = ViewerDecoder(model, 1)(torch.tensor(subj[1]))
                avg4 = model(torch.tensor(subj[3]))
            else:
                mine = ViewerEncoderDecoder(model, 1)(clips)[1]
                avg4 = model(clips)[1]
        assert table.loc["S02", "ssim_mean"] == pytest.approx(ssim_frames(mine, frames).mean(), abs=1e-5)
        assert table.loc["S04", "ssim_mean"] == pytest.approx(ssim_frames(avg4, frames).mean(), abs=1e-5)
        if kind == "encdec":  # and its decoder on each viewer's measured voxels, as a shared decoder's
            with torch.no_grad():
                own = ViewerDecoder(model.decoder, 1)(torch.tensor(subj[1]))
                other = ViewerDecoder(model.decoder, 0)(torch.tensor(subj[1]))  # S01's input layer on S02's voxels
                avg = model.decoder(torch.tensor(subj[3]))
            measured = ssim_frames(own, frames).mean()
            assert table.loc["S02", "ssim_mean_measured"] == pytest.approx(measured, abs=1e-5)
            assert table.loc["S02", "ssim_mean_measured"] != pytest.approx(ssim_frames(other, frames).mean(),
                                                                           abs=1e-6)
            assert table.loc["S04", "ssim_mean_measured"] == pytest.approx(ssim_frames(avg, frames).mean(), abs=1e-5)
            assert table["ssim_mean_measured"].notna().all()
        assert undescribed(run, "RUN_DIR") == []
    table = pd.read_csv(tiny_subject_decoders["decoder"] / "eval" / "subjects.csv").set_index("subject")
    assert table.loc["S04", "n_train_fitted"] == len(data.indices("train"))
    assert np.isfinite(table.loc["S04", "ssim_mean_fitted_head"])
    assert table[["ssim_mean_fitted_head"]].notna().sum().item() == 1  # the held-out viewer only
    # lesion --subject S02: S02's measured voxels through S02's input layer, in lesion_sub-S02
    run = tiny_subject_decoders["decoder"]
    dec, _, vdata, vtest, x, _ = decoder_inputs(run, "measured", "last", "cpu", subject="S02")
    np.testing.assert_array_equal(x, subj[1])
    assert isinstance(dec, ViewerDecoder) and dec.j == 1 and list(vtest) == list(test)
    held, _, _, _, x4, _ = decoder_inputs(run, "measured", "last", "cpu", subject="S04")  # never trained on
    assert isinstance(held, SubjectDecoder) and np.array_equal(x4, subj[3])  # its voxels, the average input layer
    lesion(run, LesionConfig(n_null=2, n_boot=20, subject="S02", inputs="measured"))
    assert (run / "lesion_sub-S02" / "lesion.csv").is_file() and undescribed(run, "RUN_DIR") == []
    assert json.loads((run / "lesion_sub-S02" / "manifest.json").read_text())["config"]["subject"] == "S02"
    # export keeps the input layers; decode --subject S02 of S02's own scans = S02's input layer on its voxels
    out = export_model(run, tmp_path / "model")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["heads"]["subjects"] == ["S01", "S02", "S03"] and cfg["heads"]["parts"] == ["decoder input layers"]
    assert "decoder input layers" in (out / "README.md").read_text()
    sim = Path(data.manifest["bids_simulation"]).parents[1]
    bold = sorted(sim.glob("derivatives/preprocessing/sub-S02/ses-*/func/*task-YouAgain*_bold.nii.gz"))
    events = sorted(sim.glob("sub-S02/ses-*/func/*acq-YouAgain_events.tsv"))
    assert len(bold) == 1 and len(events) == 1
    rows = data.samples.index[data.samples.film == "YouAgain"].to_numpy()
    b = select_viewer(load_bundle(out, "cpu"), "S02")
    got, xs, _ = decode_scans(b, bold, events=events)
    np.testing.assert_allclose(xs, np.asarray(data.subject_voxels()[1, rows]), atol=2e-5)
    with torch.no_grad():
        ref = ViewerDecoder(load_run_model(run, device="cpu")[0], 1)(torch.from_numpy(xs)).numpy()
        avg = load_run_model(run, device="cpu")[0](torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not np.allclose(got, avg, atol=1e-4)  # not the average input layer


def test_runs_before_centered_corrections_load_as_they_were_made():
    """A --target subjects model saved before ``subject_heads`` existed had free corrections: it loads as such."""
    from cinevox.configs import model_config_from
    from cinevox.models.encdec import build_model

    old = {"kind": "encoder", "n_voxels": 9, "n_frames": 4, "frame_size": 16, "dropout": 0.5,
           "final_batchnorm": False, "subjects": ["S01", "S02"], "subject_rank": 3}
    assert build_model(model_config_from(old)).centered is False
    assert build_model(model_config_from({**old, "subject_heads": "centered"})).centered is True
    assert model_config_from({k: v for k, v in old.items() if k != "subjects"}).subject_heads == "centered"


def test_shared_encoder_decoder_resumes_bitwise(tiny_prepared_subjects, vgg_file, tmp_path):
    """A --target subjects encoder-decoder trained 1 epoch, then resumed to 2, ends with the weights of a 2-epoch run:
    the viewer draws and subject dropout follow (seed, epoch, sample), not the state of a random generator."""
    from conftest import tiny_train_config

    cfg = dict(model="encdec", max_steps=2, target="subjects", holdout_subjects=["S04"], subject_dropout=0.5)
    full = train(tiny_prepared_subjects, tmp_path / "full", tiny_train_config(vgg_file, epochs=2, **cfg),
                 progress=False)
    train(tiny_prepared_subjects, tmp_path / "cut", tiny_train_config(vgg_file, epochs=1, **cfg), progress=False)
    train(tiny_prepared_subjects, tmp_path / "cut", tiny_train_config(vgg_file, epochs=2, **cfg), resume=True,
          progress=False)
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (full, tmp_path / "cut"))
    assert a.keys() == b.keys() and any("in_heads" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_viewer_as_it_saw_the_films(tiny_prepared_subjects, tmp_path):
    """PreparedData.for_viewer: the viewer's own series, and none of the rows of a film it did not see (the test TRs
    of per-viewer lesions and saliency)."""
    prep = shutil.copytree(tiny_prepared_subjects, tmp_path / "prep", ignore=shutil.ignore_patterns("cache"))
    data = PreparedData(prep)
    film_b = data.samples.film.to_numpy() == "FilmB"
    every = np.load(prep / "subjects.npy", mmap_mode="r+")
    every[1, film_b] = np.nan  # S02 did not see FilmB
    every.flush()
    del every
    republish(prep, "subjects.npy")
    data = PreparedData(prep)
    view = data.for_viewer("sub-S02")
    test = data.indices("test")
    assert film_b[test].any() and (~film_b[test]).any()
    np.testing.assert_array_equal(view.indices("test"), test[~film_b[test]])
    np.testing.assert_array_equal(np.asarray(view.voxels[view.indices("test")]),
                                  np.load(prep / "subjects.npy")[1, test[~film_b[test]]])
    assert view.viewer == "S02" and len(data.indices("test")) == len(test)  # the dataset itself is unchanged
    np.testing.assert_array_equal(data.for_viewer("S03").indices("test"), test)
    with pytest.raises(ValueError, match=r"subject 'S09' is not in .*viewers: S01, S02, S03, S04"):
        data.for_viewer("S09")
