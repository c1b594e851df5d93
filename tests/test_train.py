import dataclasses
import importlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_train_config
from helpers import republish

from cinevox.cli import main
from cinevox.training import NonFiniteLossError, train
from cinevox.training.grid import grid

train_mod = importlib.import_module("cinevox.training.train")  # the module, not the function


def _weights(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def _cli_weights(args, out, threads, launcher=()):
    """Run ``python -m [launcher] cinevox ARGS --out OUT`` with OMP_NUM_THREADS threads; the weights it saved."""
    import os
    import subprocess
    import sys

    # should a worker abort again, every thread's Python and C++ stack says where (faulthandler, torch)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONFAULTHANDLER="1", TORCH_SHOW_CPP_STACKTRACES="1")
    r = subprocess.run([sys.executable, "-m", *launcher, "cinevox", *args, "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    return _weights(out)


TORCHRUN_2 = ("torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--tee", "3", "-m")


def _distance(a, b, part=""):
    """Euclidean distance of two state dicts' float weights (BatchNorm running statistics aside) whose names
    contain ``part``."""
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a
               if part in k and "running" not in k and a[k].is_floating_point()) ** 0.5


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_same_seed_same_weights_and_history(tiny_prepared, vgg_file, tmp_path):
    cfg = tiny_train_config(vgg_file, max_steps=4)
    a = train(tiny_prepared, tmp_path / "a", cfg, progress=False)
    b = train(tiny_prepared, tmp_path / "b", cfg, progress=False)
    _assert_same(_weights(a), _weights(b))
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    assert list(ha.epoch) == [1, 2]
    np.testing.assert_array_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))
    c = train(tiny_prepared, tmp_path / "c", tiny_train_config(vgg_file, seed=1, max_steps=4), progress=False)
    assert not torch.equal(_weights(a)["encoder.fc.weight"], _weights(c)["encoder.fc.weight"])


def test_resume_ends_with_the_same_weights(tiny_prepared, vgg_file, tmp_path, monkeypatch):
    """An interrupted 2-epoch run resumed, then extended to 3 epochs with --resume --epochs 3 (issue 24: before,
    'made with other options (epochs)'): bitwise the weights of a run that asked for 3 epochs from the start, at
    epoch 2 and at epoch 3. Fewer epochs than the run's own are refused."""
    full = train(tiny_prepared, tmp_path / "full", tiny_train_config(vgg_file, epochs=3, max_steps=4, keep_epochs=[2]),
                 progress=False)
    cfg = tiny_train_config(vgg_file, epochs=2, max_steps=4, keep_epochs=[2])
    real = train_mod.run_epoch
    calls = {"n": 0}

    def interrupted(model, source, batches, step, device, optimizer=None, *a, **k):
        if optimizer is not None:
            calls["n"] += 1
            if calls["n"] == 2:  # dies during the second training epoch
                raise KeyboardInterrupt
        return real(model, source, batches, step, device, optimizer, *a, **k)

    monkeypatch.setattr(train_mod, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_prepared, tmp_path / "cut", cfg, progress=False)
    monkeypatch.setattr(train_mod, "run_epoch", real)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_prepared, tmp_path / "cut", cfg, progress=False)
    train(tiny_prepared, tmp_path / "cut", cfg, resume=True, progress=False)
    at2 = torch.load(full / "checkpoints" / "epoch_002.pt", weights_only=True)["model"]
    _assert_same(at2, _weights(tmp_path / "cut"))
    with pytest.raises(ValueError, match=r"--resume --epochs 1: .*run of 2 epochs \(2 done\).*--epochs 2 or more"):
        train(tiny_prepared, tmp_path / "cut", dataclasses.replace(cfg, epochs=1), resume=True, progress=False)
    train(tiny_prepared, tmp_path / "cut", dataclasses.replace(cfg, epochs=3), resume=True, progress=False)
    _assert_same(_weights(full), _weights(tmp_path / "cut"))
    h_full, h_cut = pd.read_csv(full / "history.csv"), pd.read_csv(tmp_path / "cut" / "history.csv")
    assert list(h_cut.epoch) == [1, 2, 3]
    np.testing.assert_array_equal(h_full.drop(columns="seconds"), h_cut.drop(columns="seconds"))
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["config"]["epochs"] == 3


