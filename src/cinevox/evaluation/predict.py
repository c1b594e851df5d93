"""Run a trained model over a split: predicted voxels and reconstructed frames."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from cinevox.data.dataset import ClipDataset, PreparedData


@torch.no_grad()
def predict(model: torch.nn.Module, kind: str, data: PreparedData, indices: np.ndarray, batch_size: int = 32,
            decoder_input: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Predictions for the samples ``indices``.

    Returns a dict with (as they apply) ``voxels_true`` (n, V), ``voxels_pred`` (n, V), ``frames_true``
    (n, 3, S, S) and ``frames_pred`` (n, 3, S, S), float32. ``decoder_input`` (n, V) replaces what the decoder
    reads (the encoder's predictions for E-D, the measured voxels for D).
    """
    device = next(model.parameters()).device
    loader = DataLoader(ClipDataset(data, indices=indices), batch_size=batch_size, shuffle=False)
    out: dict[str, list] = {"voxels_true": [], "voxels_pred": [], "frames_true": [], "frames_pred": []}
    k = 0
    for clip, voxels, frame in loader:
        clip, voxels = clip.to(device), voxels.to(device)
        out["voxels_true"].append(voxels.cpu())
        out["frames_true"].append(frame)
        if kind in ("encoder", "encdec"):
            enc = model if kind == "encoder" else model.encoder
            v_hat = enc(clip)
            out["voxels_pred"].append(v_hat.float().cpu())
        if kind in ("decoder", "encdec"):
            dec = model if kind == "decoder" else model.decoder
            if decoder_input is not None:
                v_in = torch.as_tensor(decoder_input[k : k + len(clip)], dtype=torch.float32, device=device)
            else:
                v_in = v_hat if kind == "encdec" else voxels
            out["frames_pred"].append(dec(v_in).float().cpu())
        k += len(clip)
    return {key: torch.cat(v).numpy() for key, v in out.items() if v}
