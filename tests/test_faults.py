"""One contract for errors, table-driven (as nilearn's estimator checks): each fault runs the real CLI and must
give exit code 2, one readable line naming the problem, no traceback, and leave what was computed untouched.

Also: checkpoints that cannot run code, output folders that are locked, whole or untouched, stale temporaries
cleaned on resume, worker processes that die with their parent.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import cfg_for, make_bids

from cinevox.cli import main
from cinevox.data.prepare import prepare
from cinevox.utils.checkpoint import load_checkpoint

# ------------------------------------------------------------------ fixtures and helpers


def _digest(paths) -> dict[str, str]:
    """Content hash of every file under the given paths (what must not change)."""
    out = {}
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and ".cinevox.lock" not in q.name)
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    return make_bids(tmp_path_factory.mktemp("faults") / "ds", {"FilmA": 20, "YouAgain": 12})


@pytest.fixture
def ds(bids, tmp_path) -> Path:
    """A private copy of the BIDS dataset (faults edit it)."""
    return Path(shutil.copytree(bids, tmp_path / "ds"))


@pytest.fixture
def prepared(ds, tmp_path) -> Path:
    return prepare(ds, tmp_path / "prepared", cfg_for(ds), progress=False)


@pytest.fixture
def run(tiny_runs, tmp_path) -> Path:
    """A private copy of the tiny E-D run."""
    return Path(shutil.copytree(tiny_runs["encdec"], tmp_path / "run"))


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _prep_args(ds: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(ds), str(out), "--films-dir", str(ds / "stimuli"), "--mask", str(ds / "mask.nii.gz"),
            "--frame-size", "16", "--frames-per-tr", "4", "--gap-trs", "1", "--val-blocks", "2", "--snr-top", "1",
            *extra]


# ------------------------------------------------------------------ the table of faults
# each case: (name, setup(ds, prepared, run, tmp) -> (argv, paths that must not change), expected message)

def _crafted_checkpoint(cmd):
    def setup(ds, prepared, run, tmp):
        marker = tmp / "pwned"
        torch.save({"model": Evil(marker)}, run / "checkpoints" / "last.pt")
        argv = {"evaluate": ["evaluate", str(run), "--n-perm", "5"],
                "resume": ["train", str(prepared), "--out", str(run), "--resume", "--allow-random-vgg"],
                "saliency": ["saliency", str(run)],
                "lesion": ["lesion", str(run), "--n-null", "2"]}[cmd]
        return argv, [run], marker
    return setup


def _garbage_checkpoint(kind):
    def setup(ds, prepared, run, tmp):
        ck = run / "checkpoints" / "last.pt"
        if kind == "garbage":
            ck.write_bytes(b"this is not a checkpoint" * 10)
        else:
            ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
        return ["evaluate", str(run), "--n-perm", "5"], [run], None
    return setup


def _truncated_nifti(jobs):
    def setup(ds, prepared, run, tmp):
        bold = next((ds / "derivatives").rglob("sub-S02_*FilmA*.nii.gz"))
        bold.write_bytes(bold.read_bytes()[:-3000])
        return _prep_args(ds, tmp / "p_trunc", "--jobs", jobs), [ds], None
    return setup


def _codes_zero(ds, prepared, run, tmp):
    bold = next((ds / "derivatives").rglob("sub-S01_*FilmA*.nii.gz"))
    img = nib.load(bold)
    hdr = img.header.copy()
    hdr.set_sform(None, code=0)
    hdr.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, hdr), bold)
    return _prep_args(ds, tmp / "p_codes"), [ds], None


def _truncated_voxels(ds, prepared, run, tmp):
    v = prepared / "voxels.npy"
    v.write_bytes(v.read_bytes()[:-64])
    return ["train", str(prepared), "--out", str(tmp / "r_trunc"), "--model", "encoder", "--epochs", "1"], \
        [prepared], None


def _other_files(ds, prepared, run, tmp):
    out = tmp / "not_empty"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    return _prep_args(ds, out), [out], None


def _reprepare_bad_film(ds, prepared, run, tmp):
    (ds / "stimuli" / "FilmA.mp4").write_bytes(b"\x00garbage" * 50)
    return _prep_args(ds, prepared, "--frame-size", "24"), [prepared], None


def _short_dataset(ds, prepared, run, tmp):
    short = make_bids(tmp / "short", {"FilmA": 15, "FilmB": 20})
    return ["prepare", str(short), str(tmp / "p_short"), "--films-dir", str(short / "stimuli"), "--mask",
            str(short / "mask.nii.gz"), "--frame-size", "16", "--frames-per-tr", "4", "--heldout-film", "none"], \
        [short], None


def _one_film_cv(ds, prepared, run, tmp):
    one = make_bids(tmp / "one", {"FilmA": 20})
    p_one = prepare(one, tmp / "p_one", cfg_for(one, heldout_film="none"), progress=False)
    return ["baseline", str(p_one), "--out", str(tmp / "cv_one"), "--cv", "films"], [p_one], None


def _resume_argv(run: Path, epochs: str) -> list[str]:
    """``train --resume`` of the tiny E-D run with its own options, but ``--epochs``."""
    man = json.loads((run / "manifest.json").read_text())
    c = man["config"]
    return ["train", man["inputs"]["prepared"], "--out", str(run), "--resume", "--model", c["model"], "--epochs",
            epochs, "--batch-size", str(c["batch_size"]), "--lr", str(c["lr"]), "--vgg-weights",
            c["loss"]["vgg_weights"]]


def _simple(argv_fn):
    def setup(ds, prepared, run, tmp):
        return argv_fn(ds, prepared, run, tmp), [prepared, run], None
    return setup


FAULTS = [
    ("crafted checkpoint: evaluate", _crafted_checkpoint("evaluate"),
     r"last\.pt: holds Python objects.*--trust-checkpoint"),
    ("crafted checkpoint: train --resume", _crafted_checkpoint("resume"), r"last\.pt: holds Python objects"),
    ("crafted checkpoint: saliency", _crafted_checkpoint("saliency"), r"last\.pt: holds Python objects"),
    ("crafted checkpoint: lesion", _crafted_checkpoint("lesion"), r"last\.pt: holds Python objects"),
    ("garbage checkpoint", _garbage_checkpoint("garbage"), r"last\.pt: not a readable checkpoint"),
    ("truncated checkpoint", _garbage_checkpoint("truncated"), r"last\.pt: not a readable checkpoint"),
    ("truncated .nii.gz", _truncated_nifti("1"), r"sub-S02_ses-1_task-FilmA.*(truncated|corrupt)"),
    ("truncated .nii.gz, --jobs 2", _truncated_nifti("2"), r"sub-S02_ses-1_task-FilmA.*(truncated|corrupt)"),
    ("qform and sform codes 0", _codes_zero, r"sub-S01_ses-1_task-FilmA.*sform_code are both 0.*--assume-mni"),
    ("truncated voxels.npy", _truncated_voxels, r"voxels\.npy has \d+ bytes, the manifest records"),
    ("output folder with other files", _other_files, r"not_empty holds other files \(thesis\.txt\)"),
    ("re-prepare with a corrupt film", _reprepare_bad_film, r"FilmA\.mp4: cannot open as a video"),
    ("a dataset that cannot train", _short_dataset, r"no train.*FilmA: train 0.*--val-blocks 1 --gap-trs 1"),
    ("--device cuda without CUDA", _simple(lambda d, p, r, t: ["evaluate", str(r), "--device", "cuda"]),
     r"--device cuda: CUDA is not available"),
    ("simulate --voxel-size 0", _simple(lambda d, p, r, t: ["simulate", str(t / "s"), "--voxel-size", "0"]),
     r"--voxel-size: 0 must be > 0"),
    ("evaluate --n-perm 0", _simple(lambda d, p, r, t: ["evaluate", str(r), "--n-perm", "0"]),
     r"--n-perm: 0 must be >= 1"),
    ("lesion --n-null 0", _simple(lambda d, p, r, t: ["lesion", str(r), "--n-null", "0"]), r"--n-null: 0 must be >= 1"),
    ("--jobs 0", _simple(lambda d, p, r, t: _prep_args(d, t / "x", "--jobs", "0")), r"--jobs: 0 must be >= 1"),
    ("--jobs -2", _simple(lambda d, p, r, t: _prep_args(d, t / "x", "--jobs", "-2")), r"--jobs: -2 must be >= 1"),
    ("--val-blocks 0", _simple(lambda d, p, r, t: _prep_args(d, t / "x", "--val-blocks", "0")),
     r"--val-blocks: 0 must be >= 1"),
    ("--gap-trs -1", _simple(lambda d, p, r, t: _prep_args(d, t / "x", "--gap-trs", "-1")),
     r"--gap-trs: -1 must be >= 0"),
    ("unknown --heldout-film", _simple(lambda d, p, r, t: _prep_args(d, t / "x", "--heldout-film", "Titanic")),
     r"--heldout-film 'Titanic' is not a film of this dataset \(FilmA, YouAgain\)"),
    ("not a run", _simple(lambda d, p, r, t: ["evaluate", str(p)]), r"manifest|not a cinevox run|checkpoint"),
    ("epochs 0", _simple(lambda d, p, r, t: ["train", str(p), "--out", str(t / "r0"), "--epochs", "0"]),
     r"--epochs: 0 must be >= 1"),
    ("--cv films with one film", _one_film_cv,
     r"--cv films: .*p_one holds 1 film \(FilmA\); leave-one-film-out needs at least 2 films"),
    ("--cv films, no training film in a fold",
     _simple(lambda d, p, r, t: ["train", str(p), "--out", str(t / "cv"), "--cv", "films", "--model", "encoder"]),
     r"--cv films: the fold that holds out FilmA has no training TRs .*--heldout-film none"),
    ("train --resume with fewer epochs", _simple(lambda d, p, r, t: _resume_argv(r, "2")),
     r"--resume --epochs 2: .*last\.pt belongs to a run of 3 epochs \(3 done\).*--epochs 3 or more"),
    ("--confounds without confounds files, --dry-run",
     _simple(lambda d, p, r, t: _prep_args(d, t / "x", "--confounds", "motion:basic", "--dry-run")),
     r"--confounds: 6 of 6 runs have no fMRIPrep confounds file .*sub-S01_ses-1_task-FilmA\S*_bold\.nii\.gz.*"
     r"drop --confounds"),
    ("train --target subject:S99", _simple(lambda d, p, r, t: ["train", str(p), "--out", str(t / "r9"), "--target",
                                                               "subject:S99"]),
     r"--target subject:S99: not a viewer of .*\(viewers: S01, S02, S03\)"),
    ("train --holdout-subjects S07", _simple(lambda d, p, r, t: ["train", str(p), "--out", str(t / "r9"),
                                                                 "--holdout-subjects", "S03,S07"]),
     r"--holdout-subjects S07: not a viewer of .*\(viewers: S01, S02, S03\)"),
    ("lesion --subject on a run of the viewers' mean", _simple(lambda d, p, r, t: ["lesion", str(r), "--subject",
                                                                                    "S01"]),
     r"--subject S01: .* has no per-viewer read-outs or input layers \(train it with --target subjects"),
    ("train --target everyone", _simple(lambda d, p, r, t: ["train", str(p), "--out", str(t / "r9"), "--target",
                                                            "everyone"]),
     r"--target must be mean, subjects or subject:<ID>"),
    ("features --pool avg", _simple(lambda d, p, r, t: ["features", str(p), "--model", "vgg16", "--pool", "avg",
                                                        "--out", str(t / "f")]),
     r"--pool must be mean, cls or gridG"),
    ("features --model simulator, real data", _simple(lambda d, p, r, t: ["features", str(p), "--model", "simulator",
                                                                          "--out", str(t / "f")]),
     r"--model simulator: .*prepared.* was not prepared from a `cinevox simulate` dataset"),
    ("baseline --features, not a features folder",
     _simple(lambda d, p, r, t: ["baseline", str(p), "--out", str(t / "b"), "--features", f"colour,{p}"]),
     r"prepared/manifest\.json: not written by `cinevox features`"),
    ("concepts --n-pseudo 5", _simple(lambda d, p, r, t: ["concepts", str(r), "--n-pseudo", "5"]),
     r"--n-pseudo: 5 must be >= 19"),
    ("--select-on test", _simple(lambda d, p, r, t: _prep_args(d, t / "x", "--select-on", "test")),
     r"--select-on: invalid choice: 'test' \(choose from 'all', 'trainval'\)"),
]

# issue 27: messages that say what to do (the right command, the valid values, the existing checkpoints, the option
# to pass); their output folder, tmp/out, must not be left behind (empty or locked)
NO_FOLDER = [
    ("report on a prepared dataset", _simple(lambda d, p, r, t: ["report", str(p), "--out", str(t / "out")]),
     r"is a prepared dataset, not a run: train and evaluate a model on it first \(`cinevox train .* --out RUN`"),
    ("train on a run, not a prepared dataset",
     _simple(lambda d, p, r, t: ["train", str(r), "--out", str(t / "out"), "--epochs", "1", "--allow-random-vgg"]),
     r"run is the output of `cinevox train`, not a prepared dataset: give the prepared dataset it was made from"),
    ("--checkpoint that does not exist",
     _simple(lambda d, p, r, t: ["saliency", str(r), "--checkpoint", "epoch10", "--out", str(t / "out")]),
     r"--checkpoint epoch10: epoch10\.pt is not in .*checkpoints; this run has: .*last"),
    ("--visual-parcels kong2021",
     _simple(lambda d, p, r, t: _prep_args(d, t / "out", "--visual-parcels", "kong2021")),
     r"--visual-parcels 'kong2021'.*valid values: names .*kong2022 .*420-450"),
    ("missing VGG16 weights",
     _simple(lambda d, p, r, t: ["train", str(p), "--out", str(t / "out"), "--epochs", "1", "--vgg-weights",
                                 str(t / "vgg16.pth")]),
     r"vgg16\.pth does not exist: pass an existing --vgg-weights FILE .*--allow-random-vgg"),
    ("predict given a scan",
     _simple(lambda d, p, r, t: ["predict", str(r), str(next((d / "derivatives").rglob("*_bold.nii.gz"))), "--out",
                                 str(t / "out")]),
     r"is a brain scan, not a video: .*use `cinevox decode .* --onset SECONDS --out DIR`"),
]
FAULTS += NO_FOLDER


@pytest.mark.parametrize("name,setup,message", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault(name, setup, message, ds, prepared, run, tmp_path, capsys):
    if "without CUDA" in name and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv, keep, marker = setup(ds, prepared, run, tmp_path)
    before = _digest(keep)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses at parse time
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (name, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, (name, lines)
    assert re.search(message, lines[0]), (name, lines[0])
    assert _digest(keep) == before, f"{name}: files changed"
    if marker is not None:
        assert not marker.exists(), f"{name}: the crafted checkpoint ran code"
    if name in {f[0] for f in NO_FOLDER}:
        assert not (tmp_path / "out").exists(), f"{name}: left {sorted((tmp_path / 'out').rglob('*'))}"


def test_debug_shows_the_traceback(run, capsys):
    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(Exception, match="not a readable checkpoint"):
        main(["evaluate", str(run), "--debug"])


# ------------------------------------------------------------------ checkpoints


def test_checkpoints_load_without_unpickling_code(run):
    ck = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True: tensors and plain containers
    assert set(ck["rng"]) >= {"torch", "numpy", "python"} and isinstance(ck["rng"]["numpy"]["keys"], torch.Tensor)
    torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_old_checkpoints_need_trust_and_resume_exactly(run, tiny_prepared, tmp_path, capsys):
    """A checkpoint from before (numpy RNG state pickled) loads only with --trust-checkpoint, after a notice."""
    path = run / "checkpoints" / "last.pt"
    ck = torch.load(path, weights_only=True)
    keys = ck["rng"]["numpy"]
    ck["rng"]["numpy"] = ("MT19937", keys["keys"].numpy().astype(np.uint32), keys["pos"], keys["has_gauss"],
                          keys["cached_gaussian"])  # the old format: numpy objects
    torch.save(ck, path)
    assert main(["evaluate", str(run), "--n-perm", "5", "--n-perm-frames", "2"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--n-perm", "5", "--n-perm-frames", "2", "--trust-checkpoint"]) == 0
    assert "can execute code" in "".join(capsys.readouterr())


# ------------------------------------------------------------------ folders


def _hold_lock(folder: str, step: str, ready, release) -> None:
    from cinevox.utils.folders import exclusive_folder

    with exclusive_folder(folder, step):
        ready.set()
        release.wait(30)


@pytest.mark.parametrize("step", ["prepare", "train"])
def test_second_writer_fails_at_once_naming_the_holder(step, ds, prepared, tmp_path, capsys):
    folder = prepared if step == "prepare" else tmp_path / "run_locked"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(folder), step, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        before = _digest([folder])
        t = time.time()
        argv = _prep_args(ds, prepared) if step == "prepare" else \
            ["train", str(prepared), "--out", str(folder), "--model", "encoder", "--epochs", "1"]
        assert main(argv) == 2
        assert time.time() - t < 10
        err = capsys.readouterr().err
        assert f"is being written by `cinevox {step}` (pid {holder.pid}" in err
        assert _digest([folder]) == before
    finally:
        release.set()
        holder.join(30)


def test_prepare_failing_late_keeps_the_old_dataset(ds, prepared, monkeypatch):
    """A re-prepare with new options that fails after its runs (here: while writing frames) leaves the old
    complete dataset, never a mix."""
    import cinevox.data.prepare as prep

    before = _digest([prepared / n for n in ("voxels.npy", "voxels_ijk.npy", "manifest.json", "samples.csv")])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(prep, "_film_frames", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare(ds, prepared, cfg_for(ds, snr_top=0.5, frame_size=24), progress=False)
    assert _digest([prepared / n for n in ("voxels.npy", "voxels_ijk.npy", "manifest.json", "samples.csv")]) == before
    from cinevox.data.dataset import PreparedData

    PreparedData(prepared)  # still whole: the integrity record matches
    monkeypatch.undo()
    prepare(ds, prepared, cfg_for(ds, snr_top=0.5, frame_size=24), progress=False)  # the new one, complete
    data = PreparedData(prepared)
    assert data.frame_size == 24 and np.load(prepared / "voxels_ijk.npy").shape[0] == data.n_voxels


def test_readers_refuse_a_folder_without_manifest(prepared, capsys):
    (prepared / "manifest.json").unlink()  # what a crash in the middle of publishing leaves
    assert main(["train", str(prepared), "--out", str(prepared.parent / "r"), "--epochs", "1"]) == 2
    assert "interrupted `cinevox prepare`" in capsys.readouterr().err


def test_stale_temporaries_are_cleaned_on_resume(ds, prepared, run, tiny_prepared):
    stale = [prepared / ".voxels.npy.ab12cd34.npy", prepared / "frames" / ".FilmA.npy.zz99yy88.npy",
             prepared / "cache" / "runs" / ".sub-S01_ses-1_FilmA.npz.q1w2e3r4.npz"]
    for p in stale:
        p.write_bytes(b"half written")
    keep = prepared / ".not_ours"
    keep.write_text("x")
    prepare(ds, prepared, cfg_for(ds), progress=False)
    assert not any(p.exists() for p in stale) and keep.exists()
    ck = run / "checkpoints" / ".last.pt.k9j8h7g6.pt"
    ck.write_bytes(b"half")
    from cinevox.training import train
    from cinevox.training.train import _config_from_dict

    c = _config_from_dict(json.loads((run / "manifest.json").read_text())["config"])
    c.lr *= 2
    with pytest.raises(ValueError, match="other options"):  # resume refuses, but cleans first
        train(tiny_prepared, run, c, resume=True, progress=False)
    assert not ck.exists()


def test_workers_die_with_their_parent(tmp_path):
    """kill -9 of a process with a worker pool (as prepare --jobs 2): the workers end too."""
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from cinevox.utils.folders import worker_dies_with_parent

        def work(_):
            time.sleep(120)

        with ProcessPoolExecutor(2, initializer=worker_dies_with_parent) as ex:
            futs = [ex.submit(work, i) for i in range(2)]
            time.sleep(1.5)
            print(" ".join(str(p) for p in ex._processes), flush=True)
            time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
    assert not alive, f"orphaned workers {alive}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "X"


# ------------------------------------------------------------------ silent wrong results, now loud


def test_codes_zero_with_assume_mni_and_nonfinite_reported(ds, tmp_path, caplog):
    import logging

    bold = next((ds / "derivatives").rglob("sub-S01_*FilmA*.nii.gz"))
    img = nib.load(bold)
    data = np.asarray(img.dataobj).copy()
    data[2, 3, 4, 9] = np.inf  # one Inf in one volume
    hdr = img.header.copy()
    hdr.set_qform(None, code=0)
    hdr.set_sform(img.affine, code=0)
    nib.save(nib.Nifti1Image(data, None, hdr), bold)
    with caplog.at_level(logging.WARNING, logger="cinevox"):
        out = prepare(ds, tmp_path / "p", cfg_for(ds, assume_mni=True), progress=False)
    assert f"{bold}: NaN/Inf at 1 mask voxels in volume(s) 9" in caplog.text
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["nonfinite_volumes"].values()) == [[9]]
    np.testing.assert_allclose(m["grid"]["affine"], img.affine)  # the sform matrix, not a default one


# ------------------------------------------------------------------ crafted MODEL_DIR configs (issue 24)


@pytest.fixture(scope="module")
def model_dir(tiny_runs, tmp_path_factory) -> Path:
    from cinevox.inference.bundle import export_model

    return export_model(tiny_runs["encdec"], tmp_path_factory.mktemp("model_dir") / "m")


def _config_edit(*changes):
    """Set config.json fields (dotted names) to the given values (a callable gets the config edited so far)."""
    def edit(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        for name, value in changes:
            *parents, leaf = name.split(".")
            obj = cfg
            for p in parents:
                obj = obj[p]
            obj[leaf] = value(cfg) if callable(value) else value
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _regions_edit(d: Path) -> None:
    """A voxel_regions.tsv changed after the export (or added to an export without one)."""
    path = d / "voxel_regions.tsv"
    text = path.read_text() if path.is_file() else "voxel\tindex\tlabel\tgroup\n"
    path.write_text(text.replace("\t", "\t9", 1) if path.is_file() else text)


MODEL_DIR_FAULTS = [  # (name, edit, message, whether the config schema refuses it before any array is read)
    ("config: tr as a string", _config_edit(("preparation.tr", "2")), r"preparation\.tr: '2' is not a number", True),
    ("config: unknown frame_sampling", _config_edit(("preparation.frame_sampling", "nearest")),
     r"preparation\.frame_sampling: unknown choice 'nearest'; expected one of timestamp, linspace", True),
    ("config: frames_per_tr 10^6", _config_edit(("preparation.frames_per_tr", 10**6), ("model_config.n_frames", 10**6)),
     r"preparation\.frames_per_tr: 1000000 is outside \[2, 1024\]", True),
    ("config: negative TR", _config_edit(("preparation.tr", -2.0)), r"preparation\.tr: -2\.0 is outside", True),
    ("config: n_voxels a float", _config_edit(("n_voxels", 12.5)), r"n_voxels: 12\.5 is not an integer", True),
    ("config: unknown confound level", _config_edit(("preparation.confounds", {"strategy": ["motion"],
                                                                                "motion": "most"})),
     r"preparation\.confounds\.motion: unknown choice 'most'", True),
    ("config: voxel count off the mask",
     _config_edit(("n_voxels", lambda c: c["n_voxels"] - 1), ("model_config.n_voxels", lambda c: c["n_voxels"])),
     r"config\.json: n_voxels \d+ disagrees with mask\.nii\.gz, which holds \d+ voxels", False),
    ("voxel_regions.tsv outside the checksums", _regions_edit,
     r"voxel_regions\.tsv: (does not match its sha256|not in config\.json's sha256 table)", False),
]


@pytest.mark.parametrize("name,edit,message,schema", MODEL_DIR_FAULTS, ids=[f[0] for f in MODEL_DIR_FAULTS])
def test_model_dir_fault(name, edit, message, schema, model_dir, tmp_path, capsys, monkeypatch):
    """Each crafted MODEL_DIR: exit 2, one line naming the field or file, nothing written; a config that breaks the
    schema is refused before any other file of the folder is read (before: TypeError, a silent fallback, or an
    absurd allocation)."""
    import cinevox.inference.bundle as bundle_mod

    d = Path(shutil.copytree(model_dir, tmp_path / "m"))
    edit(d)
    reads = []
    if schema:
        monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: reads.append(p) or "")
        monkeypatch.setattr(bundle_mod.nib, "load", lambda p, *a, **k: reads.append(p))
    capsys.readouterr()
    code = main(["predict", str(d), str(tmp_path / "film.mp4"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], (name, err)
    assert re.search(message, err[0]), (name, err[0])
    assert reads == [], f"{name}: files read before the config was refused"
    assert not (tmp_path / "out").exists()


def test_model_dir_names_its_source_run_without_local_paths(model_dir, tiny_runs):
    """config.json and the card name the source run by folder name and weights sha256 (before: the exporting
    machine's absolute path)."""
    from cinevox.utils.io import sha256_file

    run = tiny_runs["encdec"]
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["source"] == {"run": run.name, "checkpoint": "last.pt",
                             "sha256": sha256_file(run / "checkpoints" / "last.pt")}
    for f in sorted(x.name for x in model_dir.iterdir() if x.suffix in (".json", ".md", ".tsv")):
        text = (model_dir / f).read_text()
        assert str(run.parent) not in text and str(Path.home()) + "/" not in text and "/tmp" not in text, f
    assert f"`{run.name}`" in (model_dir / "README.md").read_text()
    # every preparation choice that shapes the voxels, in the run's manifest and the MODEL_DIR's config
    made = json.loads((run / "manifest.json").read_text())["preparation"]
    assert made == {"tr": cfg["preparation"]["tr"], "delay_trs": 4, "detrend": "mean", "confounds": None,
                    "non_steady_state": "drop", "zscore_window": "stimulus"}
    assert {k: cfg["preparation"][k] for k in made} == made and cfg["preparation"]["film_trs"]
    if (model_dir / "voxel_regions.tsv").is_file():
        assert cfg["sha256"]["voxel_regions.tsv"] == sha256_file(model_dir / "voxel_regions.tsv")
