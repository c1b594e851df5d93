"""cinevox's Python API: load a trained model and use it, and every pipeline step as a function.

Examples
--------
>>> import cinevox
>>> model = cinevox.load_model("runs/ED")                 # a run folder or an exported MODEL_DIR
>>> img = model.predict_video("film.mp4")                 # nibabel 4D image on the model's grid
>>> voxels = model.predict_clips(clips)                   # uint8 (n, T, S, S, 3) -> (n, V)
>>> frames = model.decode(bold_img, onset=93.84)          # (n, 3, S, S) float32 in [0, 1]

The pipeline steps take the command line's options as keyword arguments (``cinevox.train(prepared, "runs/ED",
epochs=11, batch_size=16)``); an unknown keyword is an error that lists the valid ones.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np


def _config(cls, options: dict, what: str, nested: dict | None = None):
    """``cls(**options)``, with options of nested dataclasses (``nested = {field: class}``) sorted out."""
    own = {f.name for f in fields(cls)}
    nested = nested or {}
    parts: dict = {k: {} for k in nested}
    top: dict = {}
    for k, v in options.items():
        if k in own and k not in nested:
            top[k] = v
            continue
        home = next((n for n, c in nested.items() if k in {f.name for f in fields(c)}), None)
        if home is None:
            valid = sorted((own - set(nested)) | {f.name for c in nested.values() for f in fields(c)})
            raise TypeError(f"{what}: unknown option {k!r}; valid options: {', '.join(valid)}")
        parts[home][k] = v
    for name, c in nested.items():
        top[name] = c(**parts[name])
    return cls(**top)


class Model:
    """A trained cinevox model: an encoder (E), decoder (D), end-to-end model (E-D) or ridge baseline.

    Use :func:`load_model` to make one. Attributes: ``kind``, ``n_voxels``, ``tr`` (s), ``delay_trs``,
    ``frames_per_tr``, ``frame_size``, ``mask`` (nibabel image of the voxels), ``voxel_ijk`` ((V, 3) grid indices
    in output order), ``source`` and ``checksum`` (sha256 of the weights file).
    """

    def __init__(self, bundle) -> None:
        self._b = bundle
        p = bundle.preparation
        self.kind, self.n_voxels, self.source, self.checksum = bundle.kind, bundle.n_voxels, bundle.source, \
            bundle.checksum
        self.tr, self.delay_trs, self.frames_per_tr, self.frame_size = p.tr, p.delay_trs, p.frames_per_tr, \
            p.frame_size
        self.mask, self.voxel_ijk = bundle.mask, bundle.ijk

    def __repr__(self) -> str:
        return (f"cinevox.Model({self.kind}, {self.n_voxels} voxels, TR {self.tr} s, {self.frames_per_tr} x "
                f"{self.frame_size}px frames per TR, from {self.source})")

    def predict_clips(self, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Predicted voxels of clips.

        Parameters
        ----------
        clips : uint8 array (n, T, S, S, 3)
            ``T = frames_per_tr`` RGB frames of ``S = frame_size`` pixels per clip (one TR each; for the ridge
            model, consecutive TRs of one film).
        batch_size : int

        Returns
        -------
        float32 array (n, V), the predicted (z-scored, subject-average) response to each clip, before the delay.
        """
        from cinevox.inference.predict import predict_clips

        return predict_clips(self._b, clips, batch_size)

    def predict_video(self, path: str | Path, batch_size: int = 8, as_array: bool = False):
        """The predicted response to a video of any length, frame rate and size (streamed).

        Parameters
        ----------
        path : video file
        batch_size : int
        as_array : bool
            Return the (n_clips, V) array of clip predictions instead of the 4D image.

        Returns
        -------
        nibabel.Nifti1Image, 4D ``(x, y, z, n_clips + delay_trs)``: volume k is the predicted BOLD k TRs after the
        video starts (the response to clip ``k - delay_trs``; the first ``delay_trs`` volumes are 0), the model's
        voxels, zeros elsewhere. With ``as_array``, float32 (n_clips, V).
        """
        from cinevox.inference.predict import predict_video, prediction_image

        pred, _ = predict_video(self._b, path, batch_size)
        return pred if as_array else prediction_image(self._b, pred)

    def decode(self, bold, onset: float | None = None, events: str | Path | list | None = None,
               n_trs: int | None = None, batch_size: int = 32, video: str | Path | None = None,
               confounds: list | None = None, film: str | None = None) -> np.ndarray:
        """Reconstruct one frame per TR from scans of a film (D and E-D models).

        Parameters
        ----------
        bold : nibabel image, path, or a list of them
            4D scans in the model's space (one subject each, or an average); several are prepared one by one and
            averaged.
        onset : float, seconds
            Film onset in the scans (or ``events``: BIDS events file(s) with a ``film`` row).
        n_trs : int, optional
            TRs to decode (default: to the end of the film: the events' duration, the video's length or the
            recorded length of ``film``; else to the end of the scan).
        video, film : optional
            The film's video, or the name of a film of the training data: where the decoded window ends.
        confounds : list of paths, optional
            Each scan's fMRIPrep confounds file (default: beside the scan); a model prepared with confounds needs
            them.

        Returns
        -------
        float32 array (n, 3, S, S) in [0, 1].
        """
        from cinevox.inference.decode import decode_scans

        bolds = list(bold) if isinstance(bold, (list, tuple)) else [bold]
        ev = None if events is None else ([events] if isinstance(events, (str, Path)) else list(events))
        frames, _, _ = decode_scans(self._b, bolds, onset, ev, n_trs, batch_size, video, confounds, film)
        return frames

    def export(self, out: str | Path, **options) -> Path:
        """Export this run as a self-contained MODEL_DIR (see :func:`export`)."""
        return export(self.source, out, **options)


