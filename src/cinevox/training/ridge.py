"""``cinevox baseline``: the field's standard voxelwise encoding model beside the CNN.

Motion-energy (pymoten) and colour/luminance features per TR (:mod:`cinevox.data.features`), FIR delays around
the prepared hemodynamic shift, and banded ridge regression with himalaya: one linear kernel per feature space,
kernel weights and a per-voxel regularisation chosen by cross-validation on train + validation, grouped by film.
The fitted model is stored as primal weights, so that prediction needs no training data.

Arrays are ``(n_samples, n_features)`` and ``(n_samples, n_voxels)``. Delays: the feature row of sample ``t`` for
delay ``d`` is the feature of sample ``t - d`` when both lie in the same contiguous block of one film and one
film with no jump in time (every TR of a film, whatever its split, is a row of the prepared samples), else zero:
delays never cross films or gaps in time. They do cross split boundaries: the features are the stimulus alone, so
a test row's lagged features from a training TR leak nothing of the training voxels (and zeroing them would impute
far more lags in fit rows under an interleaved split than in test rows).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cinevox.configs import FEATURE_SPACES, RidgeConfig
from cinevox.data.dataset import PreparedData, voxel_preparation
from cinevox.data.features import FeatureConfig, film_features
from cinevox.outputs import write_dataset_description
from cinevox.utils.folders import check_output_folder, clean_stale_temps, exclusive_folder
from cinevox.utils.io import atomic_path, config_hash, write_manifest, write_text_atomic

logger = logging.getLogger(__name__)

MODEL_FILE = "model/ridge.npz"


def band_names(cfg: RidgeConfig) -> list[str]:
    """The bands of a ridge, in order: the built-in spaces, then one per pretrained ``FEATURES_DIR:LAYER``."""
    from cinevox.configs import band_name

    return list(cfg.features.spaces) + [band_name(*p.rsplit(":", 1)) for p in cfg.pretrained]


def expand_pretrained(entries) -> tuple[str, ...]:
    """``FEATURES_DIR[:LAYER]`` entries -> ``FEATURES_DIR:LAYER`` (every layer of a folder given without one)."""
    from cinevox.pretrained.extract import read_manifest

    out = []
    for e in entries:
        d, _, layer = e.rpartition(":") if ":" in e and not Path(e).is_dir() else (e, "", "")
        if not Path(d).is_dir():
            raise ValueError(f"--features {e}: not one of the built-in feature spaces ({', '.join(FEATURE_SPACES)}) "
                             f"and not a features folder (make one with `cinevox features`)")
        man = read_manifest(d)
        layers = [layer] if layer else man["layers"]
        bad = [la for la in layers if la not in man["layers"]]
        if bad:
            raise ValueError(f"--features {e}: no layer {bad[0]!r} in {d} (layers: {', '.join(man['layers'])})")
        out += [f"{Path(d).resolve()}:{la}" for la in layers]
    return tuple(out)


def all_features(data: PreparedData, cfg: RidgeConfig, progress: bool = True, pins: dict | None = None,
                 source: str | Path = "") -> dict[str, dict[str, np.ndarray]]:
    """``{band: {film: (n_trs, F)}}``: the built-in spaces and the pretrained ones (aggregated to TRs).
    ``pins``: ``{features_dir: pin}`` recorded when the run ``source`` was fitted (refused when changed since)."""
    from cinevox.pretrained.extract import check_features_pin, tr_features

    feats = film_features(data, cfg.features, progress) if cfg.features.spaces else {}
    for name, p in zip(band_names(cfg)[len(cfg.features.spaces):], cfg.pretrained):
        d, layer = p.rsplit(":", 1)
        if pins is not None:
            check_features_pin(d, pins.get(d), source)
        feats[name] = tr_features(d, layer, data)
    return feats


def sample_blocks(samples: pd.DataFrame) -> np.ndarray:
    """Contiguous block id of each sample: a new block at every change of film or jump in TR (not at a change of
    split: the stimulus features may be lagged across it)."""
    film, tr = samples["film"].to_numpy(), samples["tr"].to_numpy()
    new = np.ones(len(samples), bool)
    new[1:] = (film[1:] != film[:-1]) | (tr[1:] != tr[:-1] + 1)
    return np.cumsum(new) - 1


def delay_features(x: np.ndarray, blocks: np.ndarray, delays) -> np.ndarray:
    """FIR design: ``out[t, k*F:(k+1)*F] = x[t - delays[k]]`` within ``t``'s block, else 0.
    x: (n, F), blocks: (n,) -> (n, F * len(delays))."""
    n, f = x.shape
    out = np.zeros((n, f * len(delays)), x.dtype)
    idx = np.arange(n)
    for k, d in enumerate(delays):
        src = idx - d
        ok = (src >= 0) & (src < n)
        ok[ok] &= blocks[src[ok]] == blocks[ok]
        out[ok, k * f : (k + 1) * f] = x[src[ok]]
    return out


def _backend(name: str):
    from himalaya.backend import set_backend

    if name == "auto":
        import torch

        name = "torch_cuda" if torch.cuda.is_available() else "numpy"
    if name == "torch_cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--backend torch_cuda: CUDA is not available on this machine")
    return set_backend(name, on_error="raise"), name


def design(data: PreparedData, cfg: RidgeConfig, feats: dict[str, dict[str, np.ndarray]], stats=None):
    """Delayed, standardised feature spaces for every sample: ``({space: (n_samples, F_s * n_delays)}, stats)``.

    ``stats`` (per-space feature mean and sd) are computed on the train + validation samples when not given."""
    samples = data.samples
    blocks = sample_blocks(samples)
    fit_rows = samples["split"].isin(["train", "val"]).to_numpy()
    spaces, new_stats = {}, {}
    for s in band_names(cfg):
        x = np.zeros((len(samples), next(iter(feats[s].values())).shape[1]), np.float32)
        for f, arr in feats[s].items():
            rows = (samples["film"] == f).to_numpy()
            x[rows] = arr[samples.loc[rows, "tr"].to_numpy()]
        if stats is None:
            mu, sd = x[fit_rows].mean(0), x[fit_rows].std(0)
            sd = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        else:
            mu, sd = stats[s]
        new_stats[s] = (mu.astype(np.float32), sd.astype(np.float32))
        spaces[s] = delay_features((x - mu) / sd, blocks, cfg.delays).astype(np.float32)
    _warn_short_blocks(samples, blocks, cfg.delays)
    return spaces, new_stats


def _warn_short_blocks(samples: pd.DataFrame, blocks: np.ndarray, delays) -> None:
    longest = max(abs(d) for d in delays)
    sizes = np.bincount(blocks)
    for b in np.flatnonzero(sizes <= longest):
        row = samples.iloc[int(np.flatnonzero(blocks == b)[0])]
        if row["split"] in ("train", "val", "test"):
            logger.warning("film %s: a %s block of %d TRs is not longer than the largest delay (%d TRs); its "
                           "delayed features are partly zero", row["film"], row["split"], sizes[b], longest)


def _cv_splits(films: np.ndarray, n_folds: int):
    """Folds grouped by film (no film in two folds); one film: contiguous blocks of its TRs."""
    from sklearn.model_selection import GroupKFold, KFold

    uniq = np.unique(films)
    if len(uniq) >= 2:
        k = min(n_folds, len(uniq))
        return list(GroupKFold(n_splits=k).split(films, groups=films)), f"{k} folds grouped by film"
    logger.info("one training film: cross-validation on %d contiguous blocks of its TRs", n_folds)
    return list(KFold(n_splits=n_folds, shuffle=False).split(films)), f"{n_folds} contiguous blocks of one film"


def fit_ridge(data: PreparedData, cfg: RidgeConfig, progress: bool = True) -> dict:
    """Fit the banded ridge on train + validation. Returns the model arrays and a summary."""
    from himalaya.kernel_ridge import MultipleKernelRidgeCV, primal_weights_weighted_kernel_ridge

    backend, backend_name = _backend(cfg.backend)
    t0 = time.time()
    feats = all_features(data, cfg, progress)
    t_feat = time.time() - t0
    spaces, stats = design(data, cfg, feats)
    fit = np.flatnonzero(data.samples["split"].isin(["train", "val"]).to_numpy())
    if len(fit) < 2 * cfg.n_folds:
        raise ValueError(f"{data.root}: only {len(fit)} train + validation samples, too few for {cfg.n_folds}-fold "
                         "cross-validation")
    y = np.asarray(data.voxels[fit], np.float32)
    y_mean = y.mean(0)
    xs = [spaces[s][fit] for s in band_names(cfg)]
    n_features = sum(x.shape[1] for x in xs)
    logger.info("ridge: %d samples x %d features (%s, delays %s) -> %d voxels; kernel ridge (%s), backend %s",
                len(fit), n_features, "+".join(band_names(cfg)), list(cfg.delays), y.shape[1],
                "n_features > n_samples" if n_features > len(fit) else "dual form", backend_name)
    splits, cv_text = _cv_splits(data.samples["film"].to_numpy()[fit], cfg.n_folds)
    t1 = time.time()
    xs = [backend.asarray(x) for x in xs]  # once: on torch_cuda each is a copy to the GPU
    ks = backend.stack([x @ x.T for x in xs])
    n_iter = cfg.n_iter if len(xs) > 1 else 1
    model = MultipleKernelRidgeCV(kernels="precomputed", solver="random_search", cv=splits, random_state=cfg.seed,
                                  solver_params=dict(n_iter=n_iter, alphas=np.asarray(cfg.alphas),
                                                     n_targets_batch=cfg.n_targets_batch, progress_bar=False))
    model.fit(ks, backend.asarray(y - y_mean))
    weights = primal_weights_weighted_kernel_ridge(model.dual_coef_, model.deltas_, xs)
    w = np.concatenate([backend.to_numpy(wi) for wi in weights]).astype(np.float32)  # (F_total, V)
    deltas = backend.to_numpy(model.deltas_)  # (n_spaces, V)
    t_fit = time.time() - t1
    return {
        "weights": w, "y_mean": y_mean, "deltas": deltas.astype(np.float32),
        "best_alphas": backend.to_numpy(model.best_alphas_).astype(np.float32),
        "cv_scores": backend.to_numpy(model.cv_scores_).max(0).astype(np.float32),
        "stats": stats, "n_fit": len(fit), "n_features": n_features, "cv": cv_text, "backend": backend_name,
        "seconds_features": t_feat, "seconds_fit": t_fit,
    }


def band_alphas(deltas: np.ndarray) -> np.ndarray:
    """Each band's effective ridge penalty, (n_spaces, V) from himalaya's ``deltas_`` (n_spaces, V).

    himalaya stores ``deltas = log(gamma_b / alpha)`` (kernel weight ``gamma_b``, ``best_alphas_ = alpha``); the
    weighted kernel ridge is a ridge whose band ``b`` has penalty ``alpha / gamma_b = exp(-delta_b)``."""
    return np.exp(-np.asarray(deltas, np.float64))


def baseline(prepared_dir: str | Path, run_dir: str | Path, cfg: RidgeConfig | None = None,
             progress: bool = True, holdout_film: str | None = None) -> Path:
    """Fit the baseline into ``run_dir`` (a run folder that ``evaluate``, ``compare`` and ``report`` accept).

    ``holdout_film``: a leave-one-film-out fold: the feature z-scoring, the ridge cross-validation and the fit use
    the other films' train + validation TRs only; the manifest records the fold (``cv_fold``)."""
    cfg = cfg or RidgeConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints").is_dir():
        raise FileExistsError(f"{run_dir} holds a CNN run; choose another --out for the baseline")
    check_output_folder(run_dir, ("manifest.json", "model", "ridge_cv.csv", "eval"), "baseline run")
    with exclusive_folder(run_dir, "baseline"):
        clean_stale_temps(run_dir)
        return _baseline(prepared_dir, run_dir, cfg, progress, holdout_film)


