import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import AFFINE, SHAPE, cfg_for, make_bids, sim_config, write_film

from cinevox.cli import main
from cinevox.data.atlas import resample_labels
from cinevox.data.bids import BIDSError
from cinevox.data.dataset import ClipDataset, PreparedData
from cinevox.data.masks import MaskError, atlas_visual_mask, load_mask
from cinevox.data.nifti import NiftiError
from cinevox.data.prepare import prepare
from cinevox.data.splits import split_film
from cinevox.data.video import VideoError


@pytest.fixture(scope="module")
def prepared(tiny_sim, tmp_path_factory) -> Path:
    sim = tiny_sim  # the session's simulated dataset (tests/conftest.py), prepared here with other options
    cfg = sim_config(sim, frames_per_tr=8, snr="ceiling", snr_top=0.3)
    return prepare(sim, tmp_path_factory.mktemp("prep") / "p", cfg, progress=False)


def test_counts_and_split_sizes(prepared, tiny_sim):
    sim = tiny_sim
    m = json.loads((prepared / "manifest.json").read_text())
    truth = json.loads((sim / "derivatives/simulation/truth.json").read_text())
    samples = pd.read_csv(prepared / "samples.csv")
    for film, info in truth["films"].items():
        rows = samples[samples.film == film]
        assert len(rows) == info["n_trs"] == m["films"][film]["n_trs"]
        if film == "YouAgain":
            assert (rows.split == "test").all()
        else:
            n_test = (rows.split == "test").sum()
            assert n_test == info["n_trs"] - int(0.8 * info["n_trs"])
            assert (rows.split == "test").to_numpy()[-n_test:].all()  # the last 20 %
            n_val, n_train = (rows.split == "val").sum(), (rows.split == "train").sum()
            assert n_val > 0 and n_train > 2 * n_val
    vox = np.load(prepared / "voxels.npy")
    assert vox.shape == (len(samples), m["n_voxels"])
    assert m["n_voxels"] == round(0.3 * m["n_visual_voxels"])
    assert nib.load(prepared / "mask.nii.gz").get_fdata().sum() == m["n_voxels"]
    snr = nib.load(prepared / "snr.nii.gz")
    np.testing.assert_allclose(snr.affine, truth["grid"]["affine"])
    subj = np.load(prepared / "subjects_test.npy")
    assert subj.shape == (3, (samples.split == "test").sum(), m["n_voxels"])
    # the average of the subjects' test data is the stored test average
    np.testing.assert_allclose(np.nanmean(subj, 0), vox[samples.split == "test"], atol=1e-5)
    ds = ClipDataset(PreparedData(prepared), "train")
    clip, v, frame = ds[3]
    assert clip.shape == (3, 32, 32, 8) and frame.shape == (3, 32, 32) and v.shape == (m["n_voxels"],)
    assert torch_equal(frame, clip[..., 3])


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_snr_selection_recovers_true_snr(prepared, tiny_sim):
    sim = tiny_sim
    """Selected voxels (noise-ceiling SNR) have clearly higher true SNR than the visual voxels left out."""
    true_snr = nib.load(sim / "derivatives/simulation/snr.nii.gz").get_fdata()
    sel = nib.load(prepared / "mask.nii.gz").get_fdata() > 0
    vis = nib.load(prepared / "visual_mask.nii.gz").get_fdata() > 0
    assert true_snr[sel].mean() > 2 * true_snr[vis & ~sel].mean()


@pytest.mark.parametrize("method", ["paper", "ceiling"])
def test_snr_selection_recovers_planted_voxels(tmp_path, method):
    planted = np.zeros(SHAPE, bool)
    planted[2, 3, 4] = planted[4, 5, 6] = planted[3, 3, 3] = planted[5, 6, 7] = True
    rng = np.random.default_rng(5)

    def signal(film, n):
        s = np.zeros((n, *SHAPE))
        s[:, planted] = 3 * rng.standard_normal((n, 1))
        return s

    root = make_bids(tmp_path / "ds", {"FilmA": 30, "YouAgain": 20}, signal=signal)
    out = prepare(root, tmp_path / "p", cfg_for(root, snr=method, snr_top=4 / 125), progress=False)
    sel = nib.load(out / "mask.nii.gz").get_fdata() > 0
    assert (sel == planted).all()


