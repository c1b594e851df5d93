"""Profiles (paper / authors), the paper's metric conventions and ``cinevox regions``.

Every authors' formula is restated here in a few lines of numpy/torch, independent of cinevox's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import sim_config, write_film

from cinevox.analysis.regions import mask_regions
from cinevox.analysis.saliency import ssim_saliency
from cinevox.cli import build_parser, main
from cinevox.data.dataset import ClipDataset, PreparedData
from cinevox.data.prepare import PrepareConfig, prepare, snr_from_sums
from cinevox.data.splits import split_film
from cinevox.data.video import linspace_indices, sample_frame_indices
from cinevox.evaluation.evaluate import EvalConfig, evaluate
from cinevox.evaluation.predict import predict
from cinevox.losses import LossConfig, PerceptualLoss
from cinevox.metrics import ssim_per_image
from cinevox.models import Decoder, VGG16Features
from cinevox.profiles import CHOICES, apply_profile, table_markdown
from cinevox.training import TrainConfig, train
from cinevox.training.train import load_run_model

# ------------------------------------------------------------------ the table


def test_profiles_fill_only_unset_choices():
    cfg = apply_profile(PrepareConfig(films_dir="x", profile="authors", frame_sampling="timestamp"), "prepare")
    assert (cfg.frame_intensity, cfg.frame_resize, cfg.frame_sampling, cfg.val_mode, cfg.snr_ddof) == (
        "minmax", "skimage", "timestamp", "interleaved", 0)
    paper = apply_profile(PrepareConfig(films_dir="x"), "prepare")
    assert (paper.profile, paper.frame_intensity, paper.frame_sampling, paper.val_mode) == (
        "paper", "raw", "timestamp", "blocked")
    t = TrainConfig(profile="authors", final_batchnorm=False)
    t.validate()
    assert t.final_batchnorm is False and t.loss.mse_over_voxels is True and t.loss.perceptual_input == "authors"
    with pytest.raises(ValueError, match="profile"):
        apply_profile(PrepareConfig(films_dir="x", profile="nature"), "prepare")
    with pytest.raises(ValueError, match="--frame-resize"):
        apply_profile(PrepareConfig(films_dir="x", frame_resize="bicubic"), "prepare")
    assert all(c.paper in c.values and c.authors in c.values for c in CHOICES)
    assert table_markdown().count("\n") == len(CHOICES) + 1
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(c.option in readme and c.what in readme for c in CHOICES)  # the README's table is this table


def test_cli_option_overrides_profile():
    from cinevox.cli import _train_config

    a = build_parser().parse_args(["train", "p", "--out", "r", "--profile", "authors", "--final-batchnorm", "false"])
    cfg = _train_config(a)
    cfg.validate()
    assert cfg.profile == "authors" and cfg.final_batchnorm is False and cfg.loss.mse_over_voxels is True
    a = build_parser().parse_args(["train", "p", "--out", "r", "--final-batchnorm"])  # the old flag still works
    cfg = _train_config(a)
    cfg.validate()
    assert cfg.profile == "paper" and cfg.final_batchnorm is True and cfg.loss.mse_over_voxels is False


# ------------------------------------------------------------------ the authors' formulas, restated


def test_authors_perceptual_input():
    torch.manual_seed(0)
    vgg = VGG16Features().eval()
    pred, target = torch.rand(3, 3, 20, 28) * 0.6 + 0.1, torch.rand(3, 3, 20, 28)
    loss = PerceptualLoss(vgg, resize=None, input_mode="authors")
    loss.resize = 224  # what build_loss gives for the authors' input

    def authors_input(x):  # torchvision Resize(224) on a tensor (bilinear), then a min-max over the whole batch
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        return (x - x.min()) / (x.max() - x.min())

    for x in (pred, target):
        torch.testing.assert_close(loss.prepare(x), authors_input(x))
    # the loss itself: VGG16 blocks on the raw (not ImageNet-normalised) input, 1 - cosine over channels
    feats = []
    for x in (authors_input(pred), authors_input(target)):
        out, h = [], x
        for a, b in ((0, 5), (5, 10), (10, 17), (17, 24), (24, 31)):
            h = vgg.features[a:b](h)
            out.append(h)
        feats.append(out)
    ref = sum((1 - F.cosine_similarity(p, t, dim=1)).mean() for p, t in zip(*feats))
    torch.testing.assert_close(loss(pred, target), ref, rtol=1e-5, atol=1e-6)
    from cinevox.losses import build_loss

    built = build_loss("decoder", LossConfig(perceptual_input="authors", vgg_allow_random=True))
    assert built.perceptual.resize == 224 and built.perceptual.input_mode == "authors"


def test_linspace_sampling_and_skimage_resize(tmp_path):
    from skimage.transform import resize

    path = tmp_path / "film.mp4"
    write_film(path, 37, fps=10.0, size=(40, 24))
    with av.open(str(path)) as c:  # every frame, full size, in decode order
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    n_out = 3 * 8  # 3 TRs of 8 frames
    idx = np.linspace(0, len(full) - 1, n_out).astype(int)  # the authors' pick
    np.testing.assert_array_equal(linspace_indices(len(full), n_out), idx)
    got = sample_frame_indices(path, idx, 16, resize="skimage")
    ref = np.stack([np.rint(resize(full[i], (16, 16), anti_aliasing=True) * 255) for i in idx]).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)


def test_authors_frame_intensity_is_per_frame_minmax(tiny_prepared, tmp_path):
    data = PreparedData(tiny_prepared)
    data.frame_intensity = "minmax"
    i = int(data.indices("train")[3])
    clip, _, frame = ClipDataset(data, indices=[i])[0]
    raw = data.clip(i).astype(np.float64) / 255  # (T, S, S, 3)
    lo = raw.min(axis=(1, 2, 3), keepdims=True)
    hi = raw.max(axis=(1, 2, 3), keepdims=True)
    ref = (raw - lo) / (hi - lo)
    np.testing.assert_allclose(clip.numpy(), ref.transpose(3, 1, 2, 0), atol=1e-6)
    assert clip.amin(dim=(0, 1, 2)).max() == 0 and clip.amax(dim=(0, 1, 2)).min() == pytest.approx(1)


def test_authors_snr_ddof0_plain_mean():
    rng = np.random.default_rng(0)
    raw = np.stack([rng.normal(10 + k, 1 + 0.2 * k, (15, 6)) for k in range(4)])  # (subjects, T, V)
    x = raw - raw.mean(1, keepdims=True)  # what the run caches hold: raw minus each run's mean
    n = np.full(15, 4.0)
    signal = raw.mean(0).var(0)  # variance over time of the subject mean
    for ddof in (0, 1):
        noise = raw.mean(1).var(0, ddof=ddof)  # variance across subjects of each subject's time-mean
        got = snr_from_sums(x.sum(0), (x**2).sum(0), n, raw.mean(1), "paper", ddof=ddof)
        np.testing.assert_allclose(got, signal / noise, rtol=1e-10)
    assert not np.allclose(signal / raw.mean(1).var(0), signal / raw.mean(1).var(0, ddof=1))


def test_authors_interleaved_validation():
    lab = split_film(103, False, mode="interleaved")
    n_tv = int(0.8 * 103)
    assert list(np.flatnonzero(lab == "val")) == list(range(0, n_tv, 5))
    assert (lab[n_tv:] == "test").all() and (lab == "gap").sum() == 0


def test_authors_saliency_normalisation():
    torch.manual_seed(1)
    dec = Decoder(10, frame_size=16).eval()
    x = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    frames = np.random.default_rng(1).uniform(0.2, 0.7, (3, 3, 16, 16)).astype(np.float32)
    ref = np.zeros(10)
    for i in range(3):  # one reconstruction at a time, SSIM(normalize(output), normalize(target))
        xi = torch.tensor(x[i : i + 1], requires_grad=True)
        out = dec(xi)
        t = torch.tensor(frames[i : i + 1])
        s = ssim_per_image((out - out.min()) / (out.max() - out.min()), (t - t.min()) / (t.max() - t.min()))
        s.sum().backward()
        ref += xi.grad.abs().numpy()[0]
    np.testing.assert_allclose(ssim_saliency(dec, x, frames, batch_size=2, normalize=True), ref, rtol=1e-4)
    assert not np.allclose(ssim_saliency(dec, x, frames, normalize=False), ref, rtol=1e-2)


# ------------------------------------------------------------------ the paper's metric conventions


def test_encoder_metrics_paper_convention(tiny_runs):
    run = tiny_runs["encoder"]
    vox = pd.read_csv(run / "eval" / "voxels.csv")
    np.testing.assert_allclose(vox["mse"], 2 * (1 - vox["r"]), atol=1e-5)  # E_mse = 2 (1 - r)
    # raw metrics under their own names: the raw concatenated series
    data = PreparedData(json.loads((run / "manifest.json").read_text())["inputs"]["prepared"])
    test = data.indices("test")
    true = np.asarray(data.voxels[test], np.float64)
    pred = np.load(run / "eval" / "pred_voxels.npy").astype(np.float64)
    from scipy.stats import pearsonr

    for v in (0, 7, len(vox) - 1):
        assert vox.loc[v, "r_raw"] == pytest.approx(pearsonr(pred[:, v], true[:, v])[0], abs=1e-5)
        assert vox.loc[v, "mse_raw"] == pytest.approx(((pred[:, v] - true[:, v]) ** 2).mean(), rel=1e-4)
        # the paper's r: per-film z-scored, then concatenated
        films = data.samples.iloc[test]["film"].to_numpy()
        z = [np.concatenate([(a[films == f] - a[films == f].mean()) / a[films == f].std() for f in
                             sorted(set(films))]) for a in (pred[:, v], true[:, v])]
        assert vox.loc[v, "r"] == pytest.approx(np.mean(z[0] * z[1]), abs=1e-5)
    m = json.loads((run / "eval" / "metrics.json").read_text())["encoder"]
    assert m["mse_median"] == pytest.approx(np.median(2 * (1 - vox["r"])), abs=1e-5)
    assert "r_raw_mean" in m and "mse_raw_mean" in m


def test_decoder_mse_on_minmax_frames(tiny_runs):
    run = tiny_runs["encdec"]
    fr = pd.read_csv(run / "eval" / "frames.csv")
    model, tcfg, _, _ = load_run_model(run)
    data = PreparedData(json.loads((run / "manifest.json").read_text())["inputs"]["prepared"])
    pred = predict(model, tcfg.model, data, data.indices("test"))
    fp, ft = pred["frames_pred"].astype(np.float64), pred["frames_true"].astype(np.float64)

    def norm(a):
        lo, hi = a.min(axis=(1, 2, 3), keepdims=True), a.max(axis=(1, 2, 3), keepdims=True)
        return (a - lo) / (hi - lo)

    np.testing.assert_allclose(fr["mse"], ((norm(fp) - norm(ft)) ** 2).mean(axis=(1, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(fr["mse_raw"], ((fp - ft) ** 2).mean(axis=(1, 2, 3)), rtol=1e-4)


# ------------------------------------------------------------------ regions


def test_regions_of_a_synthetic_mask(tmp_path, capsys):
    shape = (6, 7, 5)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    aff[:3, 3] = [-9, -12, -6]
    atlas = np.zeros(shape, np.int16)
    atlas[0:2] = 47  # Calcarine_L
    atlas[2:4] = 56  # Fusiform_R
    atlas[4, :3] = 71  # Precuneus_L: "Other"
    nib.save(nib.Nifti1Image(atlas, aff), tmp_path / "atlas.nii.gz")
    pd.DataFrame({"index": [47, 56, 71], "label": ["Calcarine_L_47", "Fusiform_R_56", "Precuneus_L_71"]}).to_csv(
        tmp_path / "atlas.tsv", sep="\t", index=False)
    mask = np.zeros(shape, np.uint8)
    mask[0, :2, :3] = 1  # 6 Calcarine
    mask[2, :3, :3] = 1  # 9 Fusiform
    mask[4, 0, :1] = 1  # 1 Other
    mask[5, :2, :2] = 1  # 4 unlabelled
    nib.save(nib.Nifti1Image(mask, aff), tmp_path / "mask.nii.gz")
    sal = np.zeros(shape, np.float32)
    sal[0, :2, :3] = 1  # all 6 Calcarine salient
    sal[5, 0, 0] = 1  # 1 unlabelled salient
    nib.save(nib.Nifti1Image(sal, aff), tmp_path / "sal.nii.gz")
    rc = main(["regions", str(tmp_path / "mask.nii.gz"), "--regions-atlas", str(tmp_path / "atlas.nii.gz"),
               "--regions-labels", str(tmp_path / "atlas.tsv"), "--saliency", str(tmp_path / "sal.nii.gz"), "--out",
               str(tmp_path / "o")])
    assert rc == 0 and "4 without an atlas label" in capsys.readouterr().out
    g = pd.read_csv(tmp_path / "o" / "regions_grouped.csv").set_index("region")
    assert list(g.columns[:2]) == ["A", "B"] and g.index[-1] == "unlabelled"
    assert (g.loc["Calc.", "A"], g.loc["Fusi.", "A"], g.loc["Other", "A"], g.loc["unlabelled", "A"]) == (6, 9, 1, 4)
    assert g.loc["Calc.", "A_pct_of_mask"] == pytest.approx(100 * 6 / 16, abs=0.01)  # unlabelled not counted
    assert g.loc["Calc.", "B_pct_of_salient"] == 100 and g.loc["unlabelled", "B"] == 1
    assert pd.isna(g.loc["unlabelled", "A_pct_of_mask"])
    full = pd.read_csv(tmp_path / "o" / "regions.csv").set_index("region")
    assert full.loc["Fusiform_R", "A"] == 9 and full.loc["Precuneus_L", "A_pct_of_mask"] == pytest.approx(6.25)


def test_regions_reproduce_table2_column_a(shared_data):
    """The paper's own 4,609-voxel mask in AAL3: Table II column A within 0.15 points."""
    at = shared_data / "atlases"
    r = mask_regions(shared_data / "paper" / "mask_schaefer1000_4609.npy",
                     at / "tpl-MNI152NLin6Asym_res-02_atlas-AAL3_dseg.nii.gz", at / "res-02_atlas-AAL3_dseg.tsv")
    got = r["grouped"].set_index("region")["A_pct_of_mask"]
    paper = {"Oc.I.": 4.5, "Oc.M.": 32.1, "Oc.S.": 7.6, "Temp.": 13.8, "Fusi.": 15.9, "Calc.": 13.4, "Ling.": 11.5,
             "Other": 1.4}
    for k, v in paper.items():
        assert abs(got[k] - v) <= 0.15, (k, got[k], v)
    assert r["n_voxels"] == 4609


