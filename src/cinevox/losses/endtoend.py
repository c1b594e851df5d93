"""End-to-end loss L_ED = eps * L_E + (1 - eps) * L_D (paper eq. 3) and the loss factory."""

from __future__ import annotations

import torch
from torch import nn

from cinevox.configs import LossConfig
from cinevox.losses.decoder import DecoderLoss, PerceptualLoss
from cinevox.losses.encoder import EncoderLoss
from cinevox.models.vgg import load_vgg16_features


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
