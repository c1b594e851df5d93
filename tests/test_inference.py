"""Using trained models on new data: predict (CNN and ridge) equals what evaluate computes on the same clips, an
exported MODEL_DIR gives identical predictions without the prepared dataset, crafted MODEL_DIRs are refused,
decode reproduces evaluate's reconstructions from the raw scans, and a never-seen video is predicted against the
simulator's known response, beating a control."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from cinevox.cli import main
from cinevox.data.dataset import PreparedData
from cinevox.evaluation.predict import predict as predict_split
from cinevox.inference.bundle import ModelDirError, bundle_regions, export_model, load_bundle
from cinevox.inference.decode import decode_scans
from cinevox.inference.predict import predict_video
from cinevox.training.ridge import predict_ridge
from cinevox.training.train import run_prepared_dir


def _film_rows(run: Path, film: str) -> tuple[PreparedData, np.ndarray]:
    data = PreparedData(run_prepared_dir(run))
    idx = data.samples.index[data.samples["film"] == film].to_numpy()
    return data, idx


def _sim(data: PreparedData) -> Path:
    return Path(data.manifest["bids_simulation"]).parents[1]


@pytest.fixture(scope="module")
def exported(tiny_runs, tiny_ridge, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {"encdec": export_model(tiny_runs["encdec"], root / "ed"), "ridge": export_model(tiny_ridge, root / "ridge")}


def test_predict_video_equals_evaluate_on_the_films_clips(tiny_runs, tiny_ridge):
    """The held-out film's video, predicted clip by clip from the file, gives what evaluate computes from the
    prepared frames (CNN: every clip; ridge: every TR, features streamed in chunks of 6 frames)."""
    run = tiny_runs["encdec"]
    data, idx = _film_rows(run, "YouAgain")
    video = _sim(data) / "stimuli" / "YouAgain.mp4"
    b = load_bundle(run, "cpu")
    pred, details = predict_video(b, video, batch_size=5)
    ref = predict_split(b.model, "encdec", data, idx)["voxels_pred"]
    assert details["n_clips"] >= len(idx)
    np.testing.assert_allclose(pred[: len(idx)], ref, rtol=1e-4, atol=1e-5)
    # the ridge model, its motion energy streamed in small chunks
    rb = load_bundle(tiny_ridge)
    from cinevox.inference import predict as pmod

    stream = pmod.RidgeStream(rb, chunk_frames=6)
    for clips in pmod.iter_clips(rb, video, pmod.video_plan(rb, video)[1][: len(idx) * rb.preparation.frames_per_tr],
                                 7):
        stream.feed(clips)
    got = stream.finish()
    np.testing.assert_allclose(got, predict_ridge(tiny_ridge, data, idx), rtol=1e-3, atol=2e-3)


def test_export_load_predict_without_the_prepared_dataset(tiny_runs, tiny_ridge, exported, monkeypatch, tmp_path):
    data, idx = _film_rows(tiny_runs["encdec"], "YouAgain")
    video = _sim(data) / "stimuli" / "YouAgain.mp4"
    want = {k: predict_video(load_bundle(r, "cpu"), video)[0] for k, r in (("encdec", tiny_runs["encdec"]),
                                                                          ("ridge", tiny_ridge))}
    model_dirs = {k: shutil.copytree(p, tmp_path / k) for k, p in exported.items()}

    def no_prepared(*a, **k):
        raise AssertionError("the prepared dataset was read")

    monkeypatch.setattr(PreparedData, "__init__", no_prepared)
    with pytest.raises(AssertionError, match="prepared dataset was read"):
        load_bundle(tiny_runs["encdec"], "cpu")  # a run needs it: the guard works
    for k, d in model_dirs.items():
        b = load_bundle(d, "cpu")
        assert b.kind == k and b.n_voxels == want[k].shape[1]
        np.testing.assert_array_equal(predict_video(b, video)[0], want[k])  # identical arrays
    cfg = json.loads((model_dirs["encdec"] / "config.json").read_text())
    assert cfg["preparation"]["delay_trs"] == 4 and cfg["n_voxels"] == want["encdec"].shape[1]
    assert cfg["test_metrics"]["encoder"]["r_mean"] == pytest.approx(
        json.loads((tiny_runs["encdec"] / "eval" / "metrics.json").read_text())["encoder"]["r_mean"])
    card = (model_dirs["encdec"] / "README.md").read_text()
    assert "voxel Pearson r" in card and "Intended use and limits" in card
    order = np.asarray(nib.load(model_dirs["encdec"] / "mask.nii.gz").dataobj)
    assert sorted(order[order > 0].tolist()) == list(range(1, b.n_voxels + 1))


def test_saliency_and_concepts_on_a_model_dir_with_videos(tiny_runs, exported, tmp_path, capsys):
    """A MODEL_DIR holds no data: saliency and concepts run on the clips of given films (E-D: the decoder reads
    its encoder's predictions), and give the run's own saliency when given the run's held-out film."""
    run = tiny_runs["encdec"]
    data, idx = _film_rows(run, "YouAgain")
    video = _sim(data) / "stimuli" / "YouAgain.mp4"
    from cinevox.analysis.saliency import SaliencyConfig, saliency, streamed_saliency

    s = saliency(exported["encdec"], SaliencyConfig(batch_size=8), videos=[video], out=tmp_path / "sal")
    assert s["n_reconstructions"] >= len(idx) and (tmp_path / "sal" / "saliency.nii.gz").is_file()
    assert not (tmp_path / "sal" / ".clips").exists()  # the decoded clips are removed
    b = load_bundle(run, "cpu")
    ref = streamed_saliency(b.model, "encdec", data, idx, "model", 8, normalize=True)
    got = pd.read_csv(tmp_path / "sal" / "saliency.csv")["saliency"].to_numpy()
    if s["n_reconstructions"] == len(idx):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)
    assert np.corrcoef(got, ref)[0, 1] > 0.99
    assert main(["concepts", str(exported["encdec"]), "--video", str(video), "--out", str(tmp_path / "con"),
                 "--layers", "temporal", "--concepts", "motion,luminance", "--n-random", "2", "--n-examples", "6",
                 "--min-examples", "4", "-q"]) == 0
    tab = pd.read_csv(tmp_path / "con" / "tcav.csv")
    assert set(tab["concept"]) == {"motion", "luminance"} and tab["score"].between(0, 1).all()
    capsys.readouterr()
    assert main(["saliency", str(exported["encdec"]), "--out", str(tmp_path / "x")]) == 2  # no data given
    assert "--video" in capsys.readouterr().err