def test_kong2022_ranges():
    from cinevox.data.masks import MaskError, parse_parcel_ranges

    ids = parse_parcel_ranges("kong2022")
    assert len(ids) == 31 + 23 + 31 + 25 and ids[0] == 420 and ids[-1] == 1000 and 451 not in ids
    assert parse_parcel_ranges("3-5,9") == [3, 4, 5, 9]
    with pytest.raises(MaskError, match="not a label index"):
        parse_parcel_ranges("4-a")


# ------------------------------------------------------------------ both profiles end to end


def test_authors_profile_end_to_end(tiny_sim, vgg_file, tmp_path):
    cfg = sim_config(tiny_sim, gap_trs=5, val_blocks=4, profile="authors", snr_film_weight="length")
    prep = prepare(tiny_sim, tmp_path / "prepared", cfg, progress=False)
    man = json.loads((prep / "manifest.json").read_text())["config"]
    assert (man["profile"], man["frame_intensity"], man["frame_sampling"], man["val_mode"]) == (
        "authors", "minmax", "linspace", "interleaved")
    assert man["snr_film_weight"] == "length"  # the explicit option beat the profile
    samples = pd.read_csv(prep / "samples.csv")
    film_a = samples[(samples.film == "FilmA") & (samples.split != "test")]
    assert list(film_a.index[film_a.split == "val"] - film_a.index[0]) == list(range(0, len(film_a), 5))
    tcfg = TrainConfig(model="encdec", epochs=1, batch_size=8, tensorboard=False, profile="authors",
                       loss=LossConfig(vgg_weights=str(vgg_file), perceptual_resize=48))
    run = train(prep, tmp_path / "run", tcfg, progress=False)
    rman = json.loads((run / "manifest.json").read_text())
    assert rman["config"]["profile"] == "authors" and rman["config"]["final_batchnorm"] is True
    assert rman["config"]["loss"]["perceptual_input"] == "authors" and rman["model"]["final_batchnorm"] is True
    m = evaluate(run, EvalConfig(n_perm=19, n_perm_frames=5, profile="authors"))
    assert json.loads((run / "eval" / "manifest.json").read_text())["config"]["profile"] == "authors"
    assert m["encoder"]["mse_mean"] == pytest.approx(2 * (1 - m["encoder"]["r_mean"]), abs=1e-4)
    assert main(["saliency", str(run), "--profile", "authors", "--saliency-frames", "raw"]) == 0
    sman = json.loads((run / "saliency" / "manifest.json").read_text())["config"]
    assert sman["profile"] == "authors" and sman["saliency_frames"] == "raw"
