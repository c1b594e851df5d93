"""``cinevox lesion RUN_DIR``: virtual lesions, the experiment the paper names as future work.

The voxels of one region at a time are perturbed before decoding (set to zero, replaced by their mean over
the test samples, or scaled), and the drop in mean SSIM is compared with a null from random voxel sets of the
same size (p = (k + 1) / (n + 1), and a z-score against the null).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cinevox.analysis.regions import default_atlas, voxel_regions
from cinevox.analysis.saliency import decoder_inputs
from cinevox.metrics import ssim_frames
from cinevox.stats import perm_p_value
from cinevox.utils.io import write_json, write_manifest, write_text_atomic

logger = logging.getLogger(__name__)


@dataclass
class LesionConfig:
    regions: list[str] | None = None  # region names to lesion (default: every region with >= min_voxels)
    level: str = "group"  # "group" (the paper's regions) or "label" (full AAL3)
    mode: str = "zero"  # "zero" | "mean" | "scale"
    scale: float = 0.0
    n_null: int = 50
    min_voxels: int = 5
    inputs: str = "model"
    atlas: str | None = None
    atlas_labels: str | None = None
    aal_version: str = "3v2"
    checkpoint: str = "last"
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    trust_checkpoint: bool = False


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


@torch.no_grad()
def _mean_ssim(decoder, x: np.ndarray, frames: np.ndarray, batch: int) -> float:
    device = next(decoder.parameters()).device
    recon = np.concatenate([decoder(torch.as_tensor(x[i : i + batch], device=device)).float().cpu().numpy()
                            for i in range(0, len(x), batch)])
    return float(ssim_frames(recon, frames).mean())


def lesion(run_dir: str | Path, cfg: LesionConfig | None = None) -> pd.DataFrame:
    """Lesion each region; writes ``RUN_DIR/lesion/lesion.csv``, ``lesion.png``, ``summary.json``."""
    cfg = cfg or LesionConfig()
    if cfg.level not in ("group", "label"):
        raise ValueError(f"level must be 'group' or 'label', got {cfg.level!r}")
    if cfg.n_null < 1:
        raise ValueError(f"--n-null must be >= 1, got {cfg.n_null}")
    run_dir = Path(run_dir)
    out = run_dir / "lesion"
    dec, kind, data, _test, x, frames = decoder_inputs(run_dir, cfg.inputs, cfg.checkpoint, cfg.device,
                                                       cfg.batch_size, trust_checkpoint=cfg.trust_checkpoint)
    dec.eval()
    ijk = data.voxels_ijk()
    mask = data.mask_img()
    atlas, labels = default_atlas(data.manifest, cfg.atlas, cfg.atlas_labels, cfg.aal_version)
    regions = voxel_regions(ijk, mask.affine, mask.shape, atlas, labels)[cfg.level].to_numpy()
    names = cfg.regions or sorted(r for r in set(regions) if (regions == r).sum() >= cfg.min_voxels)
    unknown = sorted(set(names) - set(regions))
    if unknown:
        raise ValueError(f"regions {unknown} have no voxels in this run; available: {sorted(set(regions))}")
    base = _mean_ssim(dec, x, frames, cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for name in names:
        idx = np.flatnonzero(regions == name)
        drop = base - _mean_ssim(dec, perturb(x, idx, cfg.mode, cfg.scale), frames, cfg.batch_size)
        null = np.array([base - _mean_ssim(dec, perturb(x, rng.choice(x.shape[1], len(idx), replace=False),
                                                        cfg.mode, cfg.scale), frames, cfg.batch_size)
                         for _ in range(cfg.n_null)])
        sd = null.std(ddof=1) if len(null) > 1 else np.nan
        rows.append({"region": name, "n_voxels": len(idx), "ssim_drop": drop, "ssim_drop_per_voxel": drop / len(idx),
                     "null_mean": null.mean(), "null_sd": sd, "z": (drop - null.mean()) / sd if sd > 0 else np.nan,
                     "p_value": perm_p_value(drop, null)})
        logger.info("lesion %s (%d voxels): SSIM drop %.4f (null %.4f)", name, len(idx), drop, null.mean())
    df = pd.DataFrame(rows).sort_values("z", ascending=False).reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "lesion.csv", df.to_csv(index=False, float_format="%.6g"))
    summary = {"run": str(run_dir), "model": kind, "baseline_ssim": base, "mode": cfg.mode,
               "ranking": df["region"].tolist()}
    write_json(out / "summary.json", summary)
    write_manifest(out, "lesion", asdict(cfg), inputs={"run": str(run_dir)})
    try:
        from cinevox.utils.plotting import bars

        bars(df, "region", ["ssim_drop", "null_mean"], out / "lesion.png",
             f"virtual lesions ({cfg.mode}): SSIM drop vs random voxel sets of the same size", "SSIM drop",
             errors=None)
    except Exception as err:
        logger.warning("lesion figure failed: %s", err)
    return df
