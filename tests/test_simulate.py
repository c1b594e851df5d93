import hashlib
import json
import re
import shutil
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cinevox.cli import main
from cinevox.simulate.brain import analytic_ceiling
from cinevox.simulate.config import EMOFILM_FILMS, preset
from cinevox.simulate.run import simulate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return simulate(tmp_path_factory.mktemp("sim") / "ds", preset("tiny"), progress=False)


def _pattern(rel: str, films) -> str:
    rel = re.sub(r"sub-S\d\d", "sub-X", rel)
    rel = re.sub(r"ses-\d", "ses-Y", rel)
    for f in films:
        rel = rel.replace(f"task-{f}_", "task-FILM_").replace(f"acq-{f}_", "acq-FILM_")
    return rel


def test_layout_matches_real_ds004892(tiny, shared_data):
    real = shared_data / "emofilm" / "ds004892"
    real_patterns = {_pattern(str(p.relative_to(real)), EMOFILM_FILMS) for p in real.rglob("*") if p.is_file()}
    index = pd.read_csv(shared_data / "emofilm" / "ds004892_runs_index.tsv", sep="\t")
    real_patterns |= {_pattern(p, EMOFILM_FILMS) for p in index["mni_ppres_bold_path"].dropna()}
    films = json.loads((tiny / "derivatives/simulation/truth.json").read_text())["films"]
    sim_files = [p for p in tiny.rglob("*") if p.is_file() and "simulation" not in p.parts and "stimuli" not in p.parts]
    sim_patterns = {_pattern(str(p.relative_to(tiny)), films) for p in sim_files}
    missing = sim_patterns - real_patterns
    assert not missing, f"files not named as in ds004892: {sorted(missing)}"
    for must in ["derivatives/preprocessing/sub-X/ses-Y/func/sub-X_ses-Y_task-FILM_space-MNI_desc-ppres_bold.nii.gz",
                 "sub-X/ses-Y/func/sub-X_ses-Y_task-scan_acq-FILM_events.tsv",
                 "sub-X/ses-Y/func/sub-X_ses-Y_task-FILM_bold.json", "participants.tsv"]:
        assert must in sim_patterns
    real_ev = pd.read_csv(next(real.rglob("*_events.tsv")), sep="\t")
    sim_ev = pd.read_csv(next(tiny.rglob("*_events.tsv")), sep="\t")
    assert list(sim_ev.columns) == list(real_ev.columns)
    assert list(sim_ev.trial_type) == list(real_ev.trial_type) == ["rest", "film", "rest"]


def test_nifti_headers(tiny):
    truth = json.loads((tiny / "derivatives/simulation/truth.json").read_text())
    bolds = sorted(tiny.rglob("*_desc-ppres_bold.nii.gz"))
    assert len(bolds) == 9
    for p in bolds[:3]:
        img = nib.load(p)
        assert img.ndim == 4 and img.get_data_dtype() == np.float32
        assert img.header.get_zooms()[3] == pytest.approx(1.3)
        assert img.header.get_xyzt_units() == ("mm", "sec")
        np.testing.assert_allclose(img.affine, truth["grid"]["affine"])
        assert img.header["sform_code"] == 4  # MNI
        # the grid is MNI-aligned like FSL's: voxel (45, 63, 36) of the 2 mm grid is the origin
        assert nib.affines.apply_affine(img.affine, [0, 0, 0]) == pytest.approx([90, -126, -72])
        film = re.search(r"task-(\w+?)_space", p.name).group(1)
        assert img.shape[3] == truth["films"][film]["run_trs"]
        side = json.loads((tiny / p.relative_to(tiny / "derivatives/preprocessing").parent
                           / p.name.replace("_space-MNI_desc-ppres", "")).with_suffix("").with_suffix(".json")
                          .read_text())
        assert side["RepetitionTime"] == pytest.approx(1.3)


def test_films_decode_with_right_count_and_fps(tiny):
    cfg = preset("tiny")
    for film, dur in cfg.films.items():
        with av.open(str(tiny / "stimuli" / f"{film}.mp4")) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(s))
            assert float(s.average_rate) == pytest.approx(cfg.fps)
            assert (s.codec_context.width, s.codec_context.height) == (cfg.film_width, cfg.film_height)
        assert n == round(dur * cfg.fps)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    cfg = dict(n_subjects=2, films={"FilmA": 20.0, "YouAgain": 16.0})
    a = _digest(simulate(tmp_path / "a", preset("tiny", **cfg), progress=False))
    b = _digest(simulate(tmp_path / "b", preset("tiny", **cfg), progress=False))
    c = _digest(simulate(tmp_path / "c", preset("tiny", seed=1, **cfg), progress=False))
    assert a == b
    assert a.keys() == c.keys() and a != c


