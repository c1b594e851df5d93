"""Datasets of every shape: films split over runs or tasks, clips within runs, fMRIPrep derivatives with confounds,
inherited events and sidecars, timeline tables, short runs. Each has responses planted on the film clock: the
prepared voxels must match the truth at the right alignment and not when shifted by 2 TRs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from layouts import Shown, alignment, build, timeline_rows

from cinevox.cli import main
from cinevox.data.layout import BIDSError
from cinevox.data.prepare import PrepareConfig, dry_run, prepare

SUBS = ("01", "02", "03")


def cfg(root, **kw) -> PrepareConfig:
    base = dict(films_dir=str(root / "stimuli"), mask=str(root / "mask.nii.gz"), frame_size=16, frames_per_tr=4,
                gap_trs=1, val_blocks=1, snr_top=1.0)
    base.update(kw)
    return PrepareConfig(**base)


def check_alignment(out, truth, at_least=0.8):
    right, shifted = alignment(out, truth), alignment(out, truth, shift=2)
    print(f"alignment r {right:.3f}, shifted by 2 TRs {shifted:.3f}")
    assert right > at_least, (right, shifted)
    assert shifted < 0.25 and right - shifted > 0.5, (right, shifted)
    return right, shifted


def test_film_split_over_tasks_with_inherited_events_and_sidecars(tmp_path):
    """Sherlock / CNeuroMod shape: a film in two tasks, one segment file each; events and TR only at the root;
    no sessions, no runs."""
    shown = []
    for s in SUBS:
        shown.append(Shown(s, "partA", "show1.mp4", onset=4.0, duration=30.0, film="show", movie_start=0.0))
        shown.append(Shown(s, "partB", "show2.mp4", onset=3.0, duration=26.0, film="show", movie_start=30.0))
    truth = build(tmp_path / "ds", shown, events="root")
    out = prepare(tmp_path / "ds", tmp_path / "p", cfg(tmp_path / "ds"), progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["layout"] == "bids" and m["tr"] == 1.0 and list(m["films"]) == ["show"]
    assert m["films"]["show"]["n_trs"] == 56 and [s["n_trs"] for s in m["films"]["show"]["segments"]] == [30, 26]
    samples = pd.read_csv(out / "samples.csv")
    assert len(samples) == 56 and samples["tr"].tolist() == list(range(56))
    row = samples[samples["tr"] == 40].iloc[0]  # film TR 40 = 10 s into show2.mp4
    assert row["stim_file"] == "show2.mp4" and row["stim_time"] == pytest.approx(10.0)
    assert set(pd.read_csv(out / "timeline.tsv", sep="\t")["stim_file"]) == {"show1.mp4", "show2.mp4"}
    check_alignment(out, truth)


def test_fmriprep_derivatives_confounds_and_non_steady_state(tmp_path):
    """fMRIPrep names (res-2), confounds regressed with nilearn, non-steady-state volumes dropped; a motion
    artefact planted in trans_x: regressing it out must improve the alignment."""
    shown = [Shown(s, "movie", "film.mp4", onset=6.0, duration=40.0, film="film", run=r, ses="1",
                   stim_start=40.0 * (int(r) - 1), movie_start=0.0) for s in SUBS for r in ("1", "2")]
    truth = build(tmp_path / "ds", shown, fmriprep=True, motion=3.0, non_steady=2)
    raw = prepare(tmp_path / "ds", tmp_path / "raw", cfg(tmp_path / "ds"), progress=False)
    clean = prepare(tmp_path / "ds", tmp_path / "clean", cfg(tmp_path / "ds", confounds="motion"), progress=False)
    m = json.loads((clean / "manifest.json").read_text())
    assert m["confounds"] == ["motion"] and all("space-MNI152NLin2009cAsym_res-2" in r["bold"]["path"]
                                                 for r in m["inputs"]["runs"])
    r_raw, _ = alignment(raw, truth), None
    r_clean, _ = check_alignment(clean, truth, at_least=0.85)
    assert r_clean > r_raw + 0.1, (r_raw, r_clean)
    # run 2 shows film seconds 40-80 on the file clock: samples at film TRs 40..79
    samples = pd.read_csv(clean / "samples.csv")
    assert samples["tr"].min() == 0 and samples["tr"].max() == 79 and len(samples) == 80


def test_non_steady_state_volumes_are_not_samples(tmp_path):
    shown = [Shown(s, "movie", "film.mp4", onset=0.0, duration=30.0, film="film", ses="1") for s in SUBS]
    build(tmp_path / "ds", shown, fmriprep=True, non_steady=6, delay=0)
    out = prepare(tmp_path / "ds", tmp_path / "p", cfg(tmp_path / "ds", delay_trs=0), progress=False)
    samples = pd.read_csv(out / "samples.csv")
    assert samples["tr"].min() == 6 and len(samples) == 24  # volumes 0-5 dropped


def test_film_in_three_overlapping_segments(tmp_path):
    """StudyForrest / CNeuroMod shape: one film in 3 files, each repeating the last 4 s of the previous one,
    one run each; --segment-overlap drops the repeats, so no second of the film is in train and test both."""
    seg, ov = 24.0, 4.0
    shown = [Shown(s, "movie", f"forrest{k + 1:02d}.mp4", onset=2.0, duration=seg, film="forrest",
                   movie_start=k * (seg - ov), run=str(k + 1)) for s in SUBS for k in range(3)]
    truth = build(tmp_path / "ds", shown)
    out = prepare(tmp_path / "ds", tmp_path / "p", cfg(tmp_path / "ds", segment_overlap=ov), progress=False)
    samples = pd.read_csv(out / "samples.csv")
    assert len(samples) == 3 * seg - 2 * ov and samples["tr"].tolist() == list(range(64))
    check_alignment(out, truth)
    # without the overlap declared, the repeated seconds sit on distinct film TRs: the alignment suffers
    out2 = prepare(tmp_path / "ds", tmp_path / "p2", cfg(tmp_path / "ds"), progress=False)
    assert len(pd.read_csv(out2 / "samples.csv")) == 72
    assert alignment(out2, truth) < alignment(out, truth) - 0.1


def test_clips_within_runs_split_by_stimulus_with_a_repeat(tmp_path):
    """BOLD Moments / HCP shape: several short clips per run with rest between, stim_file rows and oddball n/a
    rows; one clip shown twice to each subject. --split stimuli: whole clips to train / val / test, a repeated
    clip averaged and never in two splits."""
    clips = [f"clips/c{k}.mp4" for k in range(8)]
    shown = []
    for s in SUBS:
        for r, batch in enumerate((clips[:4], clips[4:] + [clips[0]])):
            for j, c in enumerate(batch):
                shown.append(Shown(s, "clips", c, onset=4.0 + 12.0 * j, duration=4.0, film=c.split("/")[1][:-4],
                                   run=str(r + 1)))
    truth = build(tmp_path / "ds", shown)
    with pytest.raises(ValueError, match="--split stimuli"):
        prepare(tmp_path / "ds", tmp_path / "x", cfg(tmp_path / "ds"), progress=False)
    out = prepare(tmp_path / "ds", tmp_path / "p", cfg(tmp_path / "ds", split="stimuli"), progress=False)
    samples = pd.read_csv(out / "samples.csv")
    assert samples.groupby("film")["split"].nunique().max() == 1  # a stimulus in one split
    assert samples["film"].nunique() == 8 and len(samples) == 32
    assert set(samples["split"]) == {"train", "val", "test"}
    assert samples.loc[samples["film"] == "clips-c0", "stim_file"].iloc[0] == "clips/c0.mp4"
    truth = {f"clips-{k}": v for k, v in truth.items()}
    check_alignment(out, truth)
    # the same split whatever else is in the dataset: the stimulus's hash decides
    again = prepare(tmp_path / "ds", tmp_path / "p3", cfg(tmp_path / "ds", split="stimuli",
                                                         films=["clips-c0", "clips-c1", "clips-c2", "clips-c3"]),
                    progress=False)
    s3 = pd.read_csv(again / "samples.csv").groupby("film")["split"].first()
    s1 = samples.groupby("film")["split"].first()
    assert (s3 == s1[s3.index]).mean() >= 0.5


def test_timeline_table_without_events_and_without_sessions(tmp_path):
    """NNDb shape: one film cut into runs, no events; a timeline table places each run in the film."""
    shown = [Shown(s, "film", "film.mp4", onset=0.0, duration=25.0, stim_start=25.0 * k, film="film", run=f"0{k + 1}")
             for s in SUBS for k in range(2)]
    truth = build(tmp_path / "ds", shown, events="none")
    for s in SUBS:  # TR in per-run sidecars only
        for k in range(2):
            (tmp_path / "ds" / f"sub-{s}" / "func" / f"sub-{s}_task-film_run-0{k + 1}_bold.json").write_text(
                json.dumps({"RepetitionTime": 1.0}))
    with pytest.raises(BIDSError, match="no events file applies.*--timeline"):
        prepare(tmp_path / "ds", tmp_path / "x", cfg(tmp_path / "ds", tasks=["film"]), progress=False)
    tl = tmp_path / "timeline.tsv"
    timeline_rows(shown).to_csv(tl, sep="\t", index=False)
    table = dry_run(tmp_path / "ds", tmp_path / "dry", cfg(tmp_path / "ds", timeline=str(tl)))
    assert len(table) == 6 and set(table["film_tr_start"]) == {0, 25}
    assert (tmp_path / "dry" / "timeline.png").stat().st_size > 1000 and not (tmp_path / "dry" / "voxels.npy").exists()
    out = prepare(tmp_path / "ds", tmp_path / "p", cfg(tmp_path / "ds", timeline=str(tl)), progress=False)
    assert len(pd.read_csv(out / "samples.csv")) == 50
    check_alignment(out, truth)


def test_short_runs_trimmed_or_refused(tmp_path, caplog):
    shown = [Shown(s, "movie", "film.mp4", onset=2.0, duration=30.0, film="film") for s in SUBS]
    # the run of sub-02 ends 1 TR before its stimulus does (delay 4 + tail 6 = 10 TRs cut -> 11)
    build(tmp_path / "ds", shown, short={("02", None, "movie", None): 11})
    with caplog.at_level(logging.WARNING, logger="cinevox"):
        out = prepare(tmp_path / "ds", tmp_path / "p", cfg(tmp_path / "ds"), progress=False)
    assert "sub-02_task-movie_bold.nii.gz: 1 TR(s) shorter than its stimuli" in caplog.text
    m = json.loads((out / "manifest.json").read_text())
    assert len(pd.read_csv(out / "samples.csv")) == 30  # the other viewers still cover every TR
    runs = {r["key"]: r["n_volumes_used"] for r in m["inputs"]["runs"]}
    assert runs["sub-02_task-movie"] == 30 - 5 and runs["sub-01_task-movie"] == 30
    build(tmp_path / "ds2", shown, short={("02", None, "movie", None): 14})
    with pytest.raises(BIDSError, match=r"sub-02_task-movie_bold.nii.gz: run is shorter than its stimuli: 28 "
                                        r"volumes .*until volume 32"):
        prepare(tmp_path / "ds2", tmp_path / "p2", cfg(tmp_path / "ds2"), progress=False)


@pytest.mark.parametrize("case", ["missing stim", "timeline run", "timeline overlap", "events onset"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    shown = [Shown(s, "movie", "film.mp4", onset=2.0, duration=20.0, film="film", run="1") for s in SUBS]
    build(tmp_path / "ds", shown)
    ds = tmp_path / "ds"
    ev = ds / "sub-02" / "func" / "sub-02_task-movie_run-1_events.tsv"
    extra = []
    if case == "missing stim":
        ev.write_text(ev.read_text().replace("film.mp4", "other.mp4"))
        expect = f"{ev}: stim_file other.mp4 does not exist"
    elif case == "events onset":
        df = pd.read_csv(ev, sep="\t").rename(columns={"onset": "start"})
        df.to_csv(ev, sep="\t", index=False)
        expect = f"{ev}: no 'onset' column"
    else:
        tl = timeline_rows(shown)
        if case == "timeline run":
            tl.loc[1, "run"] = "7"
            expect = "timeline.tsv: row 3 names a run that was not found (sub-02, task-movie, run-7)"
        else:
            tl = pd.concat([tl, tl.iloc[[0]].assign(onset=10.0)])
            expect = "timeline.tsv: sub-01_task-movie_run-1: film.mp4 at 10 s overlaps film.mp4 (2-22 s)"
        tl.to_csv(tmp_path / "timeline.tsv", sep="\t", index=False)
        extra = ["--timeline", str(tmp_path / "timeline.tsv")]
    out = tmp_path / "out"
    code = main(["prepare", str(ds), str(out), "--films-dir", str(ds / "stimuli"), "--mask", str(ds / "mask.nii.gz"),
                 "--val-blocks", "1", "--gap-trs", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, err
    assert not out.exists()


def test_dry_run_cli_prints_the_timeline(tmp_path, capsys):
    shown = [Shown(s, "movie", "film.mp4", onset=2.0, duration=20.0, film="film", run="1") for s in SUBS]
    build(tmp_path / "ds", shown)
    ds = tmp_path / "ds"
    assert main(["prepare", str(ds), str(tmp_path / "o"), "--films-dir", str(ds / "stimuli"), "--dry-run",
                 "--val-blocks", "1", "--gap-trs", "1"]) == 0
    text = capsys.readouterr().out
    assert "film.mp4" in text and "train" in text and "test" in text and "timeline.png" in text
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["timeline.png", "timeline.tsv"]


def test_downstream_on_a_clips_dataset(tmp_path):
    """baseline and evaluate (per-film r, ceilings, nulls) on a dataset of short clips split by stimulus."""
    from helpers import FAST_RIDGE

    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training.ridge import RidgeConfig, baseline

    clips = [f"c{k}.mp4" for k in range(12)]  # 2-s clips: 2 TRs each, pooled for z-scoring (scoring_groups)
    shown = [Shown(s, "clips", c, onset=3.0 + 9.0 * j, duration=2.0, film=c[:-4], run=str(r + 1))
             for s in SUBS for r in range(3) for j, c in enumerate(clips[4 * r:4 * r + 4])]
    truth = build(tmp_path / "ds", shown)
    out = prepare(tmp_path / "ds", tmp_path / "p", cfg(tmp_path / "ds", split="stimuli", frame_size=32,
                                                       test_fraction=0.34, val_fraction=0.25), progress=False)
    check_alignment(out, truth)
    run = baseline(out, tmp_path / "b", RidgeConfig(**FAST_RIDGE), progress=False)
    m = evaluate(run, EvalConfig(n_perm=20, n_perm_frames=5))
    test = pd.read_csv(out / "samples.csv").query("split == 'test'")
    assert m["n_test_samples"] == len(test) and sorted(m["test_films"]) == sorted(test["film"].unique())
    enc = m["encoder"]
    assert np.isfinite(enc["r_mean"]) and set(enc["r_mean_per_film"]) == set(test["film"])
    from cinevox.metrics import scoring_groups

    assert set(scoring_groups(test["film"].to_numpy())) == {"(short stimuli)"}  # every clip pooled
    assert set(scoring_groups(np.repeat(["a", "b"], [2, 5]))) == {"(short stimuli)", "b"}
    assert np.isfinite(enc["ceiling_mean"]) and enc["ceiling_mean"] > 0.5  # planted shared responses: reliable


def _touch(root, rel, text=""):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_discovery_inheritance_resolutions_and_plain_nii(tmp_path):
    """BIDS inheritance (the nearest sidecar's keys win, the nearest events file is used), .nii beside .nii.gz,
    unpadded run ids matching padded sidecars, fMRIPrep resolutions (refused until --res), raw without
    derivatives."""
    from cinevox.data.layout import DerivativeSpec, find_bold_runs

    ds = tmp_path / "ds"
    _touch(ds, "task-movie_bold.json", json.dumps({"RepetitionTime": 2.0, "EchoTime": 0.03}))
    _touch(ds, "task-movie_events.tsv", "onset\tduration\ttrial_type\n0\t10\tfilm\n")
    _touch(ds, "sub-01/sub-01_task-movie_bold.json", json.dumps({"RepetitionTime": 1.5}))  # subject level
    _touch(ds, "sub-01/func/sub-01_task-movie_run-1_bold.nii")
    _touch(ds, "sub-01/func/sub-01_task-movie_run-02_bold.nii.gz")
    _touch(ds, "sub-01/func/sub-01_task-movie_run-02_events.tsv", "onset\tduration\ttrial_type\n5\t10\tfilm\n")
    _touch(ds, "sub-02/func/sub-02_task-movie_run-1_bold.nii.gz")
    _touch(ds, "sub-02/func/sub-02_task-movie_run-01_bold.json", json.dumps({"RepetitionTime": 1.0}))
    _touch(ds, "sub-02/func/sub-02_task-rest_bold.nii.gz")
    runs = {r.key: r for r in find_bold_runs(ds)}
    assert set(runs) == {"sub-01_task-movie_run-1", "sub-01_task-movie_run-02", "sub-02_task-movie_run-1",
                         "sub-02_task-rest"}
    assert runs["sub-01_task-movie_run-1"].bold.suffix == ".nii"
    assert runs["sub-01_task-movie_run-1"].tr == 1.5  # the subject-level sidecar overrides the root
    assert runs["sub-02_task-movie_run-1"].tr == 1.0  # run-01 sidecar applies to run-1
    assert runs["sub-01_task-movie_run-1"].events == ds / "task-movie_events.tsv"  # inherited
    assert runs["sub-01_task-movie_run-02"].events.name == "sub-01_task-movie_run-02_events.tsv"  # nearest
    assert runs["sub-02_task-rest"].events is None and runs["sub-02_task-rest"].tr is None
    assert [r.key for r in find_bold_runs(ds, subjects=["sub-02"], tasks=["movie"])] == ["sub-02_task-movie_run-1"]
    d = ds / "derivatives" / "fmriprep" / "sub-01" / "func"
    for res in ("1", "2"):
        _touch(d.parent.parent, f"sub-01/func/sub-01_task-movie_run-1_space-MNI152NLin2009cAsym_res-{res}_desc-"
                                "preproc_bold.nii.gz")
    _touch(d.parent.parent, "sub-01/func/sub-01_task-movie_run-1_space-T1w_desc-preproc_bold.nii.gz")
    _touch(d.parent.parent, "sub-01/func/sub-01_task-movie_run-1_desc-confounds_timeseries.tsv", "trans_x\n0\n")
    spec = DerivativeSpec(ds / "derivatives" / "fmriprep")
    with pytest.raises(BIDSError, match=r"several resolutions .*\(1, 2\); choose one with --res"):
        find_bold_runs(ds, spec)
    (r,) = find_bold_runs(ds, DerivativeSpec(spec.folder, res="2"))
    assert "res-2" in r.bold.name and r.derivative and r.confounds.name.endswith("confounds_timeseries.tsv")
    assert r.tr == 1.5 and r.events == ds / "task-movie_events.tsv"  # raw tree's sidecars and events apply
    with pytest.raises(BIDSError, match="no film runs"):
        find_bold_runs(ds, DerivativeSpec(spec.folder, space="MNI152NLin6Asym"))


def test_per_frame_events_become_one_placement(tmp_path):
    """StudyForrest's movie runs log one events row per video frame (onset, duration, frameidx, videotime): they
    make one placement, from the first frame's onset and video time to the last frame's end."""
    from cinevox.data.layout import BoldRun
    from cinevox.data.timeline import placements_from_events

    fps, n = 25.0, 750
    onset = 2.01 + np.arange(n) / fps
    ev = tmp_path / "sub-01_ses-movie_task-movie_run-3_events.tsv"
    pd.DataFrame({"onset": onset, "duration": 1 / fps, "frameidx": np.arange(n) + 1000,
                  "videotime": 40.0 + np.arange(n) / fps, "audiotime": 40.0 + np.arange(n) / fps,
                  "lasttrigger": 0.0}).to_csv(ev, sep="\t", index=False)
    run = BoldRun({"sub": "01", "ses": "movie", "task": "movie", "run": "3"}, tmp_path / "b.nii.gz", [], ev, 2.0,
                  None)
    (p,) = placements_from_events(run, template="forrest_seg{run}")
    assert p.stim_file == "forrest_seg3" and p.onset == pytest.approx(2.01) and p.stim_start == pytest.approx(40.0)
    assert p.duration == pytest.approx(n / fps)
