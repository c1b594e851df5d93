"""Confounds that fit the data (issue 24): ``--confounds`` takes nilearn's strategy parameters as NAME:VALUE, they
are recorded in the manifest, and a run with fewer than 2 volumes per regressor is refused before any voxel is
read, naming the run, its volumes and regressors, and a cheaper strategy that fits."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layouts import Shown, alignment, build

from cinevox.cli import main
from cinevox.data.dataset import PreparedData
from cinevox.data.layout import BIDSError
from cinevox.data.prepare import PrepareConfig, confound_options, prepare

SUBS = ("01", "02", "03")


def _cfg(root, **kw) -> PrepareConfig:
    return PrepareConfig(films_dir=str(root / "stimuli"), mask=str(root / "mask.nii.gz"), frame_size=16,
                         frames_per_tr=4, gap_trs=1, val_blocks=1, snr_top=1.0, **kw)


def test_confound_options_are_nilearn_parameters():
    assert confound_options("motion:basic,wm_csf") == {"strategy": ["motion", "wm_csf"], "motion": "basic"}
    assert confound_options("motion:full,high_pass,scrub:0.5") == {
        "strategy": ["motion", "high_pass", "scrub"], "motion": "full", "fd_threshold": 0.5}
    assert confound_options(" compcor:temporal , n_compcor:5") == {"strategy": ["compcor"], "compcor": "temporal",
                                                                   "n_compcor": 5}
    assert confound_options("motion") == {"strategy": ["motion"]}  # nilearn's defaults (motion full: 24 columns)
    for bad, msg in (("motion:most", r"motion:most is not one of nilearn's values \(basic, power2"),
                     ("high_pass:3", "high_pass takes no value"), ("scrub:far", "scrub:FD takes a framewise"),
                     ("motion,motion:basic", "motion given twice"), ("n_compcor:x", "n_compcor needs a int"),
                     ("aroma", "unknown strategy 'aroma'"), (",", "no strategy")):
        with pytest.raises(ValueError, match=msg):
            confound_options(bad)


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """fMRIPrep derivatives of 34-volume runs (24 film TRs), a motion artefact planted in trans_x."""
    root = tmp_path_factory.mktemp("confounds") / "ds"
    shown = [Shown(s, "movie", "film.mp4", onset=0.0, duration=24.0, film="film", ses="1") for s in SUBS]
    return root, build(root, shown, fmriprep=True, motion=3.0)


@pytest.fixture(scope="module")
def prepared(short_runs, tmp_path_factory) -> dict[str, Path]:
    root, _ = short_runs
    out = tmp_path_factory.mktemp("prepared")
    return {"raw": prepare(root, out / "raw", _cfg(root), progress=False),
            "basic": prepare(root, out / "basic", _cfg(root, confounds="motion:basic"), progress=False)}


def test_confounds_that_do_not_fit_are_refused_and_cheaper_ones_recover_the_response(short_runs, prepared, tmp_path,
                                                                                      capsys):
    """motion (nilearn's default, full: 24 regressors) on 34 volumes: refused, in a dry run too, naming the run, its
    volumes and regressors and a cheaper strategy (before: every voxel constant, 'every mask voxel is constant or
    non-finite'); motion:basic (6 regressors) is accepted, recorded in the manifest, and removes the planted
    motion artefact: the planted response is found better than without confounds (the negative control)."""
    root, truth = short_runs
    with pytest.raises(BIDSError, match=r"sub-01_ses-1_task-movie_.*bold\.nii\.gz: 34 volumes for 24 confound "
                                        r"regressors \(motion\): fewer than 2 volumes per regressor; .*"
                                        r"--confounds motion:basic,wm_csf(,high_pass)? \(8 regressors\)"):
        prepare(root, tmp_path / "full", _cfg(root, confounds="motion"), progress=False)
    assert not (tmp_path / "full" / "manifest.json").exists()
    capsys.readouterr()
    assert main(["prepare", str(root), str(tmp_path / "dry"), "--films-dir", str(root / "stimuli"), "--mask",
                 str(root / "mask.nii.gz"), "--val-blocks", "1", "--gap-trs", "1", "--confounds", "motion:full",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "34 volumes for 24 confound regressors (motion:full)" in err[0], err
    raw, basic = prepared["raw"], prepared["basic"]
    m = json.loads((basic / "manifest.json").read_text())
    assert m["confounds"] == ["motion"] and m["confound_options"] == {"strategy": ["motion"], "motion": "basic"}
    r_raw, r_basic = alignment(raw, truth), alignment(basic, truth)
    assert r_basic > 0.8 and r_basic > r_raw + 0.1, (r_raw, r_basic)
    assert alignment(basic, truth, shift=2) < 0.25


def _decoder_bundle(prepared_dir: Path):
    """A decoder (untrained: decode's prepared voxels are what is tested) with a prepared dataset's preparation."""
    from cinevox.inference.bundle import ModelBundle, Preparation
    from cinevox.models.encdec import ModelConfig, build_model

    data = PreparedData(prepared_dir)
    prep = Preparation.from_prepared(data.manifest)
    model = build_model(ModelConfig(kind="decoder", n_voxels=data.n_voxels, n_frames=prep.frames_per_tr,
                                    frame_size=prep.frame_size)).eval()
    return ModelBundle("decoder", prepared_dir, "0" * 64, prep, data.mask_img(), data.voxels_ijk(), model=model,
                       prepared=prepared_dir), data


def test_decode_is_the_runs_own_preparation(short_runs, prepared, tmp_path, caplog):
    """decode of the scans of a model prepared with --confounds motion:basic: the confounds from each scan's
    fMRIPrep file (beside it, or --confounds-file) regressed out as prepare did, the window ended with the film
    (--film, the events' duration or the video): the prepared voxels, to float precision (before: no confounds,
    and z-scored together with the 6 volumes after the film). A scan without its confounds file is refused;
    the scan's volumes after the film are left out with one log line, and --video no longer crashes."""
    from cinevox.inference.decode import decode, decode_scans

    root, _ = short_runs
    b, data = _decoder_bundle(prepared["basic"])
    assert b.preparation.confounds == {"strategy": ["motion"], "motion": "basic"}
    assert b.preparation.film_trs == {"film": 24}
    bolds = sorted(root.glob("derivatives/fmriprep/sub-*/ses-1/func/*_desc-preproc_bold.nii.gz"))
    assert len(bolds) == 3
    want = np.asarray(data.voxels[data.samples.sort_values("tr").index.to_numpy()])
    _, x, _ = decode_scans(b, bolds, onset=0.0, film="film")
    np.testing.assert_allclose(x, want, atol=2e-5)
    events = tmp_path / "events.tsv"
    pd.DataFrame({"onset": [0.0], "duration": [24.0], "trial_type": ["film"]}).to_csv(events, sep="\t", index=False)
    np.testing.assert_allclose(decode_scans(b, bolds, events=[events])[1], want, atol=2e-5)
    # the raw model: no confounds, and still the film's window only
    rb, rdata = _decoder_bundle(prepared["raw"])
    np.testing.assert_allclose(decode_scans(rb, bolds, events=[events])[1],
                               np.asarray(rdata.voxels[rdata.samples.sort_values("tr").index.to_numpy()]), atol=2e-5)
    # a scan without its confounds file: refused; given with --confounds-file: the same voxels
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = [Path(shutil.copy(bo, alone / bo.name)) for bo in bolds]
    with pytest.raises(ValueError, match=r"prepared with confounds .*motion.*--confounds-file"):
        decode_scans(b, moved, onset=0.0, film="film")
    confs = [next(bo.parent.glob(bo.name.split("_space-")[0] + "_desc-confounds_timeseries.tsv")) for bo in bolds]
    np.testing.assert_allclose(decode_scans(b, moved, onset=0.0, film="film", confounds=confs)[1], want, atol=2e-5)
    # the command with the video only: the window ends with the video, the volumes after it left out, logged
    video = root / "stimuli" / "film.mp4"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cinevox.inference.decode"):
        s = decode(b, bolds[:1], tmp_path / "dec", onset=0.0, video=video)
    from cinevox.inference.predict import video_plan

    n_video = video_plan(b, video)[0]
    assert s["n_trs"] == n_video < 34 - 4 and s["confounds"] == {"strategy": ["motion"], "motion": "basic"}
    tab = pd.read_csv(tmp_path / "dec" / "decoded.tsv", sep="\t")
    assert tab["tr"].tolist() == list(range(n_video)) and tab["ssim"].notna().all()
    after = [r for r in caplog.records if "after the film's end" in r.getMessage()]
    assert len(after) == 1 and f"volumes {4 + n_video} to 33" in after[0].getMessage()


@pytest.fixture(scope="module")
def scrubbed(tmp_path_factory) -> tuple[Path, Path]:
    """Every viewer's volume 15 scrubbed (framewise displacement 5 mm, --confounds motion:basic,scrub:0.5), prepared
    with --detrend linear: ``(bids root, prepared dir)``."""
    root = tmp_path_factory.mktemp("scrubbed") / "ds"
    shown = [Shown(s, "movie", "film.mp4", onset=0.0, duration=24.0, film="film", ses="1") for s in SUBS]
    build(root, shown, fmriprep=True, motion=3.0)
    for f in root.glob("derivatives/fmriprep/sub-*/ses-1/func/*_desc-confounds_timeseries.tsv"):
        df = pd.read_csv(f, sep="\t", na_values="n/a")
        df["std_dvars"] = np.r_[np.nan, np.zeros(len(df) - 1)]
        df.loc[15, "framewise_displacement"] = 5.0  # scrubbed: a hole in the film's window
        df.to_csv(f, sep="\t", index=False, na_rep="n/a")
    return root, prepare(root, tmp_path_factory.mktemp("scrubbed_prep") / "p",
                         _cfg(root, confounds="motion:basic,scrub:0.5", detrend="linear"), progress=False)


def test_decode_detrends_over_volume_times_as_prepare(scrubbed):
    """A model prepared with --detrend linear and a scrubbed volume inside the film: decode fits the trend over the
    volumes' times, as prepare does, so the decoded voxels are the prepared ones (over row index they differed by
    up to 0.04)."""
    from cinevox.inference.decode import decode_window

    root, prep = scrubbed
    b, data = _decoder_bundle(prep)
    bolds = sorted(root.glob("derivatives/fmriprep/sub-*/ses-1/func/*_desc-preproc_bold.nii.gz"))
    _, x, _, t = decode_window(b, bolds, onset=0.0, film="film")
    s = data.samples.sort_values("tr")
    assert list(t) == s["tr"].tolist()  # decode and prepare both leave the scrubbed film TR out
    np.testing.assert_allclose(x, np.asarray(data.voxels[s.index.to_numpy()]), atol=2e-5)


def test_a_film_tr_every_viewer_lost_to_scrubbing_is_no_sample(scrubbed, tmp_path, caplog):
    """Volume 15 (film TR 11 with the 4-TR delay) scrubbed for every viewer: the prepared samples have no row for
    it (before: a row of zeros, trained and scored on), one log line says so, and every viewer's series stays
    aligned with the samples (their mean over viewers is voxels.npy; subjects_test.npy is subjects.npy's test rows;
    timeline.tsv counts the TRs used). Without scrubbing (the control) the TR is a sample."""
    root, prep = scrubbed
    data = PreparedData(prep)
    s = data.samples
    delay = int(json.loads((prep / "manifest.json").read_text())["config"]["delay_trs"])
    lost = 15 - delay
    assert lost not in set(s["tr"]) and sorted(s["tr"]) == [t for t in range(24) if t != lost]
    vox = np.asarray(data.voxels)
    assert len(vox) == len(s) == 23 and not (np.abs(vox).max(1) == 0).any()  # no all-zero row
    every = np.load(prep / "subjects.npy")
    assert every.shape[:2] == (3, len(s)) and np.isfinite(every).all()
    np.testing.assert_allclose(np.nanmean(every, 0), vox, atol=1e-5)
    test_rows = s.index[s["split"] == "test"].to_numpy()
    np.testing.assert_array_equal(np.load(prep / "subjects_test.npy"), every[:, test_rows])
    timeline = pd.read_csv(prep / "timeline.tsv", sep="\t")
    assert timeline["n_trs"].tolist() == [23] * 3
    # the log line (planning only: a dry run), and the control without scrubbing
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cinevox.data.prepare"):
        from cinevox.data.prepare import plan_runs

        plans = plan_runs(root, _cfg(root, confounds="motion:basic,scrub:0.5"))[-1]
    lines = [r.getMessage() for r in caplog.records if "scrubbed" in r.getMessage()]
    assert lines == ["--confounds motion:basic,scrub,fd_threshold:0.5: 1 film TR(s) dropped from the samples, "
                     f"every viewer's volume for them scrubbed: film 1 (TR {lost})"], lines
    assert all(15 not in rp.volumes for rp in plans)
    plans = plan_runs(root, _cfg(root, confounds="motion:basic"))[-1]
    assert all(15 in rp.volumes for rp in plans)
