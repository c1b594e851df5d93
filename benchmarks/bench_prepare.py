"""Streaming a full-grid run: cinevox's masked read against plain ``gzip -dc``, and peak memory.

Makes one run on the FSL 2 mm grid (91 x 109 x 91 x N TRs, float32, gzip) on the fly, then times
(1) ``gzip -dc FILE > /dev/null``, (2) ``iter_volumes`` over the visual mask, (3) the whole per-run step of
``cinevox prepare`` (stream, cut the film segment, z-score, cache), each in a fresh process for its peak RSS.

    python benchmarks/bench_prepare.py [--trs 600] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
from cinevox.data.nifti import iter_volumes, fortran_index
mode, path, mask_path, out = sys.argv[1:5]
mask = np.load(mask_path)
t = time.perf_counter()
if mode == "iter":
    n = sum(len(b) for b in iter_volumes(path, fortran_index(mask), block=32))
else:
    from cinevox.data.layout import BoldRun
    from cinevox.data.timeline import RunPlan
    from cinevox.data.prepare import _process_run
    run = BoldRun({"sub": "S01", "ses": "1", "task": "Film"}, Path(path), [], None, 1.3, None)
    n = int(sys.argv[5])
    rp = RunPlan(run, [], np.arange(14, 14 + n), np.full(n, "Film", object), np.arange(n), 14 + n)
    _process_run(rp, fortran_index(mask), "mean", 0.5, Path(out), "bench", None, 1.3)
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trs", type=int, default=600)
    ap.add_argument("--keep", help="folder to keep the generated run in (default: a temporary folder)")
    a = ap.parse_args()
    from cinevox.data.masks import FSL_2MM_AFFINE, FSL_2MM_SHAPE
    from cinevox.data.nifti import NiftiStreamWriter
    from cinevox.simulate.atlas import synthetic_space

    work = Path(a.keep or tempfile.mkdtemp(prefix="cinevox-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bold = work / "sub-S01_ses-1_task-Film_space-MNI_desc-ppres_bold.nii.gz"
    space = synthetic_space(2.0, 1.0)
    brain = space.brain
    mask = space.visual
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "atlases"
    if shared.is_dir():  # the real Schaefer-1000 visual mask (21,881 voxels) when the reference data is here
        from cinevox.data.masks import atlas_visual_mask

        mask = atlas_visual_mask(
            shared / "Schaefer2018_1000Parcels_7Networks_order_FSLMNI152_2mm.nii.gz",
            shared / "tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-1000Parcels7Networks_dseg.tsv",
            FSL_2MM_SHAPE, FSL_2MM_AFFINE)
    mask_path = work / "mask.npy"
    np.save(mask_path, mask)
    if not bold.is_file():
        t = time.perf_counter()
        rng = np.random.default_rng(0)
        idx = np.flatnonzero(brain)
        with NiftiStreamWriter(bold, FSL_2MM_SHAPE, a.trs, FSL_2MM_AFFINE, 1.3) as w:
            for k in range(0, a.trs, 20):
                n = min(20, a.trs - k)
                vols = np.zeros((n, brain.size), np.float32)
                vols[:, idx] = 600 + 8 * rng.standard_normal((n, len(idx)), dtype=np.float32)
                w.write(vols.reshape(n, *FSL_2MM_SHAPE))
        print(f"made {bold.name}: {bold.stat().st_size / 1e6:.0f} MB gzip in {time.perf_counter() - t:.0f} s")
    raw_gb = np.prod(FSL_2MM_SHAPE) * a.trs * 4 / 1e9
    t = time.perf_counter()
    subprocess.run(f"gzip -dc '{bold}' > /dev/null", shell=True, check=True)
    gz = time.perf_counter() - t
    rows = [("gzip -dc (reference)", gz, float("nan"))]
    for mode, label in (("iter", "iter_volumes, visual mask"), ("run", "prepare: one run (stream+z-score+cache)")):
        res = subprocess.run([sys.executable, "-c", CHILD, mode, str(bold), str(mask_path), str(work),
                              str(a.trs - 30)], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append((label, r["seconds"], r["peak_rss_mb"]))
    print(f"run: 91 x 109 x 91 x {a.trs} float32 ({raw_gb:.2f} GB raw, {bold.stat().st_size / 1e9:.2f} GB gzip), "
          f"mask {int(mask.sum())} voxels")
    print(f"{'step':<44}{'seconds':>10}{'x gzip':>10}{'peak MB':>10}")
    for label, s, mem in rows:
        print(f"{label:<44}{s:>10.1f}{s / gz:>10.2f}{mem:>10.0f}")


if __name__ == "__main__":
    main()