def test_non_finite_loss_names_epoch_and_batch(tiny_prepared, vgg_file, tmp_path):
    bad = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, bad)
    samples = pd.read_csv(bad / "samples.csv")
    vox = np.load(bad / "voxels.npy")
    vox[samples.index[samples.split == "train"]] = np.nan
    np.save(bad / "voxels.npy", vox)
    republish(bad, "voxels.npy")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 0"):
        train(bad, tmp_path / "run", tiny_train_config(vgg_file, model="encoder"), progress=False)


def test_cli_train_each_model_kind(tiny_prepared, vgg_file, tmp_path):
    for kind in ("encoder", "decoder", "encdec"):
        rc = main(["train", str(tiny_prepared), "--out", str(tmp_path / kind), "--model", kind, "--epochs", "1",
                   "--batch-size", "16", "--vgg-weights", str(vgg_file), "-q"])
        assert rc == 0
        ck = torch.load(tmp_path / kind / "checkpoints" / "last.pt", weights_only=False)
        assert ck["config"]["model"] == kind and ck["epoch"] == 1 and "rng" in ck and "versions" in ck
        assert (tmp_path / kind / "manifest.json").is_file()
        assert list((tmp_path / kind / "tensorboard").glob("events.out.tfevents.*"))


def test_grid_records_every_cell(tiny_prepared, vgg_file, tmp_path):
    best = grid(tiny_prepared, tmp_path / "grid", tiny_train_config(vgg_file, max_steps=3), [0.0, 1.0], [1, 2],
                progress=False)
    cells = pd.read_csv(tmp_path / "grid" / "grid.csv")
    assert len(cells) == 4 and set(cells.eps) == {0.0, 1.0} and set(cells.epochs) == {1, 2}
    assert best["val_score"] == pytest.approx(cells.val_score.min(), rel=1e-5)
    assert (tmp_path / "grid" / "best" / "checkpoints" / "last.pt").is_file()
    kept = torch.load(tmp_path / "grid" / "best" / "checkpoints" / "last.pt", weights_only=False)
    assert kept["epoch"] == best["epochs"] and kept["config"]["loss"]["eps"] == best["eps"]  # the chosen cell
    assert not list((tmp_path / "grid" / "eps_0" / "checkpoints").glob("epoch_*.pt"))  # one kept cell per eps


def test_grid_over_two_devices_and_as_slurm_array_cells(tiny_prepared, vgg_file, tmp_path):
    """Two trainings at once (one worker process per device; here two CPU 'devices'), and the Slurm way (one
    cell per array task, then --collect): the same cells and the same choice as one after another (3 steps per
    epoch: what is compared is where each cell trains and how its scores are gathered)."""
    cfg = tiny_train_config(vgg_file, max_steps=3)
    seq = grid(tiny_prepared, tmp_path / "seq", cfg, [0.0, 1.0], [1, 2], progress=False, devices=["cpu"])
    par = grid(tiny_prepared, tmp_path / "par", cfg, [0.0, 1.0], [1, 2], progress=False, devices=["cpu", "cpu"])
    a, b = pd.read_csv(tmp_path / "seq" / "grid.csv"), pd.read_csv(tmp_path / "par" / "grid.csv")
    np.testing.assert_allclose(a["val_score"], b["val_score"], rtol=1e-5)
    assert (par["eps"], par["epochs"]) == (seq["eps"], seq["epochs"])
    for k in (1, 0):
        assert main(["grid", str(tiny_prepared), "--out", str(tmp_path / "arr"), "--eps-grid", "0,1", "--epoch-grid",
                     "1-2", "--epochs", "2", "--batch-size", "8", "--vgg-weights", str(vgg_file), "--cell", str(k),
                     "--max-steps", "3", "-q"]) == 0
    assert main(["grid", str(tiny_prepared), "--out", str(tmp_path / "arr"), "--eps-grid", "0,1", "--epoch-grid",
                 "1-2", "--batch-size", "8", "--vgg-weights", str(vgg_file), "--collect", "--max-steps", "3",
                 "-q"]) == 0
    c = pd.read_csv(tmp_path / "arr" / "grid.csv")
    np.testing.assert_allclose(a["val_score"], c["val_score"], rtol=1e-5)


def test_paper_epoch_grid_is_every_epoch_5_to_30():
    from cinevox.cli import _ints, build_parser

    assert _ints(build_parser().parse_args(["grid", "p", "--out", "o"]).epoch_grid) == list(range(5, 31))
    assert _ints("1,3-4") == [1, 3, 4]


