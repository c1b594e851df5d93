"""The paper's networks. Inputs are clips ``(B, 3, H, W, T)`` in [0, 1], time last."""

from cinevox.models.decoder import Decoder
from cinevox.models.encdec import EncoderDecoder, build_model
from cinevox.models.encoder import Encoder, TemporalCombinations
from cinevox.models.vgg import VGG16Features, load_vgg16_features

__all__ = [
    "Decoder",
    "Encoder",
    "EncoderDecoder",
    "TemporalCombinations",
    "VGG16Features",
    "build_model",
    "load_vgg16_features",
]
