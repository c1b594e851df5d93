"""What a GPU node or a cluster does to a run, checked on CPUs: resuming on another device or fewer GPUs, a
non-finite loss on one of two torchrun processes, the prefetch thread's lifetime, the staging decision, the
authors' batch min-max under several processes, and streamed saliency / concepts with bounded memory."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_train_config
from helpers import republish

from cinevox.cli import main
from cinevox.data.dataset import PreparedData
from cinevox.training.batches import ClipBatches, staging_fits
from cinevox.training.train import same_run_config
from cinevox.utils.checkpoint import load_checkpoint, rng_state, set_rng_state

train_mod = importlib.import_module("cinevox.training.train")


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cinevox-prefetch" and t.is_alive()]


# ------------------------------------------------------------------ RNG state and resume


def test_rng_state_is_saved_for_the_training_device_only_and_restored_onto_any(monkeypatch):
    """A checkpoint keeps the CUDA generator of its training device; restoring picks the resuming device's,
    whatever the number of visible GPUs (before: every visible GPU's state, restored with set_rng_state_all, which
    raises IndexError on a node with fewer GPUs)."""
    assert "cuda" not in rng_state("cpu")  # no CUDA state for a CPU run, even where CUDA exists
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    eight = [torch.full((16,), k, dtype=torch.uint8) for k in range(8)]  # an older checkpoint, made on 8 GPUs
    base = rng_state("cpu")
    set_rng_state({**base, "cuda": eight}, torch.device("cuda", 1))
    set_rng_state({**base, "cuda": eight[:2]}, torch.device("cuda", 5))  # fewer saved than the index: the first
    set_rng_state({**base, "cuda": eight[3]}, torch.device("cuda", 0))  # this version: one state, any device
    set_rng_state({**base, "cuda": eight}, torch.device("cpu"))  # resumed on the CPU: nothing to restore
    set_rng_state(base, torch.device("cuda", 0))  # trained on the CPU, resumed on a GPU: logged, nothing restored
    assert [(int(s[0]), d.index) for s, d in restored] == [(1, 1), (0, 5), (3, 0)]


def test_resume_on_another_device_spelling_and_runtime_options(tiny_prepared, vgg_file, tmp_path, monkeypatch):
    """Trained with --device cpu, interrupted, resumed with --device cpu:0 --no-stage (runtime-only options may
    change; before: 'last.pt: not a readable checkpoint, truncated or corrupt (... cpu:0)', and the device
    field refused the resume): the same weights as an uninterrupted run. Another learning rate is still refused,
    naming the option."""
    base = ["train", str(tiny_prepared), "--model", "encoder", "--epochs", "2", "--batch-size", "8",
            "--max-steps", "4", "--vgg-weights", str(vgg_file), "-q"]
    assert main([*base, "--out", str(tmp_path / "full"), "--device", "cpu"]) == 0
    real, calls = train_mod.run_epoch, {"n": 0}

    def interrupted(model, source, batches, step, device, optimizer=None, *a, **k):
        calls["n"] += optimizer is not None
        if optimizer is not None and calls["n"] == 2:
            raise KeyboardInterrupt
        return real(model, source, batches, step, device, optimizer, *a, **k)

    monkeypatch.setattr(train_mod, "run_epoch", interrupted)
    assert main([*base, "--out", str(tmp_path / "cut"), "--device", "cpu"]) == 130
    monkeypatch.setattr(train_mod, "run_epoch", real)
    assert main([*base, "--out", str(tmp_path / "cut"), "--device", "cpu:0", "--no-stage", "--resume"]) == 0
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt", map_location="cpu:0")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    cfg = tiny_train_config(vgg_file)
    saved = dict(train_mod.asdict(cfg), device="cuda:3", compile=True, tensorboard=True, stage=True)
    assert same_run_config(saved, cfg) == []
    assert same_run_config(dict(saved, lr=1.0), cfg) == ["lr"]


# ------------------------------------------------------------------ a NaN on one of two processes


def test_non_finite_loss_on_one_rank_stops_both_at_the_same_step(tiny_prepared, vgg_file, tmp_path):
    """One training sample's voxels set to NaN: it lands in one rank's half of one global batch. Both ranks stop at
    that step with one line naming the step and the rank (before: the other rank died of a closed connection
    under torchrun, or hung in the all-reduce for 30 minutes under srun/mpirun)."""
    bad = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, bad)
    samples = pd.read_csv(bad / "samples.csv")
    vox = np.load(bad / "voxels.npy")
    vox[samples.index[samples.split == "train"][5]] = np.nan
    np.save(bad / "voxels.npy", vox)
    republish(bad, "voxels.npy")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.time()
    logs = tmp_path / "logs"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "--log-dir", str(logs), "--redirects", "3", "-m", "cinevox", "train", str(bad),
                        "--out", str(tmp_path / "run"), "--model", "encoder",
                        "--epochs", "1", "--batch-size", "8", "--vgg-weights", str(vgg_file), "-q"],
                       env=env, capture_output=True, text=True, timeout=240)
    took = time.time() - t0
    assert r.returncode != 0
    rank_err = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(rank_err) == [0, 1], (sorted(rank_err), r.stderr[-2000:])
    lines = []
    for text in rank_err.values():  # each rank's own output: one line, no traceback, no gloo noise
        assert "Traceback" not in text and "GLHF" not in text and "Connection closed" not in text, text[-2000:]
        mine = [ln for ln in text.splitlines() if "cinevox train: error: non-finite loss" in ln]
        assert len(mine) == 1, text[-2000:]
        lines += mine
    assert all(re.search(r"epoch 1, batch \d+ \(training\) on rank [01]", ln) for ln in lines), lines
    assert len({re.search(r"batch \d+", ln).group() for ln in lines}) == 1  # the same step on both
    assert took < 120


# ------------------------------------------------------------------ batches: prefetch thread, staging


def test_prefetch_thread_is_stopped_however_the_consumer_stops(tiny_prepared):
    data = PreparedData(tiny_prepared)
    train_idx = data.indices("train")
    batches = [train_idx[k : k + 4].tolist() for k in range(0, 40, 4)]
    threaded = ClipBatches(data, torch.device("cpu"), prefetch=True)
    plain = ClipBatches(data, torch.device("cpu"))
    with threaded.stream(batches, prefetch=2) as s:  # same batches through the thread
        for (c1, v1, f1), b in zip(s, batches):
            c0, v0, f0 = plain.get(b)
            torch.testing.assert_close(c1, c0, rtol=0, atol=0)
            torch.testing.assert_close(v1, v0, rtol=0, atol=0)
            torch.testing.assert_close(f1, f0, rtol=0, atol=0)
    assert not _prefetch_threads()
    with pytest.raises(RuntimeError, match="consumer failed"):  # a consumer that raises mid-way
        with threaded.stream(batches, prefetch=1) as s:
            next(s)
            time.sleep(0.2)  # the thread is now blocked on its full queue
            raise RuntimeError("consumer failed")
    assert not _prefetch_threads()
    with threaded.stream(batches, prefetch=1) as s:  # a consumer that stops early
        for _ in s:
            break
    assert not _prefetch_threads()

    def failing_get(indices):  # the producer fails: the consumer gets its error, the thread is gone
        raise OSError("disk gone")

    threaded.get = failing_get
    with pytest.raises(OSError, match="disk gone"):
        with threaded.stream(batches) as s:
            list(s)
    assert not _prefetch_threads()


def test_staging_decision_counts_the_training_peak():
    """Emo-FilM's 8.9 GB of frames beside a training step's measured peak (batch 64: 16.9 GB on the H200): a 24 GB
    card with 6.5 GB free after the step must not stage (before: 'under half the free memory', measured before the
    step, said yes at 23 GB free, then OOM); an H200 with 120 GB free does."""
    gb = 1024**3
    assert 8.9 * gb < 0.5 * 23 * gb  # the old rule would have staged
    assert not staging_fits(int(8.9 * gb), int(6.5 * gb), 24 * gb)
    assert staging_fits(int(8.9 * gb), 120 * gb, 141 * gb)
    assert not staging_fits(int(8.9 * gb), int(9.5 * gb), 80 * gb)  # fits, but leaves no reserve


# ------------------------------------------------------------------ the authors' batch min-max on 2 processes


def _minmax_worker(rank: int, world: int, store: str, x: torch.Tensor, w: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    from cinevox.losses.decoder import batch_minmax

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    xr = x[part].clone().requires_grad_(True)
    y = batch_minmax(xr)
    (y * w[part]).sum().backward()
    with torch.no_grad():  # validation: each process' own part
        y_local = batch_minmax(x[part])
    torch.save({"y": y.detach(), "grad": xr.grad, "y_local": y_local}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_authors_batch_minmax_is_global_under_two_processes(tmp_path):
    """Under torch.distributed the authors' perceptual input is normalised by the global batch's min and max,
    with gradients reaching the process that holds them: values and input gradients equal one process' on the
    whole batch. Validation (no gradients) normalises each part on its own (the documented exception)."""
    import torch.multiprocessing as tmp

    from cinevox.losses.decoder import batch_minmax

    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 4)
    x[4, 1, 2, 3] = 9.0  # the max on the second process
    x[0, 0, 0, 0] = -7.0  # the min on the first
    w = torch.randn_like(x)
    xs = x.clone().requires_grad_(True)
    y = batch_minmax(xs)
    (y * w).sum().backward()
    tmp.spawn(_minmax_worker, args=(2, str(tmp_path / "store"), x, w, str(tmp_path / "out")), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach())
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), xs.grad)
    local = torch.cat([p["y_local"] for p in parts])
    assert not torch.allclose(local, y.detach())  # the per-part normalisation does differ
    torch.testing.assert_close(parts[1]["y_local"], batch_minmax(x[3:]))


# ------------------------------------------------------------------ streamed saliency and concepts


def test_saliency_streams_and_subsamples(tiny_runs):
    from cinevox.analysis.saliency import decoder_inputs, ssim_saliency, streamed_saliency
    from cinevox.training.train import load_run_model

    run = tiny_runs["encdec"]
    dec, kind, data, test, x, frames = decoder_inputs(run, "model", "last", "cpu")
    whole = ssim_saliency(dec, x, frames, batch_size=len(x))
    model, *_ = load_run_model(run, device="cpu")
    streamed = streamed_saliency(model, kind, data, test, "model", batch_size=3)
    np.testing.assert_allclose(streamed, whole, rtol=1e-4, atol=1e-7)
    assert main(["saliency", str(run), "--max-clips", "5", "--batch-size", "2", "-q"]) == 0
    summary = json.loads((run / "saliency" / "summary.json").read_text())
    assert summary["n_reconstructions"] == 5


def test_concepts_hold_one_batch_of_test_clips_at_once(tiny_runs, monkeypatch):
    """TCAV counts from the streamed pass equal those of all test activations at once, and no call ever holds
    more than ``batch_size`` test clips."""
    from cinevox.analysis import concepts as cmod
    from cinevox.training.train import load_run_model

    model, *_ = load_run_model(tiny_runs["encoder"], device="cpu")
    data = PreparedData(tiny_prepared_of(tiny_runs["encoder"]))
    test = data.indices("test")
    rng = np.random.default_rng(0)
    sizes = []
    real = cmod.layer_activations

    def spy(encoder, clips, layer, device, batch, minmax):
        sizes.append(len(clips))
        return real(encoder, clips, layer, device, batch, minmax)

    monkeypatch.setattr(cmod, "layer_activations", spy)
    act_all = real(model, np.stack([data.clip(int(i)) for i in test]), "temporal", "cpu", 64, False)
    cavs = [rng.standard_normal(act_all[0].numel()) for _ in range(3)]
    groups = [np.arange(0, 5), np.arange(5, 9)]
    pos_v, pos_r = cmod.streamed_tcav(model, "temporal", cavs, data, test, groups, "cpu", 4, False)
    assert max(sizes) <= 4 and sum(sizes) == len(test)
    for n, c in enumerate(cavs):
        v = torch.as_tensor(c.reshape(act_all.shape[1:]), dtype=act_all.dtype)
        d = cmod.directional_derivatives(lambda a: model.head(a, "temporal"), act_all, v)
        np.testing.assert_array_equal(pos_v[n], (d > 0).sum(0).numpy())
        np.testing.assert_array_equal(pos_r[n], [int((d[:, g].mean(1) > 0).sum()) for g in groups])
    # CAVs as combinations of directions (class-mean CAVs: differences of set means): one JVP per direction
    coef = np.array([[1.0, -1.0, 0.0], [0.0, 2.0, -0.5], [-1.0, 0.0, 1.0], [0.3, 0.3, 0.3]])
    comb_v, comb_r = cmod.streamed_tcav(model, "temporal", cavs, data, test, groups, "cpu", 4, False, coef)
    for n, w in enumerate(coef):
        v = torch.as_tensor((w @ np.stack(cavs)).reshape(act_all.shape[1:]), dtype=act_all.dtype)
        d = cmod.directional_derivatives(lambda a: model.head(a, "temporal"), act_all, v)
        agree = (comb_v[n] == (d > 0).sum(0).numpy()).mean()
        assert agree > 0.98  # equal up to float32 rounding at derivatives of about 0
        assert np.abs(comb_r[n] - [int((d[:, g].mean(1) > 0).sum()) for g in groups]).max() <= 1
    from cinevox.analysis.regions import subsample

    sub = subsample(test, 7)
    assert len(sub) == 7 and sub[0] == test[0] and sub[-1] == test[-1] and np.all(np.diff(sub) > 0)


def tiny_prepared_of(run):
    from cinevox.training.train import run_prepared_dir

    return run_prepared_dir(run)

