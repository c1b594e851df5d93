"""The simulator's channel drives as feature spaces: the known truth for variance partitioning.

``cinevox features PREPARED --model simulator`` writes one layer per tuning channel of ``cinevox.simulate``
(:data:`cinevox.simulate.films.CHANNELS`): layer ``c`` of a film is ``D_c`` (:func:`cinevox.simulate.channels.
channel_drives`), the HRF-convolved pRF-weighted channel at every film TR for each of the dataset's visual voxels,
(n_trs, V_visual). A voxel's noise-free signal is a weighted sum of its own channel drives, so a banded ridge on
these bands should split each informative voxel's explained variance in the proportions of its true channel
shares (:func:`true_shares`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _bids(data) -> Path:
    sim = data.manifest.get("bids_simulation")
    if not sim or not (Path(sim) / "truth.json").is_file():
        raise ValueError(f"--model simulator: {data.root} was not prepared from a `cinevox simulate` dataset")
    return Path(sim).parents[1]


def visual_positions(data) -> np.ndarray:
    """Positions (among the simulator's visual voxels) of the dataset's voxels inside the visual mask. -> (V',)"""
    import nibabel as nib

    from cinevox.data.masks import mask_positions

    sim = Path(data.manifest["bids_simulation"])
    vis = np.asarray(nib.load(sim / "visual_mask.nii.gz").dataobj) > 0
    r = mask_positions(vis, data.voxels_ijk())
    return r[r >= 0]


def simulator_films(data, cfg):
    """``(settings, iterator of (film, compute))`` as for a network, one layer per channel, one sample per TR."""
    from cinevox.simulate.channels import channel_drives
    from cinevox.simulate.films import CHANNELS
    from cinevox.utils.io import sha256_file

    bids = _bids(data)
    if cfg.layers and set(cfg.layers) - set(CHANNELS):
        raise ValueError(f"--layers: the simulator's channels are {', '.join(CHANNELS)}")
    layers = tuple(cfg.layers) or tuple(CHANNELS)
    sim = bids / "derivatives" / "simulation"
    settings = {"identity": {"model": "simulator", "truth_sha256": sha256_file(sim / "truth.json"),
                             "tuning_sha256": sha256_file(sim / "tuning.npz"), "kind": "oracle"},
                "layers": list(layers), "rate": None, "pool": "none", "clip_seconds": None,
                "frame_size": data.frame_size, "frames_per_tr": data.frames_per_tr, "tr": float(data.manifest["tr"]),
                "version": _version()}
    state: dict = {}

    def drives():
        if "d" not in state:
            state["d"] = channel_drives(bids, visual_positions(data))
        return state["d"]

    def films():
        for film in sorted(data.manifest["films"]):
            def compute(film=film):
                d = drives()[film][: int(data.manifest["films"][film]["n_trs"])]  # (n_trs, C, V')
                yield 0, {c: np.ascontiguousarray(d[:, CHANNELS.index(c)]) for c in layers}, len(d)
            yield film, compute

    return settings, films()


def _version() -> str:
    from cinevox import __version__

    return __version__


def true_shares(data) -> tuple[np.ndarray, np.ndarray]:
    """Each visual voxel's true share of its noise-free drive per channel, over the test TRs:
    ``var(w_vc D_vc) / sum_c var(w_vc D_vc)``. -> ``(columns of the dataset's voxels (V',), shares (V', C))``."""
    import nibabel as nib

    from cinevox.data.masks import mask_positions
    from cinevox.simulate.channels import channel_drives

    bids = _bids(data)
    sim = Path(data.manifest["bids_simulation"])
    vis = np.asarray(nib.load(sim / "visual_mask.nii.gz").dataobj) > 0
    r = mask_positions(vis, data.voxels_ijk())
    cols = np.flatnonzero(r >= 0)
    d = channel_drives(bids, r[cols])
    w = np.load(bids / "derivatives" / "simulation" / "tuning.npz")["weights"][r[cols]]  # (V', C)
    test = data.samples[data.samples["split"] == "test"]
    x = np.stack([d[f][int(t)] for f, t in zip(test["film"], test["tr"])])  # (n, C, V')
    var = (x * w.T[None]).var(0).T  # (V', C)
    tot = var.sum(1, keepdims=True)
    return cols, np.divide(var, tot, out=np.zeros_like(var), where=tot > 0)
