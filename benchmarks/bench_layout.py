"""Indexing a large BIDS dataset: cinevox's file-name scan beside pybids' BIDSLayout, in one run.

    python benchmarks/bench_layout.py [--subjects 30] [--runs 20] [--sessions 0] [--fmriprep]

Writes a synthetic dataset (tiny 4D NIfTI at real BIDS names, a root task-movie_events.tsv and
task-movie_bold.json inherited by every run, per-run sidecars; with --fmriprep also fMRIPrep derivatives with
confounds) and times: cinevox's ``find_bold_runs`` (scan + inheritance), ``plan_runs`` (the same plus every BOLD
header read and each run's stimulus timeline), and pybids' ``BIDSLayout`` indexing plus a metadata query per run
(when pybids is installed; it is not a dependency of cinevox).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def write_dataset(root: Path, n_sub: int, n_run: int, n_ses: int, fmriprep: bool) -> int:
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.8.0"}))
    (root / "task-movie_bold.json").write_text(json.dumps({"RepetitionTime": 1.0, "TaskName": "movie"}))
    (root / "task-movie_events.tsv").write_text("onset\tduration\ttrial_type\tstim_file\n2\t40\tfilm\tfilm.mp4\n")
    img = nib.Nifti1Image(np.zeros((2, 2, 2, 50), np.float32), np.eye(4))
    img.header.set_zooms((2.0, 2.0, 2.0, 1.0))
    img.header.set_sform(np.eye(4), 4)
    n_files = 3
    for s in range(n_sub):
        for ses in (range(1, n_ses + 1) if n_ses else [None]):
            sub = f"sub-{s:02d}"
            parts = [sub] + ([f"ses-{ses}"] if ses else [])
            func = root.joinpath(*parts, "func")
            func.mkdir(parents=True, exist_ok=True)
            for r in range(1, n_run + 1):
                stem = "_".join(parts + ["task-movie", f"run-{r:02d}"])
                nib.save(img, func / f"{stem}_bold.nii.gz")
                (func / f"{stem}_bold.json").write_text(json.dumps({"EchoTime": 0.03}))
                n_files += 2
                if fmriprep:
                    d = root.joinpath("derivatives", "fmriprep", *parts, "func")
                    d.mkdir(parents=True, exist_ok=True)
                    nib.save(img, d / f"{stem}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz")
                    (d / f"{stem}_desc-confounds_timeseries.tsv").write_text("trans_x\n" + "0\n" * 50)
                    n_files += 2
    return n_files


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=30)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--fmriprep", action="store_true")
    a = ap.parse_args()
    from cinevox.data.layout import find_bold_runs
    from cinevox.data.prepare import PrepareConfig, plan_runs

    tmp = Path(tempfile.mkdtemp(prefix="bench_layout_"))
    try:
        n_files = write_dataset(tmp, a.subjects, a.runs, a.sessions, a.fmriprep)
        rows = []
        t, runs = timed(lambda: find_bold_runs(tmp))
        rows.append(("cinevox find_bold_runs (scan + inheritance)", t, len(runs)))
        t, out = timed(lambda: plan_runs(tmp, PrepareConfig(films_dir="films")))
        rows.append(("cinevox plan_runs (+ headers, timelines)", t, len(out[6])))
        try:
            import bids
        except ImportError:
            rows.append(("pybids BIDSLayout: not installed", float("nan"), 0))
        else:
            t, layout = timed(lambda: bids.BIDSLayout(tmp, validate=False, derivatives=a.fmriprep))
            rows.append((f"pybids {bids.__version__} BIDSLayout(validate=False) index", t, 0))
            files = layout.get(suffix="bold", extension=[".nii", ".nii.gz"], scope="raw")
            t, _ = timed(lambda: [layout.get_metadata(f.path) for f in files])
            rows.append(("pybids get_metadata per raw run", t, len(files)))
        print(f"dataset: {a.subjects} subjects x {max(a.sessions, 1)} session(s) x {a.runs} runs, {n_files} files"
              + (" (with fMRIPrep derivatives)" if a.fmriprep else ""))
        print(f"{'step':52s} {'seconds':>8s} {'runs':>6s}")
        for name, t, n in rows:
            print(f"{name:52s} {t:8.3f} {n:6d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
