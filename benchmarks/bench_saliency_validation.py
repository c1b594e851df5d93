"""Saliency and virtual lesions against the simulator's planted informative regions.

Simulates a dataset (``demo`` preset by default) in which only the planted regions (Calcarine, Fusiform) carry
frame information, prepares it, trains a decoder on the measured voxels and an end-to-end model, and prints
for each: the ROC AUC of the saliency map for the planted voxels and the virtual-lesion ranking.

    python benchmarks/bench_saliency_validation.py [--out DIR] [--epochs 40] [--visual-share 0.3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cinevox.analysis.lesion import LesionConfig, lesion
from cinevox.analysis.saliency import SaliencyConfig, saliency
from cinevox.data.prepare import PrepareConfig, prepare
from cinevox.losses import LossConfig
from cinevox.simulate.config import preset
from cinevox.simulate.run import simulate
from cinevox.training import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--visual-share", type=float, default=0.3,
                    help="stimulus share of the shared signal outside the planted regions")
    ap.add_argument("--snr-top", type=float, default=0.3)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="cinevox-saliency-"))
    t0 = time.time()
    bids = out / "bids"
    if not (bids / "derivatives/simulation/truth.json").is_file():
        simulate(bids, preset(a.preset, uninformative_visual_share=a.visual_share), progress=False)
    sim = bids / "derivatives" / "simulation"
    prep = prepare(bids, out / "prepared", PrepareConfig(
        films_dir=str(bids / "stimuli"), atlas=str(sim / "atlas.nii.gz"), atlas_labels=str(sim / "atlas_labels.tsv"),
        frame_size=32, frames_per_tr=8, gap_trs=3, val_blocks=2, snr_top=a.snr_top), progress=False)
    truth = json.loads((sim / "truth.json").read_text())
    planted = set(truth["informative_labels"])
    rows = []
    for kind, lr, wd, inputs in (("decoder", 3e-3, 1e-2, "measured"), ("encdec", 1e-4, 0.0, "model")):
        run = out / f"run_{kind}"
        if not (run / "checkpoints" / "last.pt").is_file():
            train(prep, run, TrainConfig(model=kind, epochs=a.epochs if kind == "decoder" else 10, lr=lr,
                                         weight_decay=wd, batch_size=32 if kind == "decoder" else 16,
                                         tensorboard=False, loss=LossConfig(vgg_allow_random=True)), progress=False)
        s = saliency(run, SaliencyConfig(inputs=inputs))
        les = lesion(run, LesionConfig(level="label", n_null=30, inputs=inputs))
        ranks = [i + 1 for i, r in enumerate(les["region"]) if r in planted]
        rows.append((kind, inputs, s["auc_informative"], s["n_informative"], s["n_voxels"], ranks, len(les)))
    print(f"dataset: preset {a.preset}, planted regions {sorted(planted)}, {time.time() - t0:.0f} s in all, in {out}")
    print(f"{'model':<10}{'decoder input':<16}{'AUC':>6}{'planted/voxels':>16}  lesion ranks of planted regions")
    for kind, inputs, auc, n_inf, n_vox, ranks, n_reg in rows:
        print(f"{kind:<10}{inputs:<16}{auc:>6.2f}{f'{n_inf}/{n_vox}':>16}  {ranks} of {n_reg}")


if __name__ == "__main__":
    main()
