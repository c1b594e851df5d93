"""The paper's grid over eps in [0, 1] and epochs in [5, 30], as one command.

One training per eps runs to the largest epoch count (the paper's grid: every epoch from 5 to 30), so every
(eps, epochs) cell is a real model, scored after its epoch. Cells are compared on the validation loss with the
paper's weighting (0.5 L_E + 0.5 L_D), whatever eps the cell was trained with, so that they are comparable.
Each training keeps the weights of its best cell (``best.pt``), not of every cell: 26 epochs x 5 eps of a
107 M-parameter model would be 56 GB.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd

from cinevox.training.train import TrainConfig, selection_score, train
from cinevox.utils.io import write_json, write_text_atomic

logger = logging.getLogger(__name__)


def grid(prepared_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, eps_values: list[float],
         epoch_values: list[int], resume: bool = False, progress: bool = True) -> dict:
    """Train every eps, score every (eps, epochs) cell; writes ``grid.csv`` and ``best.json``."""
    if cfg.model != "encdec":
        raise ValueError("the eps grid applies to the end-to-end model (--model encdec)")
    if not eps_values or not epoch_values:
        raise ValueError("the grid needs at least one eps and one epoch count")
    if any(not 0 <= e <= 1 for e in eps_values):
        raise ValueError(f"eps values must lie in [0, 1], got {eps_values}")
    out = Path(out_dir)
    rows = []
    for eps in eps_values:
        run = out / f"eps_{eps:g}"
        c = replace(cfg, epochs=max(epoch_values), select_epochs=sorted(epoch_values), select_score="paper",
                    loss=replace(cfg.loss, eps=eps))
        train(prepared_dir, run, c, resume=resume and (run / "checkpoints" / "last.pt").is_file(), progress=progress)
        hist = pd.read_csv(run / "history.csv").set_index("epoch")
        for n in epoch_values:
            h = hist.loc[n]
            rows.append({"eps": eps, "epochs": n, "val_loss": h["val_loss"], "val_enc": h["val_enc"],
                         "val_dec": h["val_dec"], "val_score": selection_score(h.to_dict(), "paper"),
                         "run": str(run)})
    df = pd.DataFrame(rows)
    # the best cell of each eps is the one its training kept (ties: the earliest epoch, as train's best.pt)
    best = df.sort_values(["val_score", "eps", "epochs"], kind="stable").iloc[0].to_dict()
    write_text_atomic(out / "grid.csv", df.to_csv(index=False, float_format="%.6g"))
    # the chosen cell becomes a run of its own, ready for `cinevox evaluate`
    best_run = out / "best"
    (best_run / "checkpoints").mkdir(parents=True, exist_ok=True)
    src = Path(best["run"])
    shutil.copy2(src / "checkpoints" / "best.pt", best_run / "checkpoints" / "last.pt")
    for name in ("manifest.json", "history.csv"):
        shutil.copy2(src / name, best_run / name)
    best["best_run"] = str(best_run)
    write_json(out / "best.json", best)
    logger.info("grid: best eps %.2f at %d epochs (validation score %.4f)", best["eps"], best["epochs"],
                best["val_score"])
    return best
