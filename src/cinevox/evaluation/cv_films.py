"""Leave-one-film-out cross-validation (``cinevox train|grid|baseline ... --cv films``).

Each film is held out in turn. A fold trains on the other films exactly as a run on the prepared split would
(their prepared train TRs; model selection, early stopping and the ridge's own cross-validation on their
prepared validation TRs) and is scored on every TR of the held-out film: its prepared train, validation, gap and
test TRs alike. The other films' prepared test TRs are left unused, so that a fold sees no more of a training film
than the prepared split does. Fitted statistics (the ridge's feature z-scoring and its cross-validation) come from
the fold's training TRs only. What the fold shares with the held-out film is fixed in ``cinevox prepare``: each
run's own z-scoring (within the run) and the voxel set (ranked by SNR over every film).

``OUT/folds/<film>/`` is each fold's own run (``cinevox evaluate``, ``report`` and ``compare`` accept it; a grid's
fold is a grid folder whose chosen cell is ``best/``), with ``fold.json`` written last: a fold that has one is
never recomputed, and a killed cross-validation resumes from its first unfinished fold (inside it, from the last
epoch's checkpoint). ``OUT/cv_films.csv`` holds one row per held-out film and their mean (written atomically), and
``OUT/manifest.json`` states the design.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cinevox.data.dataset import CV_UNUSED, PreparedData, film_fold_split
from cinevox.evaluation.evaluate import EvalConfig, evaluate
from cinevox.training.grid import grid
from cinevox.training.ridge import MODEL_FILE, RidgeConfig, baseline
from cinevox.training.train import RUNTIME_FIELDS, TrainConfig, train
from cinevox.utils.folders import check_output_folder, exclusive_folder
from cinevox.utils.io import config_hash, read_json, write_json, write_manifest, write_text_atomic

logger = logging.getLogger(__name__)

CV_FILES = ("manifest.json", "cv_films.csv", "folds")
FOLD_DONE = "fold.json"
DESIGN = {
    "folds": "each film held out in turn",
    "train": "the prepared train TRs of the other films",
    "validation": "the prepared validation TRs of the other films (checkpoint and grid-cell choice; the ridge "
                  "cross-validates on the other films' train + validation TRs, grouped by film)",
    "test": "every TR of the held-out film (its prepared train, validation, gap and test TRs)",
    "unused": f"the prepared test and gap TRs of the other films (split label {CV_UNUSED!r})",
    "fitted_on_training_TRs_only": "model weights, the ridge's feature z-scoring, kernel weights and alphas",
    "shared_with_the_held_out_film": "prepare's voxel selection (SNR over every film) and each run's own "
                                     "z-scoring within the run",
    "noise_ceiling": "not computed in folds (per-subject data are kept for the prepared test TRs only)",
    "mean_row": "every column averaged over the folds (each film weighs the same)",
}


def check_folds(data: PreparedData, how: str) -> list[str]:
    """The films to hold out, after checking that every fold can train. Raises ValueError naming the problem."""
    films = sorted(data.samples["film"].astype(str).unique())
    if len(films) < 2:
        raise ValueError(f"--cv films: {data.root} holds {len(films)} film ({', '.join(films)}); leave-one-film-out "
                         "needs at least 2 films (prepare more films, or train without --cv)")
    for f in films:
        labels = film_fold_split(data.samples, f)
        n_train, n_val = int((labels == "train").sum()), int((labels == "val").sum())
        need_val = how != "baseline"
        if n_train == 0 or (need_val and n_val == 0):
            others = ", ".join(g for g in films if g != f)
            what = "training" if n_train == 0 else "validation"
            raise ValueError(f"--cv films: the fold that holds out {f} has no {what} TRs (the other films, {others}, "
                             f"have no prepared {what} TRs: a film held out whole in prepare only ever tests); "
                             "prepare with --heldout-film none")
    return films


def _fold_run(fold: Path, how: str) -> Path:
    return fold / "best" if how == "grid" else fold


def _config_record(how: str, cfg, eval_cfg: EvalConfig, grid_eps, grid_epochs) -> dict:
    c = asdict(cfg)
    for k in RUNTIME_FIELDS + ("backend",):
        c.pop(k, None)
    e = asdict(eval_cfg)
    e.pop("device", None)
    return {"how": how, "model": c, "evaluate": e, "eps_grid": grid_eps, "epoch_grid": grid_epochs}


def cv_films(prepared_dir: str | Path, out_dir: str | Path, how: str, cfg: TrainConfig | RidgeConfig,
             eval_cfg: EvalConfig | None = None, progress: bool = True, grid_eps: list[float] | None = None,
             grid_epochs: list[int] | None = None, devices: list[str] | None = None,
             trust_checkpoint: bool = False) -> pd.DataFrame:
    """Leave-one-film-out cross-validation of ``how`` (``train``, ``grid`` or ``baseline``) with ``cfg``.

    Returns the table written to ``OUT/cv_films.csv``: one row per held-out film, then the row ``mean``."""
    from cinevox.training.distributed import dist_info_from_env

    if how not in ("train", "grid", "baseline"):
        raise ValueError(f"cross-validation of {how!r}: expected train, grid or baseline")
    if dist_info_from_env().enabled:
        raise ValueError("--cv films runs its folds one after another in one process: launch it without torchrun")
    if how == "grid":
        if not grid_eps or not grid_epochs:
            raise ValueError("--cv films with grid needs the eps and epoch grids")
        if getattr(cfg, "model", None) != "encdec":
            raise ValueError("the eps grid applies to the end-to-end model (--model encdec)")
        if any(not 0 <= e <= 1 for e in grid_eps):
            raise ValueError(f"eps values must lie in [0, 1], got {grid_eps}")
    eval_cfg = eval_cfg or EvalConfig()
    cfg.validate()
    out = Path(out_dir)
    data = PreparedData(prepared_dir)
    films = check_folds(data, how)
    record = _config_record(how, cfg, eval_cfg, grid_eps, grid_epochs)
    check_output_folder(out, CV_FILES, "cross-validation")
    with exclusive_folder(out, "cv"):
        inputs = {"prepared": str(Path(prepared_dir).resolve()), "prepared_manifest": config_hash(data.manifest)}
        man_path = out / "manifest.json"
        started = (out / "folds").is_dir() and any((out / "folds").iterdir())
        if man_path.is_file() and started:  # a cross-validation that trained nothing yet may change its options
            old = read_json(man_path)
            same = (old.get("step") == "cv_films" and config_hash(old.get("config")) == config_hash(record)
                    and old.get("inputs", {}).get("prepared_manifest") == inputs["prepared_manifest"])
            if not same:
                raise ValueError(f"{out} holds a cross-validation made with other options or data; rerun it with "
                                 "the same command to resume it, or choose another --out")
            logger.info("resuming the cross-validation in %s", out)
        write_manifest(out, "cv_films", record, inputs=inputs, design=DESIGN, films=films, status="running")
        rows, t_all = [], time.time()
        for k, f in enumerate(films, 1):
            logger.info("--cv films: fold %d/%d, holding out %s", k, len(films), f)
            rows.append(_fold(prepared_dir, out / "folds" / f, f, how, cfg, eval_cfg, progress, grid_eps,
                              grid_epochs, devices, trust_checkpoint))
        table = summary_table(rows)
        write_text_atomic(out / "cv_films.csv", table.to_csv(index=False, float_format="%.6g"))
        mean = table.iloc[-1].to_dict()
        write_manifest(out, "cv_films", record, inputs=inputs, design=DESIGN, films=films, status="done",
                       mean={k: v for k, v in mean.items() if isinstance(v, (int, float)) and np.isfinite(v)},
                       seconds_this_call=round(time.time() - t_all, 2))
    return table


def _fold(prepared_dir, fold: Path, film: str, how: str, cfg, eval_cfg: EvalConfig, progress: bool, grid_eps,
          grid_epochs, devices, trust_checkpoint: bool) -> dict:
    """Train (or reuse) and evaluate one fold; returns its row."""
    run = _fold_run(fold, how)
    done = fold / FOLD_DONE
    if done.is_file():
        logger.info("fold %s: finished before, reused (%s)", film, done)
        return fold_row(film, run, read_json(done))
    t0 = time.time()
    if how == "baseline":
        if not (run / MODEL_FILE).is_file():
            baseline(prepared_dir, run, cfg, progress=progress, holdout_film=film)
    elif how == "grid":
        grid(prepared_dir, fold, cfg, grid_eps, grid_epochs, resume=True, progress=progress, devices=devices,
             holdout_film=film)
    else:
        train(prepared_dir, run, cfg, resume=(run / "checkpoints" / "last.pt").is_file(), progress=progress,
              trust_checkpoint=trust_checkpoint, holdout_film=film)
    t1 = time.time()
    ecfg = replace(eval_cfg, device=eval_cfg.device or getattr(cfg, "device", None),
                   trust_checkpoint=eval_cfg.trust_checkpoint or trust_checkpoint)
    if ecfg.device == "auto":
        ecfg = replace(ecfg, device=None)
    evaluate(run, ecfg)
    info = {"holdout_film": film, "run": str(run), "seconds_fit": round(t1 - t0, 2),
            "seconds_evaluate": round(time.time() - t1, 2)}
    write_json(done, info)
    return fold_row(film, run, info)


def fold_row(film: str, run: Path, info: dict) -> dict:
    """One row of ``cv_films.csv`` from a fold's evaluation."""
    m = read_json(run / "eval" / "metrics.json")
    fold = read_json(run / "manifest.json").get("cv_fold", {})
    row = {"film": film, "model": m["model"], "n_trs": m["n_test_samples"], "n_train": fold.get("n_train"),
           "n_val": fold.get("n_val")}
    enc = m.get("encoder")
    if enc:
        vox = pd.read_csv(run / "eval" / "voxels.csv", usecols=["p_circular", "q_circular"])
        row.update({"r_mean": enc["r_mean"], "r_median": enc["r_median"], "r_null_shuffle": enc["null_r_mean"],
                    "share_p05_circular": float((vox["p_circular"] < 0.05).mean()),
                    "share_q05_circular": float((vox["q_circular"] < 0.05).mean()),
                    "n_voxels": enc["n_voxels"]})
    dec = m.get("decoder")
    if dec:
        row.update({"ssim_mean": dec["ssim_mean"], "ssim_median": dec["ssim_median"],
                    "ssim_null_shuffle": dec["null_ssim_mean"], "frame_mse_mean": dec["mse_mean"]})
    row.update({"seconds_fit": info.get("seconds_fit"), "seconds_evaluate": info.get("seconds_evaluate"),
                "run": str(run)})
    return row


def summary_table(rows: list[dict]) -> pd.DataFrame:
    """The per-film rows and their mean (every numeric column averaged over the folds)."""
    df = pd.DataFrame(rows)
    mean = {c: (df[c].astype(float).mean() if c not in ("film", "model", "run") else "") for c in df.columns}
    mean["film"], mean["model"] = "mean", df["model"].iloc[0]
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)
