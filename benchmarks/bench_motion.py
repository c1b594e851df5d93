"""Motion energy: pymoten's own projection beside the same filter bank on torch, in one run.

    python benchmarks/bench_motion.py [--frames 480] [--size 112] [--threads 2] [--device cpu]

pymoten's pyramid for ``size x size`` grey frames at Emo-FilM's frame rate (32 frames per 1.3 s TR, 24.6 fps,
rounded to 25 as cinevox does), the default temporal (0, 2, 4 Hz) and spatial (0-16 cycles) frequencies. Both
project the same random frames; the table gives seconds, frames/s, the ratio, the largest difference of their
outputs (log energies of order 10), and the projected time for Emo-FilM's 236,288 frames (7,384 TRs x 32).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cinevox.data.features import FeatureConfig, TorchMotionEnergy, _quiet_pymoten, grey_frames, motion_pyramid

EMOFILM_FRAMES = 7384 * 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pyr = motion_pyramid(a.size, 32 / 1.3, FeatureConfig())
    grey = np.random.default_rng(0).uniform(0, 100, (a.frames, a.size, a.size)).astype(np.float32)
    t = time.perf_counter()
    with _quiet_pymoten():
        ref = pyr.project_stimulus(grey, dtype="float32")
    t_ref = time.perf_counter() - t
    eng = TorchMotionEnergy(pyr, a.device)
    eng.project(grey[:32])  # warm-up
    t = time.perf_counter()
    got = eng.project(grey)
    t_new = time.perf_counter() - t
    rgb = np.random.default_rng(1).integers(0, 256, (a.frames, a.size, a.size, 3), dtype=np.uint8)
    t = time.perf_counter()
    grey_frames(rgb, a.size)
    t_grey = time.perf_counter() - t
    print(f"{pyr.nfilters} filters, {a.frames} frames of {a.size} x {a.size}, {a.threads} threads, torch on {a.device}")
    print("| implementation | seconds | frames/s | vs pymoten | Emo-FilM projected | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, sec, diff in (("pymoten project_stimulus", t_ref, 0.0), ("cinevox TorchMotionEnergy", t_new,
                                                                       float(np.abs(got - ref).max()))):
        print(f"| {name} | {sec:.2f} | {a.frames / sec:.0f} | {t_ref / sec:.1f}x | "
              f"{EMOFILM_FRAMES / (a.frames / sec) / 60:.1f} min | {diff:.1e} |")
    print(f"| (both) RGB -> CIE L* grey frames | {t_grey:.2f} | {a.frames / t_grey:.0f} | | "
          f"{EMOFILM_FRAMES / (a.frames / t_grey) / 60:.1f} min | |")


if __name__ == "__main__":
    main()
