"""Subject-level models on known truth (issue 26): per-viewer, shared and group encoders on a simulation whose
viewers have their own tuning (``--subject-variability``), and the cost of each training mode.

    python benchmarks/bench_subjects.py [--viewers 4] [--variability 2.0] [--epochs 8] [--snr high,low]
                                        [--cost-viewers 6,30] [--seed 0] [--seeds 1] [--subject-rank 64]
                                        [--subject-ranks 4,16] [--work DIR]

For each per-viewer SNR level (``log10_snr_mean``): simulate, prepare, then train CNN encoders (32 px, 4 frames
per TR) with ``--target mean`` (the group model), ``--target subject:S`` for every viewer but the last (the
per-viewer models) and ``--target subjects --holdout-subjects <last>`` (the shared model), and evaluate them.

1. Recovery of the viewer-specific part, on the test TRs of the informative voxels: the true deviation of viewer
   ``S`` is its noise-free signal minus the viewers' mean (``signal_sub-<S>/``, per-film z-scored); a model's is
   its prediction for ``S`` minus the mean of its predictions for the viewers (per-film z-scored). Mean over
   voxels and viewers of their correlation over time, for the per-viewer models, the shared model's read-outs,
   the group model (one prediction for everyone: 0 by construction) and a control pairing each viewer's true
   deviation with another viewer's model (viewers permuted, every cyclic shift).
2. Viewers' r (``evaluate``'s per-viewer r against each viewer's own test series): per-viewer models vs the shared
   model's read-outs vs the group model (trained on every viewer's mean, and on the mean of the viewers the shared
   model saw), for the viewers trained on; with ``--subject-ranks 4,16`` also the shared model at those ranks and
   at the rank (of these and ``--subject-rank``) whose last epoch has the lowest validation loss. With ``--seeds N``
   every table gives the mean and SD over seeds, and table 2b the differences paired within each seed (viewers' r,
   recovery, the unseen viewer's heads against chance and each other), tested across seeds.
3. The unseen viewer: r through the shared model's average head, through a head fitted on its training TRs only,
   by a group model trained on the other viewers' mean (``--target mean --holdout-subjects``), chance (the average
   head's prediction circularly shifted within each film against the viewer's series, 200 times: mean and 95th
   percentile; a permutation of TRs would break the autocorrelation and make chance too narrow), and
   the oracle average head: the simulation's stimulus-driven signal of the shared tuning
   (``stimulus_signal/<film>.npy``, 0 on true nulls) against the viewer's series, what an average head that knew
   the shared tuning would reach (mean over every voxel, as the other rows).
4. Decoders (``--decoders``): a group decoder (``--target mean``) and a shared decoder (``--target subjects``,
   the last viewer held out), both without the perceptual term (``beta`` 0: no VGG16 weights needed). Mean SSIM of
   the trained viewers' test frames decoded from their own voxels: through their own input layers, through another
   viewer's (the off-diagonal control), through the average input layer, and by the group decoder; the unseen
   viewer through the average input layer and through a ridge alignment to the trained viewers' mean fitted on
   its training TRs.
5. Cost: seconds per epoch and peak RSS of each mode (its own CLI process, ``os.wait4``) at ``--cost-viewers``
   viewers (the demo's 6 and Emo-FilM's 30), on short films; with the disk size of ``subjects.npy``. Encoders,
   and with ``--decoders`` decoders and encoder-decoders (random VGG16 for the perceptual term), ``mean`` against
   ``subjects``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SNR = {"high": 0.6, "low": -1.0}


def _z(x: np.ndarray, films: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    for f in set(films):
        s = films == f
        out[s] = (x[s] - x[s].mean(0)) / np.where(x[s].std(0) > 1e-12, x[s].std(0), 1.0)
    return out


def _corr_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.where(den > 1e-12, (a * b).sum(0) / np.where(den > 1e-12, den, 1.0), np.nan)


def level(work: Path, name: str, a) -> dict:
    from helpers import sim_config

    from cinevox.data.dataset import PreparedData
    from cinevox.data.prepare import prepare
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate
    from cinevox.training import TrainConfig, train

    root = work / name
    films = {"FilmA": a.film_s, "FilmB": a.film_s, "FilmC": a.film_s, "YouAgain": 40.0}
    sim = simulate(root / "bids", preset("tiny", n_subjects=a.viewers, subject_variability=a.variability,
                                         log10_snr_mean=SNR[name], films=films, seed=a.seed), progress=False)
    prep = prepare(sim, root / "prepared", sim_config(sim), progress=False)
    data = PreparedData(prep)
    viewers = data.subjects
    trained, unseen = viewers[:-1], viewers[-1]
    base = dict(model="encoder", epochs=a.epochs, batch_size=8, lr=1e-3, tensorboard=False, seed=a.seed)
    ev = EvalConfig(n_perm=19, n_perm_frames=5)
    runs: dict[str, Path] = {}
    t0 = time.time()
    runs["group"] = train(prep, root / "group", TrainConfig(target="mean", **base), progress=False)
    runs["group_wo"] = train(prep, root / "group_wo", TrainConfig(target="mean", holdout_subjects=[unseen], **base),
                             progress=False)
    for s in trained:
        runs[s] = train(prep, root / f"one_{s}", TrainConfig(target=f"subject:{s}", **base), progress=False)
    runs["shared"] = train(prep, root / "shared", TrainConfig(target="subjects", holdout_subjects=[unseen],
                                                              subject_rank=a.subject_rank, **base), progress=False)
    for rank in _ranks(a):  # the same shared model at other ranks (the shrinkage of the viewers' corrections)
        runs[f"shared_r{rank}"] = train(prep, root / f"shared_r{rank}",
                                        TrainConfig(target="subjects", holdout_subjects=[unseen], subject_rank=rank,
                                                    **base), progress=False)
    if a.decoders:
        from cinevox.losses import LossConfig

        dec = {**base, "model": "decoder", "loss": LossConfig(beta=0.0)}
        runs["group_dec"] = train(prep, root / "group_dec", TrainConfig(target="mean", **dec), progress=False)
        runs["shared_dec"] = train(prep, root / "shared_dec",
                                   TrainConfig(target="subjects", holdout_subjects=[unseen], **dec), progress=False)
    for r in runs.values():
        evaluate(r, ev)
    print(f"  [{name}] trained and evaluated {len(runs)} models in {time.time() - t0:.0f} s", flush=True)
    return analyse(root, a)


def _ranks(a) -> list[int]:
    """The extra ranks of ``--subject-ranks`` (``--subject-rank`` itself is the folder ``shared``)."""
    return [int(r) for r in (a.subject_ranks or "").split(",") if r and int(r) != a.subject_rank]


def analyse(root: Path, a) -> dict:
    """The tables of one level from its trained and evaluated runs (``root``: the level's folder)."""
    from cinevox.data.dataset import PreparedData
    from cinevox.evaluation.evaluate import _circular
    from cinevox.evaluation.predict import predict
    from cinevox.evaluation.subjects import subject_outputs
    from cinevox.training.train import load_run_model

    sim, data = root / "bids", PreparedData(root / "prepared")
    viewers = data.subjects
    trained, unseen = viewers[:-1], viewers[-1]
    runs = {"group": root / "group", "shared": root / "shared", **{s: root / f"one_{s}" for s in trained}}
    if (root / "group_wo" / "eval" / "metrics.json").is_file():
        runs["group_wo"] = root / "group_wo"
    metrics = {k: json.loads((r / "eval" / "metrics.json").read_text()) for k, r in runs.items()}
    test = data.indices("test")
    rows_film = data.samples.film.to_numpy()[test]
    rows_tr = data.samples.tr.to_numpy()[test]
    vis = data.simulation_visual_index()
    informative = data.simulation_truth("informative.nii.gz") > 0
    simdir = sim / "derivatives" / "simulation"
    truth = {}
    for s in viewers:
        sig = np.zeros((len(test), data.n_voxels))
        for f in set(rows_film):
            sel = rows_film == f
            sig[sel] = np.load(simdir / f"signal_sub-{s}" / f"{f}.npy")[rows_tr[sel]][:, vis]
        truth[s] = _z(sig, rows_film)[:, informative]
    true_dev = {s: truth[s] - np.mean([truth[k] for k in trained], 0) for s in trained}

    def preds_per_viewer(kind: str) -> dict[str, np.ndarray]:
        if kind == "per-viewer":
            out = {}
            for s in trained:
                m = load_run_model(runs[s])[0]
                out[s] = predict(m, "encoder", data, test)["voxels_pred"]
            return out
        m = load_run_model(runs["shared"])[0]
        _, per, _ = subject_outputs(m, data, test)
        return {s: per[:, k] for k, s in enumerate(trained)}

    rec = {}
    for kind in ("per-viewer", "shared"):
        p = {s: _z(v, rows_film)[:, informative] for s, v in preds_per_viewer(kind).items()}
        mean_p = np.mean([p[s] for s in trained], 0)
        dev = {s: p[s] - mean_p for s in trained}
        rec[kind] = float(np.nanmean([np.nanmean(_corr_cols(dev[s], true_dev[s])) for s in trained]))
        perm = [np.nanmean(_corr_cols(dev[trained[(i + k) % len(trained)]], true_dev[s]))
                for k in range(1, len(trained)) for i, s in enumerate(trained)]
        rec[f"{kind} (viewers permuted)"] = float(np.nanmean(perm))
    rec["group model"] = 0.0

    def viewer_r(key: str, s: str, col: str = "r_mean") -> float:
        table = {r["subject"]: r for r in metrics[key]["subjects"]["per_viewer"]}
        return float(table[s].get(col, np.nan))

    r_rows = {"per-viewer models": np.mean([viewer_r(s, s) for s in trained]),
              "shared model (read-outs)": np.mean([viewer_r("shared", s) for s in trained]),
              "group model": np.mean([viewer_r("group", s) for s in trained]),
              "group model without the unseen viewer (the shared model's data)":
                  np.mean([viewer_r("group_wo", s) for s in trained]) if "group_wo" in runs else float("nan"),
              "ceiling (leave-one-out)": np.mean([viewer_r("group", s, "ceiling_loo_mean") for s in trained])}
    ranks = [r for r in _ranks(a) if (root / f"shared_r{r}" / "eval" / "metrics.json").is_file()]
    if ranks:  # the shared model at each rank, and the rank whose last epoch has the lowest validation loss
        folders = {a.subject_rank: "shared", **{r: f"shared_r{r}" for r in ranks}}
        for r in ranks:
            metrics[folders[r]] = json.loads((root / folders[r] / "eval" / "metrics.json").read_text())
            r_rows[f"shared model, rank {r}"] = np.mean([viewer_r(folders[r], s) for s in trained])
        val = {r: float(pd.read_csv(root / f / "history.csv")["val_loss"].iloc[-1]) for r, f in folders.items()}
        best = min(val, key=val.get)
        r_rows["shared model, rank picked by validation loss"] = np.mean([viewer_r(folders[best], s)
                                                                          for s in trained])
        r_rows["rank picked"] = float(best)
    # the unseen viewer: chance from the average head's prediction circularly shifted within each film (evaluate's
    # circular-shift null: it keeps the series' autocorrelation, which a permutation of TRs would break)
    m = load_run_model(runs["shared"])[0]
    avg, _, _ = subject_outputs(m, data, test)
    y = np.asarray(data.subjects_test()[viewers.index(unseen)], np.float64)
    rng = np.random.default_rng(a.seed)
    zy, za = _z(y, rows_film), _z(avg, rows_film)
    null = np.array([np.nanmean(_corr_cols(z, zy)) for z in _circular(za, rows_film, rng, 200)])
    shared_sig = np.zeros((len(test), data.n_voxels))  # the shared tuning's stimulus-driven signal (0 on true nulls)
    for f in set(rows_film):
        sel = rows_film == f
        shared_sig[sel] = np.load(simdir / "stimulus_signal" / f"{f}.npy")[rows_tr[sel]][:, vis]
    unseen_rows = {"average head": viewer_r("shared", unseen),
                   "head fitted on its training TRs": viewer_r("shared", unseen, "r_mean_fitted_head"),
                   "group model trained without it (--target mean --holdout-subjects)":
                       viewer_r("group_wo", unseen) if "group_wo" in runs else float("nan"),
                   "oracle average head (the shared tuning's stimulus-driven signal)": float(np.mean(np.nan_to_num(
                       _corr_cols(_z(shared_sig, rows_film), zy)))),
                   "chance (circularly shifted), mean": float(null.mean()),
                   "chance, 95th percentile": float(np.quantile(null, 0.95))}
    out = {"recovery": rec, "viewer_r": r_rows, "unseen": unseen_rows}
    if (root / "shared_dec" / "eval" / "metrics.json").is_file():
        out["decoders"] = decoder_table(root, data, trained, unseen)
    return out


def decoder_table(root: Path, data, trained: list[str], unseen: str) -> dict:
    """Table 4: mean SSIM of the viewers' test frames decoded from their own voxels, by input layer."""
    import torch

    from cinevox.evaluation.predict import predict
    from cinevox.metrics import ssim_frames
    from cinevox.models.subjects import ViewerDecoder
    from cinevox.training.train import load_run_model

    def table(name):
        m = json.loads((root / name / "eval" / "metrics.json").read_text())
        return {r["subject"]: r for r in m["subjects"]["per_viewer"]}

    group, shared = table("group_dec"), table("shared_dec")
    test = data.indices("test")
    model = load_run_model(root / "shared_dec", device="cpu")[0]
    frames = predict(model, "decoder", data, test)["frames_true"]  # the middle frames, as evaluate scores them
    subj = np.asarray(data.subjects_test(), np.float32)
    off, avg_trained = [], []  # another viewer's input layer (the control), the average input layer
    with torch.no_grad():
        for k, s in enumerate(trained):
            x = subj[data.subjects.index(s)]
            seen = ~np.isnan(x).any(1)
            xs, fs = torch.tensor(x[seen]), frames[seen].astype(np.float32)
            off += [float(ssim_frames(ViewerDecoder(model, j)(xs).numpy(), fs).mean())
                    for j in range(len(trained)) if j != k]
            avg_trained.append(float(ssim_frames(model(xs).numpy(), fs).mean()))
    return {"trained viewers: own input layers": float(np.mean([shared[s]["ssim_mean"] for s in trained])),
            "trained viewers: another viewer's input layer (control)": float(np.mean(off)),
            "trained viewers: average input layer": float(np.mean(avg_trained)),
            "trained viewers: group decoder": float(np.mean([group[s]["ssim_mean"] for s in trained])),
            "unseen viewer: average input layer": float(shared[unseen]["ssim_mean"]),
            "unseen viewer: alignment fitted on its training TRs": float(shared[unseen]["ssim_mean_fitted_head"]),
            "unseen viewer: group decoder": float(group[unseen]["ssim_mean"])}


def cost(work: Path, n_viewers: int, a) -> list[dict]:
    """Seconds per epoch and peak RSS of each training mode, each in its own CLI process."""
    from helpers import sim_config

    from cinevox.data.prepare import prepare
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    root = work / f"cost{n_viewers}"
    sim = simulate(root / "bids", preset("tiny", n_subjects=n_viewers, subject_variability=1.0, max_trs=60,
                                         films={"FilmA": 90.0, "FilmB": 90.0, "YouAgain": 40.0}), progress=False)
    prep = prepare(sim, root / "prepared", sim_config(sim), progress=False)
    man = json.loads((prep / "manifest.json").read_text())
    out = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    modes = [("encoder", t) for t in ("mean", "subject:S01", "subjects")]
    if a.decoders:
        modes += [(k, t) for k in ("decoder", "encdec") for t in ("mean", "subjects")]
    for model, target in modes:
        run = root / f"run_{model}_{target.replace(':', '_')}"
        argv = [sys.executable, "-m", "cinevox", "train", str(prep), "--out", str(run), "--model", model,
                "--epochs", "1", "--batch-size", "8", "--target", target, "--device", "cpu", "-q",
                *(["--allow-random-vgg"] if model != "encoder" else [])]
        t = time.time()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"train --model {model} --target {target} failed: {p.stderr.read().decode()[-500:]}")
        hist = pd.read_csv(run / "history.csv")
        out.append({"viewers": n_viewers, "model": model, "target": target, "epoch_s": float(hist["seconds"].iloc[0]),
                    "process_s": time.time() - t, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
                    "n_samples": man["n_samples"], "n_voxels": man["n_voxels"],
                    "subjects_npy_mb": (prep / "subjects.npy").stat().st_size / 1e6})
    return out


