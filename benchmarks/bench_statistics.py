"""Error rates and validations on known truth: the tables behind the README's statistics claims, in one run.

    python benchmarks/bench_statistics.py [--seeds 3] [--cnn-epochs 0] [--run RUN_DIR] [--work DIR]

1. Per-voxel nulls (evaluate): simulations with half their visual voxels true nulls (``--null-fraction 0.5``,
   no stimulus signal at all, autocorrelated noise and non-visual signal kept), a ridge baseline (and, with
   ``--cnn-epochs N``, a CNN encoder trained N epochs); false-positive rate at alpha 0.05 on the null voxels and
   power on the planted informative voxels for the shuffled, circular-shift and phase-randomised nulls.
2. Paired model comparison (compare): two equally good models with AR(1) errors (the null) and a worse one,
   block permutation over test time vs the same test ignoring autocorrelation (blocks of 1 TR).
3. With ``--run RUN`` (an E-D run of a simulation, e.g. the demo's ``runs/E-D`` after ``cinevox concepts`` and
   ``cinevox lesion``): the TCAV concept-specificity matrix within informative voxels, with the measured data's
   and the predictions' own specificity, and the lesion ranking's ROC AUC against the planted regions.
"""

from __future__ import annotations

import argparse
import json
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
        for name, v in spec.get("reference", {}).items():
            print(f"\nreference, {name} (r with each concept's per-clip measure):")
            print(pd.DataFrame(v["matrix"]).T.round(2).to_string())
        print("\ntest:", s.get("test"))
    les = run / "lesion" / "summary.json"
    if les.is_file():
        s = json.loads(les.read_text())
        print(f"\nlesion ranking vs the planted regions (ROC AUC), scores: {s.get('auc_planted')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cnn-epochs", type=int, default=0)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_statistics_"))
    nulls = null_calibration(work, a.seeds, a.cnn_epochs)
    print("per-voxel nulls at alpha 0.05 (false-positive rate on true null voxels, power on informative voxels):")
    print(nulls.groupby(["model", "null"])[["fpr", "power"]].agg(["mean", "min", "max"]).round(3).to_string())
    print("\npaired model comparison at alpha 0.05:")
    print(paired_calibration().to_string(index=False))
    if a.run:
        run_tables(a.run)


if __name__ == "__main__":
    main()
