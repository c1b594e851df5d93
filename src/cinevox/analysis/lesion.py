"""``cinevox lesion RUN_DIR``: virtual lesions, the experiment the paper names as future work.

The voxels of one region at a time are perturbed before decoding (set to zero, replaced by their mean over
the test samples, or scaled), and the drop of three per-frame reconstruction scores is measured:

- ``ssim``: the paper's SSIM. A decoder pulled toward its mean image by a lesion can *gain* SSIM (the mean image
  is smooth and of average luminance), so an SSIM drop can point the wrong way;
- ``corr``: the Pearson correlation of each reconstruction with its frame over pixels and channels (a mean image
  correlates with no frame in particular);
- ``ident``: pairwise identification: for each test frame, the fraction of the other test frames that its
  reconstruction correlates with less than with its own (on 16 x 16 pooled frames; chance 0.5).

For each score and region: the mean drop, a 95 % interval from a block bootstrap of the test TRs within films
(10-TR blocks; studentized by the drop's autocorrelation-aware standard error,
:func:`cinevox.stats.block_bootstrap_t_interval`: on AR(1) nulls of 11-60-TR films the percentile interval
covered 0.71-0.84 for a nominal 0.95, this one 0.91-0.96), and its position in the null of random voxel sets of
the same size (z, percentile, p = (k + 1) / (n + 1)). Regions are ranked by the z of ``cfg.score``. On
simulations, each score's drops are checked against the simulator's truth: the ROC AUC of planted (informative)
regions against the others.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cinevox.analysis.regions import default_atlas, voxel_regions
from cinevox.analysis.saliency import decoder_inputs, viewer_step
from cinevox.configs import LesionConfig
from cinevox.metrics import ssim_frames
from cinevox.stats import block_bootstrap_indices, block_bootstrap_t_interval, perm_p_value
from cinevox.utils.io import write_json, write_manifest, write_text_atomic

logger = logging.getLogger(__name__)


def perturb(x: np.ndarray, idx: np.ndarray, mode: str, scale: float = 0.0) -> np.ndarray:
    """Copy of x (n, V) with the columns ``idx`` lesioned."""
    y = x.copy()
    if mode == "zero":
        y[:, idx] = 0.0
    elif mode == "mean":
        y[:, idx] = x[:, idx].mean(0, keepdims=True)
    elif mode == "scale":
        y[:, idx] *= scale
    else:
        raise ValueError(f"lesion mode must be 'zero', 'mean' or 'scale', got {mode!r}")
    return y


SCORES = ("ident", "corr", "ssim")
#: lesion.csv's unprefixed columns: copies of the ranking score's (``{score}_null_mean``...), ``--score``
UNPREFIXED = ("null_mean", "null_sd", "z", "p_value")


def frame_correlations(recon: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Pearson r of each reconstruction with its frame over pixels and channels: (n, 3, S, S) x2 -> (n,)."""
    a = recon.reshape(len(recon), -1).astype(np.float64)
    b = frames.reshape(len(frames), -1).astype(np.float64)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def _pooled(x: np.ndarray, size: int = 16) -> np.ndarray:
    t = torch.as_tensor(x, dtype=torch.float32)
    if t.shape[-1] > size:
        t = torch.nn.functional.adaptive_avg_pool2d(t, size)
    v = t.reshape(len(t), -1).double()
    v = v - v.mean(1, keepdim=True)
    return (v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def identification(recon: np.ndarray, frames_pooled: np.ndarray) -> np.ndarray:
    """Per frame i: the fraction of other frames j with corr(recon_i, frame_i) > corr(recon_i, frame_j) (ties
    half), on pooled frames (:func:`_pooled` of the true frames). (n,) in [0, 1]; chance 0.5."""
    c = _pooled(recon) @ frames_pooled.T  # (n, n): recon i vs frame j
    own = np.diag(c)[:, None]
    n = len(c)
    wins = (own > c).sum(1) + 0.5 * ((own == c).sum(1) - 1)
    return wins / max(n - 1, 1)


@torch.no_grad()
def frame_scores(decoder, x: np.ndarray, frames: np.ndarray, frames_pooled: np.ndarray, batch: int) -> dict:
    """Per-frame ``ssim``, ``corr`` and ``ident`` of the decoder's reconstructions of x (n, V)."""
    device = next(decoder.parameters()).device
    recon = np.concatenate([decoder(torch.as_tensor(x[i : i + batch], device=device)).float().cpu().numpy()
                            for i in range(0, len(x), batch)])
    return {"ssim": ssim_frames(recon, frames), "corr": frame_correlations(recon, frames),
            "ident": identification(recon, frames_pooled)}


def lesion(run_dir: str | Path, cfg: LesionConfig | None = None) -> pd.DataFrame:
    """Lesion each region; writes ``RUN_DIR/lesion/lesion.csv``, ``lesion.png``, ``summary.json`` (one viewer of a
    ``--target subjects`` run, ``cfg.subject``: ``RUN_DIR/lesion_sub-<S>``, its own voxels and input layer)."""
    cfg = cfg or LesionConfig()
    if cfg.level not in ("group", "label"):
        raise ValueError(f"level must be 'group' or 'label', got {cfg.level!r}")
    if cfg.n_null < 1:
        raise ValueError(f"--n-null must be >= 1, got {cfg.n_null}")
    if cfg.score not in SCORES:
        raise ValueError(f"--score must be one of {', '.join(SCORES)}, got {cfg.score!r}")
    run_dir = Path(run_dir)
    out = run_dir / viewer_step("lesion", cfg.subject)
    dec, kind, data, test, x, frames = decoder_inputs(run_dir, cfg.inputs, cfg.checkpoint, cfg.device,
                                                      cfg.batch_size, trust_checkpoint=cfg.trust_checkpoint,
                                                      subject=cfg.subject)
    dec.eval()
    ijk = data.voxels_ijk()
    mask = data.mask_img()
    atlas, labels = default_atlas(data.manifest, cfg.atlas, cfg.atlas_labels, cfg.aal_version)
    regions = voxel_regions(ijk, mask.affine, mask.shape, atlas, labels)[cfg.level].to_numpy()
    names = cfg.regions or sorted(r for r in set(regions) if (regions == r).sum() >= cfg.min_voxels)
    unknown = sorted(set(names) - set(regions))
    if unknown:
        raise ValueError(f"regions {unknown} have no voxels in this run; available: {sorted(set(regions))}")
    films = data.samples["film"].to_numpy()[test]
    pooled = _pooled(frames)
    base = frame_scores(dec, x, frames, pooled, cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    boot = block_bootstrap_indices(films, cfg.n_boot, cfg.block_trs, rng)
    rows = []
    for name in names:
        idx = np.flatnonzero(regions == name)
        les = frame_scores(dec, perturb(x, idx, cfg.mode, cfg.scale), frames, pooled, cfg.batch_size)
        nulls = [frame_scores(dec, perturb(x, rng.choice(x.shape[1], len(idx), replace=False), cfg.mode, cfg.scale),
                              frames, pooled, cfg.batch_size) for _ in range(cfg.n_null)]
        row = {"region": name, "n_voxels": len(idx)}
        for sc in SCORES:
            per_frame = base[sc] - les[sc]  # (n,) drop per test frame
            drop = float(per_frame.mean())
            null = np.array([base[sc].mean() - n[sc].mean() for n in nulls])
            sd = null.std(ddof=1) if len(null) > 1 else np.nan
            lo, hi = block_bootstrap_t_interval(per_frame, films, boot, cfg.block_trs)
            row.update({f"{sc}_drop": drop, f"{sc}_drop_ci_low": lo, f"{sc}_drop_ci_high": hi,
                        f"{sc}_null_mean": null.mean(), f"{sc}_null_sd": sd,
                        f"{sc}_z": (drop - null.mean()) / sd if sd > 0 else np.nan,
                        f"{sc}_null_percentile": float((null < drop).mean() * 100),
                        f"{sc}_p_value": perm_p_value(drop, null)})
        # the unprefixed columns (kept from earlier versions) are all the ranking score's (--score), never a mix
        row["ssim_drop_per_voxel"] = row["ssim_drop"] / len(idx)
        row.update({c: row[f"{cfg.score}_{c}"] for c in UNPREFIXED})
        rows.append(row)
        logger.info("lesion %s (%d voxels): drops ident %.4f [%.4f, %.4f], corr %.4f, SSIM %.4f", name, len(idx),
                    row["ident_drop"], row["ident_drop_ci_low"], row["ident_drop_ci_high"], row["corr_drop"],
                    row["ssim_drop"])
    df = pd.DataFrame(rows).sort_values("z", ascending=False).reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    out.mkdir(parents=True, exist_ok=True)
    summary = {"run": str(run_dir), "model": kind, "inputs": cfg.inputs, "mode": cfg.mode, "score": cfg.score,
               "baseline": {sc: float(base[sc].mean()) for sc in SCORES}, "baseline_ssim": float(base["ssim"].mean()),
               "ranking": df["region"].tolist()}
    truth = _planted(data, regions, df["region"].tolist())
    if truth is not None:  # simulations: do the drops single out the planted regions?
        df["planted"] = truth
        if truth.any() and (~truth).any():
            from cinevox.analysis.saliency import auc

            summary["auc_planted"] = {sc: auc(df[f"{sc}_drop"].to_numpy(), truth) for sc in SCORES}
            logger.info("lesion drops vs the planted regions, ROC AUC: %s",
                        ", ".join(f"{k} {v:.2f}" for k, v in summary["auc_planted"].items()))
    write_text_atomic(out / "lesion.csv", df.to_csv(index=False, float_format="%.6g"))
    write_json(out / "summary.json", summary)
    write_manifest(out, "lesion", asdict(cfg), inputs={"run": str(run_dir)})
    try:
        from cinevox.utils.plotting import bars

        bars(df, "region", [f"{cfg.score}_drop", f"{cfg.score}_null_mean"], out / "lesion.png",
             f"virtual lesions ({cfg.mode}): {cfg.score} drop (95 % bootstrap interval) vs random voxel sets",
             f"{cfg.score} drop", errors=None)
    except Exception as err:
        logger.warning("lesion figure failed: %s", err)
    return df


def _planted(data, regions: np.ndarray, names: list[str]) -> np.ndarray | None:
    """Whether each lesioned region is mostly planted (informative) voxels, on simulations; else None."""
    inf = data.simulation_truth("informative.nii.gz")
    if inf is None:
        return None
    return np.array([float(np.mean(inf[regions == n] > 0)) > 0.5 for n in names])
