"""``cinevox saliency RUN_DIR``: which voxels the decoder relies on (paper Fig. 5, Table II).

Saliency of voxel v = sum over test reconstructions of |d SSIM(decoder(x), frame) / d x_v|, with x what the
decoder reads in that run (the encoder's predictions for E-D, as the paper; optionally the measured voxels).
The SSIM compares per-frame min-max normalised frames (the authors' code; ``saliency_frames`` choice).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cinevox.analysis.regions import default_atlas, region_table, subsample, top_fraction, voxel_regions
from cinevox.configs import SaliencyConfig
from cinevox.data.dataset import PreparedData
from cinevox.data.nifti import save_voxel_map
from cinevox.evaluation.predict import predict
from cinevox.metrics import minmax_frames, ssim_per_image
from cinevox.outputs import space_label, write_sidecars
from cinevox.profiles import apply_profile
from cinevox.training.train import load_run_model, run_data
from cinevox.utils.io import write_json, write_manifest, write_text_atomic

logger = logging.getLogger(__name__)


def decoder_of(model, kind: str):
    if kind == "encoder":
        raise ValueError("this run has no decoder (model 'encoder'); saliency and lesions need 'decoder' or 'encdec'")
    return model.decoder if kind == "encdec" else model


def viewer_source(model, mcfg: dict, data: PreparedData, subject: str | None, source: str):
    """``(model, data)`` of one viewer of a ``--target subjects`` run: its read-out / input layer / pipeline
    (:func:`~cinevox.models.subjects.viewer_model`) and the dataset as it saw it (its own voxels, the test TRs it
    saw: :meth:`PreparedData.for_viewer`); ``subject`` None or "average": both as they are. A viewer of the data
    the model never trained on (``--holdout-subjects``): its own voxels and test TRs through the average viewer."""
    from cinevox.models.subjects import is_subject_model, viewer_model

    s = subject.removeprefix("sub-") if subject else subject
    if is_subject_model(model) and s not in (None, "average") and s not in (mcfg.get("subjects") or []) \
            and s in data.subjects:
        logger.info("%s: viewer %s was never trained on: its own voxels and test TRs through the average viewer",
                    source, s)
        return model, data.for_viewer(s)
    model = viewer_model(model, subject, mcfg.get("subjects"), source)
    if subject in (None, "average"):
        return model, data
    return model, data.for_viewer(subject)


def viewer_step(step: str, subject: str | None) -> str:
    """The folder of a per-viewer analysis: ``lesion`` -> ``lesion_sub-S07``."""
    if subject in (None, "average"):
        return step
    return f"{step}_sub-{subject.removeprefix('sub-')}"


def decoder_inputs(run_dir: Path, inputs: str, checkpoint: str, device, batch_size: int = 32,
                   trust_checkpoint: bool = False, subject: str | None = None):
    """``(decoder, kind, data, test indices, decoder inputs (n, V), target frames (n, 3, S, S))``; ``subject``: one
    viewer of a ``--target subjects`` run (:func:`viewer_source`)."""
    model, tcfg, mcfg, _ = load_run_model(run_dir, checkpoint, device, trust_checkpoint)
    model, data = viewer_source(model, mcfg, run_data(run_dir), subject, str(run_dir))  # a --cv films fold too
    dec = decoder_of(model, tcfg.model)
    test = data.indices("test")
    pred = predict(model, tcfg.model, data, test, min(batch_size, 8))  # the encoder's activations bound memory
    if inputs not in ("model", "measured"):
        raise ValueError(f"inputs must be 'model' or 'measured', got {inputs!r}")
    x = pred["voxels_pred"] if (tcfg.model == "encdec" and inputs == "model") else pred["voxels_true"]
    return dec, tcfg.model, data, test, x.astype(np.float32), pred["frames_true"]


def ssim_saliency(decoder: torch.nn.Module, x: np.ndarray, frames: np.ndarray, batch_size: int = 32,
                  normalize: bool = False) -> np.ndarray:
    """sum_i |d SSIM_i / d x_i|. x: (n, V), frames: (n, 3, S, S) -> (V,).

    ``normalize``: SSIM of the per-frame min-max normalised reconstruction and target (the authors' code).

    The decoder is in eval mode (BatchNorm with running statistics), so each SSIM depends only on its own
    input and one backward pass of the batch's summed SSIM gives every per-sample gradient.
    """
    decoder.eval()
    device = next(decoder.parameters()).device
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i : i + batch_size], device=device).requires_grad_(True)
        fb = torch.as_tensor(frames[i : i + batch_size], device=device)
        recon = decoder(xb)
        if normalize:
            recon, fb = minmax_frames(recon), minmax_frames(fb)
        ssim_per_image(recon, fb).sum().backward()
        total += xb.grad.abs().sum(0).double().cpu()
    return total.numpy()


def streamed_saliency(model, kind: str, data: PreparedData, indices: np.ndarray, inputs: str, batch_size: int = 32,
                      normalize: bool = False) -> np.ndarray:
    """:func:`ssim_saliency` over the samples ``indices``, ``batch_size`` clips at a time: the decoder's inputs
    (the encoder's predictions for E-D, else the measured voxels) and the target frames of one batch exist at
    once, never those of the whole split. -> (V,)."""
    if inputs not in ("model", "measured"):
        raise ValueError(f"inputs must be 'model' or 'measured', got {inputs!r}")
    dec = decoder_of(model, kind)
    total = np.zeros(data.n_voxels, np.float64)
    for i in range(0, len(indices), batch_size):
        pred = predict(model, kind, data, indices[i : i + batch_size], batch_size)
        x = pred["voxels_pred"] if (kind == "encdec" and inputs == "model") else pred["voxels_true"]
        total += ssim_saliency(dec, x.astype(np.float32), pred["frames_true"], batch_size, normalize)
    return total


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative) (ties count half)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n1, n0 = positive.sum(), (~positive).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def analysis_source(run_dir: Path, cfg, videos: list | None, out: str | Path | None, step: str):
    """``(model, kind, data, out folder, work folder or None)`` of an analysis: a run on its prepared test split,
    or a run / exported MODEL_DIR on the clips of ``videos`` (:class:`cinevox.inference.clips.VideoClips`)."""
    from cinevox.inference.bundle import is_model_dir, load_bundle, select_viewer

    subject = getattr(cfg, "subject", None)  # one viewer of a --target subjects model (None: the average viewer)
    step = viewer_step(step, subject)
    if not videos and not is_model_dir(run_dir):
        model, tcfg, mcfg, _ = load_run_model(run_dir, cfg.checkpoint, cfg.device, cfg.trust_checkpoint)
        model, data = viewer_source(model, mcfg, run_data(run_dir), subject, str(run_dir))  # a --cv films fold too
        return model, tcfg.model, data, Path(out) if out else run_dir / step, None
    if not videos:
        raise ValueError(f"{run_dir} is an exported model without test data: give the films to analyse it on "
                         "(--video FILM, repeatable)")
    if out is None and is_model_dir(run_dir):
        raise ValueError(f"--out DIR is needed: {step} does not write into the model folder {run_dir}")
    from cinevox.inference.clips import VideoClips

    b = select_viewer(load_bundle(run_dir, cfg.device, cfg.checkpoint, cfg.trust_checkpoint), subject)
    if b.kind == "ridge":
        raise ValueError(f"{run_dir}: a ridge model has no network for {step}")
    out = Path(out) if out else run_dir / step
    work = out / ".clips"
    data = VideoClips(b, videos, work, None, cfg.atlas, cfg.atlas_labels, cfg.aal_version)
    return b.model, b.kind, data, out, work


def analysis_regions(data, cfg):
    """Per-voxel AAL regions: explicit atlas files, else the model's own table (a MODEL_DIR's), else the
    dataset's default atlas (the simulator's, else nilearn's AAL)."""
    if not cfg.atlas and getattr(data, "regions", None) is not None:
        return data.regions.reset_index(drop=True)
    mask = data.mask_img()
    atlas, labels = default_atlas(data.manifest, cfg.atlas, cfg.atlas_labels, cfg.aal_version)
    return voxel_regions(data.voxels_ijk(), mask.affine, mask.shape, atlas, labels)


def saliency(run_dir: str | Path, cfg: SaliencyConfig | None = None, videos: list | None = None,
             out: str | Path | None = None) -> dict:
    """Compute the saliency map and region tables into ``RUN_DIR/saliency`` (or ``out``); returns the summary.

    With ``videos`` (required for an exported MODEL_DIR), the test clips are those of the videos, and the
    decoder is fed its encoder's predictions (E-D models)."""
    cfg = apply_profile(cfg or SaliencyConfig(), "saliency")
    if not 0 < cfg.top <= 1:
        raise ValueError(f"--top must lie in (0, 1], got {cfg.top}")
    run_dir = Path(run_dir)
    if cfg.max_clips is not None and cfg.max_clips < 1:
        raise ValueError(f"--max-clips must be >= 1, got {cfg.max_clips}")
    model, kind, data, out, work = analysis_source(run_dir, cfg, videos, out, "saliency")
    decoder_of(model, kind)  # refuses an encoder-only run before any work
    if not isinstance(data, PreparedData) and (kind == "decoder" or cfg.inputs == "measured"):
        raise ValueError(f"{run_dir}: saliency on videos feeds the decoder its encoder's predictions (E-D); a "
                         f"{'D model' if kind == 'decoder' else '--inputs measured run'} needs measured voxels: "
                         "analyse the run on its prepared test split instead")
    test = subsample(data.indices("test"), cfg.max_clips)
    sal = streamed_saliency(model, kind, data, test, cfg.inputs, cfg.batch_size,
                            normalize=cfg.saliency_frames == "minmax")
    salient = top_fraction(sal, cfg.top)
    n_top = int(salient.sum())
    ijk = data.voxels_ijk()
    mask = data.mask_img()
    regions = analysis_regions(data, cfg)
    full = region_table(regions, salient, "label")
    grouped = region_table(regions, salient, "group")
    per_voxel = pd.DataFrame({"voxel": np.arange(len(sal)), "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2],
                              "saliency": sal, "salient": salient, "region": regions["label"],
                              "group": regions["group"]})
    summary = {"run": str(run_dir), "model": kind, "inputs": cfg.inputs, "n_voxels": len(sal), "n_salient": n_top,
               "n_reconstructions": len(test), "atlas": cfg.atlas or "default",
               "videos": [str(v) for v in videos] if videos else None,
               "n_unlabelled": int((regions["index"] == 0).sum()), "saliency_frames": cfg.saliency_frames,
               "profile": cfg.profile}
    informative = data.simulation_truth("informative.nii.gz")
    informative = None if informative is None else informative > 0
    if informative is not None:
        per_voxel["informative"] = informative
        summary["auc_informative"] = auc(sal, informative)
        summary["n_informative"] = int(informative.sum())
    top_groups = grouped.sort_values("B_over_A_pct", ascending=False)
    summary["text"] = (f"Top {100 * cfg.top:.0f} % of {len(sal)} voxels by |dSSIM/dvoxel| summed over {len(test)} test "
                       f"reconstructions (decoder fed {'its encoder' if kind == 'encdec' and cfg.inputs == 'model' else 'measured voxels'}). "  # noqa: E501
                       "Regions richest in salient voxels (B/A): "
                       + ", ".join(f"{r.region} {r.B_over_A_pct:.0f} %" for r in top_groups.head(3).itertuples()
                                   if r.A > 0)
                       + (f". Planted informative voxels (simulation): ROC AUC {summary['auc_informative']:.2f}."
                          if "auc_informative" in summary else "."))
    out.mkdir(parents=True, exist_ok=True)
    save_voxel_map(out / "saliency.nii.gz", sal, ijk, mask)
    save_voxel_map(out / "salient_top.nii.gz", salient.astype(np.float32), ijk, mask)
    write_text_atomic(out / "regions.csv", full.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(out / "regions_grouped.csv", grouped.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(out / "saliency.csv", per_voxel.to_csv(index=False, float_format="%.6g"))
    write_json(out / "summary.json", summary)
    write_sidecars(out, "RUN_DIR/saliency", sources=[str(run_dir.resolve())],
                   space=space_label(getattr(data, "manifest", None), int(mask.header["sform_code"])))
    write_manifest(out, "saliency", asdict(cfg), inputs={"run": str(run_dir),
                                                        "videos": [str(v) for v in videos] if videos else None})
    _figures(out, mask, sal, salient, ijk)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(summary["text"])
    return summary


def _figures(out: Path, mask: nib.Nifti1Image, sal: np.ndarray, salient: np.ndarray, ijk: np.ndarray) -> None:
    from cinevox.utils.plotting import brain_map as fig_brain_map

    try:
        vol = np.zeros(mask.shape[:3], np.float32)
        vol[tuple(ijk.T)] = sal / max(sal.max(), 1e-12)
        fig_brain_map(nib.Nifti1Image(vol, mask.affine), out / "fig5_saliency.png", "saliency (normalised)",
                      cmap="hot", vmax=1.0)
        vol[:] = 0
        vol[tuple(ijk.T)] = np.where(salient, 1.0, 0.3)
        fig_brain_map(nib.Nifti1Image(vol, mask.affine), out / "fig5_salient_top.png",
                      "mask (dim) and top salient voxels (bright)", cmap="viridis", vmax=1.0)
    except Exception as err:  # a figure must not lose the tables
        logger.warning("saliency figures failed: %s", err)