def test_alignment_marker_frame_and_delay(tmp_path):
    tr, fps, onset_trs = 1.3, 10.0, 3
    marker_tr = 7
    marker_frame = int(np.ceil(marker_tr * tr * fps)) + 1  # a frame inside film TR 7
    spike = np.zeros(SHAPE, bool)
    spike[3, 4, 5] = True

    def signal(film, n):
        s = np.zeros((n, *SHAPE))
        s[onset_trs + marker_tr + 4, spike] = 50.0  # the BOLD response 4 TRs after the marker
        return s

    root = make_bids(tmp_path / "ds", {"FilmA": 25, "YouAgain": 12}, signal=signal, noise=0.1,
                     markers={"FilmA": marker_frame}, film_fps=fps)
    out = prepare(root, tmp_path / "p", cfg_for(root), progress=False)
    data = PreparedData(out)
    rows = data.samples[data.samples.film == "FilmA"]
    white = [int(r.tr) for r in rows.itertuples() if (data.clip(r.sample) > 240).all(axis=(1, 2, 3)).any()]
    assert white == [marker_tr]
    ijk = np.load(out / "voxels_ijk.npy")
    k = int(np.flatnonzero((ijk == [3, 4, 5]).all(1))[0])
    assert int(np.argmax(data.voxels[rows.index, k])) == marker_tr


def test_split_modes():
    lab = split_film(100, False, mode="interleaved")
    assert (lab[80:] == "test").all() and list(np.flatnonzero(lab == "val")) == list(range(0, 80, 5))
    lab = split_film(200, False, mode="blocked", gap=4, n_blocks=4)
    val, train = np.flatnonzero(lab == "val"), np.flatnonzero(lab == "train")
    assert (lab[160:] == "test").all()
    assert np.abs(train[:, None] - val[None, :]).min() > 4  # no training TR within the gap of a validation TR
    assert 0.15 < len(val) / 160 < 0.25
    assert (split_film(50, True) == "test").all()
    with pytest.raises(ValueError, match="validation mode"):
        split_film(50, False, mode="random")


def test_resume_and_invalidation(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 20, "YouAgain": 12})
    out = prepare(root, tmp_path / "p", cfg_for(root), progress=False)
    cache = sorted((out / "cache" / "runs").glob("*.npz"))
    before = {p.name: p.stat().st_mtime_ns for p in cache}
    vox1 = np.load(out / "voxels.npy")
    prepare(root, out, cfg_for(root), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in cache} == before  # nothing redone
    np.testing.assert_array_equal(np.load(out / "voxels.npy"), vox1)
    # change one input: exactly that run is redone
    bold = next((root / "derivatives").rglob("sub-S02_ses-1_task-FilmA_*.nii.gz"))
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2 + 1, img.affine, img.header), bold)
    os.utime(bold, ns=(1, 1))
    prepare(root, out, cfg_for(root), progress=False)
    changed = {p.name for p in cache if p.stat().st_mtime_ns != before[p.name]}
    assert changed == {"sub-S02_ses-1_task-FilmA.npz"}
    # a changed option (delay) invalidates every run
    prepare(root, out, cfg_for(root, delay_trs=3), progress=False)
    assert all(p.stat().st_mtime_ns != before[p.name] for p in cache)


def test_parallel_jobs_give_same_result(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 20, "YouAgain": 12})
    a = prepare(root, tmp_path / "a", cfg_for(root), progress=False)
    b = prepare(root, tmp_path / "b", cfg_for(root, jobs=2), progress=False)
    np.testing.assert_array_equal(np.load(a / "voxels.npy"), np.load(b / "voxels.npy"))


