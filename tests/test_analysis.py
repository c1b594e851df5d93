import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import sim_config, undescribed

from cinevox.analysis.lesion import LesionConfig, lesion, perturb
from cinevox.analysis.regions import paper_group, region_table, voxel_regions
from cinevox.analysis.saliency import SaliencyConfig, auc, saliency, ssim_saliency
from cinevox.cli import main
from cinevox.data.prepare import prepare
from cinevox.losses import LossConfig
from cinevox.metrics import ssim_per_image
from cinevox.models import Decoder
from cinevox.simulate.config import preset
from cinevox.simulate.run import simulate
from cinevox.training import TrainConfig, train


def _aal(shared_data):
    at = shared_data / "atlases"
    return (nib.load(at / "tpl-MNI152NLin6Asym_res-02_atlas-AAL3_dseg.nii.gz"), at / "res-02_atlas-AAL3_dseg.tsv",
            nib.load(at / "Schaefer2018_1000Parcels_7Networks_order_FSLMNI152_2mm.nii.gz"))


def test_region_table_on_a_calcarine_only_mask(shared_data):
    aal, labels, fsl = _aal(shared_data)
    # voxels of the FSL grid whose world position falls in AAL3 Calcarine_L (47)
    from cinevox.data.atlas import resample_labels

    lab = resample_labels(aal, fsl)
    ijk = np.argwhere(lab == 47)
    regions = voxel_regions(ijk, fsl.affine, fsl.shape, aal, labels)
    assert set(regions["label"]) == {"Calcarine_L"} and set(regions["group"]) == {"Calc."}
    salient = np.zeros(len(ijk), bool)
    salient[: len(ijk) // 4] = True
    full = region_table(regions, salient, "label")
    assert full.loc[0, "A_pct_of_mask"] == 100 and full.loc[0, "B_pct_of_salient"] == 100
    assert full.loc[0, "B_over_A_pct"] == pytest.approx(100 * (len(ijk) // 4) / len(ijk))
    grouped = region_table(regions, salient, "group").set_index("region")
    assert grouped.loc["Calc.", "A_pct_of_mask"] == 100 and grouped.drop("Calc.")["A"].sum() == 0
    assert list(grouped.index) == ["Oc.I.", "Oc.M.", "Oc.S.", "Fusi.", "Calc.", "Ling.", "Temp.", "Other", "unlabelled"]


def test_orientation_left_is_left(shared_data):
    aal, labels, fsl = _aal(shared_data)
    # MNI (-10, -84, 6) is in the left calcarine; (10, -84, 6) in the right
    inv = np.linalg.inv(fsl.affine)
    ijk = np.rint(nib.affines.apply_affine(inv, [[-10, -84, 6], [10, -84, 6]])).astype(int)
    regions = voxel_regions(ijk, fsl.affine, fsl.shape, aal, labels)
    assert list(regions["label"]) == ["Calcarine_L", "Calcarine_R"]


def test_paper_groups():
    assert paper_group("Temporal_Inf_L") == "Temp." and paper_group("Occipital_Mid_R") == "Oc.M."
    assert paper_group("Cuneus_L") == "Other" and paper_group("unlabelled") == "Other"


def test_batched_saliency_equals_per_sample_gradients():
    torch.manual_seed(0)
    dec = Decoder(13, frame_size=16).eval()
    x = np.random.default_rng(0).standard_normal((5, 13)).astype(np.float32)
    frames = np.random.default_rng(1).random((5, 3, 16, 16)).astype(np.float32)
    ref = np.zeros(13)
    for i in range(5):
        xi = torch.tensor(x[i : i + 1], requires_grad=True)
        ssim_per_image(dec(xi), torch.tensor(frames[i : i + 1])).sum().backward()
        ref += xi.grad.abs().numpy()[0]
    np.testing.assert_allclose(ssim_saliency(dec, x, frames, batch_size=2), ref, rtol=1e-5)
    # a voxel the decoder cannot see has zero saliency
    with torch.no_grad():
        dec.fc.weight[:, 4] = 0
    assert ssim_saliency(dec, x, frames)[4] == 0


def test_auc_and_perturb():
    assert auc(np.array([3, 4, 1, 2.0]), np.array([1, 1, 0, 0], bool)) == 1.0
    assert auc(np.array([1, 2, 3, 4.0]), np.array([1, 1, 0, 0], bool)) == 0.0
    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(perturb(x, np.array([1]), "zero")[:, 1], 0)
    np.testing.assert_array_equal(perturb(x, np.array([1]), "mean")[:, 1], x[:, 1].mean())
    np.testing.assert_array_equal(perturb(x, np.array([2]), "scale", 0.5)[:, 2], x[:, 2] / 2)
    assert (perturb(x, np.array([0]), "zero")[:, 1:] == x[:, 1:]).all()
    with pytest.raises(ValueError, match="lesion mode"):
        perturb(x, np.array([0]), "cut")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Simulated data where only Calcarine and Fusiform carry frame information (elsewhere the shared signal is
    non-visual), and a decoder trained on the measured voxels long enough to use them."""
    root = tmp_path_factory.mktemp("planted")
    sim = simulate(root / "bids", preset("tiny", n_subjects=8, log10_snr_mean=0.0, uninformative_visual_share=0.0,
                                         films={"FilmA": 200.0, "FilmB": 200.0, "YouAgain": 40.0}), progress=False)
    prep = prepare(sim, root / "prepared", sim_config(sim, frame_size=16, frames_per_tr=2, snr_top=1.0),
                   progress=False)
    return train(prep, root / "run", TrainConfig(model="decoder", epochs=60, lr=3e-3, weight_decay=1e-2,
                                                 batch_size=32, tensorboard=False, loss=LossConfig(beta=0.0)),
                 progress=False)


def test_saliency_singles_out_planted_regions(planted):
    summary = saliency(planted, SaliencyConfig(inputs="measured"))
    assert summary["auc_informative"] > 0.65
    out = planted / "saliency"
    for name in ("saliency.nii.gz", "salient_top.nii.gz", "regions.csv", "regions_grouped.csv", "fig5_saliency.png"):
        assert (out / name).is_file(), name
    top = nib.load(out / "salient_top.nii.gz").get_fdata()
    assert top.sum() == round(0.2 * summary["n_voxels"])
    grouped = pd.read_csv(out / "regions_grouped.csv").set_index("region")
    assert grouped["A"].sum() == summary["n_voxels"] and grouped["B"].sum() == top.sum()
    # the planted groups are over-represented among the salient voxels
    assert grouped.loc[["Calc.", "Fusi."], "B"].sum() / grouped.loc[["Calc.", "Fusi."], "A"].sum() > 0.2


def test_lesion_ranks_planted_regions_first(planted):
    df = lesion(planted, LesionConfig(level="label", n_null=12, min_voxels=8, n_boot=300))
    truth = json.loads((planted.parent / "bids/derivatives/simulation/truth.json").read_text())
    informative = set(truth["informative_labels"])
    df["planted_truth"] = df["region"].isin(informative)
    assert (df["planted_truth"] == df["planted"]).all()  # the command's own truth check names the same regions
    assert df.loc[df.planted, "z"].mean() > df.loc[~df.planted, "z"].mean() + 0.5
    assert df.iloc[0]["planted"]
    assert (planted / "lesion" / "lesion.png").is_file()
    s = json.loads((planted / "lesion" / "summary.json").read_text())
    print("lesion AUC, planted regions (D model, measured voxels):", s["auc_planted"])
    assert s["auc_planted"]["ident"] > 0.7 and s["auc_planted"]["corr"] > 0.8  # measured 0.77 and 0.87 (SSIM 0.81)
    assert (df["ident_drop_ci_low"] <= df["ident_drop"]).all() and (df["ident_drop"] <= df["ident_drop_ci_high"]).all()
    # the planted regions' identification drops are above their random-set nulls
    assert (df.loc[df.planted, "ident_null_percentile"] >= 90).mean() >= 0.5


def test_lesion_scores_restated():
    """Frame correlation against numpy; identification: a perfect decoder identifies every frame (1.0), a
    decoder that outputs its mean image whatever the input sits at chance (0.5), and SSIM rewards that mean image
    over a noisy but faithful reconstruction, which identification does not."""
    from scipy.ndimage import gaussian_filter

    from cinevox.analysis.lesion import _pooled, frame_correlations, identification
    from cinevox.metrics import ssim_frames

    rng = np.random.default_rng(0)  # smooth frames sharing a layout, as films' frames do
    layout = gaussian_filter(rng.normal(0, 1, (1, 3, 24, 20)), (0, 0, 4, 4)) * 3
    frames = np.clip(0.5 + 0.25 * (layout + 1.5 * gaussian_filter(rng.normal(0, 1, (30, 3, 24, 20)), (0, 0, 3, 3))),
                     0, 1).astype(np.float32)
    noisy = np.clip(frames + rng.normal(0, 0.3, frames.shape), 0, 1).astype(np.float32)
    ref = [np.corrcoef(noisy[i].ravel(), frames[i].ravel())[0, 1] for i in range(30)]
    np.testing.assert_allclose(frame_correlations(noisy, frames), ref, rtol=1e-9)
    pooled = _pooled(frames)
    assert identification(frames, pooled).mean() == pytest.approx(1.0)
    mean_img = np.repeat(frames.mean(0, keepdims=True), 30, 0)
    assert identification(mean_img, pooled).mean() == pytest.approx(0.5, abs=0.05)
    assert ssim_frames(mean_img, frames).mean() > ssim_frames(noisy, frames).mean() + 0.3  # SSIM prefers the mean
    assert identification(noisy, pooled).mean() > 0.9  # identification does not


def test_cli_saliency_and_lesion_on_end_to_end_run(tiny_runs, capsys):
    run = tiny_runs["encdec"]
    assert main(["saliency", str(run), "--top", "0.1", "-q"]) == 0
    assert "Top 10 %" in capsys.readouterr().out
    assert main(["lesion", str(run), "--n-null", "5", "--mode", "mean", "-q"]) == 0
    table = pd.read_csv(run / "lesion" / "lesion.csv")
    assert {"region", "n_voxels", "ssim_drop", "null_mean", "z", "p_value"} <= set(table.columns)
    # every unprefixed column is the ranking score's (default ident), never SSIM's beside ident's z (issue 27)
    for c in ("null_mean", "null_sd", "z", "p_value"):
        np.testing.assert_array_equal(table[c], table[f"ident_{c}"])
    assert not (table["null_mean"] == table["ssim_null_mean"]).all()
    assert not undescribed(run / "lesion", "RUN_DIR/lesion", "lesion")
    assert main(["saliency", str(tiny_runs["encoder"])]) == 2  # no decoder: clear error
    assert "no decoder" in capsys.readouterr().err