def _sha_fix(d: Path, name: str) -> None:
    from cinevox.utils.io import sha256_file

    cfg = json.loads((d / "config.json").read_text())
    cfg["sha256"][name] = sha256_file(d / name)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _flip_byte(d: Path) -> None:
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(raw))


def _pickle_weights(d: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"x": Boom()}, d / "model.safetensors")
    _sha_fix(d, "model.safetensors")


def _fewer_voxels(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    _edit_config(d, n_voxels=cfg["n_voxels"] - 1)


def _shuffled_order(d: Path) -> None:
    img = nib.load(d / "mask.nii.gz")
    order = np.asarray(img.dataobj).copy()
    order[order == 2] = 1  # voxel 1 twice, voxel 2 never
    nib.save(nib.Nifti1Image(order, img.affine, img.header), d / "mask.nii.gz")
    _sha_fix(d, "mask.nii.gz")


def _other_architecture(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_config"]["frame_size"] = 64
    cfg["preparation"]["frame_size"] = 64
    (d / "config.json").write_text(json.dumps(cfg))


BAD_MODEL_DIRS = [
    ("weights modified", _flip_byte, r"model\.safetensors: does not match its sha256"),
    ("pickle posing as safetensors", _pickle_weights, r"model\.safetensors: not a readable safetensors file"),
    ("config.json not JSON", lambda d: (d / "config.json").write_text("{not json"), r"config\.json: not readable"),
    ("another format", lambda d: _edit_config(d, format="other"), r"config\.json: not a cinevox model"),
    ("voxel count off", _fewer_voxels, r"n_voxels:? \d+ disagrees with"),
    ("voxel order broken", _shuffled_order, r"mask\.nii\.gz: holds"),
    ("weights of another architecture", _other_architecture, r"(weights do not fit|does not match)"),
    ("mask missing", lambda d: (d / "mask.nii.gz").unlink(), r"mask\.nii\.gz: missing"),
]


@pytest.mark.parametrize("name,damage,message", BAD_MODEL_DIRS, ids=[b[0] for b in BAD_MODEL_DIRS])
def test_crafted_or_mismatched_model_dirs_are_refused(name, damage, message, exported, tmp_path, capsys):
    d = shutil.copytree(exported["encdec"], tmp_path / "m")
    damage(d)
    with pytest.raises(ModelDirError, match=message):
        load_bundle(d, "cpu")
    video = tmp_path / "none.mp4"
    assert main(["predict", str(d), str(video), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]) and "this ran" not in err[0]
    assert not (tmp_path / "out").exists()


def test_decode_reproduces_evaluate_from_the_raw_scans(tiny_runs, tmp_path, capsys):
    """The held-out film's raw BOLD runs of every subject, with their events: decode prepares them as `prepare` did
    (the prepared voxels, to float precision) and reconstructs evaluate's frames from measured voxels."""
    run = tiny_runs["encdec"]
    data, idx = _film_rows(run, "YouAgain")
    sim = _sim(data)
    bolds = sorted(sim.glob("derivatives/preprocessing/sub-*/ses-*/func/*task-YouAgain*_bold.nii.gz"))
    events = sorted(sim.glob("sub-*/ses-*/func/*acq-YouAgain_events.tsv"))
    assert len(bolds) == len(events) >= 2
    b = load_bundle(run, "cpu")
    frames, x, _ = decode_scans(b, bolds, events=events)
    np.testing.assert_allclose(x, np.asarray(data.voxels[idx]), atol=2e-5)
    ref = predict_split(b.model, "encdec", data, idx, decoder_input=np.asarray(data.voxels[idx]))["frames_pred"]
    np.testing.assert_allclose(frames, ref, atol=1e-4)
    # the command: frames, film beside them, SSIM per TR
    out = tmp_path / "dec"
    assert main(["decode", str(run), *map(str, bolds), "--events", str(events[0]), "--reference-video",
                 str(sim / "stimuli" / "YouAgain.mp4"), "--out", str(out), "-q"]) == 0
    tab = pd.read_csv(out / "decoded.tsv", sep="\t")
    assert len(tab) == len(idx) and tab["ssim"].between(-1, 1).all()
    assert (out / "decoded.mp4").stat().st_size > 0 and (out / "decoded.png").is_file()
    # a D-less model, a scan in scanner space, a scan of another TR: one line each
    assert main(["decode", str(tiny_runs["encoder"]), str(bolds[0]), "--onset", "0", "--out", str(tmp_path / "x")]) == 2
    assert "has no decoder" in capsys.readouterr().err
    img = nib.load(bolds[0])
    scanner = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    scanner.header.set_sform(img.affine, code=1)
    scanner.header.set_qform(img.affine, code=1)
    nib.save(scanner, tmp_path / "scanner.nii.gz")
    assert main(["decode", str(run), str(tmp_path / "scanner.nii.gz"), "--onset", "0", "--out",
                 str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scanner coordinates" in err[0] and "scanner.nii.gz" in err[0]


def test_decode_resamples_a_scan_on_another_grid(tiny_runs, tmp_path, caplog):
    """The same scans on a grid one voxel larger on every side (same space): resampled, logged, and decoded to
    nearly the same frames."""
    run = tiny_runs["encdec"]
    data, idx = _film_rows(run, "YouAgain")
    sim = _sim(data)
    bold = sorted(sim.glob("derivatives/preprocessing/sub-*/ses-*/func/*task-YouAgain*_bold.nii.gz"))[0]
    ev = sorted(sim.glob("sub-*/ses-*/func/*acq-YouAgain_events.tsv"))[0]
    img = nib.load(bold)
    big = np.pad(np.asarray(img.dataobj, np.float32), ((1, 1), (1, 1), (1, 1), (0, 0)), mode="edge")
    aff = img.affine.copy()
    aff[:3, 3] -= aff[:3, :3] @ np.ones(3)
    padded = nib.Nifti1Image(big, aff, img.header)
    padded.header.set_sform(aff, code=4)
    padded.header.set_qform(aff, code=4)
    b = load_bundle(run, "cpu")
    want, _, _ = decode_scans(b, [bold], events=[ev])
    with caplog.at_level("INFO"):
        got, _, _ = decode_scans(b, [padded], events=[ev])
    assert "resampled with nilearn" in caplog.text
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_predict_bad_videos_one_line(tiny_runs, tmp_path, capsys):
    from cinevox.data.video import write_video

    write_video(tmp_path / "short.mp4", [np.full((5, 24, 32, 3), 0.5, np.float32)], 10.0, 32, 24)  # 0.5 s
    (tmp_path / "notes.mp4").write_text("not a video")
    for video, message in (("short.mp4", r"short\.mp4: lasts 0\.50 s, shorter than one TR"),
                           ("notes.mp4", r"notes\.mp4: cannot open as a video")):
        assert main(["predict", str(tiny_runs["encoder"]), str(tmp_path / video), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "o").exists()


def test_predict_command_writes_nifti_json_regions(tiny_runs, tmp_path):
    run = tiny_runs["encoder"]
    data, idx = _film_rows(run, "FilmB")
    video = _sim(data) / "stimuli" / "FilmB.mp4"
    assert main(["predict", str(run), str(video), "--out", str(tmp_path / "p"), "--batch-size", "7", "-q"]) == 0
    img = nib.load(tmp_path / "p" / "FilmB_pred.nii.gz")
    meta = json.loads((tmp_path / "p" / "FilmB_pred.json").read_text())
    d = meta["delay_trs"]
    assert img.shape == (*data.mask_img().shape[:3], meta["n_clips"] + d)
    assert img.header.get_zooms()[3] == pytest.approx(meta["tr"])
    vol = np.asarray(img.dataobj)
    ijk = data.voxels_ijk()
    series = vol[ijk[:, 0], ijk[:, 1], ijk[:, 2], :]  # (V, n_vol)
    assert np.all(series[:, :d] == 0)
    b = load_bundle(run, "cpu")
    np.testing.assert_allclose(series[:, d:].T, predict_video(b, video)[0], atol=1e-5)
    outside = np.ones(vol.shape[:3], bool)
    outside[tuple(ijk.T)] = False
    assert np.all(vol[outside] == 0)
    reg = pd.read_csv(tmp_path / "p" / "FilmB_regions.tsv", sep="\t")
    assert len(reg) == img.shape[3] and "Calcarine_L" in reg.columns
    lab = bundle_regions(load_bundle(run, "cpu"))  # a run's regions: the simulator's atlas
    cal = (lab["label"] == "Calcarine_L").to_numpy()
    np.testing.assert_allclose(reg["Calcarine_L"].to_numpy()[d:], series[cal, d:].mean(0), atol=1e-5)


def test_python_api_and_readme_example(tiny_runs, tmp_path):
    import cinevox

    run = tiny_runs["encdec"]
    data, idx = _film_rows(run, "YouAgain")
    sim = _sim(data)
    model = cinevox.load_model(run, device="cpu")
    clips = np.stack([data.clip(int(i)) for i in idx[:6]])
    v = model.predict_clips(clips)
    assert v.shape == (6, model.n_voxels) and v.dtype == np.float32
    with pytest.raises(TypeError, match="unknown option 'epochz'"):
        cinevox.train(run_prepared_dir(run), tmp_path / "r", epochz=3)
    # the README's example, with its paths pointed at the tiny run
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    bold = sorted(sim.glob("derivatives/preprocessing/sub-*/ses-*/func/*task-YouAgain*_bold.nii.gz"))[0]
    onset = float(pd.read_csv(sorted(sim.glob("sub-*/ses-*/func/*acq-YouAgain_events.tsv"))[0], sep="\t")
                  .query("trial_type == 'film'")["onset"].iloc[0])
    code = (code.replace('"runs/encdec"', repr(str(run)))
            .replace('"film.mp4"', repr(str(sim / "stimuli" / "YouAgain.mp4")))
            .replace('"bold.nii.gz"', repr(str(bold))).replace("93.84", repr(onset)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 -- the README's own example
    assert scope["img"].shape[3] == scope["model"].delay_trs + len(scope["voxels"])
    assert scope["frames"].shape[1:] == (3, model.frame_size, model.frame_size)


def test_new_video_predicted_against_the_simulators_truth(tiny_sim, tiny_runs, tiny_ridge, tmp_path):
    """Same preset and seed, other films: the same brains (tuning), so the simulator writes their true response
    to a video no model saw. Predictions correlate with it on informative voxels, and beat the control: the
    prediction of another video scored against the same truth."""
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    other = simulate(tmp_path / "other", preset("tiny", seed=11, n_subjects=2,
                                                films={"NewFilm": 45.0, "Control": 45.0}), progress=False)
    films = tmp_path / "films"
    films.mkdir()
    for f in ("NewFilm", "Control"):
        shutil.copy(other / "stimuli" / f"{f}.mp4", films / f"{f}.mp4")
    truth_ds = simulate(tmp_path / "truth", preset("tiny", n_subjects=2, films_dir=str(films)), progress=False)
    a = np.load(tiny_sim / "derivatives" / "simulation" / "tuning.npz")
    b = np.load(truth_ds / "derivatives" / "simulation" / "tuning.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])  # the same brains
    from cinevox.inference.truth import truth_for_video

    scores = {}
    for name, run in (("E-D", tiny_runs["encdec"]), ("ridge", tiny_ridge)):
        bd = load_bundle(run, "cpu")
        own = truth_for_video(bd, truth_ds, "NewFilm", predict_video(bd, films / "NewFilm.mp4")[0])
        ctrl = truth_for_video(bd, truth_ds, "NewFilm", predict_video(bd, films / "Control.mp4")[0])
        scores[name] = (own["r_informative"], ctrl["r_informative"])
        assert own["r_informative"] > ctrl["r_informative"] + 0.1, (name, own, ctrl)
    print(scores)


def test_every_option_has_help_with_its_default():
    """`cinevox CMD --help` explains every option; defaults are shown (argparse's %(default)s)."""
    import argparse

    from cinevox.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing, no_default = [], []
    for name, p in sub.choices.items():
        for act in p._actions:
            if isinstance(act, argparse._HelpAction) or not act.option_strings:
                continue
            if not (act.help or "").strip() or act.help == argparse.SUPPRESS:
                missing.append(f"{name} {act.option_strings[0]}")
            text = p.format_help()
            if act.default is not None and act.default is not False and act.default != argparse.SUPPRESS and \
                    "default" not in (act.help or "") and f"(default: {act.default})" not in " ".join(text.split()):
                no_default.append(f"{name} {act.option_strings[0]}")
    assert not missing, missing
    assert not no_default, no_default
    # the defaults shown are the library's: the parsed defaults equal the config dataclasses'
    from cinevox.analysis.concepts import ConceptConfig
    from cinevox.evaluation.evaluate import EvalConfig
    from cinevox.training import TrainConfig

    a = parser.parse_args(["train", "p", "--out", "o"])
    t = TrainConfig()
    assert (a.epochs, a.batch_size, a.lr, a.seed, a.dropout, a.model) == (t.epochs, t.batch_size, t.lr, t.seed,
                                                                         t.dropout, t.model)
    e = parser.parse_args(["evaluate", "r"])
    assert (e.n_perm, e.n_perm_frames) == (EvalConfig().n_perm, EvalConfig().n_perm_frames)
    c = parser.parse_args(["concepts", "r"])
    assert (c.n_examples, c.n_random, c.min_examples) == (ConceptConfig().n_examples, ConceptConfig().n_random,
                                                          ConceptConfig().min_examples)

