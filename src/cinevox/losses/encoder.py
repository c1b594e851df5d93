"""Encoder loss L_E = MSE + alpha * cosine distance (paper eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_distance(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample ``1 - cos(pred, target)`` over voxels. (B, V), (B, V) -> (B,)."""
    return 1.0 - F.cosine_similarity(pred, target, dim=1, eps=eps)


class EncoderLoss(nn.Module):
    """``MSE(v, v_hat) + alpha * mean_b cosine_distance``.

    ``mse_over_voxels=True`` reproduces the authors' code, which divides the (already averaged) MSE once
    more by V, so that the cosine term dominates.
    """

    def __init__(self, alpha: float = 0.5, mse_over_voxels: bool = False) -> None:
        super().__init__()
        self.alpha, self.mse_over_voxels = alpha, mse_over_voxels

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = F.mse_loss(pred, target)
        if self.mse_over_voxels:
            mse = mse / target.shape[1]
        return mse + self.alpha * cosine_distance(pred, target).mean()
