"""The one table of choices where the paper's text and the authors' published code differ.

Two profiles fill it: ``paper`` (the default: the paper's text; where the paper is silent, the authors' code,
except where cinevox keeps a choice because it is more correct, the reason given in ``why``) and ``authors``
(every numeric choice of MIPLabCH/Encoding-Decoding-Movies). Each step's config dataclass has one field per
choice of that step, ``None`` meaning "from the profile"; :func:`apply_profile` resolves them, so an explicit
option always overrides its profile value, and the resolved values land in the step's manifest.

The command line options are generated from this table (:func:`add_profile_options`), so a new choice is one
row here plus the code that reads the config field.

Conventions that are the same in both profiles (not choices): E_corr / E_mse on per-film z-scored series
(E_mse = 2 (1 - r)), D_mse on per-frame min-max normalised frames, unlabelled voxels skipped in Table II,
permutation p-values ``(k + 1) / (n + 1)``, the epoch grid 5..30 in steps of one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

PROFILES = ("paper", "authors")
DEFAULT_PROFILE = "paper"


@dataclass(frozen=True)
class Choice:
    """One row of the table: a config field of ``step``, its value under each profile, its CLI option."""

    name: str  # config field (and --option with dashes)
    step: str  # "prepare" | "train" | "saliency"
    paper: Any
    authors: Any
    values: tuple  # allowed values (strings/bools/ints)
    what: str  # what it decides
    why: str  # why the paper profile takes its value
    flag: str | None = None  # CLI option when not --<name>

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


CHOICES: tuple[Choice, ...] = (
    Choice("frame_intensity", "prepare", "raw", "minmax", ("raw", "minmax"),
           "clip intensity: uint8 / 255, or each frame min-max stretched to [0, 1] (decoder target too)",
           "paper silent; cinevox keeps raw intensity because a per-frame stretch erases the global luminance and "
           "contrast changes that drive early visual cortex"),
    Choice("frame_resize", "prepare", "area", "skimage", ("area", "skimage"),
           "frame down-sampling: FFmpeg area filter at decode time, or skimage.transform.resize(anti_aliasing=True)",
           "paper silent; both are anti-aliased, the area filter runs inside the decoder (skimage on full-size "
           "frames costs hours on a 14-film dataset)"),
    Choice("frame_sampling", "prepare", "timestamp", "linspace", ("timestamp", "linspace"),
           "which frames: by presentation time at (k + 0.5) TR / 32, or np.linspace(0, n - 1, n_TR * 32).astype(int)",
           "paper: 'uniformly up- or down-sampled'; timestamps stay aligned with the TRs for variable frame rates "
           "and films whose length is not an exact multiple of the TR (linspace drifts up to 1.2 s on Emo-FilM)"),
    Choice("snr_ddof", "prepare", 0, 0, (0, 1),
           "ddof of the across-subject noise variance in the paper's SNR", "paper silent: the authors' ddof 0"),
    Choice("snr_film_weight", "prepare", "mean", "mean", ("mean", "length"),
           "SNR over films: plain mean, or weighted by film length", "paper silent: the authors' plain mean"),
    Choice("select_on", "prepare", "all", "all", ("all", "trainval"),
           "TRs of the voxel-selection SNR (either --snr): every film's TRs, test included, or the training and "
           "validation TRs only",
           "the paper's and the authors' rule; it lets selection see the test period, which biases the split-half "
           "ceiling of the selected voxels on test TRs upward (measured in benchmarks/bench_statistics.py); "
           "trainval removes that bias"),
    Choice("val_mode", "prepare", "blocked", "interleaved", ("blocked", "interleaved"),
           "validation TRs: contiguous blocks with gaps, or every 5th TR (0, 5, 10, ...)",
           "paper: 'uniformly divided (4:1)'; interleaved validation TRs sit between autocorrelated training TRs "
           "(a leak), so cinevox keeps blocked validation"),
    Choice("perceptual_input", "train", "imagenet", "authors", ("imagenet", "authors"),
           "VGG16 input of the perceptual loss: ImageNet mean/std at the frame size, or Resize(224) then a "
           "batch-wide min-max (prediction and target separately), no mean/std",
           "paper silent; VGG16 was trained on ImageNet-normalised input, and a batch-wide min-max makes each "
           "sample's loss depend on the rest of its batch"),
    Choice("final_batchnorm", "train", False, True, (False, True),
           "a BatchNorm2d(3) after the decoder's sigmoid", "paper: the sigmoid is the last layer"),
    Choice("mse_over_voxels", "train", False, True, (False, True),
           "encoder loss MSE divided once more by V", "paper eq. 1: plain MSE + alpha cosine distance",
           flag="--authors-mse"),
    Choice("saliency_frames", "saliency", "minmax", "minmax", ("minmax", "raw"),
           "frames in the saliency SSIM: each min-max normalised (as the authors), or raw",
           "paper silent: the authors' min-max normalised frames"),
)

_BY_NAME = {c.name: c for c in CHOICES}


def choices_for(step: str) -> list[Choice]:
    return [c for c in CHOICES if c.step == step]


def profile_value(name: str, profile: str) -> Any:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    return getattr(_BY_NAME[name], profile)


def apply_profile(cfg: Any, step: str, profile: str | None = None) -> Any:
    """Fill every ``None`` choice field of ``cfg`` (a dataclass with a ``profile`` field) from the profile.

    Explicit values stay (an option overrides its profile); values outside the allowed set are refused.
    Returns ``cfg`` (modified in place)."""
    assert is_dataclass(cfg)
    profile = profile or getattr(cfg, "profile", None) or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    if "profile" in {f.name for f in fields(cfg)}:
        cfg.profile = profile
    _fill(cfg, step, profile)
    return cfg


def _fill(cfg: Any, step: str, profile: str) -> None:
    by_name = {c.name: c for c in choices_for(step)}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v) and not isinstance(v, type):  # nested configs (the loss of a training)
            _fill(v, step, profile)
        elif f.name in by_name:
            c = by_name[f.name]
            if v is None:
                setattr(cfg, f.name, getattr(c, profile))
            elif v not in c.values:
                raise ValueError(f"{c.option} must be one of {', '.join(map(str, c.values))}, got {v!r}")


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_profile_options(parser: argparse.ArgumentParser, steps: tuple[str, ...]) -> None:
    """``--profile`` and one option per choice of ``steps`` (default None: the profile decides)."""
    g = parser.add_argument_group("profile", "paper (default) or authors; each option below overrides it")
    g.add_argument("--profile", choices=PROFILES, default=None,
                   help="numeric choices of the paper's text (default) or of the authors' code")
    for step in steps:
        for c in choices_for(step):
            kind = type(c.paper)
            if kind is bool:  # "--final-batchnorm" alone means true; "--final-batchnorm false" is allowed
                g.add_argument(c.option, dest=c.name, type=_bool, nargs="?", const=True, metavar="{true,false}",
                               default=None,
                               help=f"{c.what} (paper: {c.paper}, authors: {c.authors})")
            else:
                g.add_argument(c.option, dest=c.name, type=kind, choices=list(c.values), default=None,
                               help=f"{c.what} (paper: {c.paper}, authors: {c.authors})")


def profile_options(args: argparse.Namespace, steps: tuple[str, ...]) -> dict[str, Any]:
    """The profile and choice options given on the command line (the others are left to the profile)."""
    out = {c.name: getattr(args, c.name) for s in steps for c in choices_for(s)
           if getattr(args, c.name, None) is not None}
    if getattr(args, "profile", None):
        out["profile"] = args.profile
    return out


def table_markdown() -> str:
    """The table as Markdown (README "Choices")."""
    rows = ["| choice | step | paper | authors | option | why the paper profile takes its value |",
            "|---|---|---|---|---|---|"]
    for c in CHOICES:
        rows.append(f"| {c.what} | {c.step} | `{c.paper}` | `{c.authors}` | `{c.option}` | {c.why} |")
    return "\n".join(rows)
