"""End-to-end encoder-decoder: the decoder reads the encoder's *predicted* voxels."""

from __future__ import annotations

import torch
from torch import nn

from cinevox.configs import ModelConfig
from cinevox.models.decoder import Decoder
from cinevox.models.encoder import Encoder


class EncoderDecoder(nn.Module):
    """``clip (B, 3, S, S, T) -> (voxels (B, V), frame (B, 3, S, S))``."""

    def __init__(
        self,
        n_voxels: int,
        n_frames: int = 32,
        frame_size: int = 112,
        dropout: float = 0.5,
        final_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(n_voxels, n_frames, frame_size, dropout)
        self.decoder = Decoder(n_voxels, frame_size, final_batchnorm=final_batchnorm)

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        voxels = self.encoder(clip)  # (B, V)
        return voxels, self.decoder(voxels)  # (B, V), (B, 3, S, S)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The one factory for the three model kinds."""
    if cfg.subjects:  # a --target subjects model: per-viewer read-outs / input layers and an average viewer
        from cinevox.models.subjects import SubjectDecoder, SubjectEncoder, SubjectEncoderDecoder

        n, r, c = len(cfg.subjects), cfg.subject_rank, cfg.subject_heads == "centered"
        if cfg.subject_heads not in ("centered", "free"):
            raise ValueError(f"subject_heads must be 'centered' or 'free', got {cfg.subject_heads!r}")
        if cfg.kind == "encoder":
            return SubjectEncoder(cfg.n_voxels, n, r, cfg.n_frames, cfg.frame_size, cfg.dropout, centered=c)
        if cfg.kind == "decoder":
            return SubjectDecoder(cfg.n_voxels, n, r, cfg.frame_size, final_batchnorm=cfg.final_batchnorm, centered=c)
        if cfg.kind == "encdec":
            return SubjectEncoderDecoder(cfg.n_voxels, n, r, cfg.n_frames, cfg.frame_size, cfg.dropout,
                                         cfg.final_batchnorm, centered=c)
    if cfg.kind == "encoder":
        return Encoder(cfg.n_voxels, cfg.n_frames, cfg.frame_size, cfg.dropout)
    if cfg.kind == "decoder":
        return Decoder(cfg.n_voxels, cfg.frame_size, final_batchnorm=cfg.final_batchnorm)
    if cfg.kind == "encdec":
        return EncoderDecoder(cfg.n_voxels, cfg.n_frames, cfg.frame_size, cfg.dropout, cfg.final_batchnorm)
    raise ValueError(f"unknown model kind {cfg.kind!r}; expected 'encoder', 'decoder' or 'encdec'")
