"""The linear baseline at demo size, beside a straightforward pymoten + himalaya RidgeCV reference, and an
extrapolation to Emo-FilM size from measured pieces.

    python benchmarks/bench_baseline.py [--prepared DIR] [--backend numpy|torch|torch_cuda]

Without --prepared it simulates and prepares the demo dataset in a temporary folder (as `cinevox demo` does).
Each phase runs in a fresh process, so that its peak memory (ru_maxrss) is its own. Prints two tables.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _phase(name: str, prepared: str, backend: str, queue) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from cinevox.data.dataset import PreparedData
    from cinevox.data.features import FeatureConfig, film_features
    from cinevox.metrics import pearson_columns
    from cinevox.training.ridge import RidgeConfig, fit_ridge, predict_ridge

    t0 = time.time()
    out: dict = {}
    data = PreparedData(prepared)
    test = data.indices("test")
    if name == "features":
        film_features(data, FeatureConfig(), progress=False)
    elif name == "fit":
        res = fit_ridge(data, RidgeConfig(backend=backend, n_iter=10), progress=False)
        out["fit_s"] = res["seconds_fit"]
    elif name == "cinevox":
        from cinevox.training.ridge import baseline

        run = Path(prepared).parent / "bench_ridge"
        shutil.rmtree(run, ignore_errors=True)
        baseline(prepared, run, RidgeConfig(backend=backend, n_iter=10), progress=False)
        r = pearson_columns(predict_ridge(run, data, test), data.voxels[test])
        out["r_mean"] = float(np.nanmean(r))
    elif name == "reference":  # pymoten as documented + himalaya RidgeCV, no delays, plain 5-fold CV
        import moten
        from himalaya.ridge import RidgeCV

        s = data.samples
        xs = {}
        fps = int(round(data.frames_per_tr / float(data.manifest["tr"])))
        for f in sorted(set(s.film)):
            frames = data.frames(f)
            lum = moten.io.imagearray2luminance(np.asarray(frames))
            pyr = moten.get_default_pyramid(vhsize=lum.shape[1:], fps=fps)  # as pymoten's documentation does
            me = pyr.project_stimulus(lum.astype(np.float32))
            xs[f] = me.reshape(-1, data.frames_per_tr, me.shape[1]).mean(1)
        x = np.stack([xs[r.film][r.tr] for r in s.itertuples()])
        fit = s["split"].isin(["train", "val"]).to_numpy()
        mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
        x = ((x - mu) / sd).astype(np.float32)
        y = np.asarray(data.voxels, np.float32)
        model = RidgeCV(alphas=np.logspace(-2, 7, 19), cv=5).fit(x[fit], y[fit] - y[fit].mean(0))
        r = pearson_columns(model.predict(x[test]) + y[fit].mean(0), y[test])
        out["r_mean"] = float(np.nanmean(r))
    out["seconds"] = time.time() - t0
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(out)


def run_phase(name: str, prepared: str, backend: str) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_phase, args=(name, prepared, backend, q))
    p.start()
    res = q.get()
    p.join()
    return res


def extrapolate(backend: str) -> list[tuple[str, str]]:
    """Measured pieces at Emo-FilM size: motion energy of 112 x 112 frames at 24 fps per frame, one kernel
    decomposition at the number of Emo-FilM training samples."""
    import moten
    import scipy.linalg

    rng = np.random.default_rng(0)
    n_frames_probe = 96
    lum = rng.uniform(0, 100, (n_frames_probe, 112, 112)).astype(np.float32)
    pyr = moten.pyramids.MotionEnergyPyramid(stimulus_vhsize=(112, 112), stimulus_fps=24)
    t = time.time()
    pyr.project_stimulus(lum)
    per_frame = (time.time() - t) / n_frames_probe
    n_trs_total = 7400  # Emo-FilM: 14 films, about 7,400 TRs of 1.3 s
    n_frames = n_trs_total * 32
    n_fit = 5000
    a = rng.standard_normal((n_fit, 800)).astype(np.float32)
    k = a @ a.T
    t = time.time()
    scipy.linalg.eigh(k)
    eigh_s = time.time() - t
    n_iter, n_folds = 20, 5
    return [
        ("motion energy, 112 x 112 at 24 fps (1,380 filters)", f"{per_frame * 1e3:.1f} ms per frame (measured)"),
        ("motion energy, Emo-FilM (~237,000 frames)", f"~{per_frame * n_frames / 60:.0f} min (extrapolated)"),
        (f"one kernel eigendecomposition, n = {n_fit}", f"{eigh_s:.1f} s (measured)"),
        (f"banded ridge search, {n_iter} iterations x {n_folds} folds",
         f"~{eigh_s * n_iter * (n_folds + 1) / 60:.0f} min (extrapolated; the decompositions dominate)"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", type=Path)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--no-extrapolation", action="store_true")
    a = ap.parse_args()
    tmp = None
    prepared = a.prepared
    if prepared is None:
        from cinevox.data.prepare import PrepareConfig, prepare
        from cinevox.simulate.config import preset
        from cinevox.simulate.run import simulate

        tmp = Path(tempfile.mkdtemp(prefix="bench_baseline_"))
        bids = simulate(tmp / "bids", preset("demo"), progress=False)
        sim = bids / "derivatives" / "simulation"
        prepared = prepare(bids, tmp / "prepared", PrepareConfig(
            films_dir=str(bids / "stimuli"), atlas=str(sim / "atlas.nii.gz"),
            atlas_labels=str(sim / "atlas_labels.tsv"), frame_size=32, frames_per_tr=8, gap_trs=3, val_blocks=2),
            progress=False)
    else:  # work on a copy: the feature cache is written beside the data
        tmp = Path(tempfile.mkdtemp(prefix="bench_baseline_"))
        shutil.copytree(prepared, tmp / "prepared", ignore=shutil.ignore_patterns("cache"))
        prepared = tmp / "prepared"
    rows = []
    for name, what in (("features", "features (cold cache)"), ("fit", "banded ridge fit (cached features)"),
                       ("cinevox", "cinevox baseline, end to end (cached features)"),
                       ("reference", "reference: pymoten + himalaya RidgeCV")):
        r = run_phase(name, str(prepared), a.backend)
        rows.append((what, r))
    print(f"\nDemo size ({prepared}), backend {a.backend}\n")
    print(f"| {'step':<48} | {'seconds':>8} | {'peak RSS MB':>11} | {'test mean r':>11} |")
    print(f"|{'-' * 50}|{'-' * 10}:|{'-' * 13}:|{'-' * 13}:|")
    for what, r in rows:
        rr = f"{r['r_mean']:.3f}" if "r_mean" in r else ""
        print(f"| {what:<48} | {r['seconds']:8.1f} | {r['peak_mb']:11.0f} | {rr:>11} |")
    if not a.no_extrapolation:
        print("\nEmo-FilM size (4,609 voxels, ~5,000 train + val TRs, 32 frames of 112 x 112 per TR)\n")
        print(f"| {'piece':<58} | {'time':<60} |")
        print(f"|{'-' * 60}|{'-' * 62}|")
        for k, v in extrapolate(a.backend):
            print(f"| {k:<58} | {v:<60} |")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
