"""The simulator's stimulus drive split by tuning channel, read back from a simulated dataset.

For visual voxel v and channel c (``CHANNELS``), ``D_c,v(k)`` is the HRF-convolved pRF-weighted channel ``c`` at
film TR ``k`` (the rows of ``stimulus_signal/<film>.npy``), before the tuning weights, so that::

    stimulus_signal_v(k) = zscore_film( sum_c w_vc D_c,v(k) )

It is the ground truth for probes of what a model has learned about each voxel's tuning: regressing a voxel's
series (measured, or a model's predictions) on its ``D_c,v`` recovers weights proportional to ``w_vc`` when the
series carries that tuning.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cinevox.simulate.brain import NeuralAccumulator, bold_at_trs
from cinevox.simulate.config import SimConfig
from cinevox.simulate.films import CHANNELS, frame_features
from cinevox.simulate.run import film_blocks


def channel_drives(bids: str | Path, visual_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per film of the simulated dataset ``bids``: ``(n_film_trs, n_channels, V)`` float32 drives of the visual
    voxels ``visual_index`` (positions in C order of ``visual_mask.nii.gz``; all when None). The films are rendered
    again from the seed recorded in ``truth.json`` (or read from their source)."""
    sim = Path(bids) / "derivatives" / "simulation"
    truth_path = sim / "truth.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{bids}: not a cinevox simulation (no {truth_path.relative_to(bids)})")
    truth = json.loads(truth_path.read_text())
    cfg = SimConfig(**truth["config"])
    tz = np.load(sim / "tuning.npz")
    idx = slice(None) if visual_index is None else np.asarray(visual_index)
    tuning = SimpleNamespace(prf=tz["prf"][idx], weights=tz["weights"][idx])
    out = {}
    for film, meta in truth["films"].items():
        if "render_index" not in meta:
            raise ValueError(f"{truth_path}: film {film!r} has no render_index (simulated by an older cinevox); "
                             "run cinevox simulate again")
        fps, aspect, n_frames, blocks = film_blocks(cfg, meta, int(meta["render_index"]))
        acc = NeuralAccumulator(tuning, cfg.feature_grid, aspect, fps, cfg.tr, n_frames)
        prev = None
        for start, frames, objm, facem in blocks:
            feats, prev = frame_features(frames, prev, objm, facem, cfg.feature_grid)
            acc.add(start, feats)
        f = acc.features()  # (n_bins, C, g*g)
        seg = slice(*meta["film_segment_trs"])
        out[film] = np.stack([bold_at_trs(f[:, c] @ acc.P, cfg.tr, meta["onset"], meta["run_trs"])[seg]
                              for c in range(len(CHANNELS))], axis=1).astype(np.float32)
    return out


def probe_tuning(drives: dict[str, np.ndarray], films, trs, series: np.ndarray) -> np.ndarray:
    """The tuning a series carries, in the simulator's channels: for each voxel, the non-negative least-squares
    weights of its series on its own channel drives at the samples' film TRs (both centred).

    drives: ``channel_drives`` output (n_film_trs, C, V) per film; films, trs: (n,) film and film TR of each row
    of ``series`` (n, V). Returns (V, C). On the noise-free stimulus signal the weights are proportional to the
    true ``w_vc`` (up to the collinearity of the channels over the TRs given)."""
    from scipy.optimize import nnls

    x = np.stack([drives[f][int(t)] for f, t in zip(films, trs)]).astype(np.float64)  # (n, C, V)
    x -= x.mean(0)
    y = np.asarray(series, np.float64)
    y = y - y.mean(0)
    out = np.zeros((y.shape[1], x.shape[1]))
    for v in range(y.shape[1]):
        if np.isfinite(y[:, v]).all() and y[:, v].any():
            out[v] = nnls(x[:, :, v], y[:, v])[0]
    return out
