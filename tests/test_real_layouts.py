"""Discovery on the real metadata of public movie-fMRI datasets (``../shared/data/layouts``): the real file names,
events and sidecars, with tiny synthetic BOLD written at the real BOLD names. Checks the runs found, their TRs
and where each stimulus lands on its film's clock."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cinevox.data.layout import BIDSError, find_bold_runs
from cinevox.data.prepare import PrepareConfig, load_config_file, plan_runs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture()
def layouts(shared_data) -> Path:
    return shared_data / "layouts"


def copy_layout(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tree.txt"))
    return dst


def bold_names(layout: Path, pattern: str) -> list[str]:
    """BOLD paths of ``tree.txt`` matching ``pattern``."""
    rx = re.compile(pattern)
    return [line.strip() for line in (layout / "tree.txt").read_text().splitlines() if rx.search(line.strip())]


def write_bold(path: Path, n_vols: int, tr: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.zeros((2, 3, 2, n_vols), np.float32), np.diag([2.0, 2, 2, 1]))
    img.header.set_zooms((2.0, 2.0, 2.0, tr))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_sform(np.diag([2.0, 2, 2, 1]), 4)
    nib.save(img, path)


def events_end(path: Path) -> float:
    df = pd.read_csv(path, sep="\t")
    return float((df["onset"] + df["duration"]).max())


def cfg(example: str | None = None, **kw) -> PrepareConfig:
    """Options as a user would give them: an example config file of ``examples/`` and/or keywords."""
    opts = load_config_file(EXAMPLES / example) if example else {}
    opts.update(kw)
    c = PrepareConfig(films_dir="films", **opts)
    c.validate()
    return c


def by_key(plans):
    return {rp.run.key: rp for rp in plans}


def test_sherlock_film_split_into_two_tasks(layouts, tmp_path):
    """ds001132: task-sherlockPart1/Part2 are halves of one episode; TR 1.5 s only in root sidecars; events
    onset/duration only. The halves are grouped into one film, Part2 after Part1 on its clock."""
    ds = copy_layout(layouts / "ds001132_sherlock", tmp_path / "ds")
    for name in bold_names(layouts / "ds001132_sherlock", r"^sub-0[1-3]/func/.*_bold\.nii\.gz$"):
        ev = ds / name.replace("_bold.nii.gz", "_events.tsv")
        write_bold(ds / name, int(round(events_end(ev) / 1.5)), 1.5)  # the run ends with the film
    layout, runs, placements, tr, n_vols, clocks, plans = plan_runs(ds, cfg("sherlock.toml"))
    assert layout == "bids" and tr == 1.5 and len(runs) == 6
    assert {r.tr_source for r in runs} == {str(ds / f"task-sherlockPart{k}_bold.json") for k in (1, 2)}
    assert list(clocks) == ["sherlockPart"]
    segs = clocks["sherlockPart"].segments
    assert [(s.stim_file, s.offset, s.n_trs) for s in segs] == [("sherlockPart1", 0, 946), ("sherlockPart2", 946, 1030)]
    rp = by_key(plans)["sub-02_task-sherlockPart2"]
    assert rp.volumes[0] == 4 and rp.film_trs[0] == 946 and len(rp.volumes) == 1030 - 4  # the delay's last 4 TRs
    # without --task, the free-recall run (no stimulus) would be read as a film: the user picks the tasks
    _, _, _, _, _, clocks_all, _ = plan_runs(ds, cfg())
    assert set(clocks_all) == {"sherlockPart", "freerecall"}


def test_budapest_runs_of_one_task_with_overlap_rows(layouts, tmp_path):
    """ds003017: the film's second half in 5 runs of task-movie; from run 2 on, an overlap_with_previous_run row
    replays the end of the previous run before the movie row. With --lead-in, each run's movie starts that far
    into its segment file, the replayed seconds are not used, and the segments follow each other on one clock."""
    src = layouts / "ds003017_budapest"
    ds = copy_layout(src, tmp_path / "ds")
    for ev in sorted(ds.glob("sub-*/func/*_events.tsv")):
        write_bold(ev.with_name(ev.name.replace("_events.tsv", "_bold.nii.gz")), int(events_end(ev)) + 8, 1.0)
    c = cfg("budapest.toml")
    layout, runs, placements, tr, n_vols, clocks, plans = plan_runs(ds, c)
    assert tr == 1.0 and len(runs) == 15 and list(clocks) == ["budapest_part"]
    segs = clocks["budapest_part"].segments
    assert [s.stim_file for s in segs] == [f"budapest_part{k}" for k in range(1, 6)]
    assert [s.lo for s in segs] == [0.0, 10.0, 20.0, 12.0, 11.0]  # the replayed seconds at each file's start
    assert [s.n_trs for s in segs] == [577, 467, 495, 586, 772]
    assert [s.offset for s in segs] == [0, 577, 1044, 1539, 2125]
    rp = by_key(plans)["sub-sid000007_task-movie_run-02"]
    assert rp.volumes[0] == 20 + 4 and rp.film_trs[0] == 577  # movie row at 20 s, delay 4 TRs
    assert "overlap" not in " ".join(p.stim_file for p in placements)


def test_nndb_no_events_timeline_with_continue(layouts, tmp_path, caplog):
    """ds002837: the film is the task, cut into runs; no events; unpadded subject ids; TR in per-run sidecars
    except where it is missing (sub-1 run-02's sidecar was too large to copy): there, the header with a warning.
    The example timeline (one row per film, every subject, continue) places each run after the previous."""
    src = layouts / "ds002837_nndb"
    ds = copy_layout(src, tmp_path / "ds")
    lengths = {}
    for k, name in enumerate(bold_names(src, r"^sub-(1|24|81)/func/.*_bold\.nii\.gz$")):
        lengths[name] = 300 + 17 * k
        write_bold(ds / name, lengths[name], 1.0)
    runs = find_bold_runs(ds)
    assert sorted({r.subject for r in runs}) == ["1", "24", "81"]
    no_tr = [r.key for r in runs if r.tr is None]
    assert no_tr == ["sub-1_task-500daysofsummer_run-02"]  # no sidecar, and the root one has no RepetitionTime
    with pytest.raises(BIDSError, match="no events file applies.*--timeline"):
        plan_runs(ds, cfg(tasks=["citizenfour"]))
    with caplog.at_level(logging.WARNING, logger="cinevox"):
        _, runs, placements, tr, n_vols, clocks, plans = plan_runs(
            ds, cfg(timeline=str(EXAMPLES / "nndb_timeline.tsv")))
    assert "sub-1_task-500daysofsummer_run-02_bold.nii.gz: no RepetitionTime in any sidecar" in caplog.text
    assert tr == 1.0 and set(clocks) == {"500daysofsummer", "citizenfour", "12yearsaslave"}
    p24 = sorted((p for p in placements if p.run_key.startswith("sub-24_")), key=lambda p: p.run_key)
    ends = np.cumsum([0] + [p.duration for p in p24])
    assert [p.stim_start for p in p24] == pytest.approx(list(ends[:-1]))  # each run continues the film
    run2 = "sub-24/func/sub-24_task-citizenfour_run-02_bold.nii.gz"
    assert p24[1].duration == lengths[run2]
    rp = by_key(plans)["sub-24_task-citizenfour_run-02"]
    assert rp.film_trs[0] == lengths["sub-24/func/sub-24_task-citizenfour_run-01_bold.nii.gz"]


def test_boldmoments_fmriprep_clips_with_oddball_rows(layouts, tmp_path):
    """ds005165: fMRIPrep derivatives (versionB), 3-s clips with stim_file rows, oddball rows with stim_file
    n/a; TR 1.75 s in per-run sidecars; the test clips repeat across runs and land on the same film TR."""
    src = layouts / "ds005165_boldmoments"
    ds = copy_layout(src, tmp_path / "ds")
    for name in bold_names(src, r"^derivatives/versionB/fmriprep/sub-01/ses-02/func/.*space-MNI152NLin2009cAsym_"
                                r"desc-preproc_bold\.nii\.gz$"):
        raw_ev = ds / re.sub(r"^derivatives/versionB/fmriprep/", "", name).replace(
            "_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz", "_events.tsv")
        write_bold(ds / name, int(events_end(raw_ev) / 1.75) + 6, 1.75)
    layout, runs, placements, tr, n_vols, clocks, plans = plan_runs(
        ds, cfg("boldmoments.toml"))  # derivatives relative to the dataset
    assert layout == "bids" and tr == 1.75 and len(runs) == 13 and all(r.derivative for r in runs)
    ev = ds / "sub-01/ses-02/func/sub-01_ses-02_task-train_run-1_events.tsv"
    df = pd.read_csv(ev, sep="\t", keep_default_na=False)
    mine = [p for p in placements if p.run_key == "sub-01_ses-02_task-train_run-1"]
    assert len(mine) == int((df["stim_file"] != "n/a").sum()) and (df["trial_type"] == "oddball").any()
    assert all(p.duration == 3.0 and "/" in p.stim_file for p in mine)
    assert mine[0].film == "train-0444" and clocks["train-0444"].n_trs == 1  # 3 s at 1.75 s: one whole TR
    test_rows = [p for p in placements if p.stim_file == "test/1102.mp4"]
    assert len(test_rows) >= 3  # shown in several runs: one film, one TR, averaged as repeats
    assert {int(tr_) for rp in plans for f, tr_ in zip(rp.films, rp.film_trs) if f == "test-1102"} == {0}
    assert not any(p.segment for p in placements)  # numeric clip names are never grouped


def test_studyforrest_acquisitions_and_example_timeline(layouts, tmp_path):
    """ds000113: the 7T audio-only session has acq-raw and acq-dico of every run (refused until one is chosen), TR
    in per-run sidecars; the 3T audio-visual session's runs take TR 2 s from the root task-movie_bold.json, and
    the example timeline places the 8 segments of one film (its per-frame events are not usable as rows)."""
    src = layouts / "ds000113_studyforrest"
    ds = copy_layout(src, tmp_path / "ds")
    for name in bold_names(src, r"^sub-0[1-3]/ses-forrestgump/func/.*task-forrestgump_acq-(raw|dico)_run-0\d_bold"
                                r"\.nii\.gz$"):
        write_bold(ds / name, 30, 2.0)
    with pytest.raises(BIDSError, match=r"2 BOLD files for sub-01 task-forrestgump run-01 .*--filter acq="):
        find_bold_runs(ds, tasks=["forrestgump"])
    runs = find_bold_runs(ds, tasks=["forrestgump"], filters={"acq": ["dico"]})
    assert len(runs) == 24 and all(r.entities["acq"] == "dico" for r in runs)
    assert all(r.tr == pytest.approx(2.0, abs=1e-5) and "ses-forrestgump/func" in r.tr_source for r in runs)
    lengths = {}
    for k, name in enumerate(bold_names(src, r"^sub-0[1-3]/ses-movie/func/.*task-movie_run-\d_bold\.nii\.gz$")):
        lengths[name] = 200 + 3 * k
        write_bold(ds / name, lengths[name], 2.0)
    _, runs, placements, tr, n_vols, clocks, plans = plan_runs(
        ds, cfg(tasks=["movie"], timeline=str(EXAMPLES / "studyforrest_timeline.tsv")))
    assert tr == pytest.approx(2.0, abs=1e-5) and len(runs) == 24
    assert {r.tr_source for r in runs} == {str(ds / "task-movie_bold.json")}
    assert list(clocks) == ["forrestgump"]
    segs = clocks["forrestgump"].segments
    assert [s.stim_file for s in segs] == [f"fg_av_ger_seg{k}.mkv" for k in range(8)]
    first = {int(re.search(r"run-(\d)", n)[1]): v for n, v in lengths.items() if n.startswith("sub-01/")}
    # a segment's length on the clock: the longest run showing it (duration n/a: until the run's end)
    longest = {r: max(v for n, v in lengths.items() if f"_run-{r}_" in n) for r in range(1, 9)}
    assert [s.n_trs for s in segs] == [longest[r] for r in range(1, 9)] and first


@pytest.mark.parametrize("dataset,pattern,segments", [
    ("cneuromod_movie10", r"^sub-01/ses-0\d\d/func/sub-01_ses-0\d\d_task-(bourne|figures)0[1-3](_run-0\d)?_bold"
                          r"\.nii\.gz$", {"bourne": 3, "figures": 3}),
    ("cneuromod_friends", r"^sub-01/ses-00[1-5]/func/sub-01_ses-00\d_task-s01e0[1-3][a-d]_bold\.nii\.gz$",
     {"s01e01": 2, "s01e02": 2, "s01e03": 2}),
])
def test_cneuromod_segments_are_tasks(layouts, tmp_path, dataset, pattern, segments):
    """CNeuroMod (listings only): the segment is the task (bourne01, s01e01a), several per session; root
    task-<segment>_events.tsv with stim_file and root sidecars with TR 1.49 s (written here, as the dataset's
    README describes them); figures segments are seen twice (run-01/run-02) and land on the same film TRs."""
    src = layouts / dataset
    names = bold_names(src, pattern)
    assert names, "the listing holds these runs"
    ds = tmp_path / "ds"
    tasks = sorted({re.search(r"task-([a-z0-9]+)", n)[1] for n in names})
    for t in tasks:
        (ds / f"task-{t}_bold.json").parent.mkdir(parents=True, exist_ok=True)
        (ds / f"task-{t}_bold.json").write_text(json.dumps({"RepetitionTime": 1.49}))
        pd.DataFrame({"onset": [1.0], "duration": [60.0], "stim_file": [f"{dataset}/{t}.mkv"]}).to_csv(
            ds / f"task-{t}_events.tsv", sep="\t", index=False)
    for n in names:
        write_bold(ds / n, 50, 1.49)
    _, runs, placements, tr, n_vols, clocks, plans = plan_runs(ds, cfg(f"{dataset}.toml" if dataset.endswith("10")
                                                                       else None, max_trim_trs=0))
    assert tr == 1.49 and len(runs) == len(names)
    assert {f.split("-")[-1]: len(c.segments) for f, c in clocks.items()} == segments
    for c in clocks.values():  # segments in order, end to end
        assert [s.offset for s in c.segments] == [40 * k for k in range(len(c.segments))]
    if dataset == "cneuromod_movie10":
        fig = [rp for rp in plans if rp.run.task == "figures01"]
        assert len(fig) == 2 and {rp.run.run for rp in fig} == {"01", "02"}
        np.testing.assert_array_equal(fig[0].film_trs, fig[1].film_trs)
