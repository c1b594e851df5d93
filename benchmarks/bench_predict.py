"""The demo's models on a film they never saw, against the simulator's known response; predict speed and memory.

    python benchmarks/bench_predict.py [--demo DIR] [--out DIR] [--long-seconds 600]

1. The demo (``cinevox demo --out DIR``, run first when DIR holds none) trains E-D, E and the ridge baseline on
   simulated brains watching the demo's films.
2. Two new films are rendered by another simulation (seed 99): ``Unseen`` (2 min) and ``Control`` (2 min).
3. ``cinevox simulate --preset demo --films-dir FOLDER`` simulates the *same* brains (the demo's preset and seed)
   watching them, and writes their true stimulus-driven responses.
4. Each model predicts both films (``cinevox predict``); the table gives the per-voxel correlation of the
   prediction of ``Unseen`` with its truth (all voxels, the simulator's informative voxels, the others), and the
   control: the prediction of ``Control`` scored against the truth of ``Unseen``.
5. Speed and memory: ``cinevox predict`` of a ``--long-seconds`` film (10 min by default) and of the 2-min film by
   the E-D model, each its own process: clips/s and peak RSS (``ru_maxrss``). Bounded memory means the two peaks
   are about equal although one film is 5 times longer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_cli(argv: list[str], log) -> tuple[float, float]:
    """``cinevox ARGV`` in its own process: (seconds, peak RSS GB)."""
    t = time.time()
    p = subprocess.Popen([sys.executable, "-m", "cinevox", *argv], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"cinevox {' '.join(argv[:2])} failed; see the log")
    return time.time() - t, usage.ru_maxrss * 1024 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=Path("bench-predict/demo"))
    ap.add_argument("--out", type=Path, default=Path("bench-predict"))
    ap.add_argument("--long-seconds", type=float, default=600.0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log = open(a.out / "bench_predict.log", "w")
    from cinevox.inference.bundle import load_bundle
    from cinevox.inference.truth import truth_for_video
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    if not (a.demo / "demo_summary.json").is_file():
        print(f"running the demo into {a.demo} ...", flush=True)
        run_cli(["demo", "--out", str(a.demo), "-q"], log)
    runs = {"encdec": a.demo / "runs" / "encdec", "encoder": a.demo / "runs" / "encoder",
            "ridge": a.demo / "runs" / "ridge"}
    seed = json.loads((a.demo / "bids" / "derivatives" / "simulation" / "truth.json").read_text()).get("seed", 0)
    films = a.out / "films"
    if not (films / "Long.mp4").is_file():
        src = simulate(a.out / "render", preset("demo", seed=99, n_subjects=2,
                                                films={"Unseen": 120.0, "Control": 120.0, "Long": a.long_seconds}),
                       progress=False)
        films.mkdir(exist_ok=True)
        for f in ("Unseen", "Control", "Long"):
            shutil.copy(src / "stimuli" / f"{f}.mp4", films / f"{f}.mp4")
        shutil.rmtree(a.out / "render")
    truth = a.out / "truth"
    if not (truth / "derivatives" / "simulation" / "stimulus_signal" / "Unseen.npy").is_file():
        only = a.out / "films_truth"
        only.mkdir(exist_ok=True)
        for f in ("Unseen", "Control"):
            shutil.copy(films / f"{f}.mp4", only / f"{f}.mp4")
        simulate(truth, preset("demo", seed=seed, n_subjects=2, films_dir=str(only)), progress=False)
    rows = []
    for name, run in runs.items():
        pred_dir = a.out / "pred" / name
        shutil.rmtree(pred_dir, ignore_errors=True)
        sec, rss = run_cli(["predict", str(run), str(films / "Unseen.mp4"), str(films / "Control.mp4"), "--out",
                            str(pred_dir), "--device", "cpu", "-q"], log)
        b = load_bundle(run, "cpu")
        import nibabel as nib

        def series(stem, b=b, pred_dir=pred_dir):
            img = nib.load(pred_dir / f"{stem}_pred.nii.gz")
            d = b.preparation.delay_trs
            return img.get_fdata(dtype="float32")[b.ijk[:, 0], b.ijk[:, 1], b.ijk[:, 2], d:].T

        own = truth_for_video(b, truth, "Unseen", series("Unseen"))
        ctrl = truth_for_video(b, truth, "Unseen", series("Control"))
        meta = json.loads((pred_dir / "Unseen_pred.json").read_text())
        rows.append((name, own, ctrl, meta["clips_per_s"]))
    print(f"\nThe demo's models on a film they never saw ({own['n_trs']} TRs), per-voxel r with the simulated brains' "
          "true response\n")
    print("| model | r, all voxels | r, informative voxels | r, other voxels | control (another film's prediction), "
          "informative | clips/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, own, ctrl, cps in rows:
        print(f"| {name} | {own['r_mean']:.3f} | {own['r_informative']:.3f} | {own['r_other']:.3f} | "
              f"{ctrl['r_informative']:.3f} | {cps:.1f} |")
    print("\nPredict, E-D model, CPU, each film its own process:\n")
    print("| film | duration s | clips | seconds | clips/s | peak RSS GB |\n|---|---:|---:|---:|---:|---:|")
    for f in ("Unseen", "Long"):
        out = a.out / "pred_mem" / f
        shutil.rmtree(out, ignore_errors=True)
        sec, rss = run_cli(["predict", str(runs["encdec"]), str(films / f"{f}.mp4"), "--out", str(out), "--device",
                            "cpu", "-q"], log)
        meta = json.loads((out / f"{f}_pred.json").read_text())
        print(f"| {f} | {meta['n_clips'] * meta['tr']:.0f} | {meta['n_clips']} | {sec:.1f} | {meta['clips_per_s']:.1f} "
              f"| {rss:.2f} |")


if __name__ == "__main__":
    main()