def test_missing_film_for_a_subject_is_averaged_over_viewers(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 20, "YouAgain": 12})
    for p in root.rglob("sub-S03_ses-1_task-*FilmA*"):
        p.unlink()
    out = prepare(root, tmp_path / "p", cfg_for(root), progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["viewers"]["FilmA"] == ["S01", "S02"] and m["missing_films"]["S03"] == ["FilmA"]
    subj = np.load(out / "subjects_test.npy")
    samples = pd.read_csv(out / "samples.csv")
    film_a = (samples[samples.split == "test"].film == "FilmA").to_numpy()
    assert np.isnan(subj[2][film_a]).all() and not np.isnan(subj[2][~film_a]).any()


# ------------------------------------------------------------------ bad input
def test_error_mask_affine_mismatch(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12})
    bad = tmp_path / "bad_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE * 2), bad)
    with pytest.raises(MaskError, match="affine"):
        prepare(root, tmp_path / "p", cfg_for(root, mask=str(bad)), progress=False)
    nib.save(nib.Nifti1Image(np.ones((8, 7, 9), np.uint8), AFFINE), bad)
    with pytest.raises(MaskError, match=r"shape \(8, 7, 9\)"):
        prepare(root, tmp_path / "p", cfg_for(root, mask=str(bad)), progress=False)


def test_error_3d_bold(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12})
    bold = next((root / "derivatives").rglob("sub-S02_*FilmA*.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), AFFINE), bold)
    with pytest.raises(NiftiError, match=f"{bold.name}.*4D"):
        prepare(root, tmp_path / "p", cfg_for(root), progress=False)


def test_nan_voxels_excluded_and_counted_nan_runs_rejected(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12})
    bold = next((root / "derivatives").rglob("sub-S02_*FilmA*.nii.gz"))
    img = nib.load(bold)
    d = np.asarray(img.dataobj).copy()
    d[2, 3, 4, 10] = np.nan  # inside the film segment (TRs 7..21)
    d[3, 3, 4, :] = 7.0  # constant voxel
    nib.save(nib.Nifti1Image(d, img.affine, img.header), bold)
    out = prepare(root, tmp_path / "p", cfg_for(root), progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_excluded_voxels"] == 2 and m["n_voxels"] == m["n_visual_voxels"] - 2
    assert nib.load(out / "mask.nii.gz").get_fdata()[2, 3, 4] == 0
    d[..., 8] = np.inf
    nib.save(nib.Nifti1Image(d, img.affine, img.header), bold)
    with pytest.raises(NiftiError, match=f"{bold.name}: NaN/Inf"):
        prepare(root, tmp_path / "p2", cfg_for(root), progress=False)


def test_error_run_shorter_than_events(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12}, tail_trs=1)
    with pytest.raises(BIDSError, match="shorter than its events: 19 volumes, .* need 22: 3 missing"):
        prepare(root, tmp_path / "p", cfg_for(root), progress=False)


def test_error_film_missing_or_corrupt(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12})
    (root / "stimuli" / "YouAgain.mp4").unlink()
    with pytest.raises(VideoError, match="'YouAgain' missing"):
        prepare(root, tmp_path / "p", cfg_for(root), progress=False)
    (root / "stimuli" / "YouAgain.mp4").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(VideoError, match="YouAgain.mp4"):
        prepare(root, tmp_path / "p", cfg_for(root), progress=False)
    write_film(root / "stimuli" / "YouAgain.mp4", 20)  # 2 s: far shorter than 12 TRs
    with pytest.raises(VideoError, match="too short"):
        prepare(root, tmp_path / "p", cfg_for(root), progress=False)


def test_error_tr_header_vs_sidecar(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12}, sidecar_tr=2.0)
    with pytest.raises(NiftiError, match=r"header \(1.3"):
        prepare(root, tmp_path / "p", cfg_for(root), progress=False)


def test_error_no_runs_and_cli_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BIDSError, match="no film runs"):
        prepare(tmp_path / "empty", tmp_path / "p", cfg_for(tmp_path), progress=False)
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "p"), "--films-dir", str(tmp_path)]) == 2
    assert "no film runs" in capsys.readouterr().err


# ------------------------------------------------------------------ real atlases
def test_real_schaefer_mask_and_authors_npy(shared_data):
    at = shared_data / "atlases"
    img = nib.load(at / "Schaefer2018_1000Parcels_7Networks_order_FSLMNI152_2mm.nii.gz")
    mask = atlas_visual_mask(img.get_filename(),
                             at / "tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-1000Parcels7Networks_dseg.tsv",
                             img.shape, img.affine)
    assert mask.sum() == 21881
    npy = load_mask(shared_data / "paper" / "mask_schaefer1000_4609.npy", img.shape, img.affine, "BOLD")
    assert npy.sum() == 4609
    assert (npy & mask).sum() == 4385  # as documented for the paper's mask
    with pytest.raises(MaskError, match=r"shape \(91, 109, 91\) is different from BOLD shape \(7, 8, 9\)"):
        load_mask(shared_data / "paper" / "mask_schaefer1000_4609.npy", (7, 8, 9), AFFINE, "BOLD")