def _film_runs(root: Path, film: str):
    """``(truth, visual mask, z-scored film segment of every subject's run (n_trs, V))`` of a simulation."""
    sim = root / "derivatives/simulation"
    truth = json.loads((sim / "truth.json").read_text())
    vis = nib.load(sim / "visual_mask.nii.gz").get_fdata() > 0
    seg = truth["films"][film]["film_segment_trs"]
    runs = []
    for p in sorted(root.rglob(f"*task-{film}_space-MNI_desc-ppres_bold.nii.gz")):
        d = nib.load(p).get_fdata()[vis].T[seg[0] : seg[1]]
        runs.append((d - d.mean(0)) / d.std(0))
    return truth, vis, runs


def test_noise_ceiling_is_the_true_one(tmp_path):
    """Correlating the noise-free signal with simulated subject averages recovers the written ceiling."""
    root = simulate(tmp_path / "ds", preset("tiny", n_subjects=6, films={"FilmA": 260.0, "YouAgain": 20.0}),
                    progress=False)
    sim = root / "derivatives/simulation"
    truth, vis, runs = _film_runs(root, "FilmA")
    assert len(runs) == 6
    signal = np.load(sim / "signal" / "FilmA.npy")
    avg = np.mean(runs, axis=0)
    emp = np.array([np.corrcoef(avg[:, v], signal[:, v])[0, 1] for v in range(signal.shape[1])])
    gains = np.array([s["gain"] for s in truth["subjects"].values()])
    amp = np.load(sim / "tuning.npz")["amplitude"]
    analytic = analytic_ceiling(amp, gains, truth["config"]["drift_sd"])
    written = nib.load(sim / "noise_ceiling.nii.gz").get_fdata()[vis]
    # the written map is the TR-weighted mean over films; all subjects saw both films here
    np.testing.assert_allclose(written, analytic, atol=1e-5)
    assert np.corrcoef(emp, analytic)[0, 1] > 0.9
    assert abs(emp.mean() - analytic.mean()) < 0.03
    assert np.abs(emp - analytic).mean() < 0.07
    # and the ceiling must actually vary (weak and strong voxels)
    assert analytic.max() - analytic.min() > 0.3


def test_planted_regions_differ_in_tuning(tiny):
    t = np.load(tiny / "derivatives/simulation/tuning.npz")
    ch = list(t["channels"])
    base = np.array([lb.rsplit("_", 1)[0] for lb in t["label"]])
    w, prf = t["weights"], t["prf"]
    calc, fusi, occm, temp = (base == "Calcarine"), (base == "Fusiform"), (base == "Occipital_Mid"), (
        np.char.startswith(base, "Temporal"))
    assert calc.sum() > 5 and fusi.sum() > 5 and occm.sum() > 5 and temp.sum() > 5
    # early visual: small pRFs, edges; fusiform: faces; lateral occipital: objects; temporal: motion
    assert prf[calc, 2].mean() < prf[occm, 2].mean() < prf[fusi, 2].mean()
    assert w[calc].mean(0).argmax() == ch.index("edges_fine")
    assert w[fusi].mean(0).argmax() == ch.index("faces")
    assert w[occm].mean(0).argmax() == ch.index("objects")
    assert w[temp].mean(0).argmax() == ch.index("motion")
    # tuning varies smoothly within a region, it is not one constant per region
    assert w[calc, ch.index("edges_fine")].std() > 0.05
    # informative regions are driven by the frames; elsewhere the shared signal is mostly non-visual
    assert (t["visual_share"][t["informative"]] == 1).all()
    assert (t["visual_share"][~t["informative"]] < 0.5).all()
    informative = nib.load(tiny / "derivatives/simulation/informative.nii.gz").get_fdata()
    assert informative.sum() == t["informative"].sum()


