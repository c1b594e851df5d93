"""Every CUDA path of cinevox, end to end, on whatever GPU is present, then the paper-scale training throughput.

    python benchmarks/gpu_check.py [--out DIR] [--batches 16,32,64] [--steps 12] [--no-compile]

Checks (each: ok / FAIL with the reason / skipped, and seconds): a small simulated dataset is prepared on the
CPU, then trained on the GPU with the frames staged (``--stage``), with pinned prefetch (``--no-stage``) and with
the staging decided after the first step; bf16 autocast and channels-last weights; fp32 (``--no-amp``); an
interrupted run resumed with another device spelling (``cuda:0``); a non-finite loss; 2-process torchrun (NCCL)
when 2 GPUs are visible; ``baseline --backend torch_cuda`` beside the numpy backend; the torch motion-energy filter
bank on the GPU against pymoten; evaluate, saliency and concepts on the GPU (saliency against the CPU's).
Then the full-size E-D training step (4,609 voxels, 32 frames of 112 x 112, the paper's L_ED with the perceptual
loss, fused Adam, bf16, channels-last, frames gathered from a staged uint8 copy) at several batch sizes: clips/s,
peak memory, seconds per Emo-FilM epoch (train + validation samples of the ``emofilm`` preset's split) and the
projected time of the paper's 11 epochs. Without CUDA it says so and exits 0. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROWS: list[tuple[str, str, float, str]] = []


class Captured(logging.Handler):
    """Keeps cinevox's log messages, so that checks can see what a step decided."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())

    def seen(self, text: str) -> bool:
        return any(text in m for m in self.messages)


def check(name: str):
    """Decorator: run a check, record ok / FAIL / skipped with its time and detail line."""

    def wrap(fn):
        t0 = time.time()
        try:
            detail = fn() or ""
            status = "skipped" if detail.startswith("skipped") else "ok"
        except Exception as err:  # a failed check must not stop the others
            status, detail = "FAIL", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            traceback.print_exc()
        ROWS.append((name, status, time.time() - t0, detail))
        print(f"[{status}] {name} ({time.time() - t0:.1f} s) {detail}", flush=True)
        return fn

    return wrap


def vgg_file(root: Path) -> Path:
    from cinevox.models import VGG16Features

    path = root / "vgg16-random.pth"
    torch.manual_seed(123)
    torch.save(VGG16Features().state_dict(), path)
    return path


def small_dataset(root: Path) -> Path:
    from cinevox.data.prepare import PrepareConfig, prepare
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    sim = simulate(root / "bids", preset("tiny", films={"FilmA": 120.0, "FilmB": 120.0, "YouAgain": 40.0}),
                   progress=False)
    s = sim / "derivatives" / "simulation"
    return prepare(sim, root / "prepared", PrepareConfig(
        films_dir=str(sim / "stimuli"), atlas=str(s / "atlas.nii.gz"), atlas_labels=str(s / "atlas_labels.tsv"),
        frame_size=32, frames_per_tr=8, gap_trs=2, val_blocks=2, snr_top=0.5, jobs=4), progress=False)


def train_cfg(vgg: Path, **kw):
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig

    base = dict(model="encdec", epochs=2, batch_size=8, lr=1e-3, tensorboard=False, device="cuda",
                loss=LossConfig(vgg_weights=str(vgg)))
    base.update(kw)
    return TrainConfig(**base)


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


def prefetch_threads() -> int:
    return sum(t.name == "cinevox-prefetch" and t.is_alive() for t in threading.enumerate())


