"""Stimulus features of a prepared dataset for the voxelwise linear baseline, one row per TR sample.

Two feature spaces, computed from the prepared uint8 frames (the same frames the CNN sees):

- ``motion``: pymoten's motion-energy pyramid on the grey (CIE L*) frames at their true frame rate
  (frames per TR / TR), averaged over the frames of each TR. Temporal frequencies at or above the Nyquist
  frequency of that rate are dropped (logged). Films are streamed in chunks of TRs with a temporal margin
  of the filters' width on each side, so memory is bounded by a chunk and the result equals the whole-film
  projection (tested).
- ``colour``: per-channel RGB means and the luminance contrast (sd) on a coarse ``grid x grid`` layout,
  averaged over the frames of each TR: 4 * grid^2 features.

Features are cached per prepared dataset in ``PREPARED/cache/features/<key>/<film>.npy`` with the key made of the
dataset's frames manifest and the feature options: another set of options never reuses a cache.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict

import numpy as np
from tqdm.auto import tqdm

from cinevox.configs import FeatureConfig
from cinevox.data.dataset import PreparedData
from cinevox.utils.io import atomic_path, config_hash, read_json, write_json
from cinevox.utils.log import bar_disabled

logger = logging.getLogger(__name__)


def _luminance(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB (n, H, W, 3) -> CIE L* (n, H, W) float32 in [0, 100], as pymoten's ``imagearray2luminance``."""
    from moten.colorspace import rgb2lab

    return np.stack([rgb2lab(f.astype(np.float64) / 255.0)[..., 0] for f in frames]).astype(np.float32)


def motion_pyramid(size: int, fps: float, cfg: FeatureConfig):
    """pymoten's pyramid for ``size x size`` frames at ``fps``, without temporal frequencies at or above Nyquist.

    pymoten takes an integer frame rate: ``fps`` is rounded (logged), which scales the filters' temporal
    frequencies by ``round(fps) / fps`` (Emo-FilM, 32 frames per 1.3 s TR: 24.6 -> 24, 2.5 %)."""
    import moten

    if abs(round(fps) - fps) > 1e-6:
        logger.info("motion energy: frame rate %.3f rounded to %d for pymoten", fps, round(fps))
    fps = max(1, int(round(fps)))
    tfs = [tf for tf in cfg.temporal_frequencies if tf < fps / 2]
    dropped = sorted(set(cfg.temporal_frequencies) - set(tfs))
    if dropped:
        logger.info("motion energy: temporal frequencies %s Hz dropped (at or above Nyquist, %.2f Hz at %.2f fps)",
                    dropped, fps / 2, fps)
    if not tfs:
        raise ValueError(f"motion energy: no temporal frequency below Nyquist at {fps:.2f} frames/s")
    return moten.pyramids.MotionEnergyPyramid(stimulus_vhsize=(size, size), stimulus_fps=fps,
                                              temporal_frequencies=tfs,
                                              spatial_frequencies=list(cfg.spatial_frequencies))


