"""Temporal-CNN encoder: movie clip -> voxel activity (REFERENCE section 2).

Shapes below are for the paper's sizes (``frame_size=112``, ``n_frames=32``); every size divides by
the same factors for smaller clips (``frame_size`` a multiple of 8, ``n_frames`` even).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cinevox.configs import CONCEPT_LAYERS

#: Encoder layers whose activations concept analysis (TCAV) reads.


class TemporalCombinations(nn.Module):
    """One Conv2d + ReLU + BatchNorm2d per time slice, concatenated on channels.

    The paper's "temporal combinations" are ``n_slices`` independent ``Conv2d(c_in -> c_out)``; stacking
    the slices on the channel axis makes them exactly one grouped convolution with ``groups=n_slices``
    (slice ``t`` owns input channels ``[t*c_in, (t+1)*c_in)`` and output channels
    ``[t*c_out, (t+1)*c_out)``), and the per-slice BatchNorms one BatchNorm over all channels.

    Parameters
    ----------
    c_in, c_out : int
        Channels per slice in and out (256 and 128 in the paper).
    n_slices : int
        Number of time slices (16 in the paper).
    """

    def __init__(self, c_in: int = 256, c_out: int = 128, n_slices: int = 16) -> None:
        super().__init__()
        self.c_in, self.c_out, self.n_slices = c_in, c_out, n_slices
        self.conv = nn.Conv2d(c_in * n_slices, c_out * n_slices, 3, padding=1, groups=n_slices)
        self.bn = nn.BatchNorm2d(c_out * n_slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, H, W, n_slices) -> (B, n_slices * c_out, H, W)."""
        b, c, h, w, t = x.shape
        if t != self.n_slices or c != self.c_in:
            raise ValueError(f"expected (B, {self.c_in}, H, W, {self.n_slices}), got {tuple(x.shape)}")
        x = x.permute(0, 4, 1, 2, 3).reshape(b, t * c, h, w)  # (B, 16*256, 28, 28), slice-major
        return self.bn(torch.relu(self.conv(x)))  # (B, 16*128, 28, 28)