def load_model(path: str | Path, device: str | None = None, checkpoint: str = "last",
               trust_checkpoint: bool = False) -> Model:
    """Load a trained model.

    Parameters
    ----------
    path : a run folder (``cinevox train`` or ``cinevox baseline``) or an exported MODEL_DIR
    device : "cpu", "cuda", "cuda:1" ...; default: CUDA when present
    checkpoint : "last", "best" or "epoch_NNN" (runs only)
    trust_checkpoint : read checkpoints of older cinevox versions (they can execute code)

    Returns
    -------
    Model
    """
    from cinevox.inference.bundle import load_bundle

    return Model(load_bundle(path, device, checkpoint, trust_checkpoint))


# ------------------------------------------------------------------ pipeline steps


def simulate(out: str | Path, preset: str = "tiny", progress: bool = True, **options) -> Path:
    """Write a synthetic Emo-FilM with known truth (options: :class:`cinevox.simulate.config.SimConfig` fields)."""
    from cinevox.simulate.config import preset as make
    from cinevox.simulate.run import simulate as run

    return run(out, make(preset, **options), progress=progress)


def prepare(bids_dir: str | Path, out_dir: str | Path, progress: bool = True, **options) -> Path:
    """The paper's preprocessing (options: :class:`cinevox.data.prepare.PrepareConfig` fields, e.g. ``films_dir``)."""
    from cinevox.data.prepare import PrepareConfig
    from cinevox.data.prepare import prepare as run

    return run(bids_dir, out_dir, _config(PrepareConfig, options, "prepare"), progress=progress)


def train(prepared_dir: str | Path, out: str | Path, resume: bool = False, progress: bool = True,
          trust_checkpoint: bool = False, **options) -> Path:
    """Train E, D or E-D (options: :class:`cinevox.training.TrainConfig` and
    :class:`cinevox.losses.LossConfig` fields, e.g. ``model="encdec", epochs=11, eps=0.5, vgg_weights=...``)."""
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig
    from cinevox.training import train as run

    cfg = _config(TrainConfig, options, "train", {"loss": LossConfig})
    return run(prepared_dir, out, cfg, resume=resume, progress=progress, trust_checkpoint=trust_checkpoint)


def grid(prepared_dir: str | Path, out: str | Path, eps_values=(0.0, 0.25, 0.5, 0.75, 1.0),
         epoch_values=tuple(range(5, 31)), **options) -> dict:
    """The paper's grid over eps and epochs (options: as :func:`train`, plus ``devices``, ``only``, ``collect``)."""
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig
    from cinevox.training.grid import grid as run

    extra = {k: options.pop(k) for k in ("devices", "only", "collect", "resume", "progress") if k in options}
    cfg = _config(TrainConfig, options, "grid", {"loss": LossConfig})
    return run(prepared_dir, out, cfg, list(eps_values), list(epoch_values), **extra)


