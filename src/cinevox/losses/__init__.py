"""The paper's losses (eqs. 1-3, REFERENCE section 4)."""

from cinevox.losses.decoder import DecoderLoss, PerceptualLoss, ssim_loss, total_variation
from cinevox.losses.encoder import EncoderLoss, cosine_distance
from cinevox.losses.endtoend import EndToEndLoss, LossConfig, build_loss

__all__ = [
    "DecoderLoss",
    "EncoderLoss",
    "EndToEndLoss",
    "LossConfig",
    "PerceptualLoss",
    "build_loss",
    "cosine_distance",
    "ssim_loss",
    "total_variation",
]
