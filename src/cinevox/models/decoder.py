"""Decoder: voxel activity -> the clip's middle frame (REFERENCE section 3)."""

from __future__ import annotations

import torch
from torch import nn


class Decoder(nn.Module):
    """Reconstruct an RGB frame ``(3, S, S)`` from ``n_voxels`` voxels.

    Parameters
    ----------
    n_voxels : int
        Number of input voxels V.
    frame_size : int
        Output frame size S (112 in the paper); must be a multiple of 8.
    channels : int
        Feature channels of the up-sampling stack (48 in the paper).
    final_batchnorm : bool
        The authors' code adds ``BatchNorm2d(3)`` after the sigmoid (the output then leaves [0, 1]).
        The paper ends with the sigmoid; off by default.
    """

    def __init__(
        self, n_voxels: int, frame_size: int = 112, channels: int = 48, final_batchnorm: bool = False
    ) -> None:
        super().__init__()
        if frame_size % 8 or frame_size < 8:
            raise ValueError(f"frame_size must be a positive multiple of 8, got {frame_size}")
        self.n_voxels, self.frame_size, self.channels = n_voxels, frame_size, channels
        self.start = frame_size // 8
        self.fc = nn.Linear(n_voxels, channels * self.start**2)
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(channels, channels, 5, padding=2),
                nn.ReLU(),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.BatchNorm2d(channels),
            )
            for _ in range(3)
        )
        self.out = nn.ConvTranspose2d(channels, 3, 5, padding=2)
        self.final_bn = nn.BatchNorm2d(3) if final_batchnorm else None

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        """voxels: (B, V) -> frame (B, 3, S, S)."""
        return self.decode_features(self.fc(voxels))

    def decode_features(self, h: torch.Tensor) -> torch.Tensor:
        """The first layer's output before its ReLU (B, 48 (S/8)^2) -> frame (B, 3, S, S)."""
        x = torch.relu(h)  # (B, 48*14*14)
        x = x.view(-1, self.channels, self.start, self.start)  # (B, 48, 14, 14)
        for block in self.up:
            x = block(x)  # 14 -> 28 -> 56 -> 112
        x = torch.sigmoid(self.out(x))  # (B, 3, 112, 112)
        return self.final_bn(x) if self.final_bn is not None else x
