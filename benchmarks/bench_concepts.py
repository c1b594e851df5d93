"""TCAV against the simulator's known tuning at demo size, over seeds (the concept and random sets drawn anew).

    python benchmarks/bench_concepts.py [--run RUN] [--seeds 0,1,2] [--n-examples 30] [--n-random 6]

Without --run it simulates, prepares and trains the demo's E-D model first (a few CPU minutes; or give the
demo's ``cinevox-demo/runs/encdec``). Prints, per concept and layer, the ROC AUC (mean and range over seeds) of the
per-voxel TCAV score for the quarter of voxels most selective for the concept's channel, and the time per run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def demo_run(root: Path) -> Path:
    from cinevox.data.prepare import PrepareConfig, prepare
    from cinevox.losses import LossConfig
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate
    from cinevox.training import TrainConfig, train

    bids = simulate(root / "bids", preset("demo"), progress=False)
    sim = bids / "derivatives" / "simulation"
    prepared = prepare(bids, root / "prepared", PrepareConfig(
        films_dir=str(bids / "stimuli"), atlas=str(sim / "atlas.nii.gz"), atlas_labels=str(sim / "atlas_labels.tsv"),
        frame_size=32, frames_per_tr=8, gap_trs=3, val_blocks=2), progress=False)
    return train(prepared, root / "encdec",
                 TrainConfig(model="encdec", epochs=10, loss=LossConfig(vgg_allow_random=True)),
                 progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-examples", type=int, default=30)
    ap.add_argument("--n-random", type=int, default=6)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from cinevox.analysis.concepts import ConceptConfig, concepts

    run = a.run or demo_run(Path(tempfile.mkdtemp(prefix="bench_concepts_")))
    results, seconds = [], []
    for seed in [int(s) for s in a.seeds.split(",")]:
        t = time.time()
        s = concepts(run, ConceptConfig(n_examples=a.n_examples, n_random=a.n_random, seed=seed,
                                        layers=["temporal", "conv4", "pool2"]))
        seconds.append(time.time() - t)
        results.append(s["validation"])
    print(f"\nrun {run}; {len(results)} seeds; {a.n_examples} clips per set, {a.n_random} random sets; "
          f"{np.mean(seconds):.1f} s per run\n")
    layers = list(next(iter(results[0].values())))
    print("| concept | " + " | ".join(f"AUC {lay}" for lay in layers) + " |")
    print("|---|" + "---:|" * len(layers))
    for c in results[0]:
        cells = []
        for lay in layers:
            v = np.array([r[c][lay]["auc"] for r in results])
            cells.append(f"{v.mean():.2f} ({v.min():.2f}-{v.max():.2f})")
        print(f"| {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