def grey_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB (n, S, S, 3) -> the motion-energy input: CIE L* at ``size x size``, float32 (n, size, size)."""
    return _resize_grey(_luminance(frames), size)


def _resize_grey(grey: np.ndarray, size: int) -> np.ndarray:
    if grey.shape[1] == size:
        return grey
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(grey)[:, None]
    return F.interpolate(t, size=(size, size), mode="area").numpy()[:, 0]


@contextlib.contextmanager
def _quiet_pymoten():
    """pymoten draws a tqdm bar per call (one per chunk); cinevox shows one bar per film instead."""
    import moten.core

    saved = moten.core.iterator_func
    moten.core.iterator_func = lambda it, *a, **k: it
    try:
        yield
    finally:
        moten.core.iterator_func = saved


class TorchMotionEnergy:
    """pymoten's motion-energy filter bank computed with torch: the same filters (made by pymoten's own
    ``mk_3d_gabor``, with its pixel mask), the same delays, quadrature and log compression, as two matrix
    products and one grouped temporal convolution instead of a Python loop over filters. Equal to
    ``pyramid.project_stimulus`` to float32 precision (tested); several times faster on CPUs, far more on GPUs.

    For each filter f with spatial quadrature pair (g_s, g_c) and temporal pair (t_s, t_c) of width W, pymoten
    computes, per frame t, ``a_s = g_s . x_t`` and ``a_c = g_c . x_t``, then
    ``sin_t = sum_d a_s[t - d + c] t_c[d] + a_c[t - d + c] t_s[d]`` and
    ``cos_t = sum_d -a_s[t - d + c] t_s[d] + a_c[t - d + c] t_c[d]`` (zero outside the film, c = ceil(W/2) - 1),
    and returns ``log(sqrt(sin^2 + cos^2) + 1e-5)``.
    """

    def __init__(self, pyramid, device: str | None = None, frames_per_call: int = 2048) -> None:
        import torch
        from moten.core import mk_3d_gabor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        vh = tuple(pyramid.definition["stimulus_vhsize"])
        spatial, temporal = [], []
        for params in pyramid.filters:
            gs, gc, ts, tc = mk_3d_gabor(vh, **params)
            pair = np.stack([gs.reshape(-1), gc.reshape(-1)])
            pair[:, np.abs(pair).sum(0) <= 0.001] = 0.0  # pymoten's mask: pixels outside the filter's support
            spatial.append(pair)
            temporal.append((ts, tc))
        self.n_filters, self.width = len(spatial), len(temporal[0][0])
        self.margin = int(pyramid.definition["filter_temporal_width"])
        self.spatial = torch.as_tensor(np.concatenate(spatial).T, dtype=torch.float32, device=self.device)  # (P, 2F)
        w = np.zeros((2 * self.n_filters, 2, self.width))  # grouped conv: per filter (a_s, a_c) -> (sin, cos)
        for f, (ts, tc) in enumerate(temporal):
            w[2 * f] = [tc[::-1], ts[::-1]]  # conv1d correlates: flipped kernels convolve
            w[2 * f + 1] = [-ts[::-1], tc[::-1]]
        self.temporal = torch.as_tensor(w, dtype=torch.float32, device=self.device)
        c = int(np.ceil(self.width / 2.0)) - 1
        self.pad = (self.width - 1 - c, c)
        self.frames_per_call = frames_per_call

    def project(self, grey: np.ndarray) -> np.ndarray:
        """grey frames (n, H, W) -> (n, n_filters) float32, as ``pyramid.project_stimulus(grey)``."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            x = torch.as_tensor(grey.reshape(len(grey), -1), dtype=torch.float32)
            a = torch.cat([x[i : i + self.frames_per_call].to(self.device) @ self.spatial
                           for i in range(0, len(x), self.frames_per_call)])  # (n, 2F): a_s, a_c per filter
            a = F.pad(a.T[None], self.pad)  # (1, 2F, n + W - 1)
            out = F.conv1d(a, self.temporal, groups=self.n_filters)[0]  # (2F, n)
            energy = torch.sqrt(out[0::2] ** 2 + out[1::2] ** 2)
            return torch.log(energy + 1e-5).T.cpu().numpy()


def motion_energy(frames: np.ndarray, fpt: int, pyramid, size: int, chunk_trs: int,
                  engine: TorchMotionEnergy | None = None) -> np.ndarray:
    """Motion energy per TR of one film. frames: uint8 (n_trs * fpt, S, S, 3) -> (n_trs, n_filters) float32.
    ``engine`` computes the projection with torch; None calls pymoten."""
    n = len(frames)
    n_trs = n // fpt
    margin = int(pyramid.definition["filter_temporal_width"])
    out = np.zeros((n_trs, pyramid.nfilters), np.float32)
    for t0 in range(0, n_trs, chunk_trs):
        t1 = min(n_trs, t0 + chunk_trs)
        a, b = t0 * fpt, t1 * fpt
        lo, hi = max(0, a - margin), min(n, b + margin)
        grey = grey_frames(frames[lo:hi], size)
        if engine is not None:
            me = engine.project(grey)[a - lo : b - lo]
        else:
            with _quiet_pymoten():
                me = pyramid.project_stimulus(grey, dtype="float32")[a - lo : b - lo]  # (frames, n_filters)
        out[t0:t1] = me.reshape(t1 - t0, fpt, -1).mean(1)
    return out


