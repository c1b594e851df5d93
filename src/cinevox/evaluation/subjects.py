"""Per-viewer scores of any run (``evaluate``, issue 26): r against each viewer's own test series, each viewer's
inter-subject ceiling, per-viewer maps, SSIM per viewer for decoders, and, for ``--target subjects`` models,
held-out viewers scored through the average viewer and through a head fitted on their training TRs only.

Which prediction scores viewer ``S``: a ``--target subjects`` model's read-out of ``S`` when ``S`` was trained
on, else its average-viewer head; every other run (the mean model, ``subject:S07`` runs, ridge baselines) its one
prediction. r follows the paper's convention (per-film z-scored test series, the TRs the viewer saw).

SSIM per viewer: a decoder (and the decoder of an encoder-decoder trained on the mean or on one viewer) reads the
viewer's own measured test voxels (a ``--target subjects`` decoder through the viewer's input layer when trained
on it, else the average one); a ``--target subjects`` encoder-decoder decodes each clip through the viewer's
pipeline (its read-out, then its input layer: ``ssim_mean``) and the viewer's measured voxels through its input
layer (``ssim_mean_measured``). Fitted heads of held-out
viewers: the encoder's, a ridge read-out of the trunk's low-rank features (the form of a trained viewer's); the
decoder's, a ridge alignment of the viewer's voxels to the trained viewers' mean on the training TRs, decoded by
the average input layer.

Ceiling (``ceiling_loo``): the leave-one-out inter-subject correlation, per voxel ``corr(y_S, mean of the other
viewers)`` over the test TRs ``S`` saw, same convention. It measures how much of ``S``'s series is shared with the
group, the part any model of the film shared by everyone can reach; a viewer-specific model can exceed it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cinevox.data.dataset import ClipDataset, PreparedData
from cinevox.data.nifti import save_voxel_map
from cinevox.metrics import pearson_columns, scoring_groups, ssim_frames, zscore_by_group
from cinevox.models.subjects import SubjectDecoder, SubjectEncoderDecoder, ViewerDecoder, is_subject_model
from cinevox.utils.io import read_json, write_text_atomic

logger = logging.getLogger(__name__)

CEILING_METHOD = ("leave-one-out inter-subject correlation: corr(viewer, mean of the other viewers) per voxel over "
                  "the test TRs the viewer saw, per-film z-scored")


def run_target(run_dir: Path) -> dict:
    """``{"mode", "subjects", "heldout"}`` of a run (runs before issue 26: the mean of every viewer)."""
    man = read_json(Path(run_dir) / "manifest.json")
    return man.get("target") or {"mode": "mean", "subjects": None, "heldout": []}


@torch.no_grad()
def subject_pass(encoder, data: PreparedData, indices: np.ndarray, batch_size: int = 32, decoder=None) -> dict:
    """One trunk pass of a :class:`~cinevox.models.subjects.SubjectEncoder` over ``indices``, float32, eval mode:
    ``avg`` (n, V) the average head, ``per`` (n, N, V) every viewer's read-out, ``z`` (n, rank) the read-out's
    low-rank input proj(h); with a ``decoder`` (a :class:`~cinevox.models.subjects.SubjectDecoder`, an encoder-
    decoder's), the per-frame SSIM of every viewer's pipeline ``ssim_per`` (n, N) and of the average one
    ``ssim_avg`` (n,), decoding one viewer at a time (bounded memory)."""
    device = next(encoder.parameters()).device
    loader = torch.utils.data.DataLoader(ClipDataset(data, indices=indices), batch_size=batch_size, shuffle=False)
    out: dict[str, list] = {"avg": [], "per": [], "z": [], "ssim_per": [], "ssim_avg": []}
    for clip, _v, frame in loader:
        h = encoder.trunk(clip.to(device))
        a, p = encoder.readout(h)
        out["avg"].append(a.float().cpu().numpy())
        out["per"].append(p.float().cpu().numpy())
        out["z"].append(encoder.proj(h).float().cpu().numpy())
        if decoder is not None:
            b, n = p.shape[:2]
            s = np.empty((b, n + 1))
            for j in range(-1, n):
                v = a if j < 0 else p[:, j]
                f = decoder(v, torch.full((b,), j, dtype=torch.long, device=v.device))
                s[:, j + 1] = ssim_frames(f.float().cpu(), frame)
            out["ssim_avg"].append(s[:, 0])
            out["ssim_per"].append(s[:, 1:])
    return {k: np.concatenate(v) for k, v in out.items() if v}


def subject_outputs(model, data: PreparedData, indices: np.ndarray, batch_size: int = 32):
    """``(average (n, V), every viewer's read-out (n, N, V), the read-out's low-rank input proj(h) (n, rank))`` of
    a :class:`~cinevox.models.subjects.SubjectEncoder` over ``indices`` (:func:`subject_pass`)."""
    o = subject_pass(model, data, indices, batch_size)
    return o["avg"], o["per"], o["z"]


def fitted_head(model, data: PreparedData, j: int, batch_size: int = 32, alphas=(0.1, 1.0, 10.0, 100.0, 1e3, 1e4)):
    """A read-out for a viewer the model never trained on, fitted on that viewer's *training* TRs only: ridge
    (sklearn RidgeCV) from proj(h) to the viewer's series minus the average head, the form of a trained viewer's
    read-out. Returns ``predict(avg (n, V), z (n, rank)) -> (n, V)`` and the number of TRs fitted on."""
    from sklearn.linear_model import RidgeCV

    every = data.subject_voxels()
    train = data.indices("train")
    y = np.asarray(every[j, train], np.float64)
    ok = ~np.isnan(y).any(1)
    train, y = train[ok], y[ok]
    avg, _, z = subject_outputs(model, data, train, batch_size)
    ridge = RidgeCV(alphas=alphas).fit(z, y - avg)
    return (lambda a, zz: a + ridge.predict(zz).astype(np.float32)), int(len(train))


def fitted_alignment(data: PreparedData, j: int, trained: list[int], alphas=(1.0, 10.0, 100.0, 1e3, 1e4, 1e5)):
    """A decoder input for a viewer the model never trained on, fitted on the *training* TRs only: ridge (sklearn
    RidgeCV) from the viewer's voxels to the trained viewers' mean on the rows both have. Returns
    ``align(x (n, V)) -> (n, V)`` and the number of TRs fitted on."""
    from sklearn.linear_model import RidgeCV

    train = data.indices("train")
    x = np.asarray(data.subject_voxels()[j, train], np.float32)
    target, cnt = data.viewers_mean(trained, train)  # one viewer at a time (bounded memory)
    ok = ~np.isnan(x).any(1) & (cnt > 0)
    ridge = RidgeCV(alphas=alphas).fit(x[ok], target[ok])
    return (lambda v: ridge.predict(np.asarray(v, np.float64)).astype(np.float32)), int(ok.sum())


def _decoded_ssim(decoder, data: PreparedData, indices: np.ndarray, voxels: np.ndarray, batch_size: int) -> float:
    """Mean SSIM of the frames ``decoder`` makes from ``voxels`` (n, V) against the samples ``indices``' frames."""
    from cinevox.evaluation.predict import predict

    d = predict(decoder, "decoder", data, indices, batch_size, decoder_input=voxels)
    return float(ssim_frames(d["frames_pred"], d["frames_true"]).mean())


def _r(pred: np.ndarray, true: np.ndarray, films: np.ndarray) -> np.ndarray:
    g = scoring_groups(films)
    return pearson_columns(zscore_by_group(pred, g), zscore_by_group(true, g))


def evaluate_viewers(run_dir: Path, data: PreparedData, out: Path, kind: str, pred: dict, model=None,
                     batch_size: int = 32) -> dict:
    """Per-viewer scores of a run into ``out`` (``subjects.csv``, ``voxel_r_sub-<S>.nii.gz``); returns the summary
    for ``metrics.json``. ``pred``: what :func:`~cinevox.evaluation.predict.predict` gave on the test split."""
    target = run_target(run_dir)
    test = data.indices("test")
    films = data.samples["film"].to_numpy()[test]
    subj = np.asarray(data.subjects_test(), np.float32)  # (n_subjects, n_test, V)
    viewers = data.subjects
    if len(viewers) != subj.shape[0]:
        return {}
    ijk, mask_img = data.voxels_ijk(), data.mask_img()
    trained = target.get("subjects") or []
    heldout = target.get("heldout") or []
    per_viewer_model = target["mode"] == "subjects" and model is not None and is_subject_model(model)
    enc = getattr(model, "encoder", model) if kind != "decoder" else None
    if per_viewer_model and enc is not None:  # one trunk pass: read-outs (and an encdec's pipelines' SSIM)
        o = subject_pass(enc, data, test, batch_size,
                         model.decoder if isinstance(model, SubjectEncoderDecoder) else None)
        avg_t, per_t, z_t = o["avg"], o["per"], o["z"]
        ssim_per, ssim_avg = o.get("ssim_per"), o.get("ssim_avg")
    rows = []
    for j, s in enumerate(viewers):
        y = subj[j]
        seen = ~np.isnan(y).any(1)
        if seen.sum() < 3:
            continue
        f = films[seen]
        role = "heldout" if s in heldout else ("target" if target["mode"] == "subject" and s in trained else
                                               ("trained" if s in trained or target["mode"] == "mean" else "other"))
        row = {"subject": s, "role": role, "n_test": int(seen.sum())}
        if per_viewer_model:
            row["head"] = "viewer" if s in trained else "average"
        elif "voxels_pred" in pred or kind == "decoder":
            row["head"] = "model"
        others = np.delete(subj, j, axis=0)[:, seen]
        n_other = (~np.isnan(others).any(2)).sum(0)
        if len(others) and (n_other > 0).all():
            ceil = _r(np.nanmean(others, 0), y[seen], f)
            row["ceiling_loo_mean"] = float(np.nanmean(ceil))
        if "voxels_pred" in pred:
            if per_viewer_model and s in trained:
                p = per_t[:, trained.index(s)]
            elif per_viewer_model:
                p = avg_t
            else:
                p = pred["voxels_pred"]
            r = _r(p[seen], y[seen], f)
            row.update(r_mean=float(np.nanmean(r)), r_median=float(np.nanmedian(r)))
            if "ceiling_loo_mean" in row:
                row["r_over_ceiling_loo"] = row["r_mean"] / row["ceiling_loo_mean"]
            save_voxel_map(out / f"voxel_r_sub-{s}.nii.gz", r, ijk, mask_img)
            if per_viewer_model and s not in trained:
                head, n_fit = fitted_head(enc, data, j, batch_size)
                rf = _r(head(avg_t, z_t)[seen], y[seen], f)
                row.update(r_mean_fitted_head=float(np.nanmean(rf)), n_train_fitted=n_fit)
        if model is not None and kind in ("decoder", "encdec"):  # frames decoded from this viewer's own voxels
            base = model if kind == "decoder" else model.decoder
            dec = ViewerDecoder(base, trained.index(s)) if per_viewer_model and s in trained else base
            measured = _decoded_ssim(dec, data, test[seen], y[seen], batch_size)
            if kind == "encdec" and per_viewer_model:  # ssim_mean: each clip through this viewer's pipeline
                row["ssim_mean"] = float((ssim_per[seen, trained.index(s)] if s in trained else
                                          ssim_avg[seen]).mean())
                row["ssim_mean_measured"] = measured
            else:
                row["ssim_mean"] = measured
            if per_viewer_model and s not in trained and isinstance(model, SubjectDecoder):
                align, n_fit = fitted_alignment(data, j, [viewers.index(t) for t in trained])
                row.update(ssim_mean_fitted_head=_decoded_ssim(model, data, test[seen], align(y[seen]), batch_size),
                           n_train_fitted=n_fit)
        rows.append(row)
    if not rows:
        return {}
    table = pd.DataFrame(rows)
    write_text_atomic(out / "subjects.csv", table.to_csv(index=False, float_format="%.6g"))
    summary: dict = {"ceiling_method": CEILING_METHOD, "target": target, "n_viewers": len(rows),
                     "per_viewer": rows}
    for col in ("r_mean", "ceiling_loo_mean", "ssim_mean", "ssim_mean_measured", "r_mean_fitted_head",
                "ssim_mean_fitted_head"):
        if col in table:
            for role, part in [("all", table), *table.groupby("role")]:
                v = part[col].dropna()
                if len(v):
                    summary.setdefault("group", {}).setdefault(role, {})[col] = {
                        "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                        "min": float(v.min()), "max": float(v.max())}
    if "r_mean" in table:
        logger.info("per viewer: r %.3f (sd %.3f) over %d viewers, leave-one-out ceiling %.3f",
                    table["r_mean"].mean(), table["r_mean"].std(ddof=1) if len(table) > 1 else 0.0, len(table),
                    table.get("ceiling_loo_mean", pd.Series([np.nan])).mean())
    return summary