class Encoder(nn.Module):
    """Predict ``n_voxels`` voxel activities from a clip of ``n_frames`` RGB frames.

    Parameters
    ----------
    n_voxels : int
        Number of output voxels V.
    n_frames : int
        Frames per clip T (32 in the paper); must be even.
    frame_size : int
        Frame height = width S (112 in the paper); must be a multiple of 8.
    dropout : float
        Dropout before the last linear layer.
    """

    def __init__(self, n_voxels: int, n_frames: int = 32, frame_size: int = 112, dropout: float = 0.5) -> None:
        super().__init__()
        if n_frames % 2 or n_frames < 2:
            raise ValueError(f"n_frames must be a positive even number, got {n_frames}")
        if frame_size % 8 or frame_size < 8:
            raise ValueError(f"frame_size must be a positive multiple of 8, got {frame_size}")
        self.n_voxels, self.n_frames, self.frame_size = n_voxels, n_frames, frame_size
        self.conv1 = nn.Conv3d(3, 32, kernel_size=(3, 3, 1), padding=(1, 1, 0))
        self.pool1 = nn.MaxPool3d((2, 2, 1))
        self.conv2 = nn.Conv3d(32, 256, kernel_size=(1, 1, 5), padding=(0, 0, 2))
        self.pool2 = nn.MaxPool3d((2, 2, 1))
        self.tpool2 = nn.AvgPool3d((1, 1, 2))
        self.temporal = TemporalCombinations(256, 128, n_frames // 2)
        self.conv4 = nn.Conv2d(128 * (n_frames // 2), 64, 3, stride=2, padding=1)
        self.bn4 = nn.BatchNorm2d(64)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64 * (frame_size // 8) ** 2, n_voxels)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip: (B, 3, S, S, T) in [0, 1] -> voxels (B, V).

        The fast layout (the default): the same function as the 3D layers, computed with 2D operations on
        channels-last tensors so that every convolution is one GEMM-friendly oneDNN/cuDNN call and no 3D pooling
        is needed. The (3, 3, 1) convolution is a 2D convolution of every frame, the (1, 1, 5) one a (5, 1)
        convolution of a (time, pixels) image, the (2, 2, 1) max-pools are 2D max-pools and the (1, 1, 2)
        average a mean over pairs of time slices. A clip whose memory is (B, T, S, S, 3) (what the batch loader
        gives: a permuted view) enters without a copy. ``forward_3d`` is the literal 3D version."""
        b, _, s, _, t = clip.shape
        cl = torch.channels_last
        x = clip.permute(0, 4, 1, 2, 3).reshape(b * t, 3, s, s).contiguous(memory_format=cl)  # (B*T, 3, S, S)
        x = F.conv2d(x, self.conv1.weight[..., 0], self.conv1.bias, padding=1)  # (B*T, 32, S, S)
        x = F.max_pool2d(x, 2)  # (B*T, 32, S/2, S/2), memory (B, T, S/2, S/2, 32)
        h = s // 2
        x = x.permute(0, 2, 3, 1).reshape(b, t, h * h, 32).permute(0, 3, 1, 2)  # (B, 32, T, S/2*S/2), a view
        x = F.conv2d(x, self.conv2.weight[:, :, 0, 0].unsqueeze(-1), self.conv2.bias, padding=(2, 0))
        c2 = x.shape[1]  # (B, 256, T, P) channels-last: memory (B, T, P, 256)
        x = x.permute(0, 2, 3, 1).reshape(b * t, h, h, c2).permute(0, 3, 1, 2)  # (B*T, 256, S/2, S/2), a view
        x = F.max_pool2d(x, 2)  # (B*T, 256, S/4, S/4), memory (B, T, S/4, S/4, 256)
        q = s // 4
        x = x.permute(0, 2, 3, 1).reshape(b, t // 2, 2, q, q, c2).mean(2)  # (B, T/2, S/4, S/4, 256)
        x = x.permute(0, 2, 3, 1, 4).reshape(b, q, q, (t // 2) * c2).permute(0, 3, 1, 2)  # (B, T/2*256, S/4, S/4)
        tc = self.temporal
        x = tc.bn(torch.relu(tc.conv(x)))  # (B, 16*128, 28, 28): grouped convolution, slice-major channels
        x = self.bn4(torch.relu(self.conv4(x)))  # (B, 64, 14, 14)
        return self.fc(self.dropout(x.contiguous().flatten(1)))  # (B, 12544) -> (B, V)

    def head(self, act: torch.Tensor, layer: str) -> torch.Tensor:
        """The rest of the encoder from a layer's activations (see :meth:`activations`) -> voxels (B, V)."""
        if layer not in CONCEPT_LAYERS:
            raise ValueError(f"unknown encoder layer {layer!r}: use one of {', '.join(CONCEPT_LAYERS)}")
        if layer == "pool2":
            act = self.temporal.bn(torch.relu(self.temporal.conv(act)))  # (B, 16*128, 28, 28)
        if layer in ("pool2", "temporal"):
            act = self.bn4(torch.relu(self.conv4(act)))  # (B, 64, 14, 14)
        return self.fc(self.dropout(act.contiguous().flatten(1)))  # (B, 12544) -> (B, V)

    def activations(self, clip: torch.Tensor, layer: str) -> torch.Tensor:
        """Activations at ``layer``: "pool2" (the temporal combinations' input, (B, 16*256, 28, 28)), "temporal"
        (after the temporal combinations, (B, 2048, 28, 28)) or "conv4" (after conv4, its ReLU and BatchNorm,
        (B, 64, 14, 14)); ``head(activations(x, l), l) == forward(x)``. From "conv4" on the readout is linear."""
        if layer not in CONCEPT_LAYERS:
            raise ValueError(f"unknown encoder layer {layer!r}: use one of {', '.join(CONCEPT_LAYERS)}")
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str, inputs: bool = False):
            def hook(module, i, o) -> None:  # returns None: the module's output is left as it is
                captured[name] = i[0] if inputs else o
            return hook

        hooks = [self.temporal.conv.register_forward_hook(keep("pool2", inputs=True)),
                 self.temporal.bn.register_forward_hook(keep("temporal")),
                 self.bn4.register_forward_hook(keep("conv4"))]
        try:
            self.forward(clip)
        finally:
            for h in hooks:
                h.remove()
        return captured[layer]

    def forward_3d(self, clip: torch.Tensor) -> torch.Tensor:
        """The literal layout: 3D convolutions and pools on (B, C, S, S, T). Same function as :meth:`forward`."""
        x = self.pool1(self.conv1(clip))  # (B, 32, 56, 56, 32)
        x = self.tpool2(self.pool2(self.conv2(x)))  # (B, 256, 28, 28, 16)
        x = self.temporal(x)  # (B, 2048, 28, 28)
        x = self.bn4(torch.relu(self.conv4(x)))  # (B, 64, 14, 14)
        return self.fc(self.dropout(x.flatten(1)))  # (B, 12544) -> (B, V)
