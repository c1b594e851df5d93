"""Frozen networks as feature extractors: uint8 frames or clips in, one pooled vector per layer out.

Three sources, one interface (:class:`Backbone`):

- a Hugging Face model id or a local folder in its layout, loaded with ``transformers.AutoModel`` (an optional
  extra, ``pip install cinevox[features]``). Image models (DINOv2, ViT, CLIP/SigLIP vision towers) take one frame
  per sample, video models (VideoMAE, V-JEPA 2: a config with ``num_frames`` or ``frames_per_clip``) a clip.
  Layers are the encoder's hidden states: ``layer0`` (the embeddings) to ``layerN`` (the last block).
  A hub id is resolved in the local Hugging Face cache first; with ``HF_HUB_OFFLINE=1`` nothing is downloaded.
- ``vgg16``: cinevox's own VGG16 feature stack (:mod:`cinevox.models.vgg`) with its weights file; layers
  ``block1`` to ``block5``.
- a trained cinevox run (or exported model folder) with an encoder: its layers ``pool2``, ``temporal``, ``conv4``
  on clips of its own length.

Input size and normalisation come from the model's saved processor config (``preprocessor_config.json``,
``video_preprocessor_config.json``, or the ``image_processor`` / ``video_processor`` entry of a whole processor's
``processor_config.json``: ``crop_size`` else ``size``, ``image_mean``, ``image_std``), else from its
config's ``image_size`` / ``crop_size`` with ImageNet's mean and sd. Frames are resized (bilinear, antialiased)
to that size without cropping.

Pooling of a layer's activations (tokens ``(B, N, D)`` or maps ``(B, C, h, w)``): ``mean`` over tokens or space
(all tokens: class and register tokens included), ``cls`` (the class token: the first of the tokens that precede the
patch tokens; refused for a model with patch tokens only, such as SigLIP, VideoMAE and V-JEPA 2), or ``gridG``
(patch tokens or maps averaged on a G x G spatial grid, time averaged: ``D * G^2`` features).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_LAYERS = ("block1", "block2", "block3", "block4", "block5")
RUN_LAYERS = ("pool2", "temporal", "conv4")
VIDEO_TYPES = ("videomae", "vjepa2", "vivit", "timesformer")


class FeaturesExtraMissing(RuntimeError):
    """``transformers`` (the ``features`` extra) is not installed."""


def require_transformers():
    try:
        import transformers
    except ImportError as err:
        raise FeaturesExtraMissing("Hugging Face models need the optional `features` extra: "
                                   "pip install 'cinevox[features]' (transformers)") from err
    return transformers


def parse_pool(pool: str) -> tuple[str, int]:
    """``"mean"`` -> ("mean", 1), ``"cls"`` -> ("cls", 1), ``"grid2"`` -> ("grid", 2)."""
    m = re.fullmatch(r"grid(\d+)", pool)
    if m and int(m.group(1)) >= 1:
        return "grid", int(m.group(1))
    if pool in ("mean", "cls"):
        return pool, 1
    raise ValueError(f"--pool must be mean, cls or gridG (G >= 1, e.g. grid2), got {pool!r}")


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_model(model: str) -> tuple[Path, str]:
    """A local folder, or a hub id looked up in the local cache (downloaded only when not offline).
    Returns ``(folder, identity)`` where identity is the hub id with its revision, or the folder's path."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
        return path, str(path.resolve())
    if path.exists() or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", model):
        raise FileNotFoundError(f"--model {model}: not a model folder, a Hugging Face model id, vgg16, simulator "
                                "or a cinevox run")
    require_transformers()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    where = hub_cache_dir()
    try:
        folder = snapshot_download(model, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        folder = None
    if folder is None and not offline:
        try:
            folder = snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
            if not any(Path(folder).glob("*.safetensors")):  # an older repo: PyTorch .bin weights only
                folder = snapshot_download(model, allow_patterns=["*.json", "*.bin", "*.txt", "*.model"])
        except Exception as err:  # no network, unknown id, gated repo: the same advice
            logger.debug("download of %s failed: %s", model, err)
            folder = None
    if folder is None:
        raise FileNotFoundError(
            f"model {model} is not in the local Hugging Face cache ({where}); on a machine with internet run "
            f"`huggingface-cli download {model}` and copy its models--{model.replace('/', '--')} folder into "
            f"{where} (or set HF_HUB_CACHE), or pass the model's folder as --model")
    return Path(folder), model


def sha256_weights(folder: Path) -> str:
    """One sha256 over the weight files of a model folder (names and contents, sorted)."""
    import hashlib

    from cinevox.utils.io import sha256_file

    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _saved_processors(folder: Path, video: bool):
    """``(name, settings)`` of the folder's saved image/video processor configs, in the order they are tried:
    ``preprocessor_config.json``, ``video_preprocessor_config.json``, then a whole processor's
    ``processor_config.json`` (what transformers 5 writes for CLIP/SigLIP processors: the image settings nested
    under ``image_processor``, a video's under ``video_processor``; the modality's own first)."""
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        if (folder / name).is_file():
            yield name, json.loads((folder / name).read_text())
    if (folder / "processor_config.json").is_file():
        pc = json.loads((folder / "processor_config.json").read_text())
        keys = ("video_processor", "image_processor") if video else ("image_processor", "video_processor")
        for key in keys:
            if isinstance(pc.get(key), dict):
                yield f"processor_config.json {key}", pc[key]


def _processor_config(folder: Path, config, video: bool = False) -> tuple[tuple[int, int], tuple, tuple, str]:
    """(height, width), mean, sd, and where they came from."""
    for name, pc in _saved_processors(folder, video):
        size = pc.get("crop_size") if pc.get("do_center_crop", True) and pc.get("crop_size") else pc.get("size")
        if isinstance(size, dict):
            hw = (size.get("height"), size.get("width"))
            if hw[0] is None:
                side = size.get("shortest_edge") or size.get("longest_edge")
                hw = (side, side)
        elif isinstance(size, (int, float)):
            hw = (int(size), int(size))
        else:
            hw = (None, None)
        if hw[0]:
            return ((int(hw[0]), int(hw[1])), tuple(pc.get("image_mean", IMAGENET_MEAN)),
                    tuple(pc.get("image_std", IMAGENET_STD)), name)
    side = getattr(config, "image_size", None) or getattr(config, "crop_size", None)
    if isinstance(side, (list, tuple)):
        side = side[0]
    if not side:
        raise ValueError(f"{folder}: no processor config and no image_size in config.json: input size unknown")
    return (int(side), int(side)), IMAGENET_MEAN, IMAGENET_STD, "config.json image_size, ImageNet normalisation"


class Backbone:
    """A frozen network: ``kind`` ("image" or "video"), ``n_frames`` per sample (1 for images), ``layers``
    (all names), ``default_layers``, ``identity`` (what the cache key records) and ``__call__``:
    uint8 ``(B, S, S, 3)`` frames or ``(B, T, S, S, 3)`` clips -> ``{layer: (B, D) float32}``."""

    kind = "image"
    n_frames = 1
    layers: tuple[str, ...] = ()
    default_layers: tuple[str, ...] = ()
    identity: dict = {}

    def __init__(self, device: str | None, dtype: str) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"--dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
        if dtype != "float32" and self.device.type == "cpu":
            raise ValueError(f"--dtype {dtype}: half precision only on a GPU (use float32 on the CPU)")
        self.dtype = getattr(torch, dtype)

    def check_layers(self, layers) -> tuple[str, ...]:
        layers = tuple(layers) if layers else self.default_layers
        bad = [name for name in layers if name not in self.layers]
        if bad:
            raise ValueError(f"--layers {','.join(bad)}: not a layer of this model (layers: {self.layers[0]} to "
                             f"{self.layers[-1]}: {', '.join(self.layers)})")
        return layers

    def _to_input(self, u8: np.ndarray, size: tuple[int, int], mean, sd):
        """uint8 (..., S, S, 3) -> float (N, 3, H, W) normalised, on the device."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(u8)).to(self.device)
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        m = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        s = torch.tensor(sd, device=self.device).view(1, 3, 1, 1)
        return ((x - m) / s).to(self.dtype)


def pool_maps(a, pool: tuple[str, int]):
    """Maps (B, C, h, w) -> (B, C) (mean) or (B, C * G^2) (grid)."""
    import torch.nn.functional as F

    kind, g = pool
    if kind == "cls":
        raise ValueError("--pool cls: this network has no class token (use mean or gridG)")
    if kind == "mean":
        return a.float().mean((2, 3))
    return F.adaptive_avg_pool2d(a.float(), g).flatten(1)


class HFBackbone(Backbone):
    def __init__(self, model: str, device: str | None = None, dtype: str = "auto") -> None:
        super().__init__(device, dtype)
        tr = require_transformers()
        tr.utils.logging.disable_progress_bar()  # one bar per weight file: noise in a command's output
        folder, name = resolve_model(model)
        self.folder = folder
        config = tr.AutoConfig.from_pretrained(folder)
        net = tr.AutoModel.from_pretrained(folder, dtype=self.dtype)
        if hasattr(net, "vision_model"):  # CLIP / SigLIP: the vision tower
            net = net.vision_model
            config = getattr(config, "vision_config", config)
        self.net = net.to(self.device).eval()
        self.config = config
        mtype = getattr(config, "model_type", "")
        frames = getattr(config, "num_frames", None) or getattr(config, "frames_per_clip", None)
        self.kind = "video" if (mtype in VIDEO_TYPES or frames) else "image"
        self.n_frames = int(frames or 1) if self.kind == "video" else 1
        self.tubelet = int(getattr(config, "tubelet_size", 1) or 1)
        self.size, self.mean, self.sd, self.preproc = _processor_config(folder, config, self.kind == "video")
        self.input_side = int(self.size[0])
        self.patch = int(getattr(config, "patch_size", 16))
        n = int(config.num_hidden_layers)
        self.layers = tuple(f"layer{k}" for k in range(n + 1))
        self.default_layers = tuple(dict.fromkeys(f"layer{k}" for k in (round(n / 2), round(3 * n / 4), n)))
        params = inspect.signature(self.net.forward).parameters
        self.input_key = "pixel_values_videos" if "pixel_values_videos" in params else "pixel_values"
        self.extra = {"skip_predictor": True} if "skip_predictor" in params else {}
        self.identity = {"model": name, "weights_sha256": sha256_weights(folder), "type": mtype, "kind": self.kind,
                         "n_frames": self.n_frames, "input_size": list(self.size), "preprocessing": self.preproc}
        logger.info("features: %s (%s, %s model, %d layers, input %dx%d from %s) on %s %s", name, mtype, self.kind,
                    n, *self.size, self.preproc, self.device, str(self.dtype).replace("torch.", ""))

    def __call__(self, u8: np.ndarray, layers, pool: tuple[str, int]) -> dict[str, np.ndarray]:
        import torch

        b = u8.shape[0]
        x = self._to_input(u8, self.size, self.mean, self.sd)
        if self.kind == "video":
            x = x.reshape(b, self.n_frames, *x.shape[1:])  # (B, T, 3, H, W)
        with torch.no_grad():
            out = self.net(**{self.input_key: x}, output_hidden_states=True, **self.extra)
        hs = out.hidden_states
        if hs is None:
            raise ValueError(f"{self.identity['model']}: the model returns no hidden states")
        gh, gw = self.size[0] // self.patch, self.size[1] // self.patch
        n_patch = gh * gw * (max(1, self.n_frames // self.tubelet) if self.kind == "video" else 1)
        feats = {}
        for name in layers:
            h = hs[int(name[5:])].float()  # (B, N, D)
            kind, g = pool
            if kind == "mean":
                feats[name] = h.mean(1)
            elif kind == "cls":
                if h.shape[1] <= n_patch:  # patch tokens only (SigLIP, VideoMAE, V-JEPA 2): no class token
                    raise ValueError(f"--pool cls: {self.identity['type']} has no class token (use mean or gridG)")
                feats[name] = h[:, 0]
            else:
                p = h[:, -n_patch:].reshape(b, -1, gh, gw, h.shape[-1]).mean(1)  # (B, gh, gw, D), time averaged
                feats[name] = pool_maps(p.permute(0, 3, 1, 2), pool)
            feats[name] = feats[name].cpu().numpy().astype(np.float32)
        return feats


class VGGBackbone(Backbone):
    layers = VGG_LAYERS
    default_layers = ("block3", "block4", "block5")

    def __init__(self, weights: str | None, device: str | None = None, dtype: str = "auto",
                 image_size: int = 224) -> None:
        super().__init__(device, dtype)
        from cinevox.models.vgg import load_vgg16_features
        from cinevox.utils.io import sha256_file

        self.net = load_vgg16_features(weights).to(self.device, self.dtype).eval()
        self.size = (image_size, image_size)
        self.input_side = image_size
        self.identity = {"model": "vgg16", "weights_sha256": sha256_file(self.net.source), "kind": "image",
                         "n_frames": 1, "input_size": list(self.size), "preprocessing": "ImageNet normalisation"}

    def __call__(self, u8, layers, pool):
        import torch

        x = self._to_input(u8, self.size, IMAGENET_MEAN, IMAGENET_STD)
        with torch.no_grad():
            maps = dict(zip(VGG_LAYERS, self.net(x, normalize=False)))
        return {name: pool_maps(maps[name], pool).cpu().numpy().astype(np.float32) for name in layers}


class RunBackbone(Backbone):
    """The encoder of a trained cinevox run: clips of its own length and frame size, its own intensity rule."""

    kind = "video"
    layers = RUN_LAYERS
    default_layers = RUN_LAYERS

    def __init__(self, run: str, device: str | None = None, dtype: str = "auto") -> None:
        super().__init__(device, dtype)
        from cinevox.inference.bundle import check_checkpoint_kind, load_bundle

        b = load_bundle(run, str(self.device))
        check_checkpoint_kind(b, "encoder")
        if b.kind == "ridge":
            raise ValueError(f"--model {run}: a ridge run has no network layers; use a CNN run (E or E-D)")
        self.bundle, self.enc = b, b.encoder.to(self.dtype)
        self.n_frames = b.preparation.frames_per_tr
        self.size = b.preparation.frame_size
        self.input_side = self.size
        self.identity = {"model": str(Path(run).resolve()), "weights_sha256": b.checksum, "kind": "video",
                         "n_frames": self.n_frames, "input_size": [self.size, self.size],
                         "preprocessing": f"frame intensity {b.preparation.frame_intensity}"}

    def __call__(self, u8, layers, pool):
        import torch
        import torch.nn.functional as F

        from cinevox.data.dataset import clips_to_model

        x = torch.from_numpy(np.ascontiguousarray(u8)).to(self.device)
        if x.shape[2] != self.size:
            b, t = x.shape[:2]
            y = x.reshape(b * t, *x.shape[2:]).permute(0, 3, 1, 2).float()
            y = F.interpolate(y, size=(self.size, self.size), mode="area").round().clamp(0, 255).to(torch.uint8)
            x = y.permute(0, 2, 3, 1).reshape(b, t, self.size, self.size, 3)
        clip = clips_to_model(x, self.bundle.preparation.frame_intensity == "minmax").to(self.dtype)
        out = {}
        with torch.no_grad():
            for name in layers:
                out[name] = pool_maps(self.enc.activations(clip, name), pool).cpu().numpy().astype(np.float32)
        return out


def load_backbone(model: str, device: str | None = None, dtype: str = "auto", vgg_weights: str | None = None,
                  image_size: int = 224) -> Backbone:
    """``model``: ``vgg16``, a cinevox run or model folder, a Hugging Face model folder or hub id."""
    if model == "vgg16":
        return VGGBackbone(vgg_weights, device, dtype, image_size)
    from cinevox.inference.bundle import is_model_dir

    path = Path(model).expanduser()
    if path.is_dir() and ((path / "manifest.json").is_file() or is_model_dir(path)):
        return RunBackbone(model, device, dtype)
    return HFBackbone(model, device, dtype)
