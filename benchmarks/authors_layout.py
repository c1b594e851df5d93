"""A re-implementation of the authors' layer layout (REFERENCE section 2, written from the description, not their
code), the reference that cinevox's fast path is measured against and checked equal to.

Encoder: Conv3d (3, 3, 1) -> MaxPool3d (2, 2, 1) -> Conv3d (1, 1, 5) -> MaxPool3d (2, 2, 1) -> AvgPool3d (1, 1, 2)
-> 16 separate Conv2d + ReLU + BatchNorm2d on the time slices, concatenated -> Conv2d stride 2 + ReLU + BN ->
Dropout -> Linear. Decoder as the paper. Optimizer: ``torch.optim.Adam(lr=1e-4)`` with PyTorch's defaults.
:func:`copy_weights` maps cinevox's state dict (one grouped convolution) onto the 16 slices, so that tests can
check that both compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from cinevox.models import Decoder


class AuthorsEncoder(nn.Module):
    def __init__(self, n_voxels: int, n_frames: int = 32, frame_size: int = 112, dropout: float = 0.5) -> None:
        super().__init__()
        self.n_slices = n_frames // 2
        self.conv1 = nn.Conv3d(3, 32, kernel_size=(3, 3, 1), padding=(1, 1, 0))
        self.pool1 = nn.MaxPool3d((2, 2, 1))
        self.conv2 = nn.Conv3d(32, 256, kernel_size=(1, 1, 5), padding=(0, 0, 2))
        self.pool2 = nn.MaxPool3d((2, 2, 1))
        self.tpool2 = nn.AvgPool3d((1, 1, 2))
        self.slices = nn.ModuleList(nn.Sequential(nn.Conv2d(256, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128))
                                    for _ in range(self.n_slices))
        self.conv4 = nn.Conv2d(128 * self.n_slices, 64, 3, stride=2, padding=1)
        self.bn4 = nn.BatchNorm2d(64)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64 * (frame_size // 8) ** 2, n_voxels)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(clip))
        x = self.tpool2(self.pool2(self.conv2(x)))  # (B, 256, 28, 28, 16)
        x = torch.cat([self.slices[t](x[..., t]) for t in range(self.n_slices)], dim=1)
        x = self.bn4(torch.relu(self.conv4(x)))
        return self.fc(self.dropout(x.flatten(1)))


class AuthorsEncoderDecoder(nn.Module):
    def __init__(self, n_voxels: int, n_frames: int = 32, frame_size: int = 112) -> None:
        super().__init__()
        self.encoder = AuthorsEncoder(n_voxels, n_frames, frame_size)
        self.decoder = Decoder(n_voxels, frame_size)

    def forward(self, clip):
        v = self.encoder(clip)
        return v, self.decoder(v)


def copy_weights(cinevox_encoder: nn.Module, authors: AuthorsEncoder) -> None:
    """Load a cinevox Encoder's weights into the authors' layout (the grouped conv split into 16 slices)."""
    sd = cinevox_encoder.state_dict()
    out = {k: v for k, v in sd.items() if not k.startswith("temporal.")}
    n, c_out = authors.n_slices, 128
    for t in range(n):
        sl = slice(t * c_out, (t + 1) * c_out)
        out[f"slices.{t}.0.weight"] = sd["temporal.conv.weight"][sl]
        out[f"slices.{t}.0.bias"] = sd["temporal.conv.bias"][sl]
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"slices.{t}.2.{k}"] = sd[f"temporal.bn.{k}"][sl]
        out[f"slices.{t}.2.num_batches_tracked"] = sd["temporal.bn.num_batches_tracked"]
    authors.load_state_dict(out)


def authors_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-4)
