"""Pretrained feature spaces: extraction speed and memory, banded-ridge fit time, and the variance partition
against the simulator's known truth.

    python benchmarks/bench_features.py extract [--seconds 20] [--device cpu] [--shapes dinov2-s,vit-b,...]
    python benchmarks/bench_features.py ridge [--sizes 560,1120,2240]
    python benchmarks/bench_features.py partition [--preset tiny]

``extract``: for each architecture shape (random weights in the real model classes of ``transformers``, written by
``save_pretrained`` and loaded through ``cinevox.pretrained``'s own path), the streaming extraction of a film of
``--seconds`` seconds at 2 Hz from prepared-style frames (112 px, 32 frames per 1.3 s TR, memory-mapped), in a
fresh process with 2 torch threads: samples/s, input frames/s, peak RSS (``ru_maxrss``), and the time of a
10-minute film (1,200 samples) extrapolated linearly from the measured rate.

``ridge``: ``fit_ridge``'s solver (himalaya's multiple-kernel ridge, random search over the band weights, 10
iterations, 5 folds) on synthetic bands of 64 features x 4 delays with 1, 3 and 5 bands, at several numbers of
fit TRs with 1,500 voxels; the demo size (about 560 fit TRs) is measured, Emo-FilM's (about 5,900 fit TRs,
7,665 visual voxels) extrapolated from ``t = a n^3 + b n^2 V`` fitted on the measured sizes.

``partition``: simulate (``--preset``), prepare, ``cinevox features --model simulator`` (one band per tuning
channel), banded ridge, split R^2 on the test TRs; the correlation between estimated and true channel shares of
the informative voxels, for (1) the data, (2) the positive control: the same fit on the noise-free signal
``sum_c w_vc D_vc`` (no noise, no non-visual signal), and two controls: (3) the true shares of other voxels
(voxels permuted) and (4) the bands shifted in time (each band circularly shifted within each film by a different
lag before fitting).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {  # name: (config class, kwargs), the published models' shapes
    "dinov2-s": ("Dinov2Config", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                      intermediate_size=1536, image_size=224, patch_size=14)),
    "dinov2-b": ("Dinov2Config", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                      intermediate_size=3072, image_size=224, patch_size=14)),
    "vit-b16": ("ViTConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=3072, image_size=224, patch_size=16)),
    "videomae-b": ("VideoMAEConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, image_size=224, patch_size=16, num_frames=16,
                                          tubelet_size=2)),
    "vjepa2-l-fpc16": ("VJEPA2Config", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                            crop_size=256, patch_size=16, frames_per_clip=16, tubelet_size=2)),
}
MODEL_CLASS = {"Dinov2Config": "Dinov2Model", "ViTConfig": "ViTModel", "VideoMAEConfig": "VideoMAEModel",
               "VJEPA2Config": "VJEPA2Model"}


def _extract_child(shape: str, seconds: float, device: str, batch: int, q) -> None:
    import logging

    import torch
    import transformers

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    from cinevox.pretrained.backbones import load_backbone
    from cinevox.pretrained.extract import iter_batches, sample_times

    cls, kw = SHAPES[shape]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        getattr(transformers, MODEL_CLASS[cls])(getattr(transformers, cls)(**kw)).save_pretrained(f"{tmp}/m")
        bb = load_backbone(f"{tmp}/m", device)
        fpt, tr, size = 32, 1.3, 112
        n_trs = int(seconds / tr)
        frames = np.lib.format.open_memmap(f"{tmp}/frames.npy", mode="w+", dtype=np.uint8,
                                           shape=(n_trs * fpt, size, size, 3))
        frames[:] = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
        frames.flush()
        times = sample_times(n_trs, tr, 2.0)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        it = iter_batches(bb, frames, times, fpt, tr, bb.default_layers, ("mean", 1), batch, None)
        next(it)  # warm-up batch (first-call allocations), not timed
        t0, n = time.time(), 0
        for _, f in it:
            n += len(next(iter(f.values())))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        sec = time.time() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        q.put({"shape": shape, "kind": bb.kind, "n_frames": bb.n_frames, "samples": n, "seconds": sec,
               "samples_per_s": n / sec, "frames_per_s": n * bb.n_frames / sec, "rss_gb": peak * 1024 / 1e9,
               "rss_model_load_gb": base * 1024 / 1e9,
               "gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None})


def bench_extract(a) -> None:
    ctx = mp.get_context("spawn")
    rows = []
    for shape in a.shapes.split(","):
        q = ctx.Queue()
        p = ctx.Process(target=_extract_child, args=(shape, a.seconds, a.device, a.batch_size, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            print(f"{shape}: failed (exit {p.exitcode})", file=sys.stderr)
            continue
        r = q.get()
        rows.append(r)
        print(f"  {shape}: {r['samples']} samples in {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    where = "2 torch threads" if a.device == "cpu" else "GPU"
    print(f"\nextraction on {a.device} ({where}), film of {a.seconds:.0f} s at 2 Hz "
          "(first batch not timed); 10-minute film = 1,200 samples, extrapolated\n")
    print("| shape | kind | frames/sample | samples/s | frames/s | 10-min film (min) | peak RSS GB |"
          + (" peak GPU GB |" if a.device != "cpu" else ""))
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if a.device != "cpu" else ""))
    for r in rows:
        gpu = f" {r['gpu_gb']:.2f} |" if r["gpu_gb"] is not None else ""
        print(f"| {r['shape']} | {r['kind']} | {r['n_frames']} | {r['samples_per_s']:.2f} | {r['frames_per_s']:.1f} "
              f"| {1200 / r['samples_per_s'] / 60:.1f} | {r['rss_gb']:.2f} |{gpu}")


def _ridge_time(n: int, v: int, bands: int, f: int = 64, delays: int = 4, n_iter: int = 10) -> float:
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import MultipleKernelRidgeCV
    from sklearn.model_selection import KFold

    backend = set_backend("numpy")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, f * delays)).astype(np.float32) for _ in range(bands)]
    y = rng.standard_normal((n, v)).astype(np.float32)
    t0 = time.time()
    ks = backend.stack([x @ x.T for x in xs])
    model = MultipleKernelRidgeCV(kernels="precomputed", solver="random_search",
                                  cv=list(KFold(5).split(np.arange(n))), random_state=0,
                                  solver_params=dict(n_iter=n_iter if bands > 1 else 1,
                                                     alphas=np.logspace(-2, 7, 19), n_targets_batch=2048,
                                                     progress_bar=False))
    model.fit(ks, y)
    return time.time() - t0


def bench_ridge(a) -> None:
    import torch

    torch.set_num_threads(2)
    sizes = [int(s) for s in a.sizes.split(",")]
    v = 1500
    rows = {}
    for bands in (1, 3, 5):
        ts = []
        for n in sizes:
            ts.append(_ridge_time(n, v, bands, n_iter=a.n_iter))
            print(f"  {bands} bands, {n} TRs x {v} voxels: {ts[-1]:.1f} s", file=sys.stderr, flush=True)
        # t = a n^3 + b n^2 V, least squares on the measured sizes
        design = np.array([[n**3, n**2 * v] for n in sizes], float)
        coef = np.linalg.lstsq(design, np.array(ts), rcond=None)[0]
        coef = np.clip(coef, 0, None)
        emo = float(coef @ np.array([5900.0**3, 5900.0**2 * 7665]))
        rows[bands] = (ts, emo)
    print(f"\nbanded ridge fit (himalaya MultipleKernelRidgeCV, random search {a.n_iter} iterations (1 with one band; "
          "the time grows linearly with them), 19 alphas, 5 folds; "
          "64 features x 4 delays per band; numpy backend, 2 threads)\n")
    head = " | ".join(f"{n} TRs x {v} vox (s)" for n in sizes)
    print(f"| bands | {head} | Emo-FilM 5,900 TRs x 7,665 vox (s, extrapolated) |")
    print("|---:|" + "---:|" * len(sizes) + "---:|")
    for bands, (ts, emo) in rows.items():
        print(f"| {bands} | " + " | ".join(f"{t:.1f}" for t in ts) + f" | {emo:.0f} |")
    print(f"\nThe demo size is about {sizes[0]} fit TRs (800 TRs, 70 % train + validation).")


def _fit_partition(prepared: Path, sim: Path, run: Path, shift: bool = False) -> dict:
    from cinevox.configs import FeatureConfig, RidgeConfig
    from cinevox.data.dataset import PreparedData
    from cinevox.evaluation.partition import evaluate_partition
    from cinevox.training.ridge import baseline, expand_pretrained

    cfg = RidgeConfig(features=FeatureConfig(spaces=()), pretrained=expand_pretrained([str(sim)]), n_iter=20)
    baseline(prepared, run, cfg, progress=False)
    data = PreparedData(prepared)
    test = data.indices("test")
    import pandas as pd

    (run / "eval").mkdir(exist_ok=True)
    return evaluate_partition(run, data, test, np.asarray(data.voxels[test], np.float32), run / "eval",
                              pd.DataFrame(index=range(data.n_voxels)))["truth"]


def _shifted_copy(sim: Path, out: Path) -> Path:
    """A copy of a features folder whose every band is circularly shifted in time within each film by its own
    lag (a third of the film apart): the bands keep their content and autocorrelation, not their timing."""
    import json
    import shutil

    from cinevox.utils.folders import file_record

    shutil.copytree(sim, out)
    man = json.loads((out / "manifest.json").read_text())
    cache = out / "cache" / man["current"]
    rec = json.loads((cache / "cache.json").read_text())
    for film, r in rec["films"].items():
        for k, layer in enumerate(man["layers"]):
            p = cache / film / f"{layer}.npy"
            x = np.load(p)
            np.save(p, np.roll(x, (k + 1) * max(1, len(x) // (len(man["layers"]) + 1)), axis=0))
            r["files"][layer] = file_record(p)
    (cache / "cache.json").write_text(json.dumps(rec))
    return out


def bench_partition(a) -> None:
    import json
    import logging

    import torch

    torch.set_num_threads(2)
    logging.basicConfig(level=logging.WARNING)
    from cinevox.configs import PretrainedConfig
    from cinevox.data.dataset import PreparedData
    from cinevox.data.masks import mask_positions
    from cinevox.data.prepare import prepare
    from cinevox.pretrained.extract import extract_features, tr_features
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate
    from cinevox.utils.folders import integrity_record

    root = Path(a.workdir or tempfile.mkdtemp(prefix="bench_features_"))
    bids = root / "bids"
    if not (bids / "derivatives" / "simulation" / "truth.json").is_file():
        films = {"FilmA": 90.0, "FilmB": 90.0, "YouAgain": 40.0} if a.preset == "tiny" else None
        simulate(bids, preset(a.preset, **({"films": films} if films else {})), progress=False)
    prep = root / "prepared"
    if not (prep / "manifest.json").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import sim_config

        prepare(bids, prep, sim_config(bids), progress=False)
    sim = root / "sim_features"
    extract_features(prep, sim, PretrainedConfig(model="simulator"), progress=False)
    rows = {"data": _fit_partition(prep, sim, root / "run_data")}
    # positive control: the noise-free signal of the visual voxels, in the features' own alignment
    clean = root / "prepared_clean"
    if not clean.is_dir():
        import shutil

        shutil.copytree(prep, clean)
        data = PreparedData(clean)
        import nibabel as nib

        simdir = bids / "derivatives" / "simulation"
        vis = np.asarray(nib.load(simdir / "visual_mask.nii.gz").dataobj) > 0
        pos = mask_positions(vis, data.voxels_ijk())
        cols = np.flatnonzero(pos >= 0)
        w = np.load(simdir / "tuning.npz")["weights"][pos[cols]]  # (V', C)
        man = json.loads((sim / "manifest.json").read_text())
        drives = {la: tr_features(sim, la, data) for la in man["layers"]}
        y = np.asarray(data.voxels, np.float32).copy()
        s = data.samples
        rng = np.random.default_rng(0)
        y[:] = rng.standard_normal(y.shape).astype(np.float32)  # non-visual voxels: noise only
        sig = np.zeros((len(s), len(cols)), np.float32)
        for c, la in enumerate(man["layers"]):
            for film, g in s.groupby("film"):
                sig[g.index.to_numpy()] += drives[la][film][g["tr"].to_numpy()] * w[:, c]
        y[:, cols] = (sig - sig.mean(0)) / np.clip(sig.std(0), 1e-8, None)
        np.save(clean / "voxels.npy", y)
        m = json.loads((clean / "manifest.json").read_text())
        m["integrity"].update(integrity_record(clean, ["voxels.npy"]))
        (clean / "manifest.json").write_text(json.dumps(m))
    rows["positive control (noise-free signal)"] = _fit_partition(clean, sim, root / "run_clean")
    shifted = root / "sim_shifted"
    if not shifted.is_dir():
        _shifted_copy(sim, shifted)
    rows["control: bands shifted in time"] = _fit_partition(prep, shifted, root / "run_shifted")
    print(f"\nvariance partition against the simulator's channel shares ({a.preset} preset, {root})\n")
    print("| fit | informative voxels | r (voxels x channels) | median r per voxel | control: voxels permuted, "
          "mean (95th pct) |")
    print("|---|---:|---:|---:|---:|")
    for name, t in rows.items():
        print(f"| {name} | {t['n_voxels']} | {t['r_pooled']:.3f} | {t['r_voxel_median']:.3f} | "
              f"{t['control_r_pooled_mean']:.3f} ({t['control_r_pooled_q95']:.3f}) |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--seconds", type=float, default=20.0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--shapes", default=",".join(SHAPES))
    r = sub.add_parser("ridge")
    r.add_argument("--sizes", default="560,1120,2240")
    r.add_argument("--n-iter", type=int, default=10)
    q = sub.add_parser("partition")
    q.add_argument("--preset", default="tiny")
    q.add_argument("--workdir")
    a = p.parse_args()
    {"extract": bench_extract, "ridge": bench_ridge, "partition": bench_partition}[a.part](a)


if __name__ == "__main__":
    main()