def test_real_atlases_full_grid(tmp_path, shared_data):
    at = shared_data / "atlases"
    cfg = preset("tiny", n_subjects=2, films={"FilmA": 16.0, "YouAgain": 16.0}, washout=1.3, region_scale=1.0,
                 atlas=str(at / "Schaefer2018_1000Parcels_7Networks_order_FSLMNI152_2mm.nii.gz"),
                 atlas_labels=str(at / "tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-1000Parcels7Networks_dseg.tsv"),
                 regions_atlas=str(at / "tpl-MNI152NLin6Asym_res-02_atlas-AAL3_dseg.nii.gz"),
                 regions_labels=str(at / "res-02_atlas-AAL3_dseg.tsv"))
    root = simulate(tmp_path / "ds", cfg, progress=False)
    img = nib.load(next(root.rglob("*_bold.nii.gz")))
    assert img.shape[:3] == (91, 109, 91)
    truth = json.loads((root / "derivatives/simulation/truth.json").read_text())
    assert truth["n_visual_voxels"] == 21881  # the 162 `_Vis_` parcels
    regions = truth["regions"]
    assert regions["Calcarine_L"]["n_voxels"] > 100 and regions["Fusiform_R"]["n_voxels"] > 50
    # calcarine voxels are medial and posterior, whatever the AAL3 file's orientation
    reg = nib.load(root / "derivatives/simulation/regions.nii.gz")
    ijk = np.argwhere(np.asarray(reg.dataobj) == 47)  # Calcarine_L
    xyz = nib.affines.apply_affine(reg.affine, ijk)
    assert xyz[:, 0].mean() < 0 and xyz[:, 1].mean() < -60


def test_emofilm_preset_streams_subsets(tmp_path):
    cfg = preset("emofilm", subjects=["S03", "S07"], max_trs=12, washout=2.6, voxel_size=6.0,
                 films={"BigBuckBunny": 490.0, "YouAgain": 798.0})
    root = simulate(tmp_path / "ds", cfg, progress=False)
    subs = sorted(p.name for p in root.glob("sub-*"))
    assert subs == ["sub-S03", "sub-S07"]
    truth = json.loads((root / "derivatives/simulation/truth.json").read_text())
    assert truth["films"]["BigBuckBunny"]["n_trs"] == 12
    assert set(truth["subjects"]) == {"S03", "S07"}


def test_bad_options_give_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="fewer than 10 TRs"):
        simulate(tmp_path / "x", preset("tiny", films={"A": 5.0}), progress=False)
    with pytest.raises(ValueError, match="alphanumeric"):
        simulate(tmp_path / "x", preset("tiny", films={"Film-A": 50.0}), progress=False)
    assert main(["simulate", str(tmp_path / "y"), "--subjects", "S09"]) == 2
    assert "not among" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "y"), "--only-films", "Nope"]) == 2
    assert "not films of preset" in capsys.readouterr().err


def test_real_films_only_brains_are_simulated(tmp_path, shared_data):
    films = tmp_path / "films"
    films.mkdir()
    (films / "BigBuckBunny.webm").write_bytes((shared_data / "video" / "big_buck_bunny_0_30.webm").read_bytes())
    (films / "YouAgain.mp4").write_bytes((shared_data / "video" / "washout_90.mp4").read_bytes())
    root = simulate(tmp_path / "ds", preset("tiny", n_subjects=2, films_dir=str(films), max_trs=15), progress=False)
    truth = json.loads((root / "derivatives/simulation/truth.json").read_text())
    assert set(truth["films"]) == {"BigBuckBunny", "YouAgain"}
    assert truth["films"]["BigBuckBunny"]["n_trs"] == 15
    assert (root / "stimuli" / "BigBuckBunny.webm").is_file()
    sig = np.load(root / "derivatives/simulation/signal/BigBuckBunny.npy")
    assert sig.shape == (15, truth["n_visual_voxels"]) and np.isfinite(sig).all() and sig.std() > 0.5
    # the channel drives of a real film are read back from its source and rebuild its stimulus signal
    from cinevox.metrics import pearson_columns
    from cinevox.simulate.channels import channel_drives

    d = channel_drives(root)["BigBuckBunny"]
    stim = np.load(root / "derivatives/simulation/stimulus_signal/BigBuckBunny.npy")
    w = np.load(root / "derivatives/simulation/tuning.npz")["weights"]
    live = stim.std(0) > 0
    assert live.mean() > 0.9
    assert pearson_columns(np.einsum("kcv,vc->kv", d, w), stim)[live].min() > 0.9999


def test_subjects_can_miss_films(tmp_path):
    root = simulate(tmp_path / "ds", preset("tiny", n_subjects=6, p_missing=0.4), progress=False)
    truth = json.loads((root / "derivatives/simulation/truth.json").read_text())
    viewers = {f: set(v["viewers"]) for f, v in truth["films"].items()}
    assert all(len(v) >= 2 for v in viewers.values())
    assert any(len(v) < 6 for v in viewers.values())
    for film, who in viewers.items():
        for s in truth["subjects"]:
            runs = list(root.rglob(f"sub-{s}_ses-*_task-{film}_space-MNI_desc-ppres_bold.nii.gz"))
            assert len(runs) == (s in who)