def test_torchrun_two_processes_match_one(tiny_prepared, vgg_file, tmp_path):
    """`torchrun --nproc-per-node 2 -m cinevox train` on CPUs (gloo) takes the same global batches, loss weights
    and (--sync-bn) global-batch BatchNorm statistics as one process. Stated tolerance: the two runs differ no more
    than one process differs from itself with 2 threads instead of 1 (x 1.5): float sums in another order, which
    Adam amplifies where gradients are near zero. Dropout is off (its masks are drawn per process)."""
    import json

    args = ["train", str(tiny_prepared), "--model", "encdec", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
            "--dropout", "0", "--sync-bn", "--vgg-weights", str(vgg_file), "-q"]
    one, threads = _cli_weights(args, tmp_path / "one", 1), _cli_weights(args, tmp_path / "threads", 2)
    two = _cli_weights(args, tmp_path / "two", 1, TORCHRUN_2)
    assert _distance(one, two) <= 1.5 * _distance(one, threads)
    last = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and len(last["rng_per_rank"]) == 2
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["world_size"] == 2
    h1, h2, ht = (pd.read_csv(tmp_path / n / "history.csv") for n in ("one", "two", "threads"))
    gap, noise = np.abs(h2["train_loss"] - h1["train_loss"]), np.abs(ht["train_loss"] - h1["train_loss"])
    # epoch means of the train loss: measured 0.47 % apart after the first epoch (one vs 2 threads: 0.11 %) on the
    # tiny dataset as split since the gap before the test part, while the weights agree as asserted above
    assert (gap <= 1.5 * noise + 6e-3 * h1["train_loss"]).all(), (gap.tolist(), noise.tolist())
    # held-out loss: float differences grow over 28 Adam steps at lr 1e-3. Measured on this project's CI machine:
    # after 1 step one vs two processes 1e-4, after 4 steps 0.16 % (one vs 2 threads 0.24 %), after 28 steps 2-3 %
    # (one vs 2 threads 0.3-0.5 %), hence the looser bound
    np.testing.assert_allclose(h2["val_loss"], h1["val_loss"], rtol=5e-2)


def test_torchrun_shared_viewer_model_matches_one_process(tiny_prepared_subjects, vgg_file, tmp_path):
    """`--target subjects` under torchrun: the per-sample viewer draws and subject dropout depend on (seed, epoch,
    sample), not on the process, so two processes train the shared encoder-decoder (per-viewer read-outs and input
    layers) as one does, within the float noise of one process on 2 threads instead of 1 (x 1.5, as above)."""
    args = ["train", str(tiny_prepared_subjects), "--model", "encdec", "--target", "subjects", "--holdout-subjects",
            "S04", "--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--dropout", "0",
            "--sync-bn", "--vgg-weights", str(vgg_file), "-q"]
    one, threads = _cli_weights(args, tmp_path / "one", 1), _cli_weights(args, tmp_path / "threads", 2)
    two = _cli_weights(args, tmp_path / "two", 1, TORCHRUN_2)
    for part in ("", "encoder.heads", "decoder.in_heads"):  # the whole model and the per-viewer parts
        assert _distance(one, two, part) <= 1.5 * _distance(one, threads, part) + 1e-6, part
    assert float(one["decoder.in_heads"].abs().sum()) > 0  # the input layers trained


def test_a_torchrun_worker_ends_with_its_command_status(tmp_path):
    """A failed command under torchrun (WORLD_SIZE > 1) keeps its status and its one line. The success path of a
    worker (os._exit after flushing) is the torchrun tests above: their weights and history are read after the
    workers ended."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, WORLD_SIZE="2")
    r = subprocess.run([sys.executable, "-m", "cinevox", "compare", str(tmp_path / "none"), "--out",
                        str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cinevox compare: error:" in r.stderr, r.stderr


def test_entry_skips_the_teardown_only_for_a_finished_process_group_member(monkeypatch):
    """cli.entry ends with os._exit(0) only when the command succeeded in a process that joined a process group
    (training.distributed.STARTED); a failed command, a single process, or a process that merely inherits
    WORLD_SIZE (a child of a worker) ends normally, with its status."""
    import logging
    import os

    import cinevox.cli as cli
    from cinevox.training import distributed

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(logging, "shutdown", lambda: None)  # pytest's own handlers stay open
    monkeypatch.setenv("WORLD_SIZE", "2")
    for started, status, expected in ((True, 0, Exited), (True, 2, SystemExit), (False, 0, SystemExit)):
        monkeypatch.setattr(distributed, "STARTED", started)
        monkeypatch.setattr(cli, "main", lambda status=status: status)
        with pytest.raises(expected) as err:
            cli.entry()
        assert err.value.args[0] == status if expected is Exited else err.value.code == status
