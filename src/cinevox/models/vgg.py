"""VGG16 feature stack for the perceptual loss, defined here (no torchvision dependency).

The module's state-dict keys are torchvision's (``features.0.weight`` ...), so the official ImageNet file
``vgg16-397923af.pth`` loads unchanged. Weights are looked up, in order, in an explicit file, the torch hub
cache (``$TORCH_HOME/hub/checkpoints``), then the official URL (download checked against its hash).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_HASH_PREFIX = "397923af"
_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
#: The five blocks the perceptual loss compares: ``features`` split after each max-pool.
BLOCK_SLICES = [(0, 5), (5, 10), (10, 17), (17, 24), (24, 31)]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """``features`` of torchvision's VGG16 (configuration D), returning the output of each block."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> list[torch.Tensor]:
        """x: (B, 3, H, W) in [0, 1] -> five feature maps (B, C_k, H / 2^k, W / 2^k).

        ``normalize`` applies the ImageNet mean/std first (False: x goes in as it is, as the authors' code)."""
        if normalize:
            x = (x - self.mean) / self.std
        outs = []
        for a, b in BLOCK_SLICES:
            x = self.features[a:b](x)
            outs.append(x)
        return outs


class WeightsNotFoundError(FileNotFoundError):
    """No VGG16 ImageNet weights could be found or downloaded."""


def _features_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    feats = {k: v for k, v in state.items() if k.startswith("features.")}
    expected = {k for k in VGG16Features().state_dict()}
    missing = sorted(expected - set(feats))
    if missing:
        raise ValueError(f"{source}: not a torchvision VGG16 state dict (missing {missing[:3]} ...)")
    return feats


def _from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or not a torch file
        raise ValueError(f"{path}: cannot read VGG16 weights ({err})") from err
    return _features_state(state, str(path))


def find_vgg16_weights(
    weights: str | Path | None = None,
    url: str | None = VGG16_URL,
    hash_prefix: str | None = VGG16_HASH_PREFIX,
) -> tuple[dict[str, torch.Tensor], str]:
    """Return ``(features state dict, where it came from)``.

    Raises
    ------
    WeightsNotFoundError
        When ``weights`` is given but missing, or when no source has the file.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"VGG16 weights file {path} does not exist: pass an existing --vgg-weights "
                                       f"FILE ({VGG16_FILENAME}), or leave it out and add --allow-random-vgg for a "
                                       "random VGG16 perceptual loss (a smoke test, not the paper's loss)")
        return _from_file(path), str(path)
    name = Path(url).name if url else VGG16_FILENAME
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return _from_file(cached), str(cached)
    if url:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".partial")
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)  # a closed network must fail, not hang
        try:
            torch.hub.download_url_to_file(url, str(tmp), hash_prefix=hash_prefix, progress=False)
        except Exception as err:
            tmp.unlink(missing_ok=True)
            raise WeightsNotFoundError(
                f"VGG16 ImageNet weights not found: no --vgg-weights FILE, none at {cached}, and download of {url} "
                f"failed ({err}); pass --vgg-weights FILE ({name}), put it in {cached.parent}, or add "
                "--allow-random-vgg for a random VGG16 perceptual loss (a smoke test, not the paper's loss)"
            ) from err
        finally:
            socket.setdefaulttimeout(old_timeout)
        tmp.replace(cached)
        return _from_file(cached), url
    raise WeightsNotFoundError(f"VGG16 ImageNet weights not found at {cached} and no URL to download from: pass "
                               f"--vgg-weights FILE ({name}) or add --allow-random-vgg")


def load_vgg16_features(
    weights: str | Path | None = None,
    *,
    url: str | None = VGG16_URL,
    hash_prefix: str | None = VGG16_HASH_PREFIX,
    allow_random: bool = False,
) -> VGG16Features:
    """Build a frozen :class:`VGG16Features` with ImageNet weights.

    With ``allow_random=True`` a missing file gives a randomly initialised (seeded, frozen) network and a
    logged warning instead of an error: the perceptual term then compares random features.
    """
    net = VGG16Features()
    try:
        state, source = find_vgg16_weights(weights, url, hash_prefix)
    except WeightsNotFoundError as err:
        if not allow_random or weights is not None:
            raise
        logger.warning("VGG16 ImageNet weights not found (%s): using a RANDOMLY INITIALISED VGG16 for the perceptual "
                       "loss (--allow-random-vgg); pass --vgg-weights %s for the paper's loss",
                       str(err).split(";")[0], VGG16_FILENAME)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        net = VGG16Features()
        torch.random.set_rng_state(gen_state)
        net.source = "random-init (seed 0)"
    else:
        net.load_state_dict(state, strict=True)
        net.source = source
        logger.info("VGG16 weights loaded from %s", source)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