def test_explainable_ceiling_is_below_the_noise_ceiling_and_true(tmp_path):
    """corr(stimulus-driven part, simulated subject average) recovers the written explainable ceiling."""
    root = simulate(tmp_path / "ds", preset("tiny", n_subjects=5, films={"FilmA": 260.0}), progress=False)
    sim = root / "derivatives/simulation"
    _truth, vis, runs = _film_runs(root, "FilmA")
    avg = np.mean(runs, axis=0)
    stim = np.load(sim / "stimulus_signal" / "FilmA.npy")
    emp = np.array([np.corrcoef(avg[:, v], stim[:, v])[0, 1] for v in range(stim.shape[1])])
    written = nib.load(sim / "explainable_ceiling.nii.gz").get_fdata()[vis]
    noise = nib.load(sim / "noise_ceiling.nii.gz").get_fdata()[vis]
    assert (written <= noise + 1e-6).all()
    informative = nib.load(sim / "informative.nii.gz").get_fdata()[vis] > 0
    # outside the planted regions most of the reliable signal is not from the film
    assert written[~informative].mean() < 0.6 * noise[~informative].mean()
    np.testing.assert_allclose(written[informative], noise[informative], atol=0.02)
    assert np.corrcoef(emp, written)[0, 1] > 0.9
    assert abs(emp.mean() - written.mean()) < 0.03 and np.abs(emp - written).mean() < 0.07


def test_channel_drives_rebuild_the_stimulus_signal(tiny, tmp_path):
    """The truth split by tuning channel (the ground truth of tuning probes): sum_c w_vc D_c,v, z-scored, is the
    simulator's stimulus signal to float precision; another voxel's weights, or the drives 3 TRs late (negative
    controls), do not rebuild it. A subset of voxels gives the same columns."""
    from cinevox.metrics import pearson_columns
    from cinevox.simulate.channels import channel_drives, probe_tuning

    sim = tiny / "derivatives" / "simulation"
    w = np.load(sim / "tuning.npz")["weights"]
    drives = channel_drives(tiny)
    other = np.random.default_rng(0).permutation(len(w))
    for film, d in drives.items():
        stim = np.load(sim / "stimulus_signal" / f"{film}.npy")
        assert d.shape == (len(stim), w.shape[1], len(w))
        live = stim.std(0) > 0  # true null voxels (if any) have no stimulus signal
        r = pearson_columns(np.einsum("kcv,vc->kv", d, w), stim)[live]
        assert r.min() > 0.9999
        assert np.median(pearson_columns(np.einsum("kcv,vc->kv", d, w[other]), stim)[live]) < 0.97
        assert np.median(pearson_columns(np.einsum("kcv,vc->kv", np.roll(d, 3, 0), w), stim)[live]) < 0.6
    # the probe: weights recovered from the noise-free signal follow the truth; from shuffled rows, they do not
    films = np.concatenate([[f] * len(d) for f, d in drives.items()])
    trs = np.concatenate([np.arange(len(d)) for d in drives.values()])
    stim = np.concatenate([np.load(sim / "stimulus_signal" / f"{f}.npy") for f in drives])
    live = stim.std(0) > 0
    rec = probe_tuning(drives, films, trs, stim)
    agree = [np.corrcoef(rec[v], w[v])[0, 1] for v in np.flatnonzero(live)]
    shuffled = probe_tuning(drives, films, trs, stim[np.random.default_rng(1).permutation(len(stim))])
    control = [np.corrcoef(shuffled[v], w[v])[0, 1] for v in np.flatnonzero(live) if shuffled[v].any()]
    assert np.median(agree) > 0.8 and np.median(control) < 0.3
    sub = channel_drives(tiny, np.array([5, 2, 40]))
    film = next(iter(drives))
    np.testing.assert_allclose(sub[film], drives[film][:, :, [5, 2, 40]], rtol=1e-5, atol=1e-6)

    old = tmp_path / "old"
    shutil.copytree(tiny / "derivatives", old / "derivatives")
    truth = json.loads((old / "derivatives" / "simulation" / "truth.json").read_text())
    for meta in truth["films"].values():
        del meta["render_index"]
    (old / "derivatives" / "simulation" / "truth.json").write_text(json.dumps(truth))
    with pytest.raises(ValueError, match="render_index"):
        channel_drives(old)
