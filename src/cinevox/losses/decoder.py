"""Decoder loss L_D = beta * perceptual + gamma * (1 - SSIM) + delta * TV (paper eq. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cinevox.metrics import ssim_per_image
from cinevox.models.vgg import VGG16Features
from cinevox.utils.collective import distributed_active, global_extreme


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM`` averaged over the batch (scalar)."""
    return 1.0 - ssim_per_image(pred, target).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation normalised by the number of elements. (B, C, H, W) -> scalar."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().sum()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().sum()
    return (dh + dw) / x.numel()


def batch_minmax(x: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)`` over the whole batch (the authors' perceptual-loss input).

    Under torch.distributed, while gradients are on (training), min and max are those of the *global* batch,
    all-reduced differentiably (:func:`cinevox.utils.collective.global_extreme`), so that training does not
    depend on the process count. Validation (no gradients; each process' shard has its own length, so no
    collective can be taken per batch) normalises each process' part of the batch: under ``--profile authors``
    the validation loss, not the weights, can differ slightly with the number of processes."""
    if torch.is_grad_enabled() and distributed_active():
        lo, hi = global_extreme(x, largest=False), global_extreme(x, largest=True)
    else:
        lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-12)


class PerceptualLoss(nn.Module):
    """Sum over VGG16's five blocks of ``1 - cosine similarity over channels`` (mean over positions, batch).

    Parameters
    ----------
    vgg : VGG16Features
        A frozen feature network (see :func:`cinevox.models.load_vgg16_features`).
    resize : int or None
        Resize frames (bilinear) to ``resize x resize`` first (the authors' code uses 224); None keeps the size.
    input_mode : "imagenet" or "authors"
        "imagenet": ImageNet mean/std; "authors": a min-max over the whole batch (prediction and target
        separately, after the resize), no mean/std.
    """

    def __init__(self, vgg: VGG16Features, resize: int | None = None, input_mode: str = "imagenet") -> None:
        super().__init__()
        if input_mode not in ("imagenet", "authors"):
            raise ValueError(f"perceptual input must be 'imagenet' or 'authors', got {input_mode!r}")
        self.vgg, self.resize, self.input_mode = vgg, resize, input_mode

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The VGG16 input: (B, 3, H, W) -> (B, 3, R, R), before the network's own normalisation."""
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return batch_minmax(x) if self.input_mode == "authors" else x

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        norm = self.input_mode == "imagenet"
        pred, target = self.prepare(pred), self.prepare(target)
        with torch.no_grad():
            feats_t = self.vgg(target, normalize=norm)
        total = pred.new_zeros(())
        for fp, ft in zip(self.vgg(pred, normalize=norm), feats_t):
            total = total + (1.0 - F.cosine_similarity(fp, ft, dim=1, eps=1e-8)).mean()  # (B, h, w) -> ()
        return total


class DecoderLoss(nn.Module):
    """``beta * L_psim + gamma * (1 - SSIM) + delta * TV`` with the paper's 0.35 / 0.35 / 0.30."""

    def __init__(
        self, perceptual: PerceptualLoss | None, beta: float = 0.35, gamma: float = 0.35, delta: float = 0.30
    ) -> None:
        super().__init__()
        if perceptual is None and beta != 0:
            raise ValueError("beta > 0 needs a perceptual loss (VGG16 features)")
        self.perceptual, self.beta, self.gamma, self.delta = perceptual, beta, gamma, delta

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.gamma * ssim_loss(pred, target) + self.delta * total_variation(pred)
        if self.beta:
            loss = loss + self.beta * self.perceptual(pred, target)
        return loss