def test_label_resampling_matches_nilearn(shared_data):
    from nilearn.image import resample_to_img

    at = shared_data / "atlases"
    aal = nib.load(at / "tpl-MNI152NLin6Asym_res-02_atlas-AAL3_dseg.nii.gz")
    target = nib.load(at / "Schaefer2018_1000Parcels_7Networks_order_FSLMNI152_2mm.nii.gz")
    ours = resample_labels(aal, target)
    ref = np.asarray(resample_to_img(aal, target, interpolation="nearest", force_resample=True,
                                     copy_header=True).dataobj).astype(int)
    assert (ours == ref).mean() > 0.999
    # the AAL3 array is left-right flipped relative to the FSL grid: Calcarine_L (47) must land at x < 0
    ijk = np.argwhere(ours == 47)
    assert nib.affines.apply_affine(target.affine, ijk)[:, 0].mean() < 0


def test_cli_with_a_config_file(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 20, "YouAgain": 12})
    conf = tmp_path / "prepare.toml"
    conf.write_text(f'films_dir = "{root / "stimuli"}"\nmask = "{root / "mask.nii.gz"}"\nframe_size = 16\n'
                    'frames_per_tr = 4\ngap_trs = 1\nval_blocks = 2\nsnr_top = 0.5\n')
    assert main(["prepare", str(root), str(tmp_path / "p"), "--config", str(conf), "--delay-trs", "3", "-q"]) == 0
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["config"]["delay_trs"] == 3 and m["config"]["frame_size"] == 16 and m["n_voxels"] == 62
    conf.write_text("frame_sise = 16\n")
    assert main(["prepare", str(root), str(tmp_path / "q"), "--config", str(conf)]) == 2


def test_label_tables_in_every_format(tmp_path):
    from cinevox.data.atlas import read_label_table

    (tmp_path / "a.tsv").write_text("index\tname\n1\t7Networks_LH_Vis_1\n2\t7Networks_LH_Default_2\n")
    (tmp_path / "b.txt").write_text("1\t7Networks_LH_Vis_1\t120\t18\t134\t0\n3\t7Networks_RH_Vis_3\t1\t2\t3\t0\n")
    (tmp_path / "c.txt").write_text("Background\n7Networks_LH_Vis_1\n")
    assert read_label_table(tmp_path / "a.tsv") == {1: "7Networks_LH_Vis_1", 2: "7Networks_LH_Default_2"}
    assert read_label_table(tmp_path / "b.txt") == {1: "7Networks_LH_Vis_1", 3: "7Networks_RH_Vis_3"}
    assert read_label_table(tmp_path / "c.txt") == {1: "Background", 2: "7Networks_LH_Vis_1"}


def test_a_rescanned_film_uses_the_latest_session(tmp_path, caplog):
    from cinevox.data.bids import discover_runs

    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12})
    for p in list(root.rglob("sub-S02_ses-1_task-*FilmA*")):
        q = Path(str(p).replace("ses-1", "ses-5"))
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_bytes(p.read_bytes())
    runs = discover_runs(root)
    s02 = [r for r in runs if r.subject == "S02" and r.film == "FilmA"]
    assert len(s02) == 1 and s02[0].session == "5" and "several sessions" in caplog.text
    assert len(runs) == 6


def test_samples_say_where_each_clip_is_in_its_film(tmp_path):
    root = make_bids(tmp_path / "ds", {"FilmA": 15, "YouAgain": 12})
    out = prepare(root, tmp_path / "p", cfg_for(root), progress=False)
    s = pd.read_csv(out / "samples.csv")
    assert set(s["stim_file"]) == {"FilmA.mp4", "YouAgain.mp4"}
    np.testing.assert_allclose(s["stim_time"], s["tr"] * 1.3, atol=1e-6)  # Emo-FilM: the film starts the clock
    t = pd.read_csv(out / "timeline.tsv", sep="\t")
    assert len(t) == 6 and set(t["n_trs"]) == {15, 12} and (t["first_volume"] == 3 + 4).all()