def colour_features(frames: np.ndarray, fpt: int, grid: int) -> np.ndarray:
    """RGB means and luminance sd on a grid x grid layout, per TR. uint8 (n_trs * fpt, S, S, 3) ->
    (n_trs, 4 * grid^2) float32."""
    n, s = len(frames), frames.shape[1]
    edges = np.linspace(0, s, grid + 1).round().astype(int)
    feats = np.empty((n, 4, grid, grid), np.float32)
    x = frames.astype(np.float32) / 255.0
    lum = x @ np.array([0.299, 0.587, 0.114], np.float32)  # (n, S, S)
    for i in range(grid):
        for j in range(grid):
            cell = x[:, edges[i] : edges[i + 1], edges[j] : edges[j + 1]]
            feats[:, :3, i, j] = cell.mean(axis=(1, 2))
            feats[:, 3, i, j] = lum[:, edges[i] : edges[i + 1], edges[j] : edges[j + 1]].std(axis=(1, 2))
    return feats.reshape(n // fpt, fpt, -1).mean(1)


def feature_key(data: PreparedData, cfg: FeatureConfig) -> str:
    frames = {f: data.manifest["films"][f] for f in sorted(data.manifest["films"])}
    return config_hash({"frames": frames, "fpt": data.frames_per_tr, "size": data.frame_size,
                        "tr": data.manifest["tr"], "prepared_config": data.manifest["config"], "features": asdict(cfg)})


def film_features(data: PreparedData, cfg: FeatureConfig, progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """``{space: {film: (n_trs, n_features)}}`` for every film of the dataset, from the cache when it matches."""
    cfg.validate()
    if not (data.root / "frames").is_dir():
        raise FileNotFoundError(f"{data.root}: no frames/ folder; the baseline needs a prepared dataset with frames")
    key = feature_key(data, cfg)
    cache = data.root / "cache" / "features" / key
    films = sorted(data.manifest["films"])
    fpt = data.frames_per_tr
    fps = fpt / float(data.manifest["tr"])
    size = cfg.motion_size or data.frame_size
    pyramid = motion_pyramid(size, fps, cfg) if "motion" in cfg.spaces else None
    engine = None
    out: dict[str, dict[str, np.ndarray]] = {s: {} for s in cfg.spaces}
    meta_path = cache / "features.json"
    done = read_json(meta_path).get("films", []) if meta_path.is_file() else []
    if done:
        logger.info("features: %d of %d films cached in %s", sum(f in done for f in films), len(films), cache)
    for f in tqdm(films, desc="baseline features", unit="film", disable=bar_disabled(progress)):
        paths = {s: cache / f"{s}_{f}.npy" for s in cfg.spaces}
        if f in done and all(p.is_file() for p in paths.values()):
            for s, p in paths.items():
                out[s][f] = np.load(p)
            continue
        frames = data.frames(f)
        n_trs = int(data.manifest["films"][f]["n_trs"])
        if len(frames) < n_trs * fpt:
            raise ValueError(f"{data.root / 'frames' / (f + '.npy')}: {len(frames)} frames, {n_trs * fpt} expected")
        frames = frames[: n_trs * fpt]
        if "motion" in cfg.spaces:
            if engine is None and cfg.motion_backend == "torch":
                engine = TorchMotionEnergy(pyramid)
                logger.info("motion energy: %d filters with torch on %s", engine.n_filters, engine.device)
            out["motion"][f] = motion_energy(frames, fpt, pyramid, size, cfg.chunk_trs, engine)
        if "colour" in cfg.spaces:  # in chunks of TRs: a float copy of a whole film would take GBs
            step = cfg.chunk_trs * fpt
            out["colour"][f] = np.concatenate([colour_features(np.asarray(frames[k : k + step]), fpt, cfg.colour_grid)
                                               for k in range(0, len(frames), step)])
        for s, p in paths.items():
            with atomic_path(p) as tmp:
                np.save(tmp, out[s][f])
        done = sorted(set(done) | {f})
        write_json(meta_path, {"key": key, "config": asdict(cfg), "films": done})
    return out