def paper_scale(batches: list[int], steps: int, compile_too: bool, deadline: float, device: str = "cuda",
                warmup: int = 3) -> list[dict]:
    """Full-size E-D training steps on staged uint8 frames: the real model, loss (the paper profile's, with a
    random VGG16), optimizer and batch gathering."""
    from cinevox.data.dataset import clips_to_model, middle_index
    from cinevox.losses import LossConfig, build_loss
    from cinevox.models.encdec import ModelConfig, build_model
    from cinevox.training import TrainConfig
    from cinevox.training.train import Step, make_optimizer, to_channels_last

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    tcfg = TrainConfig(loss=LossConfig(vgg_allow_random=True))
    tcfg.validate()  # the paper profile's loss choices
    n_frames_pool = 4096  # distinct staged frames to gather clips from (random content: the speed is the same)
    pool = torch.randint(0, 256, (n_frames_pool, 112, 112, 3), dtype=torch.uint8, device=dev)
    out = []
    variants = [(b, False) for b in batches] + ([(max(batches), True)] if compile_too else [])
    for b, compiled in variants:
        if time.time() > deadline:
            out.append({"batch": b, "compile": compiled, "skipped": "time budget"})
            continue
        torch.manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = to_channels_last(build_model(ModelConfig(kind="encdec", n_voxels=4609)).to(dev))
        crit = build_loss("encdec", tcfg.loss).to(dev)
        opt = make_optimizer(model, 1e-4, 0.0, dev)
        fn = torch.compile(model) if compiled else model
        step = Step("encdec", crit)
        vox_all = torch.randn(n_frames_pool, 4609, device=dev)
        times = []
        t_first = time.time()
        for k in range(steps + warmup):
            sync()
            t = time.perf_counter()
            start = torch.randint(0, n_frames_pool - 32, (b,), device=dev)
            rows = start[:, None] + torch.arange(32, device=dev)
            clip = clips_to_model(pool[rows])  # (B, 3, S, S, T), frame-major view: as ClipBatches gives it
            frame = clip[..., middle_index(32)].contiguous()
            vox = vox_all[start]
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss, _, _ = step(fn, clip, vox, frame)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            if k == 0:
                t_first = time.time() - t_first
            if k >= warmup:
                times.append(time.perf_counter() - t)
        med = float(np.median(times))
        model.eval()
        val = []
        for k in range(steps // 2 + 2):  # validation steps: forward and loss, no gradients
            sync()
            t = time.perf_counter()
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                step(fn, clip, vox, frame)
            sync()
            if k >= 2:
                val.append(time.perf_counter() - t)
        out.append({"batch": b, "compile": compiled, "s_per_step": med, "clips_per_s": b / med,
                    "val_clips_per_s": b / float(np.median(val)),
                    "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else float("nan"),
                    "first_step_s": t_first})
        del model, crit, opt, fn, vox_all
    return out


def emofilm_samples() -> tuple[int, int]:
    """Train and validation samples of Emo-FilM under the paper's split (80 % of 13 films, 4:1), from the
    ``emofilm`` preset's film durations and TR."""
    from cinevox.simulate.config import EMOFILM_FILMS, preset

    tr = preset("emofilm").tr
    fit = sum(math.floor(d / tr) * 0.8 for f, d in EMOFILM_FILMS.items() if f != "YouAgain")
    return int(fit * 0.8), int(fit * 0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--batches", default="16,32,64", help="batch sizes of the paper-scale throughput")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per batch size (after 3 warm-up steps)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile throughput row")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds after which optional rows are skipped")
    a = ap.parse_args()
    t_start = time.time()
    if not torch.cuda.is_available():
        print(f"no CUDA device visible (torch {torch.__version__}, CUDA build: {torch.version.cuda}): "
              "nothing to check")
        return 0
    logging.basicConfig(level=logging.WARNING)
    cap = Captured()
    logging.getLogger("cinevox").addHandler(cap)
    logging.getLogger("cinevox").setLevel(logging.INFO)
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 1e9:.0f} GB, {torch.cuda.device_count()} visible; "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="cinevox-gpu-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    vgg = vgg_file(root)
    prepared = small_dataset(root)
    print(f"small dataset prepared on the CPU in {time.time() - t0:.1f} s: {prepared}", flush=True)

    from cinevox.training import train

    @check("train E-D, frames staged (--stage), bf16, channels-last")
    def _():
        cap.messages.clear()
        run = train(prepared, root / "staged", train_cfg(vgg, stage=True), progress=False)
        assert cap.seen("staging"), "no staging logged"
        import pandas as pd

        h = pd.read_csv(run / "history.csv")
        assert np.isfinite(h[["train_loss", "val_loss"]].to_numpy()).all()
        return f"val loss {h.val_loss.iloc[-1]:.4f}"

    @check("train E-D, pinned prefetch (--no-stage): same run as staged")
    def _():
        cap.messages.clear()
        run = train(prepared, root / "prefetch", train_cfg(vgg, stage=False), progress=False)
        assert not cap.seen("staging"), "staged although --no-stage"
        assert prefetch_threads() == 0, f"{prefetch_threads()} prefetch threads left alive"
        d = max_diff(weights(run), weights(root / "staged"))
        import pandas as pd

        va, vb = (pd.read_csv(r / "history.csv").val_loss.iloc[-1] for r in (run, root / "staged"))
        assert abs(va - vb) <= 0.02 * abs(vb), f"val loss {va:.4f} vs staged {vb:.4f}"
        return f"max |w - w_staged| {d:.2e}; val loss {va:.4f} vs {vb:.4f}; no thread left"

    @check("train E-D, staging decided after the first step")
    def _():
        cap.messages.clear()
        train(prepared, root / "auto", train_cfg(vgg, epochs=1), progress=False)
        line = next((m for m in cap.messages if m.startswith("after the first step")), None)
        assert line is not None, "no staging decision logged"
        return line

    @check("bf16 autocast and channels-last weights on the GPU")
    def _():
        from cinevox.training.train import load_run_model, to_channels_last

        model, *_ = load_run_model(root / "staged", device="cuda")
        to_channels_last(model)
        four_d = [p for p in model.parameters() if p.dim() == 4]
        assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
        x = torch.rand(2, 3, 32, 32, 8, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
            v, f = model(x)
        with torch.no_grad():
            v32, _ = model(x)
        assert v.dtype == torch.bfloat16, v.dtype
        rel = float((v.float() - v32).norm() / v32.norm())
        assert rel < 0.05, f"bf16 vs fp32 relative error {rel:.3f}"
        return f"{len(four_d)} 4D weights channels-last; bf16 vs fp32 output: relative error {rel:.4f}"

    @check("train E-D in fp32 (--no-amp)")
    def _():
        train(prepared, root / "fp32", train_cfg(vgg, epochs=1, amp=False), progress=False)

    @check("train E-D with torch.compile (--compile)")
    def _():
        import pandas as pd

        # dropout off (torch.compile draws its dropout masks from its own generator), and 2 steps only: over whole
        # epochs at lr 1e-3 on 106 clips, eager and compiled runs drift apart (val loss 1.30 vs 1.93 in one run)
        eager = train(prepared, root / "eager0", train_cfg(vgg, dropout=0.0, stage=True, epochs=1, max_steps=2),
                      progress=False)
        run = train(prepared, root / "compiled", train_cfg(vgg, dropout=0.0, compile=True, stage=True, epochs=1,
                                                           max_steps=2), progress=False)
        h = pd.read_csv(run / "history.csv")
        vb = pd.read_csv(eager / "history.csv").val_loss.iloc[-1]
        assert abs(h.val_loss.iloc[-1] - vb) <= 0.02 * abs(vb), f"val loss {h.val_loss.iloc[-1]:.4f} vs {vb:.4f}"
        return f"val loss {h.val_loss.iloc[-1]:.4f} (eager {vb:.4f}); epoch 1 {h.seconds.iloc[0]:.1f} s with compiling"

    @check("interrupted run resumed with --device cuda:0 (trained with cuda)")
    def _():
        import importlib

        tm = importlib.import_module("cinevox.training.train")
        real, calls = tm.run_epoch, {"n": 0}

        def cut(model, source, batches, step, device, optimizer=None, *x, **k):
            calls["n"] += optimizer is not None
            if optimizer is not None and calls["n"] == 2:
                raise KeyboardInterrupt
            return real(model, source, batches, step, device, optimizer, *x, **k)

        tm.run_epoch = cut
        try:
            train(prepared, root / "cut", train_cfg(vgg, stage=False), progress=False)
        except KeyboardInterrupt:
            pass
        finally:
            tm.run_epoch = real
        ck = torch.load(root / "cut" / "checkpoints" / "last.pt", weights_only=True)
        assert ck["epoch"] == 1 and isinstance(ck["rng"].get("cuda"), torch.Tensor), "one CUDA RNG state expected"
        train(prepared, root / "cut", train_cfg(vgg, stage=False, device="cuda:0"), resume=True, progress=False)
        d = max_diff(weights(root / "cut"), weights(root / "prefetch"))
        return f"resumed to epoch 2; max |w - w_uninterrupted| {d:.2e}"

    @check("non-finite loss on the GPU: one line naming the step")
    def _():
        import pandas as pd

        from cinevox.training import NonFiniteLossError

        bad = root / "prepared_nan"
        shutil.copytree(prepared, bad)
        s = pd.read_csv(bad / "samples.csv")
        vox = np.load(bad / "voxels.npy")
        vox[s.index[s.split == "train"][3]] = np.nan
        np.save(bad / "voxels.npy", vox)
        man = __import__("json").loads((bad / "manifest.json").read_text())
        from cinevox.utils.folders import integrity_record

        man["integrity"].update(integrity_record(bad, ["voxels.npy"]))
        (bad / "manifest.json").write_text(__import__("json").dumps(man))
        try:
            train(bad, root / "nan", train_cfg(vgg, model="encoder", epochs=1), progress=False)
        except NonFiniteLossError as err:
            return str(err)[:120]
        raise AssertionError("no NonFiniteLossError")

    @check("torchrun, 2 processes (NCCL)")
    def _():
        if torch.cuda.device_count() < 2:
            return "skipped: 1 GPU visible"
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "cinevox", "train", str(prepared), "--out", str(root / "ddp"), "--epochs", "2",
                            "--batch-size", "8", "--sync-bn", "--vgg-weights", str(vgg), "-q"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        ck = torch.load(root / "ddp" / "checkpoints" / "last.pt", weights_only=True)
        assert ck["world_size"] == 2
        return "2 ranks trained 2 epochs"

    @check("motion energy: torch filter bank on the GPU = pymoten")
    def _():
        from cinevox.data.features import FeatureConfig, TorchMotionEnergy, _quiet_pymoten, motion_pyramid

        pyr = motion_pyramid(112, 24.6, FeatureConfig())
        grey = np.random.default_rng(0).uniform(0, 100, (192, 112, 112)).astype(np.float32)
        t = time.time()
        with _quiet_pymoten():
            ref = pyr.project_stimulus(grey, dtype="float32")
        t_ref = time.time() - t
        eng = TorchMotionEnergy(pyr, "cuda")
        eng.project(grey[:40])
        torch.cuda.synchronize()
        t = time.time()
        got = eng.project(grey)
        t_gpu = time.time() - t
        err = float(np.abs(got - ref).max())
        assert err < 2e-3, f"max |torch - pymoten| {err:.2e}"
        return (f"{pyr.nfilters} filters, 192 frames of 112 px: pymoten {t_ref:.2f} s, torch on GPU {t_gpu:.3f} s "
                f"({t_ref / t_gpu:.0f}x); max diff {err:.1e}")

    @check("baseline --backend torch_cuda = numpy backend")
    def _():
        from cinevox.data.dataset import PreparedData
        from cinevox.training.ridge import RidgeConfig, baseline, predict_ridge

        fast = dict(n_iter=3, n_folds=3, alphas=tuple(float(x) for x in np.logspace(-1, 5, 7)))
        t = time.time()
        baseline(prepared, root / "ridge_cuda", RidgeConfig(backend="torch_cuda", **fast), progress=False)
        t_cuda = time.time() - t
        t = time.time()
        baseline(prepared, root / "ridge_np", RidgeConfig(backend="numpy", **fast), progress=False)
        t_np = time.time() - t
        man = __import__("json").loads((root / "ridge_cuda" / "manifest.json").read_text())
        assert man["backend"] == "torch_cuda", man["backend"]
        data = PreparedData(prepared)
        test = data.indices("test")
        a, b = predict_ridge(root / "ridge_cuda", data, test), predict_ridge(root / "ridge_np", data, test)
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert r > 0.999, f"predictions correlate {r:.4f}"
        return f"fit torch_cuda {t_cuda:.1f} s, numpy {t_np:.1f} s; predictions r = {r:.6f}"

    @check("evaluate on the GPU")
    def _():
        from cinevox.evaluation.evaluate import EvalConfig, evaluate

        m = evaluate(root / "staged", EvalConfig(device="cuda", n_perm=99, n_perm_frames=19))
        return f"voxel r mean {m['encoder']['r_mean']:.3f}, frame SSIM mean {m['decoder'].get('ssim_mean', 0):.3f}"

    @check("saliency on the GPU = on the CPU")
    def _():
        from cinevox.analysis.saliency import SaliencyConfig, saliency

        saliency(root / "staged", SaliencyConfig(device="cuda", batch_size=16))
        gpu = np.loadtxt(root / "staged" / "saliency" / "saliency.csv", delimiter=",", skiprows=1, usecols=4)
        saliency(root / "staged", SaliencyConfig(device="cpu", batch_size=16))
        cpu = np.loadtxt(root / "staged" / "saliency" / "saliency.csv", delimiter=",", skiprows=1, usecols=4)
        r = np.corrcoef(gpu, cpu)[0, 1]
        assert r > 0.999, f"GPU and CPU saliency correlate {r:.4f}"
        return f"GPU vs CPU saliency r = {r:.6f}"

    @check("predict a video and decode scans on the GPU = on the CPU")
    def _():
        from cinevox.data.dataset import PreparedData
        from cinevox.inference.bundle import export_model, load_bundle
        from cinevox.inference.decode import decode_scans
        from cinevox.inference.predict import predict_video

        data = PreparedData(prepared)
        sim = Path(data.manifest["bids_simulation"]).parents[1]
        video = sim / "stimuli" / "YouAgain.mp4"
        md = export_model(root / "staged", root / "model_dir")
        t = time.time()
        gpu, det = predict_video(load_bundle(md, "cuda"), video)
        t_gpu = time.time() - t
        cpu, _ = predict_video(load_bundle(md, "cpu"), video)
        assert np.allclose(gpu, cpu, atol=2e-3), float(np.abs(gpu - cpu).max())
        bolds = sorted(sim.glob("derivatives/preprocessing/sub-*/ses-*/func/*task-YouAgain*_bold.nii.gz"))
        events = sorted(sim.glob("sub-*/ses-*/func/*acq-YouAgain_events.tsv"))
        fg, _, _ = decode_scans(load_bundle(md, "cuda"), bolds, events=events)
        fc, _, _ = decode_scans(load_bundle(md, "cpu"), bolds, events=events)
        assert np.allclose(fg, fc, atol=2e-3), float(np.abs(fg - fc).max())
        return (f"{det['n_clips']} clips in {t_gpu:.2f} s from the exported MODEL_DIR; max |GPU - CPU| "
                f"{np.abs(gpu - cpu).max():.1e} (voxels), {np.abs(fg - fc).max():.1e} (frames)")

    @check("concepts (TCAV) on the GPU, streamed")
    def _():
        from cinevox.analysis.concepts import ConceptConfig, concepts

        s = concepts(root / "staged", ConceptConfig(device="cuda", layers=["temporal"], n_examples=10, n_random=3,
                                                    min_examples=5, batch_size=16))
        return f"{len(s['concepts'])} concepts over {s['n_eval_clips']} test clips"

    n_train, n_val = emofilm_samples()
    scale = paper_scale([int(b) for b in a.batches.split(",")], a.steps, not a.no_compile,
                        t_start + a.budget)
    print("\n## Checks\n\n| check | result | s | detail |\n|---|---|---:|---|")
    for name, status, sec, detail in ROWS:
        print(f"| {name} | {status} | {sec:.1f} | {detail} |")
    print(f"\n## Paper-scale E-D training ({props.name}; Emo-FilM: {n_train} train + {n_val} validation samples "
          "per epoch)\n")
    print("| batch | torch.compile | s / step | train clips / s | val clips / s | peak GB | first step s | s / epoch | "
          "11 epochs (min) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in scale:
        if "skipped" in row:
            print(f"| {row['batch']} | {'yes' if row['compile'] else 'no'} | skipped ({row['skipped']}) | | | | | | |")
            continue
        epoch = n_train / row["clips_per_s"] + n_val / row["val_clips_per_s"]
        print(f"| {row['batch']} | {'yes' if row['compile'] else 'no'} | {row['s_per_step']:.3f} | "
              f"{row['clips_per_s']:.0f} | {row['val_clips_per_s']:.0f} | {row['peak_gb']:.1f} | "
              f"{row['first_step_s']:.1f} | {epoch:.0f} | {11 * epoch / 60:.1f} |")
    print(f"\ntotal {time.time() - t_start:.0f} s")
    if not a.out:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if any(s == "FAIL" for _, s, _, _ in ROWS) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
