"""Variance partitioning of a banded ridge: each voxel's test-set prediction split among its bands.

For bands ``b`` with predictions ``P_b`` (their delayed features times their weights, :func:`cinevox.training.
ridge.predict_ridge_split`), himalaya's split scores divide each voxel's score so that they sum to the score of the
whole prediction: the split R^2 ``R^2_b = (2 <y, P_b> - <P_b, P>) / ||y||^2`` (``P = sum_b P_b``; y and each
P_b centred on the test TRs, so that the bands' scores sum to the centred prediction's R^2; its
``r2_score_split``) and the split correlation ``<y, P_b> / (||y|| ||P||)`` (``correlation_score_split``).

Known truth (``cinevox features PREPARED --model simulator`` bands): the estimated shares ``max(R^2_b, 0) / sum``
of each informative voxel against its true shares (:func:`cinevox.pretrained.oracle.true_shares`), correlated over
voxels and channels, and against a control with the true shares of other voxels (voxels permuted).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def split_scores(y: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """y: (n, V); parts: {band: (n, V)} -> {"r2_<band>": (V,), "corr_<band>": (V,)} (himalaya, numpy backend)."""
    from himalaya.backend import get_backend, set_backend
    from himalaya.scoring import correlation_score_split, r2_score_split

    prev = get_backend().name
    set_backend("numpy", on_error="raise")
    try:
        yc = np.asarray(y, np.float64)
        yc = yc - yc.mean(0)  # himalaya's split scores need zero-mean series: both centred on the test TRs
        stack = np.stack([np.asarray(p, np.float64) for p in parts.values()])
        stack = stack - stack.mean(1, keepdims=True)
        r2 = r2_score_split(yc, stack)  # the bands' sum is the R^2 of the centred prediction
        corr = correlation_score_split(yc, stack)
    finally:
        set_backend(prev, on_error="warn")
    out = {}
    for k, b in enumerate(parts):
        out[f"r2_{b}"] = np.asarray(r2[k], np.float32)
        out[f"corr_{b}"] = np.asarray(corr[k], np.float32)
    return out


def shares(r2: np.ndarray) -> np.ndarray:
    """Split R^2 (bands, V) -> each voxel's shares (V, bands): negative parts as 0, rows summing to 1 (or 0)."""
    pos = np.clip(np.asarray(r2, np.float64), 0, None).T
    tot = pos.sum(1, keepdims=True)
    return np.divide(pos, tot, out=np.zeros_like(pos), where=tot > 0)


def partition_vs_truth(est: np.ndarray, truth: np.ndarray, n_perm: int = 200, seed: int = 0) -> dict:
    """est, truth: (V, C) shares of the same voxels. Pooled correlation over voxels x channels, the median of the
    per-voxel correlations over channels, and both for ``n_perm`` permutations of the voxels (the control)."""
    rng = np.random.default_rng(seed)

    def stats(t):
        pooled = float(np.corrcoef(est.ravel(), t.ravel())[0, 1])
        e, tt = est - est.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            per = (e * tt).sum(1) / np.sqrt((e**2).sum(1) * (tt**2).sum(1))
        return pooled, float(np.nanmedian(per))

    obs = stats(truth)
    null = np.array([stats(truth[rng.permutation(len(truth))]) for _ in range(n_perm)])
    return {"n_voxels": int(len(est)), "r_pooled": obs[0], "r_voxel_median": obs[1],
            "control_r_pooled_mean": float(null[:, 0].mean()), "control_r_pooled_q95": float(np.quantile(null[:, 0],
                                                                                                       0.95)),
            "control_r_voxel_median_mean": float(null[:, 1].mean()),
            "control_r_voxel_median_q95": float(np.quantile(null[:, 1], 0.95)),
            "p_perm": float(((null[:, 0] >= obs[0]).sum() + 1) / (n_perm + 1)),
            "control": f"true shares of other voxels ({n_perm} permutations of the voxels)"}


