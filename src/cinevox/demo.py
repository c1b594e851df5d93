"""``cinevox demo``: the whole pipeline on the simulator's ``demo`` dataset, offline, in minutes on a CPU.

simulate (demo preset) -> prepare -> train encdec and encoder, fit the ridge baseline -> evaluate -> saliency,
virtual lesions and concepts (encdec) -> compare -> report. Every step logs one line to ``OUT/demo.log`` as well. The
architecture is the paper's; clips are 8 frames of 32 x 32 instead of 32 of 112 x 112 to stay within a few CPU
minutes, and the perceptual loss falls back (logged) to a random VGG16 when the
ImageNet weights are not on the machine.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cinevox.analysis.concepts import ConceptConfig, concepts
from cinevox.analysis.lesion import LesionConfig, lesion
from cinevox.analysis.saliency import SaliencyConfig, saliency
from cinevox.configs import DemoConfig
from cinevox.data.prepare import PrepareConfig, prepare
from cinevox.evaluation.evaluate import EvalConfig, evaluate
from cinevox.losses import LossConfig
from cinevox.report.html import headline, report
from cinevox.simulate.config import preset
from cinevox.simulate.run import simulate
from cinevox.training import TrainConfig, train
from cinevox.training.ridge import RidgeConfig, baseline
from cinevox.utils.io import write_json

logger = logging.getLogger(__name__)


def demo(out: str | Path = "cinevox-demo", cfg: DemoConfig | None = None, progress: bool = True) -> dict:
    """Run everything into ``out``; returns a summary (also in ``out/demo_summary.json``)."""
    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "demo.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("cinevox")
    root.addHandler(handler)
    try:
        return _demo(out, cfg, progress)
    finally:
        root.removeHandler(handler)
        handler.close()


def _demo(out: Path, cfg: DemoConfig, progress: bool) -> dict:
    times: dict[str, float] = {}

    def step(name: str):
        times[name] = time.time()
        logger.info("demo: %s", name)

    step("simulate")
    bids = out / "bids"
    if not (bids / "derivatives" / "simulation" / "truth.json").is_file():
        simulate(bids, preset("demo", seed=cfg.seed), progress=progress)
    step("prepare")
    sim = bids / "derivatives" / "simulation"
    prepared = prepare(bids, out / "prepared", PrepareConfig(
        films_dir=str(bids / "stimuli"), atlas=str(sim / "atlas.nii.gz"), atlas_labels=str(sim / "atlas_labels.tsv"),
        frame_size=cfg.frame_size, frames_per_tr=cfg.frames_per_tr, gap_trs=3, val_blocks=2), progress=progress)
    loss = LossConfig(vgg_weights=cfg.vgg_weights, vgg_allow_random=cfg.vgg_weights is None)
    runs = {}
    for kind in ("encdec", "encoder"):
        step(f"train {kind}")
        run = out / "runs" / kind
        tcfg = TrainConfig(model=kind, epochs=cfg.epochs, seed=cfg.seed, device=cfg.device, loss=loss)
        resume = (run / "checkpoints" / "last.pt").is_file()
        train(prepared, run, tcfg, resume=resume, progress=progress)
        step(f"evaluate {kind}")
        runs[kind] = (run, evaluate(run, EvalConfig(n_perm=cfg.n_perm, seed=cfg.seed)))
    step("baseline ridge")
    ridge = out / "runs" / "ridge"
    if not (ridge / "model" / "ridge.npz").is_file():
        baseline(prepared, ridge, RidgeConfig(n_iter=cfg.ridge_iter, seed=cfg.seed), progress=progress)
    step("evaluate ridge")
    runs["ridge"] = (ridge, evaluate(ridge, EvalConfig(n_perm=cfg.n_perm, seed=cfg.seed)))
    ed = runs["encdec"][0]
    step("saliency")
    sal = saliency(ed, SaliencyConfig())
    step("lesion")
    les = lesion(ed, LesionConfig(level="label", n_null=cfg.n_null_lesion, seed=cfg.seed))
    step("concepts")
    con = concepts(ed, ConceptConfig(n_examples=cfg.concept_examples, n_random=cfg.concept_random, seed=cfg.seed))
    step("report")
    html = report([ed, runs["encoder"][0], ridge], out / "report", title="cinevox demo (simulated Emo-FilM)")
    times["end"] = time.time()
    names = list(times)
    durations = {names[i]: round(times[names[i + 1]] - times[names[i]], 1) for i in range(len(names) - 1)}
    summary = {
        "report": str(html), "seconds": durations, "total_seconds": round(times["end"] - times["simulate"], 1),
        "encdec": runs["encdec"][1], "encoder": runs["encoder"][1], "ridge": runs["ridge"][1], "saliency": sal,
        "lesion_ranking": les["region"].tolist(), "concepts": con.get("validation", {}),
        "headline": {k: headline(m) for k, (_, m) in runs.items()},
    }
    write_json(out / "demo_summary.json", summary)
    return summary
