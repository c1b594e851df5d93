"""Wall time and peak memory of every pipeline step at Emo-FilM's dimensions, and how each grows with the data.

    python benchmarks/bench_scale.py [--out DIR] [--subjects 3] [--sizes half,full] [--max-trs N] [--washout S]

The dataset has the paper's dimensions: the ``emofilm`` preset's 2 mm MNI grid (91 x 109 x 91, 7,665 visual
voxels), its 14 films with their durations, 112 x 112 frames at 32 per TR, a few subjects. ``half`` takes 7 of the
films (half the TRs), ``full`` all 14. ``--max-trs N`` caps every film at N TRs and ``--washout S`` shortens the
90 s rest around each film, for a machine that cannot simulate the whole of it (on 2 cores the full simulation
alone takes about an hour per subject); the grid, voxel counts, frame size and frames per TR stay the paper's.

Every step runs as its own ``cinevox`` process (the real command line), and its peak resident memory is that
process' ``ru_maxrss`` (from ``os.wait4``). Steps: simulate, prepare, baseline (features + banded ridge; seconds of
each from its manifest), a short training (``--max-steps``), evaluate with 1,000 permutations, saliency,
lesion, concepts. Prints one Markdown table: per step and size, seconds and peak RSS, and the growth from half to
full against the growth of the data (TRs).
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

HALF_FILMS = ["AfterTheRain", "BigBuckBunny", "Chatter", "FirstBite", "LessonLearned", "ToClaireFromSonny",
              "YouAgain"]


def run_step(name: str, argv: list[str], log) -> dict:
    """Run ``python -m cinevox ARGV``; returns wall seconds and the child's peak RSS (GB)."""
    t = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "cinevox", *argv], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sec = time.time() - t
    if proc.returncode != 0:
        raise SystemExit(f"step {name} failed (exit {proc.returncode}); see the log")
    rss_gb = usage.ru_maxrss * 1024 / 1e9  # Linux: kilobytes
    print(f"  {name}: {sec:.0f} s, peak RSS {rss_gb:.2f} GB", flush=True)
    return {"seconds": sec, "rss_gb": rss_gb}


def simulate_args(out: Path, films: list[str], subjects: int, max_trs: int | None, washout: float | None) -> list:
    """A ``python -c`` simulate with the emofilm preset (the CLI has no --washout)."""
    code = ("import sys; from cinevox.simulate.config import preset, EMOFILM_FILMS; "
            "from cinevox.simulate.run import simulate; from cinevox.utils.log import setup_logging; "
            "setup_logging(0); "
            f"cfg = preset('emofilm', n_subjects={subjects}, max_trs={max_trs!r}"
            + (f", washout={washout!r}" if washout is not None else "") + "); "
            f"cfg.films = {{k: v for k, v in cfg.films.items() if k in {films!r}}}; "
            f"simulate({str(out)!r}, cfg, progress=False)")
    return ["-c", code]