def baseline(prepared_dir: str | Path, out: str | Path, progress: bool = True, **options) -> Path:
    """The motion-energy banded ridge (options: :class:`cinevox.training.ridge.RidgeConfig` and
    :class:`cinevox.data.features.FeatureConfig` fields)."""
    from cinevox.data.features import FeatureConfig
    from cinevox.training.ridge import RidgeConfig
    from cinevox.training.ridge import baseline as run

    return run(prepared_dir, out, _config(RidgeConfig, options, "baseline", {"features": FeatureConfig}), progress)


def evaluate(run: str | Path, **options) -> dict:
    """Test metrics, nulls and ceilings (options: :class:`cinevox.evaluation.evaluate.EvalConfig` fields)."""
    from cinevox.evaluation.evaluate import EvalConfig
    from cinevox.evaluation.evaluate import evaluate as go

    return go(run, _config(EvalConfig, options, "evaluate"))


def saliency(run: str | Path, **options) -> dict:
    """Decoder saliency and Table II (options: :class:`cinevox.analysis.saliency.SaliencyConfig` fields)."""
    from cinevox.analysis.saliency import SaliencyConfig
    from cinevox.analysis.saliency import saliency as go

    return go(run, _config(SaliencyConfig, options, "saliency"))


def lesion(run: str | Path, **options):
    """Virtual lesions (options: :class:`cinevox.analysis.lesion.LesionConfig` fields); a pandas table."""
    from cinevox.analysis.lesion import LesionConfig
    from cinevox.analysis.lesion import lesion as go

    return go(run, _config(LesionConfig, options, "lesion"))


def concepts(run: str | Path, **options) -> dict:
    """TCAV and decoder concept saliency (options: :class:`cinevox.analysis.concepts.ConceptConfig` fields)."""
    from cinevox.analysis.concepts import ConceptConfig
    from cinevox.analysis.concepts import concepts as go

    return go(run, _config(ConceptConfig, options, "concepts"))


def compare(runs: list, out: str | Path) -> dict:
    """Table I between evaluated runs."""
    from cinevox.evaluation.compare import compare as go

    return go(list(runs), out)


def report(runs: list, out: str | Path, title: str = "cinevox report") -> Path:
    """The HTML report of evaluated runs."""
    from cinevox.report.html import report as go

    return go(list(runs), out, title)


def export(run: str | Path, out: str | Path, **options) -> Path:
    """A self-contained MODEL_DIR (``model.safetensors``, ``config.json``, ``mask.nii.gz``, model card). Options:
    ``checkpoint``, ``trust_checkpoint``, ``atlas``, ``atlas_labels``, ``aal_version``."""
    from cinevox.inference.bundle import export_model

    return export_model(run, out, **options)


def predict(model: str | Path, videos: list, out: str | Path, **options) -> list[dict]:
    """Predicted responses to videos, written as NIfTI + JSON + region tables (options: ``batch_size``,
    ``device``, ``atlas``, ``atlas_labels``, ``aal_version``, ``checkpoint``)."""
    from cinevox.inference.predict import predict as go

    return go(model, [videos] if isinstance(videos, (str, Path)) else list(videos), out, **options)


def decode(model: str | Path, bolds: list, out: str | Path, **options) -> dict:
    """Decoded frames of scans, written as MP4 + PNG + TSV (options: ``onset``, ``events``, ``video``, ``n_trs``,
    ``batch_size``, ``device``, ``checkpoint``, ``confounds``, ``film``)."""
    from cinevox.inference.decode import decode as go

    return go(model, [bolds] if isinstance(bolds, (str, Path, nib.spatialimages.SpatialImage)) else list(bolds), out,
              **options)


def demo(out: str | Path = "cinevox-demo", **options) -> dict:
    """The whole pipeline on simulated data (options: :class:`cinevox.demo.DemoConfig` fields)."""
    from cinevox.demo import DemoConfig
    from cinevox.demo import demo as go

    return go(out, _config(DemoConfig, options, "demo"))


__all__ = ["Model", "baseline", "compare", "concepts", "decode", "demo", "evaluate", "export", "grid", "lesion",
           "load_model", "predict", "prepare", "report", "saliency", "simulate", "train"]
