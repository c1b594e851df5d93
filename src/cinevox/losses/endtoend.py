"""End-to-end loss L_ED = eps * L_E + (1 - eps) * L_D (paper eq. 3) and the loss factory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cinevox.losses.decoder import DecoderLoss, PerceptualLoss
from cinevox.losses.encoder import EncoderLoss
from cinevox.models.vgg import load_vgg16_features


@dataclass
class LossConfig:
    """Loss weights (paper values) and where the VGG16 weights come from."""

    alpha: float = 0.5
    beta: float = 0.35
    gamma: float = 0.35
    delta: float = 0.30
    eps: float = 0.5
    mse_over_voxels: bool | None = None  # the authors' extra division of the MSE by V (None: profile)
    vgg_weights: str | None = None  # explicit file; else torch hub cache, else the official URL
    vgg_allow_random: bool = False  # fall back to a random VGG16 (logged) when no weights are found
    perceptual_input: str | None = None  # "imagenet" | "authors" (Resize 224 + batch min-max); None: profile
    perceptual_resize: int | None = None  # explicit size before VGG16 ("authors" input: 224 unless given)


class EndToEndLoss(nn.Module):
    """``eps * L_E(v, v_hat) + (1 - eps) * L_D(f, f_hat)``; returns the total and both parts."""

    def __init__(self, enc: EncoderLoss, dec: DecoderLoss, eps: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1], got {eps}")
        self.enc, self.dec, self.eps = enc, dec, eps

    def forward(
        self, v_hat: torch.Tensor, v: torch.Tensor, f_hat: torch.Tensor, f: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        le, ld = self.enc(v_hat, v), self.dec(f_hat, f)
        return self.eps * le + (1.0 - self.eps) * ld, le, ld


def build_loss(kind: str, cfg: LossConfig) -> nn.Module:
    """Loss for a model kind: EncoderLoss, DecoderLoss or EndToEndLoss."""
    enc = EncoderLoss(cfg.alpha, bool(cfg.mse_over_voxels))
    if kind == "encoder":
        return enc
    perceptual = None
    if cfg.beta:
        vgg = load_vgg16_features(cfg.vgg_weights, allow_random=cfg.vgg_allow_random)
        mode = cfg.perceptual_input or "imagenet"
        resize = cfg.perceptual_resize or (224 if mode == "authors" else None)
        perceptual = PerceptualLoss(vgg, resize, mode)
    dec = DecoderLoss(perceptual, cfg.beta, cfg.gamma, cfg.delta)
    if kind == "decoder":
        return dec
    if kind == "encdec":
        return EndToEndLoss(enc, dec, cfg.eps)
    raise ValueError(f"unknown model kind {kind!r}")
