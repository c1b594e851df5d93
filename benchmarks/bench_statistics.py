"""Error rates and validations on known truth: the tables behind the README's statistics claims, in one run.

    python benchmarks/bench_statistics.py [--seeds 3] [--cnn-epochs 0] [--run RUN_DIR [--noise-free-control 40]]
                                          [--work DIR]

1. Per-voxel nulls (evaluate): simulations with half their visual voxels true nulls (``--null-fraction 0.5``,
   no stimulus signal at all, autocorrelated noise and non-visual signal kept), a ridge baseline (and, with
   ``--cnn-epochs N``, a CNN encoder trained N epochs); false-positive rate at alpha 0.05 on the null voxels and
   power on the planted informative voxels for the shuffled, circular-shift and phase-randomised nulls.
2. Paired model comparison (compare): two equally good models with AR(1) errors (the null) and a worse one,
   block permutation over test time vs the same test ignoring autocorrelation (blocks of 1 TR).
3. With ``--run RUN`` (an E-D run of a simulation, e.g. the demo's ``runs/encdec`` after ``cinevox concepts`` and
   ``cinevox lesion``): the TCAV concept-specificity matrix within informative voxels and within region
   families, with the measured data's and the predictions' own specificity and the oracle's margins, the lesion
   ranking's ROC AUC against the planted regions, and the tuning probe: which concept tuning the noise-free
   signal, the measured data and each run's predictions carry (regression on the simulator's channel drives).
   ``--noise-free-control EPOCHS`` adds the positive control: an encoder trained on the noise-free signal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def null_calibration(work: Path, seeds: int, cnn_epochs: int) -> pd.DataFrame:
    from helpers import FAST_RIDGE, sim_config

    from cinevox.data.prepare import prepare
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate
    from cinevox.training.ridge import RidgeConfig, baseline

    rows = []
    for seed in range(seeds):
        root = work / f"null{seed}"
        sim = simulate(root / "bids", preset("tiny", seed=seed, null_fraction=0.5, voxel_size=6.0,
                                             films={"FilmA": 120.0, "FilmB": 120.0, "YouAgain": 60.0}),
                       progress=False)
        prep = prepare(sim, root / "prepared", sim_config(sim, snr_top=1.0), progress=False)
        runs = {"ridge": baseline(prep, root / "ridge", RidgeConfig(**FAST_RIDGE), progress=False)}
        if cnn_epochs:
            from cinevox.losses import LossConfig
            from cinevox.training import TrainConfig, train

            runs["CNN encoder"] = train(prep, root / "E", TrainConfig(model="encoder", epochs=cnn_epochs,
                                                                     batch_size=8, lr=1e-3, tensorboard=False,
                                                                     loss=LossConfig()), progress=False)
        for model, run in runs.items():
            m = evaluate(run, EvalConfig(n_perm=199, n_perm_frames=5))["encoder"]
            cal = m["null_calibration"]
            for null in ("shuffle", "circular", "phase"):
                rows.append({"seed": seed, "model": model, "null": null, "n_null_voxels": cal["n_null_voxels"],
                             "fpr": cal[f"fpr_{null}"], "power": cal.get(f"power_{null}_informative", np.nan),
                             "test_trs": m.get("n_test_samples", np.nan)})
    return pd.DataFrame(rows)


def paired_calibration(reps: int = 200) -> pd.DataFrame:
    from cinevox.stats import paired_comparison

    def ar1(rng, shape, phi):
        x = np.empty(shape)
        x[0] = rng.normal(size=shape[1:])
        for t in range(1, shape[0]):
            x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=shape[1:])
        return x

    def pair(rng, gain_b):
        films = np.repeat([0, 1], 60)
        signal = ar1(rng, (120, 12), 0.5)
        true = signal + ar1(rng, (120, 12), 0.8)
        return true, signal + 1.5 * ar1(rng, (120, 12), 0.8), gain_b * signal + 1.5 * ar1(rng, (120, 12), 0.8), films

    rng = np.random.default_rng(1)
    rows = []
    for case, gain in (("null (equally good)", 1.0), ("model b signal x0.4", 0.4)):
        n = reps if gain == 1.0 else reps // 4
        for block, name in ((12, "block permutation (12 TRs)"), (1, "iid (1-TR blocks)")):
            rej = sum(paired_comparison(*pair(rng, gain), n_boot=9, n_perm=199, block=block, seed=k)["p_value"] < 0.05
                      for k in range(n))
            rows.append({"case": case, "test": name, "reps": n, "rejection_rate": rej / n})
    return pd.DataFrame(rows)


def tuning_probe(run: Path) -> pd.DataFrame | None:
    """What each series carries of the voxels' concept tuning: non-negative regression of each voxel's series on
    the simulator's channel drives at its pRF (``probe_tuning``), then the concept-specificity AUCs of the
    recovered selectivities (overall within informative voxels, and within region families). Rows: the noise-free
    stimulus signal (positive control), the measured data, and the test predictions of every run beside ``run``."""
    from cinevox.analysis.concepts import (
        TRUTH_CHANNEL,
        specificity_margins,
        specificity_matrix,
        specificity_within,
        truth_tuning,
    )
    from cinevox.data.dataset import PreparedData
    from cinevox.simulate.channels import channel_drives, probe_tuning
    from cinevox.simulate.films import CHANNELS
    from cinevox.training.train import run_prepared_dir

    data = PreparedData(run_prepared_dir(run))
    truth = truth_tuning(data)
    if truth is None:
        print(f"\n{run}: not trained on a simulation; no tuning probe")
        return None
    w, channels, family = truth
    share = w.sum(1)
    informative = share >= np.median(share)
    concepts = [c for c in ("faces", "objects", "motion", "edges", "colour", "luminance")
                if TRUTH_CHANNEL[c] in channels]
    selectivity = {c: w[:, channels.index(TRUTH_CHANNEL[c])] / np.maximum(share, 1e-12) for c in concepts}
    sim = Path(data.manifest["bids_simulation"])
    vi = data.simulation_visual_index()
    drives = channel_drives(sim.parent.parent, vi)
    films, trs = data.samples["film"].to_numpy(), data.samples["tr"].to_numpy()
    test = data.indices("test")
    stim = {f: np.load(sim / "stimulus_signal" / f"{f}.npy") for f in drives}
    sources = {"noise-free stimulus signal (all TRs)": (np.stack([stim[f][t][vi] for f, t in zip(films, trs)]),
                                                         np.arange(len(films))),
               "measured voxels (all TRs)": (np.asarray(data.voxels), np.arange(len(films))),
               "measured voxels (test TRs)": (np.asarray(data.voxels)[test], test)}
    for other in sorted(run.parent.iterdir()):
        pred = other / "eval" / "pred_voxels.npy"
        if pred.is_file():
            sources[f"{other.name} predictions (test TRs)"] = (np.load(pred), test)
    rows = []
    for name, (y, idx) in sources.items():
        rec = probe_tuning(drives, films[idx], trs[idx], y)
        total = np.maximum(rec.sum(1), 1e-12)
        maps = {c: rec[:, CHANNELS.index(TRUTH_CHANNEL[c])] / total for c in concepts}
        for scope, m in (("informative", specificity_matrix(maps, selectivity, informative)),
                         ("within family", specificity_within(maps, selectivity, informative, family))):
            if m is None:
                continue
            for c, v in specificity_margins(m).items():
                rows.append({"series": name, "scope": scope, "concept": c,
                             "cell": f"{v['diagonal']:.2f} ({v['margin']:+.2f})"})
    table = pd.DataFrame(rows).pivot(index=["scope", "series"], columns="concept", values="cell")
    print(f"\ntuning probe ({int(informative.sum())} informative voxels; diagonal AUC (margin over the best other "
          "concept), goal >= 0.75 (+0.10)):")
    print(table[concepts].to_string())
    return table


def noise_free_control(run: Path, work: Path, epochs: int) -> Path:
    """The positive control of the tuning probe and TCAV: an encoder trained on the noise-free stimulus signal of
    ``run``'s simulation (a copy of its prepared data with the voxels replaced), then ``cinevox concepts`` on it.
    What this model does not learn with noise-free targets, no model of these data learns. Returns its run."""
    from cinevox.analysis.concepts import ConceptConfig, concepts
    from cinevox.data.dataset import PreparedData
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig, train
    from cinevox.training.train import run_prepared_dir
    from cinevox.utils.folders import file_record

    src = run_prepared_dir(run)
    data = PreparedData(src)
    sim = Path(data.manifest["bids_simulation"])
    vi = data.simulation_visual_index()
    prep = work / "noise_free" / "prepared"
    if prep.exists():
        shutil.rmtree(prep)
    shutil.copytree(src, prep, ignore=shutil.ignore_patterns(".cinevox.lock", "voxels.npy"))
    stim = {f: np.load(sim / "stimulus_signal" / f"{f}.npy") for f in data.samples["film"].unique()}
    np.save(prep / "voxels.npy", np.stack([stim[f][t][vi] for f, t in zip(data.samples["film"],
                                                                          data.samples["tr"])]).astype(np.float32))
    manifest = json.loads((prep / "manifest.json").read_text())
    manifest["integrity"]["voxels.npy"] = file_record(prep / "voxels.npy")
    (prep / "manifest.json").write_text(json.dumps(manifest))
    out = work / "noise_free" / "runs" / f"E{epochs}"
    train(prep, out, TrainConfig(model="encoder", epochs=epochs, lr=3e-4, tensorboard=False, loss=LossConfig()),
          progress=False)
    m = evaluate(out, EvalConfig(n_perm=19, n_perm_frames=5))["encoder"]
    print(f"\nnoise-free control: encoder trained {epochs} epochs on the noise-free stimulus signal, test r "
          f"{m['r_mean']:.3f}")
    concepts(out, ConceptConfig())
    return out


def run_tables(run: Path) -> None:
    con = run / "concepts" / "summary.json"
    if con.is_file():
        s = json.loads(con.read_text())
        spec = s.get("specificity", {})
        for layer, v in spec.get("layers", {}).items():
            print(f"\nTCAV concept specificity, layer {layer}, within {spec['n_informative']} informative voxels "
                  "(rows: truth, columns: TCAV maps; ROC AUC):")
            print(pd.DataFrame(v["matrix"]).T.round(2).to_string())
            print("diagonal (margin over the best other map): " + ", ".join(
                f"{c} {m['diagonal']:.2f} ({m['margin']:+.2f})" for c, m in v["margins"].items()))
            if v.get("within_family"):
                print("within region families:")
                print(pd.DataFrame(v["within_family"]["matrix"]).T.round(2).to_string())
        if spec.get("oracle"):
            print("oracle (maps = true selectivities), margins: " + ", ".join(
                f"{c} {m['margin']:+.2f}" for c, m in spec["oracle"]["margins"].items()))
        for name, v in spec.get("reference", {}).items():
            print(f"\nreference, {name} (r with each concept's per-clip measure):")
            print(pd.DataFrame(v["matrix"]).T.round(2).to_string())
        print("\ntest:", s.get("test"))
    les = run / "lesion" / "summary.json"
    if les.is_file():
        s = json.loads(les.read_text())
        print(f"\nlesion ranking vs the planted regions (ROC AUC), scores: {s.get('auc_planted')}")
    tuning_probe(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="simulations for the null calibration (0: skip)")
    ap.add_argument("--cnn-epochs", type=int, default=0)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--noise-free-control", type=int, default=0, metavar="EPOCHS",
                    help="with --run: also train an encoder on the noise-free signal and print its tables")
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_statistics_"))
    if a.seeds > 0:  # --seeds 0: only the tables of --run
        nulls = null_calibration(work, a.seeds, a.cnn_epochs)
        print("per-voxel nulls at alpha 0.05 (false-positive rate on true null voxels, power on informative voxels):")
        print(nulls.groupby(["model", "null"])[["fpr", "power"]].agg(["mean", "min", "max"]).round(3).to_string())
        print("\npaired model comparison at alpha 0.05:")
        print(paired_calibration().to_string(index=False))
    if a.run:
        run_tables(a.run)
        if a.noise_free_control:
            run_tables(noise_free_control(a.run, work, a.noise_free_control))


if __name__ == "__main__":
    main()