def seed_differences(per_seed: dict) -> pd.DataFrame:
    """Table 2b: per-seed paired differences, for each level: the viewers' r of the shared model (at each rank, and
    at the rank picked by validation loss) against the per-viewer models and against the group model trained on
    the same viewers' mean; recovery of the viewer-specific part, shared against per-viewer; the unseen viewer's r
    of the average head against chance (the mean of its circular-shift null) and against a fitted head and the group
    model trained without it. The unit is the seed (an independent simulation, split and training): mean, SD, seeds
    above 0, a 95 % t interval and a one-sample t-test (two-sided) across seeds. The seeds are few (5-20): the
    t-test leans on the differences being about normal; the count of positive seeds is the distribution-free
    summary."""
    from scipy import stats

    same = "group model without the unseen viewer (the shared model's data)"
    rows = []
    for level_name, runs in per_seed.items():
        pairs = [("viewers' r: shared - per-viewer", "viewer_r", "shared model (read-outs)", "per-viewer models"),
                 ("viewers' r: shared - group (same viewers)", "viewer_r", "shared model (read-outs)", same),
                 ("viewers' r: per-viewer - group (same viewers)", "viewer_r", "per-viewer models", same)]
        pairs += [(f"viewers' r: {k.removeprefix('shared model, ')} - per-viewer", "viewer_r", k, "per-viewer models")
                  for k in runs[0]["viewer_r"] if k.startswith("shared model, rank ")]
        pairs += [("recovery: shared - per-viewer", "recovery", "shared", "per-viewer"),
                  ("unseen: average head - chance", "unseen", "average head", "chance (circularly shifted), mean"),
                  ("unseen: average head - fitted head", "unseen", "average head", "head fitted on its training TRs"),
                  ("unseen: average head - group model without it", "unseen", "average head",
                   "group model trained without it (--target mean --holdout-subjects)")]
        for label, key, x, y in pairs:
            d = np.array([r[key].get(x, np.nan) - r[key].get(y, np.nan) for r in runs])
            if len(d) < 2 or not np.isfinite(d).all():
                continue
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            rows.append({"level": level_name, "difference": label, "mean": d.mean(), "sd": d.std(ddof=1),
                         "seeds > 0": f"{int((d > 0).sum())}/{len(d)}", "ci_low": d.mean() - half,
                         "ci_high": d.mean() + half, "p": stats.ttest_1samp(d, 0.0).pvalue})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=4)
    ap.add_argument("--variability", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--film-s", type=float, default=150.0)
    ap.add_argument("--snr", default="high,low")
    ap.add_argument("--cost-viewers", default="6,30")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subject-rank", type=int, default=64, help="the shared encoder's --subject-rank")
    ap.add_argument("--subject-ranks", default="",
                    help="also shared encoders at these ranks (e.g. 4,16): their viewers' r, and the rank whose last "
                         "epoch has the lowest validation loss (evaluate scores the last epoch)")
    ap.add_argument("--seeds", type=int, default=1,
                    help="repeat each level with seeds SEED..SEED+N-1 (a new simulation and new models each): the "
                         "tables give the mean and SD over seeds, and table 2b the paired differences per seed")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--analyse-only", action="store_true", help="the tables from the runs already in --work")
    ap.add_argument("--decoders", action="store_true", help="also shared and group decoders (table 4, cost rows)")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_subjects_"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(2)
    results, per_seed = {}, {}
    for name in [s for s in a.snr.split(",") if s]:
        print(f"SNR {name} (log10 per-viewer SNR {SNR[name]}), {a.viewers} viewers, F = {a.variability}", flush=True)
        per_seed[name] = []
        for k in range(a.seeds):
            b = argparse.Namespace(**{**vars(a), "seed": a.seed + k})
            root = work if a.seeds == 1 else work / f"seed{b.seed}"
            per_seed[name].append(analyse(root / name, b) if a.analyse_only else level(root, name, b))
        results[name] = {key: {row: float(np.mean([r[key][row] for r in per_seed[name]])) for row in rows}
                         for key, rows in per_seed[name][0].items()}
    for key, title in (("recovery", "1. correlation with the true viewer-specific deviation (informative voxels)"),
                       ("viewer_r", "2. viewers' r (trained viewers; evaluate's per-viewer r)"),
                       ("unseen", "3. the unseen viewer's r"),
                       ("decoders", "4. decoders: mean SSIM of frames decoded from each viewer's own test voxels")):
        if results and all(key in v for v in results.values()):
            over = f" (mean over {a.seeds} seeds; SD over seeds after the slash)" if a.seeds > 1 else ""
            print(f"\n{title}{over}")
            table = pd.DataFrame({k: v[key] for k, v in results.items()})
            if a.seeds > 1:
                sd = pd.DataFrame({k: {row: np.std([r[key][row] for r in runs], ddof=1) for row in runs[0][key]}
                                   for k, runs in per_seed.items()})
                table = table.round(3).astype(str) + " / " + sd.round(3).astype(str)
            print(table.round(3).to_string())
    if a.seeds > 1:
        print(f"\n2b. paired over {a.seeds} seeds (each seed: a new simulation and new models): mean difference, SD, "
              "seeds with a positive difference, 95 % t interval, one-sample t-test p (two-sided)")
        print(seed_differences(per_seed).round(4).to_string(index=False))
    rows = []
    for n in [int(v) for v in a.cost_viewers.split(",") if v]:
        rows += cost(work, n, a)
    if rows:
        print("\n5. cost per mode (1 epoch, 32 px, 4 frames per TR, CPU, 2 threads)")
        print(pd.DataFrame(rows).round(3).to_string(index=False))
    (work / "bench_subjects.json").write_text(json.dumps({"results": results, "per_seed": per_seed, "cost": rows},
                                                         indent=1))
    print(f"\n(work folder: {work})")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
