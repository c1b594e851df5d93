"""``cinevox evaluate RUN_DIR``: the paper's metrics with nulls, noise ceilings, NIfTI maps in MNI space.

Encoder: per-voxel Pearson r over the test TRs of each film and over all test TRs concatenated, MSE, a null
from shuffled time courses (as the paper), from circular shifts within each film and from phase-randomised
predictions within each film (both keep the autocorrelation), p-values ``(k + 1) / (n + 1)``. The circular shifts
are drawn from every lag of each film's test TRs, 0 included: the whole group of shifts makes the test exact for a
circularly stationary series, while leaving out the lags near 0 (a "minimum shift", common practice) removes the
null values most like the observed one and is anti-conservative (0.09-0.10 false positives at alpha 0.05 with a
10 % minimum on 19-46-TR segments, measured on simulated true nulls). Noise ceiling from the per-subject test
data (split-half with Spearman-Brown; explainable variance). Decoder: per-frame SSIM (pinned) and MSE against
shuffled frames.

The paper's conventions (those of Table I and Figs. 2-3, checked against the authors' code): ``r`` and ``mse``
over all test TRs are taken on the per-film z-scored series (so ``mse = 2 (1 - r)``), the decoder's ``mse`` on
per-frame min-max normalised frames. cinevox's extra metrics keep distinct names: ``r_raw`` / ``mse_raw`` on the
raw concatenated series, ``mse_raw`` of the frames as they are.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cinevox.configs import EvalConfig
from cinevox.data.nifti import save_nifti, save_voxel_map
from cinevox.evaluation.predict import predict
from cinevox.metrics import (
    minmax_frames,
    mse_columns,
    mse_frames,
    pearson_columns,
    pearson_columns_batch,
    scoring_groups,
    ssim_frames,
    zscore_by_group,
)
from cinevox.outputs import space_label, write_sidecars
from cinevox.profiles import apply_profile
from cinevox.stats import (
    explainable_variance_ceiling,
    fdr_bh,
    ncsnr_ceiling,
    perm_p_value,
    perm_p_values,
    permute_within,
    split_half_ceiling,
)
from cinevox.training.ridge import is_baseline_run, predict_ridge
from cinevox.training.ridge import run_bands as pretrained_bands
from cinevox.training.train import load_run_model, run_data
from cinevox.utils.folders import clean_stale_temps, exclusive_folder
from cinevox.utils.io import save_npy_atomic, write_json, write_manifest, write_text_atomic

logger = logging.getLogger(__name__)


def _permuted(pred: np.ndarray, rng, n: int) -> np.ndarray:
    """n copies of pred with time shuffled. (T, V) -> (n, T, V)."""
    return np.stack([pred[rng.permutation(len(pred))] for _ in range(n)])


def _circular(pred: np.ndarray, films: np.ndarray, rng, n: int) -> np.ndarray:
    """n copies of pred, each film's test TRs circularly shifted by a lag drawn uniformly from all of its lags
    (0 to m - 1, independently per film: a random element of the group of shifts, so that the observed alignment
    is exchangeable with the null's). (T, V) -> (n, T, V)."""
    out = np.empty((n, *pred.shape), pred.dtype)
    for f in np.unique(films):
        idx = np.flatnonzero(films == f)
        shifts = rng.integers(0, len(idx), n)
        for k, s in enumerate(shifts):
            out[k, idx] = np.roll(pred[idx], s, axis=0)
    return out


def _phase(pred: np.ndarray, films: np.ndarray, rng, n: int) -> np.ndarray:
    """n phase-randomised copies of pred (Theiler's surrogates): within each film's test TRs, the Fourier
    phases get one random offset per frequency, shared by every voxel (so the spatial correlation is kept), the
    amplitudes are kept (so are each series' mean, variance and circular autocorrelation). (T, V) -> (n, T, V)."""
    out = np.empty((n, *pred.shape), pred.dtype)
    for f in np.unique(films):
        idx = np.flatnonzero(films == f)
        m = len(idx)
        spec = np.fft.rfft(pred[idx].astype(np.float64), axis=0)  # (m // 2 + 1, V)
        for k in range(n):
            ph = np.exp(1j * rng.uniform(0, 2 * np.pi, len(spec)))
            ph[0] = 1.0  # the mean stays
            if m % 2 == 0:
                ph[-1] = 1.0  # the Nyquist term stays real
            out[k, idx] = np.fft.irfft(spec * ph[:, None], n=m, axis=0)
    return out


#: the nulls of the p and q maps: (voxels.csv column suffix, BIDS desc label, what the null is)
NULLS = (("shuffle", "shuffled time: the test TRs permuted across films (anti-conservative: breaks the "
                     "autocorrelation)"),
         ("circular", "circular shifts of each film's predicted test series over all its lags, 0 included"),
         ("phase", "phase-randomised predictions within each film (Theiler surrogates; keeps the spectrum)"))


def stat_map_name(space: str, stat: str, null: str) -> str:
    """``space-<space>_stat-<p|q>_desc-<null>_statmap.nii.gz``: the BIDS-entity names of evaluate's p/q maps."""
    return f"space-{space}_stat-{stat}_desc-{null}_statmap.nii.gz"


def significance_mask_name(space: str) -> str:
    return f"space-{space}_desc-significant_mask.nii.gz"


def _stat_maps(out: Path, vox: pd.DataFrame, ijk: np.ndarray, mask_img, space: str, cfg: EvalConfig) -> dict:
    """p maps of the three nulls, q maps of the circular and phase nulls, and the significance mask
    (q_circular < cfg.significance_q) as NIfTI; returns each map's sidecar details."""
    extra: dict[str, dict] = {}
    for null, what in NULLS:
        for stat in ("p", "q"):
            col = f"{stat}_{null}"
            if col not in vox:
                continue
            name = stat_map_name(space, stat, null)
            save_voxel_map(out / name, vox[col].to_numpy(), ijk, mask_img)
            extra[name] = {"Null": what, "NumberOfPermutations": cfg.n_perm, "Column": f"voxels.csv:{col}",
                           "Correction": "Benjamini-Hochberg FDR over the voxels" if stat == "q" else "none"}
    sig = (vox["q_circular"].to_numpy() < cfg.significance_q).astype(np.uint8)
    name = significance_mask_name(space)
    vol = np.zeros(mask_img.shape[:3], np.uint8)
    vol[tuple(np.asarray(ijk).T)] = sig
    save_nifti(out / name, vol, mask_img.affine, int(mask_img.header["sform_code"]) or 4)
    extra[name] = {"Threshold": {"q_circular": cfg.significance_q}, "NumberOfPermutations": cfg.n_perm,
                   "Null": NULLS[1][1], "NumberOfSignificantVoxels": int(sig.sum())}
    return extra


def null_correlations(true: np.ndarray, make, n: int, budget: float = 5e7) -> np.ndarray:
    """Per-voxel r of ``true`` (T, V) with ``n`` null predictions made ``k`` at a time by ``make(k)``
    (-> (k, T, V)), so that memory stays bounded (about ``budget`` values at once). Returns (n, V)."""
    chunk = max(1, int(budget // true.size))
    out = []
    for i in range(0, n, chunk):
        out.append(pearson_columns_batch(true, make(min(chunk, n - i))))
    return np.concatenate(out)


def evaluate(run_dir: str | Path, cfg: EvalConfig | None = None) -> dict:
    """Evaluate a run on its test split; writes ``RUN_DIR/eval`` and returns the metrics dict."""
    cfg = apply_profile(cfg or EvalConfig(), "evaluate")
    if not 0 < cfg.significance_q <= 1:
        raise ValueError(f"--significance-q must lie in (0, 1], got {cfg.significance_q}")
    if cfg.n_perm < 1 or cfg.n_perm_frames < 1 or cfg.n_splits < 1:
        raise ValueError(f"--n-perm, --n-perm-frames and the split-half count must be >= 1 (got {cfg.n_perm}, "
                         f"{cfg.n_perm_frames}, {cfg.n_splits})")
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a cinevox run (no manifest.json)")
    with exclusive_folder(run_dir / "eval", "evaluate"):
        clean_stale_temps(run_dir / "eval")
        return _evaluate(run_dir, cfg)


def ssim_null(frames_pred: np.ndarray, frames_true: np.ndarray, films: np.ndarray, n_perm: int,
              rng: np.random.Generator) -> np.ndarray:
    """The decoder's shuffled-frame null: SSIM of each reconstruction against a true frame of the same film
    (frames shuffled within films, so a decoder that only tells films apart, e.g. one rendering each film's mean
    colour, is not significant). (n, 3, S, S) twice, (n,) film labels -> (n_perm, n)."""
    return np.stack([ssim_frames(frames_pred, frames_true[permute_within(films, rng)]) for _ in range(n_perm)])


def _evaluate(run_dir: Path, cfg: EvalConfig) -> dict:
    out = run_dir / "eval"
    data = run_data(run_dir)  # a --cv films fold: every TR of its held-out film is test
    test = data.indices("test")
    samples = data.samples.iloc[test].reset_index(drop=True)
    films = samples["film"].to_numpy()
    if is_baseline_run(run_dir):  # the linear baseline: voxels only
        kind, epoch = "ridge", None
        pred = {"voxels_true": np.asarray(data.voxels[test], np.float32),
                "voxels_pred": predict_ridge(run_dir, data, test)}
    else:
        model, tcfg, mcfg, epoch = load_run_model(run_dir, cfg.checkpoint, cfg.device, cfg.trust_checkpoint)
        kind = tcfg.model
        pred = predict(model, tcfg.model, data, test, cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    metrics: dict = {"run": str(run_dir), "model": kind, "checkpoint": cfg.checkpoint, "epoch": epoch,
                     "n_test_samples": len(test), "test_films": sorted(set(films))}
    if data.holdout_film is not None:
        metrics["cv_holdout_film"] = data.holdout_film
    ijk = data.voxels_ijk()
    mask_img = data.mask_img()
    space = space_label(data.manifest, int(mask_img.header["sform_code"]))
    sidecar_extra: dict[str, dict] = {}
    out.mkdir(parents=True, exist_ok=True)

    if "voxels_pred" in pred:
        vt_raw, vp_raw = pred["voxels_true"], pred["voxels_pred"]
        groups = scoring_groups(films)  # the films (short clips pooled)
        vt, vp = zscore_by_group(vt_raw, groups), zscore_by_group(vp_raw, groups)  # the paper's convention
        r_all = pearson_columns(vp, vt)
        mse = mse_columns(vp, vt)  # = 2 (1 - r)
        vox = pd.DataFrame({"voxel": np.arange(len(r_all)), "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2]})
        xyz = nib.affines.apply_affine(mask_img.affine, ijk)
        vox["x_mm"], vox["y_mm"], vox["z_mm"] = xyz.T
        vox["r"] = r_all
        per_film = {}
        for f in sorted(set(films)):
            sel = films == f
            per_film[f] = pearson_columns(vp[sel], vt[sel])
            vox[f"r_{f}"] = per_film[f]
        vox["mse"] = mse
        vox["r_raw"] = pearson_columns(vp_raw, vt_raw)
        vox["mse_raw"] = mse_columns(vp_raw, vt_raw)
        null_shuffle = null_correlations(vt, lambda k: _permuted(vp, rng, k), cfg.n_perm)
        null_circ = null_correlations(vt, lambda k: _circular(vp, groups, rng, k), cfg.n_perm)
        null_phase = null_correlations(vt, lambda k: _phase(vp, groups, rng, k), cfg.n_perm)
        vox["p_shuffle"] = perm_p_values(np.nan_to_num(r_all, nan=-1), np.nan_to_num(null_shuffle, nan=-1))
        vox["q_shuffle"] = fdr_bh(vox["p_shuffle"].to_numpy())
        vox["p_circular"] = perm_p_values(np.nan_to_num(r_all, nan=-1), np.nan_to_num(null_circ, nan=-1))
        vox["q_circular"] = fdr_bh(vox["p_circular"].to_numpy())
        vox["p_phase"] = perm_p_values(np.nan_to_num(r_all, nan=-1), np.nan_to_num(null_phase, nan=-1))
        vox["q_phase"] = fdr_bh(vox["p_phase"].to_numpy())
        vox["r_null_example"] = null_shuffle[0]
        r_mean = float(np.nanmean(r_all))
        enc = {
            "r_mean": r_mean, "r_median": float(np.nanmedian(r_all)), "mse_mean": float(mse.mean()),
            "mse_median": float(np.median(mse)), "n_voxels": len(r_all),
            "convention": "r and mse over all test TRs on per-film z-scored series (mse = 2 (1 - r)); "
                          "r_raw and mse_raw on the raw concatenated series",
            "r_raw_mean": float(np.nanmean(vox["r_raw"])), "r_raw_median": float(np.nanmedian(vox["r_raw"])),
            "mse_raw_mean": float(vox["mse_raw"].mean()), "mse_raw_median": float(vox["mse_raw"].median()),
            "r_mean_per_film": {f: float(np.nanmean(v)) for f, v in per_film.items()},
            "r_median_per_film": {f: float(np.nanmedian(v)) for f, v in per_film.items()},
            "mse_mean_per_film": {f: float(np.nanmean(2 * (1 - v))) for f, v in per_film.items()},
            "null_r_mean": float(np.nanmean(null_shuffle)),
            "p_shuffle": perm_p_value(r_mean, np.nanmean(null_shuffle, axis=1)),
            "null_circular_r_mean": float(np.nanmean(null_circ)),
            "p_circular": perm_p_value(r_mean, np.nanmean(null_circ, axis=1)),
            "null_phase_r_mean": float(np.nanmean(null_phase)),
            "p_phase": perm_p_value(r_mean, np.nanmean(null_phase, axis=1)),
            "n_perm": cfg.n_perm,
            "frac_voxels_q05_circular": float((vox["q_circular"] < 0.05).mean()),
        }
        # noise ceiling from the per-subject test data
        # (n_subjects, n_test, V): can be GBs; kept for the prepared test split only (none in a --cv films fold)
        subj = np.asarray(data.subjects_test(), np.float32) if data.holdout_film is None else np.zeros((0, 0, 0))
        if subj.shape[0] >= 2:
            sh = split_half_ceiling(subj, cfg.n_splits, cfg.seed, groups=groups)  # r's convention
            ev = explainable_variance_ceiling(subj, groups=groups)
            nsd = ncsnr_ceiling(subj, groups=groups)
            vox["ceiling"] = sh["ceiling"]
            vox["ceiling_ev"] = ev["ceiling"]
            vox["ceiling_nsd"] = nsd["ceiling"]
            with np.errstate(invalid="ignore", divide="ignore"):
                vox["r_over_ceiling"] = np.where(sh["ceiling"] > 0.05, r_all / sh["ceiling"], np.nan)
            enc.update({
                "ceiling_mean": float(np.nanmean(sh["ceiling"])), "ceiling_ev_mean": float(np.nanmean(ev["ceiling"])),
                "ceiling_nsd_mean": float(np.nanmean(nsd["ceiling"])),
                "r_over_ceiling": float(r_mean / np.nanmean(sh["ceiling"])),
                "r_over_ceiling_median_voxel": float(np.nanmedian(vox["r_over_ceiling"])),
                "ceiling_method": "split-half, Spearman-Brown to N subjects, sqrt; on per-film z-scored test series "
                                  "(the convention of r)",
                "n_subjects": int(subj.shape[0]),
            })
        informative = data.simulation_truth("informative.nii.gz")
        if informative is not None:  # planted regions of a simulation: frame-driven vs mostly non-visual
            informative = informative > 0
            vox["informative"] = informative
            enc["r_mean_informative"] = float(np.nanmean(r_all[informative])) if informative.any() else None
            enc["r_mean_uninformative"] = float(np.nanmean(r_all[~informative])) if (~informative).any() else None
        null_truth = data.simulation_truth("null_voxels.nii.gz")
        if null_truth is not None and (null_truth > 0).any():  # true nulls of a simulation: the tests' error rates
            nulls = null_truth > 0
            vox["null_voxel"] = nulls
            cal = {"n_null_voxels": int(nulls.sum()), "alpha": 0.05,
                   "fpr_circular": float((vox["p_circular"][nulls] < 0.05).mean()),
                   "fpr_phase": float((vox["p_phase"][nulls] < 0.05).mean()),
                   "fpr_shuffle": float((vox["p_shuffle"][nulls] < 0.05).mean()),
                   "fdr_q05_circular_on_nulls": float((vox["q_circular"][nulls] < 0.05).mean())}
            if informative is not None and informative.any():
                cal["power_circular_informative"] = float((vox["p_circular"][informative] < 0.05).mean())
                cal["power_phase_informative"] = float((vox["p_phase"][informative] < 0.05).mean())
                cal["power_shuffle_informative"] = float((vox["p_shuffle"][informative] < 0.05).mean())
            enc["null_calibration"] = cal
            logger.info("true null voxels (%d): false positives at 0.05, circular-shift null %.3f, phase-randomised "
                        "null %.3f, shuffled null %.3f", cal["n_null_voxels"], cal["fpr_circular"], cal["fpr_phase"],
                        cal["fpr_shuffle"])
        expl = data.simulation_truth("explainable_ceiling.nii.gz")
        if expl is not None:  # the best any function of the film can reach (simulations only)
            vox["explainable_ceiling"] = expl
            enc["explainable_ceiling_mean"] = float(expl.mean())
            enc["r_over_explainable_ceiling"] = float(r_mean / expl.mean())
            if informative is not None and informative.any():
                enc["explainable_ceiling_mean_informative"] = float(expl[informative].mean())
                enc["r_over_explainable_ceiling_informative"] = float(np.nanmean(r_all[informative])
                                                                      / expl[informative].mean())
        true_c = data.simulation_truth("noise_ceiling.nii.gz")
        if true_c is not None:
            vox["true_ceiling"] = true_c
            enc["true_ceiling_mean"] = float(true_c.mean())
            enc["r_over_true_ceiling"] = float(r_mean / true_c.mean())
            if "ceiling" in vox:
                enc["ceiling_vs_true_r"] = float(np.corrcoef(vox["ceiling"].fillna(0), true_c)[0, 1])
                enc["ceiling_minus_true_mean"] = float(np.nanmean(vox["ceiling"] - true_c))
        if kind == "ridge" and len(pretrained_bands(run_dir)) > 1:  # a banded ridge: the variance partition
            from cinevox.evaluation.partition import evaluate_partition

            enc["partition"] = evaluate_partition(run_dir, data, test, vt_raw, out, vox)
        metrics["encoder"] = enc
        write_text_atomic(out / "voxels.csv", vox.to_csv(index=False, float_format="%.6g"))
        save_npy_atomic(out / "pred_voxels.npy", vp_raw.astype(np.float32))
        save_npy_atomic(out / "null_r_shuffle_mean.npy", np.nanmean(null_shuffle, axis=1))
        save_voxel_map(out / "voxel_r.nii.gz", r_all, ijk, mask_img)
        if "ceiling" in vox:
            save_voxel_map(out / "noise_ceiling.nii.gz", vox["ceiling"].to_numpy(), ijk, mask_img)
            save_voxel_map(out / "r_over_ceiling.nii.gz", vox["r_over_ceiling"].to_numpy(), ijk, mask_img)
        sidecar_extra = _stat_maps(out, vox, ijk, mask_img, space, cfg)
        enc["significance_mask"] = {"rule": f"q_circular < {cfg.significance_q}",
                                    "n_voxels": int((vox["q_circular"] < cfg.significance_q).sum())}
        logger.info("encoder: mean r %.3f (null %.3f, p %.4f), ceiling %.3f", r_mean, enc["null_r_mean"],
                    enc["p_shuffle"], enc.get("ceiling_mean", float("nan")))

    if "frames_pred" in pred:
        ft, fp = pred["frames_true"], pred["frames_pred"]
        ssim = ssim_frames(fp, ft)
        fmse = mse_frames(minmax_frames(fp), minmax_frames(ft))  # the paper's D_mse
        fmse_raw = mse_frames(fp, ft)
        null_ssim = ssim_null(fp, ft, films, cfg.n_perm_frames, rng)
        fr = samples[["sample", "film", "tr"]].copy()
        fr["ssim"], fr["mse"], fr["mse_raw"], fr["ssim_null_example"] = ssim, fmse, fmse_raw, null_ssim[0]
        dec = {
            "ssim_mean": float(ssim.mean()), "ssim_median": float(np.median(ssim)), "mse_mean": float(fmse.mean()),
            "mse_median": float(np.median(fmse)), "n_frames": len(ssim),
            "mse_raw_mean": float(fmse_raw.mean()), "mse_raw_median": float(np.median(fmse_raw)),
            "convention": "mse on per-frame min-max normalised frames; mse_raw on the frames as they are",
            "ssim_mean_per_film": {f: float(ssim[films == f].mean()) for f in sorted(set(films))},
            "null_ssim_mean": float(null_ssim.mean()),
            "p_shuffle": perm_p_value(float(ssim.mean()), null_ssim.mean(axis=1)),
            "n_perm": len(null_ssim),
            "decoder_input": "encoder predictions" if kind == "encdec" else "measured voxels",
        }
        metrics["decoder"] = dec
        write_text_atomic(out / "frames.csv", fr.to_csv(index=False, float_format="%.6g"))
        recon = (np.clip(fp, 0, 1) * 255 + 0.5).astype(np.uint8)
        save_npy_atomic(out / "recon.npy", recon)
        logger.info("decoder: mean SSIM %.3f (null %.3f, p %.4f)", dec["ssim_mean"], dec["null_ssim_mean"],
                    dec["p_shuffle"])
    from cinevox.evaluation.subjects import evaluate_viewers

    per_viewer = evaluate_viewers(run_dir, data, out, kind, pred, None if kind == "ridge" else model,
                                  cfg.batch_size)
    if per_viewer:
        metrics["subjects"] = per_viewer
    write_json(out / "metrics.json", metrics)
    write_sidecars(out, "RUN_DIR/eval", sources=[str(run_dir.resolve())], space=space, per_file=sidecar_extra)
    write_manifest(out, "evaluate", asdict(cfg), inputs={"run": str(run_dir), "prepared": str(data.root)})
    return metrics