def _baseline(prepared_dir: str | Path, run_dir: Path, cfg: RidgeConfig, progress: bool,
              holdout_film: str | None = None) -> Path:
    from cinevox.pretrained.extract import features_pin

    data = PreparedData(prepared_dir, holdout_film=holdout_film)
    pins = {d: features_pin(d) for d in dict.fromkeys(p.rsplit(":", 1)[0] for p in cfg.pretrained)}
    res = fit_ridge(data, cfg, progress)
    spaces = band_names(cfg)
    arrays = {"weights": res["weights"], "y_mean": res["y_mean"], "deltas": res["deltas"],
              "best_alphas": res["best_alphas"], "delays": np.asarray(cfg.delays, np.int64)}
    for s in spaces:
        arrays[f"mean_{s}"], arrays[f"sd_{s}"] = res["stats"][s]
    with atomic_path(run_dir / MODEL_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    share = np.exp(res["deltas"]) / np.exp(res["deltas"]).sum(0, keepdims=True)
    alphas = band_alphas(res["deltas"])
    per_voxel = pd.DataFrame({"voxel": np.arange(len(res["best_alphas"])), "alpha": res["best_alphas"],
                              "cv_score": res["cv_scores"], **{f"weight_{s}": share[k] for k, s in enumerate(spaces)},
                              **{f"alpha_{s}": alphas[k] for k, s in enumerate(spaces)}})
    write_text_atomic(run_dir / "ridge_cv.csv", per_voxel.to_csv(index=False, float_format="%.6g"))
    write_manifest(run_dir, "baseline", cfg, inputs={"prepared": str(Path(prepared_dir).resolve()),
                                                     "prepared_manifest": config_hash(data.manifest)},
                   model="ridge", preparation=voxel_preparation(data.manifest), n_fit_samples=res["n_fit"],
                   n_features=res["n_features"], cv=res["cv"], **({"features_pins": pins} if pins else {}),
                   backend=res["backend"], seconds={"features": round(res["seconds_features"], 2),
                                                    "fit": round(res["seconds_fit"], 2)}, **data.fold_record())
    write_dataset_description(run_dir, "cinevox ridge baseline run", "baseline", [prepared_dir])
    logger.info("ridge baseline: features %.1f s, fit %.1f s (%s); median alpha %.3g -> %s", res["seconds_features"],
                res["seconds_fit"], res["cv"], float(np.median(res["best_alphas"])), run_dir)
    return run_dir


def is_baseline_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a ``cinevox baseline`` run (manifest step ``baseline``)."""
    import json

    path = Path(run_dir) / "manifest.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("step") == "baseline"
    except (OSError, ValueError):
        return False


def ridge_config_from_manifest(manifest: dict) -> RidgeConfig:
    c = dict(manifest["config"])
    c["features"] = FeatureConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in c["features"].items()})
    c.setdefault("pretrained", ())
    return RidgeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})


def predict_ridge(run_dir: str | Path, data: PreparedData, indices: np.ndarray, progress: bool = False) -> np.ndarray:
    """Predicted voxels of a baseline run for the samples ``indices``. -> (n, V) float32."""
    from cinevox.utils.io import read_json

    run_dir = Path(run_dir)
    man = read_json(run_dir / "manifest.json")
    cfg = ridge_config_from_manifest(man)
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {run_dir} a finished `cinevox baseline` run?)")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    stats = {s: (arrays[f"mean_{s}"], arrays[f"sd_{s}"]) for s in band_names(cfg)}
    spaces, _ = design(data, cfg, all_features(data, cfg, progress, man.get("features_pins"), run_dir), stats)
    x = np.concatenate([spaces[s][indices] for s in band_names(cfg)], axis=1)
    if x.shape[1] != arrays["weights"].shape[0] or arrays["weights"].shape[1] != data.n_voxels:
        raise ValueError(f"{path}: weights {arrays['weights'].shape} do not fit {x.shape[1]} features x "
                         f"{data.n_voxels} voxels of {data.root}")
    return (x @ arrays["weights"] + arrays["y_mean"]).astype(np.float32)


def run_bands(run_dir: str | Path) -> list[str]:
    """The band names of a baseline run."""
    from cinevox.utils.io import read_json

    return band_names(ridge_config_from_manifest(read_json(Path(run_dir) / "manifest.json")))


def predict_ridge_split(run_dir: str | Path, data: PreparedData, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Each band's part of the prediction (its delayed features times its weights, without the mean):
    ``{band: (n, V)}``; their sum plus ``y_mean`` is :func:`predict_ridge`."""
    from cinevox.utils.io import read_json

    run_dir = Path(run_dir)
    man = read_json(run_dir / "manifest.json")
    cfg = ridge_config_from_manifest(man)
    with np.load(run_dir / MODEL_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    names = band_names(cfg)
    stats = {s: (arrays[f"mean_{s}"], arrays[f"sd_{s}"]) for s in names}
    spaces, _ = design(data, cfg, all_features(data, cfg, False, man.get("features_pins"), run_dir), stats)
    out, a = {}, 0
    for s in names:
        x = spaces[s][indices]
        out[s] = (x @ arrays["weights"][a : a + x.shape[1]]).astype(np.float32)
        a += x.shape[1]
    return out
