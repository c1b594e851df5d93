"""Movie-fMRI datasets of every shape the field uses, generated with responses planted on each film's clock.

A dataset is a list of :class:`Shown` (one stimulus in one run). Every film has a true response ``truth[film]``
(movie TRs x mask voxels, white noise over time so that a shift of a few TRs decorrelates it); a run's volume
``round(onset / TR) + delay + t`` holds ``truth[film][movie TR of the stimulus's t-th TR]`` plus noise, the other
volumes noise only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from helpers import AFFINE, SHAPE, write_film

MASK = (slice(1, 6), slice(2, 7), slice(3, 8))  # 125 voxels


@dataclass
class Shown:
    sub: str
    task: str
    stim_file: str  # relative to the films folder
    onset: float  # s in the run
    duration: float
    stim_start: float = 0.0  # s in the file
    film: str = ""  # the movie the file belongs to (truth key)
    movie_start: float = 0.0  # movie time of the file's t = 0
    ses: str | None = None
    run: str | None = None

    @property
    def run_key(self) -> tuple:
        return (self.sub, self.ses, self.task, self.run)


def bids_stem(sub, ses, task, run) -> str:
    return "_".join([f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + [f"task-{task}"]
                    + ([f"run-{run}"] if run else []))


def func_dir(root: Path, sub, ses) -> Path:
    return root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"


def build(root: Path, shown: list[Shown], tr: float = 1.0, delay: int = 4, tail: int = 6, noise: float = 0.3,
          short: dict | None = None, fmriprep: bool = False, events: str = "run", motion: float = 0.0,
          non_steady: int = 0, seed: int = 0, fps: float = 8.0) -> dict[str, np.ndarray]:
    """Write the dataset; returns ``truth`` (film -> (n_movie_trs, 125))."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    vis = np.zeros(SHAPE, np.uint8)
    vis[MASK] = 1
    nib.save(nib.Nifti1Image(vis, AFFINE), root / "mask.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "gen", "BIDSVersion": "1.8.0"}))
    films = sorted({s.film for s in shown})
    n_movie = {f: int(max(s.movie_start + s.stim_start + s.duration for s in shown if s.film == f) / tr) + 2
               for f in films}
    truth = {f: rng.standard_normal((n_movie[f], int(vis.sum()))) for f in films}
    lengths: dict[str, float] = {}
    for s in shown:
        lengths[s.stim_file] = max(lengths.get(s.stim_file, 0.0), s.stim_start + s.duration)
    for stim, dur in lengths.items():
        write_film(root / "stimuli" / stim, int(np.ceil((dur + tr) * fps)) + 2, fps)
    runs: dict[tuple, list[Shown]] = {}
    for s in shown:
        runs.setdefault(s.run_key, []).append(s)
    tasks = sorted({s.task for s in shown})
    if events == "root":
        for t in tasks:
            (root / f"task-{t}_bold.json").write_text(json.dumps({"RepetitionTime": tr, "TaskName": t}))
    for key, ss in runs.items():
        sub, ses, task, run = key
        n_vol = int(round(max(s.onset + s.duration for s in ss) / tr)) + delay + tail
        n_vol -= (short or {}).get(key, 0)
        data = noise * rng.standard_normal((n_vol, *SHAPE)) + 100.0
        for s in ss:
            v0 = int(round(s.onset / tr)) + delay
            m0 = int(round((s.movie_start + s.stim_start) / tr))
            for t in range(int(s.duration / tr + 1e-6)):
                if v0 + t < n_vol:
                    data[v0 + t][MASK] += truth[s.film][m0 + t].reshape(5, 5, 5)
        trans = rng.standard_normal(n_vol)
        if motion:
            load = np.zeros(SHAPE)
            load[MASK] = rng.uniform(0.5, 1.5, (5, 5, 5))
            data += motion * trans[:, None, None, None] * load
        if non_steady:
            data[:non_steady] += 50.0
        stem = bids_stem(sub, ses, task, run)
        raw = func_dir(root, sub, ses)
        raw.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(np.moveaxis(data, 0, -1).astype(np.float32), AFFINE)
        img.header.set_zooms((4.0, 4.0, 4.0, tr))
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_sform(AFFINE, 4)
        img.header.set_qform(AFFINE, 4)
        if fmriprep:
            d = root / "derivatives" / "fmriprep" / raw.relative_to(root)
            d.mkdir(parents=True, exist_ok=True)
            nib.save(img, d / f"{stem}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz")
            (d / f"{stem}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json").write_text(
                json.dumps({"RepetitionTime": tr, "SkullStripped": False}))
            conf = {}
            for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):  # fMRIPrep's motion columns
                x = trans if c == "trans_x" else rng.standard_normal(n_vol) * 0.01
                dx = np.r_[np.nan, np.diff(x)]
                conf.update({c: x, f"{c}_power2": x**2, f"{c}_derivative1": dx, f"{c}_derivative1_power2": dx**2})
            conf.update({"white_matter": rng.standard_normal(n_vol), "csf": rng.standard_normal(n_vol),
                         "global_signal": rng.standard_normal(n_vol),
                         "framewise_displacement": np.r_[np.nan, np.zeros(n_vol - 1)]})
            for k in range(non_steady):
                col = np.zeros(n_vol)
                col[k] = 1
                conf[f"non_steady_state_outlier{k:02d}"] = col
            pd.DataFrame(conf).to_csv(d / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
            (d / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps({}))
            (d.parent.parent / "dataset_description.json").write_text(json.dumps(
                {"Name": "fMRIPrep", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}))
        else:
            nib.save(img, raw / f"{stem}_bold.nii.gz")
        if events == "run":
            (raw / f"{stem}_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
            rows = [{"onset": 0.0, "duration": max(ss[0].onset, 0.1), "trial_type": "rest", "stim_file": "n/a",
                     "stim_start": "n/a"}]
            rows += [{"onset": s.onset, "duration": s.duration, "trial_type": "movie", "stim_file": s.stim_file,
                      "stim_start": s.stim_start} for s in sorted(ss, key=lambda s: s.onset)]
            pd.DataFrame(rows).to_csv(raw / f"{stem}_events.tsv", sep="\t", index=False)
    if events == "root":  # one events file for every run of the task (inheritance), rest first
        for t in tasks:
            ss = [s for s in shown if s.task == t]
            first = {(s.stim_file, s.onset, s.duration) for s in ss}
            assert len(first) == 1, "root events need one placement for the whole task"
            s = ss[0]
            pd.DataFrame({"onset": [0.0, s.onset], "duration": [s.onset, s.duration],
                          "trial_type": ["rest", "film"], "stim_file": ["n/a", s.stim_file]}).to_csv(
                root / f"task-{t}_events.tsv", sep="\t", index=False)
    return truth


def timeline_rows(shown: list[Shown]) -> pd.DataFrame:
    return pd.DataFrame([{"sub": s.sub, "ses": s.ses or "n/a", "task": s.task, "run": s.run or "n/a",
                          "stim_file": s.stim_file, "onset": s.onset, "stim_start": s.stim_start,
                          "duration": s.duration} for s in shown])


def alignment(prepared: Path, truth: dict[str, np.ndarray], shift: int = 0) -> float:
    """Mean over voxels of the Pearson r between the prepared voxels and the truth at each sample's film TR
    (+ ``shift``), over the samples where the shifted truth exists."""
    samples = pd.read_csv(prepared / "samples.csv")
    vox = np.load(prepared / "voxels.npy")
    ijk = np.load(prepared / "voxels_ijk.npy")
    box = np.zeros(SHAPE, int) - 1
    box[MASK] = np.arange(125).reshape(5, 5, 5)
    cols = box[tuple(ijk.T)]
    t = samples["tr"].to_numpy() + shift
    ok = np.array([0 <= tt < len(truth[f]) for f, tt in zip(samples["film"], t)])
    ref = np.stack([truth[f][tt][cols] for f, tt in zip(samples["film"][ok], t[ok])])
    x = vox[ok]
    x = (x - x.mean(0)) / x.std(0)
    ref = (ref - ref.mean(0)) / ref.std(0)
    return float((x * ref).mean(0).mean())
