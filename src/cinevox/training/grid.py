"""The paper's grid over eps in [0, 1] and epochs in [5, 30], as one command.

One training per eps runs to the largest epoch count (the paper's grid: every epoch from 5 to 30), so every
(eps, epochs) cell is a real model, scored after its epoch. Cells are compared on the validation loss with the
paper's weighting (0.5 L_E + 0.5 L_D), whatever eps the cell was trained with, so that they are comparable.
Each training keeps the weights of its best cell (``best.pt``), not of every cell: 26 epochs x 5 eps of a
107 M-parameter model would be 56 GB.

Where the trainings run: one after another on one device; with several visible GPUs, one training per GPU at a
time (``devices``); on a cluster, one eps per job of a Slurm array (``only`` = the array index) and a last
job that collects them (``collect``). The README shows the Slurm script.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pandas as pd

from cinevox.training.train import TrainConfig, selection_score, train
from cinevox.utils.io import atomic_path, write_json, write_text_atomic

logger = logging.getLogger(__name__)


def _cell_config(cfg: TrainConfig, eps: float, epoch_values: list[int], device: str | None = None) -> TrainConfig:
    return replace(cfg, epochs=max(epoch_values), select_epochs=sorted(epoch_values), select_score="paper",
                   device=device or cfg.device, loss=replace(cfg.loss, eps=eps))


def _train_cells(prepared_dir: str, out: str, cfg: TrainConfig, eps_list: list[float], epoch_values: list[int],
                 resume: bool, progress: bool, device: str | None, holdout_film: str | None = None) -> None:
    """Train some eps cells one after another (on one device: a worker of :func:`grid`)."""
    for eps in eps_list:
        run = Path(out) / f"eps_{eps:g}"
        train(prepared_dir, run, _cell_config(cfg, eps, epoch_values, device),
              resume=resume and (run / "checkpoints" / "last.pt").is_file(), progress=progress,
              holdout_film=holdout_film)


def visible_devices(device: str) -> list[str]:
    """The devices the grid may spread over: every visible GPU for ``auto``/``cuda``, else the one asked for."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    return [device]


def grid(prepared_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, eps_values: list[float],
         epoch_values: list[int], resume: bool = False, progress: bool = True, devices: list[str] | None = None,
         only: int | None = None, collect: bool = False, holdout_film: str | None = None) -> dict:
    """Train every eps, score every (eps, epochs) cell; writes ``grid.csv`` and ``best.json``.

    ``devices``: trainings run in parallel, one per device (default: every visible GPU, else one device).
    ``only``: train just the eps of this index (a Slurm array task) and return. ``collect``: train nothing, pick
    the best cell of trainings already made. ``holdout_film``: every cell is a leave-one-film-out fold's training
    (cells are chosen on the other films' validation TRs)."""
    if cfg.model != "encdec":
        raise ValueError("the eps grid applies to the end-to-end model (--model encdec)")
    if not eps_values or not epoch_values:
        raise ValueError("the grid needs at least one eps and one epoch count")
    if any(not 0 <= e <= 1 for e in eps_values):
        raise ValueError(f"eps values must lie in [0, 1], got {eps_values}")
    out = Path(out_dir)
    if only is not None:
        if not 0 <= only < len(eps_values):
            raise ValueError(f"cell index {only} is outside the {len(eps_values)} eps values {eps_values}")
        _train_cells(str(prepared_dir), str(out), cfg, [eps_values[only]], epoch_values, resume, progress, None,
                     holdout_film)
        return {"trained": eps_values[only]}
    if not collect:
        devices = devices or visible_devices(cfg.device)
        if len(devices) > 1 and len(eps_values) > 1:
            logger.info("grid: %d trainings over %d devices (%s)", len(eps_values), len(devices), ", ".join(devices))
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx) as ex:
                futs = [ex.submit(_train_cells, str(prepared_dir), str(out), cfg, eps_values[k :: len(devices)],
                                  epoch_values, resume, False, d, holdout_film) for k, d in enumerate(devices)]
                for f in futs:
                    f.result()
        else:
            _train_cells(str(prepared_dir), str(out), cfg, eps_values, epoch_values, resume, progress, None,
                         holdout_film)
    rows = []
    for eps in eps_values:
        run = out / f"eps_{eps:g}"
        if not (run / "history.csv").is_file():
            raise FileNotFoundError(f"grid cell eps {eps:g}: {run} has no training yet (run its array task first)")
        hist = pd.read_csv(run / "history.csv").set_index("epoch")
        missing = [n for n in epoch_values if n not in hist.index]
        if missing:
            raise ValueError(f"grid cell eps {eps:g}: {run} stops before epochs {missing}; resume it")
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
    for a, b in ((src / "checkpoints" / "best.pt", best_run / "checkpoints" / "last.pt"),
                 (src / "manifest.json", best_run / "manifest.json"), (src / "history.csv", best_run / "history.csv")):
        with atomic_path(b) as tmp:
            shutil.copy2(a, tmp)
    best["best_run"] = str(best_run)
    write_json(out / "best.json", best)
    logger.info("grid: best eps %.2f at %d epochs (validation score %.4f)", best["eps"], best["epochs"],
                best["val_score"])
    return best