def simulator_bands(cfg) -> dict[str, str]:
    """{band: channel} of a ridge's bands that come from a ``--model simulator`` features folder."""
    from cinevox.pretrained.extract import read_manifest
    from cinevox.training.ridge import band_names

    names = band_names(cfg)[len(cfg.features.spaces):]
    out = {}
    for name, p in zip(names, cfg.pretrained):
        d, layer = p.rsplit(":", 1)
        try:
            if read_manifest(d)["config"]["model"] == "simulator":
                out[name] = layer
        except (OSError, ValueError, KeyError):
            continue
    return out


def evaluate_partition(run_dir: Path, data, test: np.ndarray, y: np.ndarray, out: Path, vox: pd.DataFrame) -> dict:
    """Split scores of a banded ridge run on the test TRs: columns ``r2_<band>`` / ``corr_<band>`` of ``vox``,
    ``eval/split_<band>.nii.gz`` (split R^2), ``eval/split_regions.csv`` (mean per region) and, on a simulation
    with the simulator's channel bands, the partition against the truth. Returns the metrics' ``partition``."""
    from cinevox.data.nifti import save_voxel_map
    from cinevox.training.ridge import predict_ridge_split, ridge_config_from_manifest
    from cinevox.utils.io import read_json, write_text_atomic

    cfg = ridge_config_from_manifest(read_json(run_dir / "manifest.json"))
    parts = predict_ridge_split(run_dir, data, test)
    sc = split_scores(y, parts)
    bands = list(parts)
    ijk, mask = data.voxels_ijk(), data.mask_img()
    for b in bands:
        vox[f"r2_{b}"], vox[f"corr_{b}"] = sc[f"r2_{b}"], sc[f"corr_{b}"]
        save_voxel_map(out / f"split_{b}.nii.gz", sc[f"r2_{b}"], ijk, mask)
    res: dict = {"bands": bands, "r2_mean": {b: float(np.mean(sc[f"r2_{b}"])) for b in bands},
                 "method": "himalaya r2_score_split / correlation_score_split on the test TRs"}
    regions = _regions(data, ijk, mask)
    if regions is not None:
        tab = pd.DataFrame({"region": regions["label"].to_numpy(), **{b: sc[f"r2_{b}"] for b in bands}})
        tab = tab.groupby("region", sort=True).agg(["mean"]).droplevel(1, axis=1)
        tab.insert(0, "n_voxels", regions.groupby("label").size().reindex(tab.index).to_numpy())
        write_text_atomic(out / "split_regions.csv", tab.reset_index().to_csv(index=False, float_format="%.6g"))
        res["regions_file"] = "split_regions.csv"
    chan = simulator_bands(cfg)
    informative = data.simulation_truth("informative.nii.gz")
    if chan and informative is not None:
        from cinevox.pretrained.oracle import true_shares
        from cinevox.simulate.films import CHANNELS

        cols, truth = true_shares(data)
        use = [CHANNELS.index(c) for c in chan.values()]
        keep = informative[cols] > 0
        r2 = np.stack([sc[f"r2_{b}"] for b in chan])  # (C', V)
        est = shares(r2[:, cols[keep]])
        t = truth[keep][:, use]
        t = t / np.clip(t.sum(1, keepdims=True), 1e-12, None)
        res["truth"] = {"channels": list(chan.values()), **partition_vs_truth(est, t)}
        logger.info("partition vs the simulator's channel shares: r %.3f over %d informative voxels (control: voxels "
                    "permuted, mean %.3f, 95 %% %.3f)", res["truth"]["r_pooled"], res["truth"]["n_voxels"],
                    res["truth"]["control_r_pooled_mean"], res["truth"]["control_r_pooled_q95"])
    return res


def _regions(data, ijk, mask):
    from cinevox.analysis.regions import default_atlas, voxel_regions

    try:
        a, lab = default_atlas(data.manifest, None, None)
        return voxel_regions(ijk, mask.affine, mask.shape, a, lab)
    except (ValueError, OSError) as err:
        logger.warning("no region atlas (%s): the split scores are not summarised per region",
                       " ".join(str(err).split())[:200])
        return None