def size_steps(root: Path, films: list[str], a, log, scale: int) -> tuple[dict, int]:
    res = {}
    bids, prep, run, ridge = root / "bids", root / "prepared", root / "run", root / "ridge"
    t = time.time()
    p = subprocess.Popen([sys.executable, *simulate_args(bids, films, a.subjects, a.max_trs, a.washout)],
                         stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("simulate failed; see the log")
    res["simulate"] = {"seconds": time.time() - t, "rss_gb": usage.ru_maxrss * 1024 / 1e9}
    print(f"  simulate: {res['simulate']['seconds']:.0f} s, peak RSS {res['simulate']['rss_gb']:.2f} GB", flush=True)
    sim = bids / "derivatives" / "simulation"
    res["prepare"] = run_step("prepare", ["prepare", str(bids), str(prep), "--films-dir", str(bids / "stimuli"),
                                          "--atlas", str(sim / "atlas.nii.gz"), "--atlas-labels",
                                          str(sim / "atlas_labels.tsv"), "--jobs", str(a.jobs), "-q"], log)
    man = json.loads((prep / "manifest.json").read_text())
    n_trs = sum(int(f["n_trs"]) for f in man["films"].values())
    res["baseline"] = run_step("baseline", ["baseline", str(prep), "--out", str(ridge), "--n-iter", "3", "-q"], log)
    secs = json.loads((ridge / "manifest.json").read_text()).get("seconds", {})
    res["baseline"]["detail"] = f"features {secs.get('features', 0):.0f} s, fit {secs.get('fit', 0):.0f} s"
    res["train"] = run_step("train", ["train", str(prep), "--out", str(run), "--epochs", "1", "--max-steps",
                                      str(a.train_steps), "--batch-size", "8", "--allow-random-vgg", "--device", "cpu",
                                      "-q"], log)
    res["evaluate"] = run_step("evaluate", ["evaluate", str(run), "--n-perm", "1000", "--device", "cpu", "-q"], log)
    res["saliency"] = run_step("saliency", ["saliency", str(run), "--device", "cpu", "-q"], log)
    res["lesion"] = run_step("lesion", ["lesion", str(run), "--n-null", "2", "--device", "cpu", "-q"], log)
    res["concepts"] = run_step("concepts", ["concepts", str(run), "--layers", "temporal", "--n-random", "2",
                                            "--n-examples", "10", "--min-examples", "5", "--concepts",
                                            "motion,luminance", "--max-clips", str(a.concept_clips * scale),
                                            "--device", "cpu", "-q"], log)
    res["concepts"]["detail"] = f"{a.concept_clips * scale} test clips"
    n_test = int(json.loads((run / "saliency" / "summary.json").read_text())["n_reconstructions"])
    res["saliency"]["detail"] = f"{n_test} test clips"
    return res, n_trs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-scale"))
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--sizes", default="half,full")
    ap.add_argument("--max-trs", type=int, help="cap every film at this many TRs (default: the films' own)")
    ap.add_argument("--washout", type=float, help="rest before and after each film, s (default: the preset's 90)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--concept-clips", type=int, default=24, help="test clips for concepts at half size (x2 full)")
    ap.add_argument("--keep", action="store_true", help="keep the datasets")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    from cinevox.simulate.config import EMOFILM_FILMS

    results, trs = {}, {}
    with open(a.out / "bench_scale.log", "w") as log:
        for size in a.sizes.split(","):
            films = HALF_FILMS if size == "half" else sorted(EMOFILM_FILMS)
            print(f"{size}: {len(films)} films, {a.subjects} subjects, max TRs {a.max_trs}, washout {a.washout}",
                  flush=True)
            root = a.out / size
            shutil.rmtree(root, ignore_errors=True)
            results[size], trs[size] = size_steps(root, films, a, log, 1 if size == "half" else 2)
            if not a.keep:
                shutil.rmtree(root / "bids", ignore_errors=True)
    sizes = list(results)
    print(f"\n{a.subjects} subjects, grid 91 x 109 x 91 (2 mm), 112 x 112 frames, 32 per TR; TRs per size: "
          + ", ".join(f"{s} {trs[s]}" for s in sizes) + "\n")
    head = " | ".join(f"{s} s | {s} peak RSS GB" for s in sizes)
    grow = len(sizes) == 2
    print(f"| step | {head} |" + (" time growth | RSS growth | data growth |" if grow else "") + " detail |")
    print("|---|" + "---:|" * (2 * len(sizes)) + ("---:|---:|---:|" if grow else "") + "---|")
    for step in results[sizes[0]]:
        cells = " | ".join(f"{results[s][step]['seconds']:.0f} | {results[s][step]['rss_gb']:.2f}" for s in sizes)
        extra = ""
        if grow:
            x, y = results[sizes[0]][step], results[sizes[1]][step]
            extra = (f" {y['seconds'] / x['seconds']:.2f}x | {y['rss_gb'] / x['rss_gb']:.2f}x | "
                     f"{trs[sizes[1]] / trs[sizes[0]]:.2f}x |")
        detail = results[sizes[-1]][step].get("detail", "")
        print(f"| {step} | {cells} |{extra} {detail} |")
    (a.out / "bench_scale.json").write_text(json.dumps({"results": results, "trs": trs, "args": vars(a)},
                                                       default=str, indent=1))


if __name__ == "__main__":
    main()
