"""cinevox's Python API: load a trained model and use it, and every pipeline step as a function.

Examples
--------
>>> import cinevox
>>> model = cinevox.load_model("runs/encdec")                 # a run folder or an exported MODEL_DIR
>>> img = model.predict_video("film.mp4")                 # nibabel 4D image on the model's grid
>>> voxels = model.predict_clips(clips)                   # uint8 (n, T, S, S, 3) -> (n, V)
>>> frames = model.decode(bold_img, onset=93.84)          # (n, 3, S, S) float32 in [0, 1]

The pipeline steps take the command line's options as keyword arguments (``cinevox.train(prepared, "runs/encdec",
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
               trust_checkpoint: bool = False, subject: str | None = None) -> Model:
    """Load a trained model.

    Parameters
    ----------
    path : a run folder (``cinevox train`` or ``cinevox baseline``) or an exported MODEL_DIR
    device : "cpu", "cuda", "cuda:1" ...; default: CUDA when present
    checkpoint : "last", "best" or "epoch_NNN" (runs only)
    trust_checkpoint : read checkpoints of older cinevox versions (they can execute code)
    subject : a ``--target subjects`` model's viewer ("S07"): its read-out / input layer (default: the average)

    Returns
    -------
    Model
    """
    from cinevox.inference.bundle import load_bundle, select_viewer

    return Model(select_viewer(load_bundle(path, device, checkpoint, trust_checkpoint), subject))


# ------------------------------------------------------------------ pipeline steps
#
# Every step takes the command line's option names (argparse dests: ``--films-dir`` is ``films_dir``, ``--no-amp``
# is ``no_amp``), with the command line's values (``"S01,S02"``) or Python ones (``["S01", "S02"]``). The old
# spellings the command line still accepts are accepted here too, with a DeprecationWarning.
# ``tests/test_api_options.py`` checks, from the parser itself, that every option of every command is accepted and
# changes what the step is given.


def _csv(v):
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (None stays None)."""
    if v is None or isinstance(v, (list, tuple)):
        return None if v is None else list(v)
    return [t.strip() for t in str(v).split(",") if t.strip()]


def _numbers(v, kind):
    if isinstance(v, (list, tuple)):
        return [kind(x) for x in v]
    out: list = []
    for t in (t.strip() for t in str(v).split(",") if t.strip()):
        if kind is int and "-" in t[1:]:
            a, b = t.split("-", 1)
            out += range(int(a), int(b) + 1)
        else:
            out.append(kind(t))
    return sorted(set(out)) if kind is int else out


def _renamed(options: dict, deprecated: dict[str, str]) -> dict:
    """``options`` with deprecated spellings replaced by the current ones (with a DeprecationWarning)."""
    from cinevox.utils.names import deprecated as warn

    out = dict(options)
    for old, new in deprecated.items():
        if old in out:
            warn(f"option {old!r}", repr(new))
            if new in out:
                raise TypeError(f"{old!r} and {new!r} are the same option (give {new!r} only)")
            out[new] = out.pop(old)
    return out


def _old_films(value) -> str:
    """The new name of the old ``films`` option, one rule for prepare and simulate: an existing folder is
    ``films_dir``, anything else (names, "A,B", a list) ``only_films``."""
    return "films_dir" if isinstance(value, (str, Path)) and Path(value).is_dir() else "only_films"


CONCEPT_INPUTS = ("concepts: --inputs measured is not supported (the decoder is fed its encoder's predictions of "
                  "the clips, inputs model); use saliency or lesion --inputs measured")
_REGIONS_ALIASES = {"atlas": "regions_atlas", "atlas_labels": "regions_labels"}


def _regions_fields(options: dict) -> dict:
    """The analysis atlas options (``regions_atlas``, ``regions_labels``) -> the configs' ``atlas``,
    ``atlas_labels``."""
    o = _renamed(options, _REGIONS_ALIASES)
    for new, field in (("regions_atlas", "atlas"), ("regions_labels", "atlas_labels")):
        if new in o:
            o[field] = o.pop(new)
    return o


def resolve(command: str, **options) -> dict:
    """What the step ``command`` would be given for these options (configs and keyword arguments), without running
    it: ``{"config": ..., "kwargs": {...}}``. An unknown option is a TypeError listing the valid ones."""
    o = dict(options)
    kw: dict = {}
    if command == "simulate":
        from cinevox.simulate.config import preset as make

        o = _renamed(o, {})
        if "films" in o:  # the old --films: a folder or a subset
            v = o.pop("films")
            o.update(_renamed({"films": list(v) if isinstance(v, dict) else v}, {"films": _old_films(v)}))
        name = o.pop("preset", "tiny")
        only = _csv(o.pop("only_films", None))
        if "subjects" in o:
            o["subjects"] = _csv(o["subjects"])
        if "films_dir" in o and o["films_dir"] is not None:
            o["films_dir"] = str(o["films_dir"])
        try:
            cfg = make(name, **o)
        except ValueError as err:
            raise TypeError(f"simulate: {err}") from None
        if only:
            unknown = sorted(set(only) - set(cfg.films))
            if unknown:
                raise ValueError(f"only_films {unknown}: not films of preset {name!r} ({sorted(cfg.films)})")
            cfg.films = {k: v for k, v in cfg.films.items() if k in only}
        return {"config": cfg, "kwargs": kw}
    if command == "prepare":
        from cinevox.data.prepare import PrepareConfig, load_config_file

        if "films" in o:  # the old API's subset / the old CLI's folder
            v = o.pop("films")
            o.update(_renamed({"films": v}, {"films": _old_films(v)}))
        kw["dry_run"] = bool(o.pop("dry_run", False))
        base = load_config_file(o.pop("config")) if o.get("config") else {}
        o.pop("config", None)
        if "only_films" in o:
            o["films"] = _csv(o.pop("only_films"))
        for k in ("subjects", "tasks", "lead_in"):
            if k in o:
                o[k] = _csv(o[k])
        if isinstance(o.get("filters"), str):
            o["filters"] = [o["filters"]]
        return {"config": _config(PrepareConfig, base | o, "prepare"), "kwargs": kw}
    if command in ("train", "grid", "baseline"):  # --cv films: leave-one-film-out (cinevox.evaluation.cv_films)
        from cinevox.evaluation.evaluate import EvalConfig

        kw["cv"] = o.pop("cv", None)
        kw["cv_n_perm"] = o.pop("cv_n_perm", EvalConfig().n_perm)
        if kw["cv"] not in (None, "films"):
            raise ValueError(f"cv must be None or 'films', got {kw['cv']!r}")
    if command in ("train", "grid"):
        from cinevox.losses import LossConfig
        from cinevox.training import TrainConfig

        for k in ("resume", "trust_checkpoint"):
            kw[k] = bool(o.pop(k, False))
        if command == "grid":
            kw["eps_values"] = _numbers(o.pop("eps_grid", "0,0.25,0.5,0.75,1"), float)
            kw["epoch_values"] = _numbers(o.pop("epoch_grid", "5-30"), int)
            kw["devices"] = _csv(o.pop("devices", None))
            kw["only"] = o.pop("cell", None)
            kw["collect"] = bool(o.pop("collect", False))
        if "model" in o:
            from cinevox.utils.names import model_kind

            o["model"] = model_kind(o["model"])
        if "no_amp" in o:
            o["amp"] = not o.pop("no_amp")
        if "allow_random_vgg" in o:
            o["vgg_allow_random"] = o.pop("allow_random_vgg")
        return {"config": _config(TrainConfig, o, command, {"loss": LossConfig}), "kwargs": kw}
    if command == "baseline":
        from cinevox.data.features import FeatureConfig
        from cinevox.training.ridge import RidgeConfig

        if "features" in o and not isinstance(o["features"], FeatureConfig):
            o["spaces"] = tuple(_csv(o.pop("features")))
        if "delays" in o:
            o["delays"] = tuple(_numbers(o["delays"], int) if not isinstance(o["delays"], str)
                                else [int(t) for t in o["delays"].split(",") if t.strip()])
        return {"config": _config(RidgeConfig, o, "baseline", {"features": FeatureConfig}), "kwargs": kw}
    if command == "evaluate":
        from cinevox.evaluation.evaluate import EvalConfig

        return {"config": _config(EvalConfig, o, "evaluate"), "kwargs": kw}
    if command in ("saliency", "lesion", "concepts"):
        o = _regions_fields(o)
        for k in ("videos", "out"):
            if k in o:
                kw[k] = o.pop(k)
        if command == "saliency":
            from cinevox.analysis.saliency import SaliencyConfig as cls
        elif command == "lesion":
            from cinevox.analysis.lesion import LesionConfig as cls

            if "regions" in o:
                o["regions"] = _csv(o["regions"])
        else:
            from cinevox.analysis.concepts import ConceptConfig as cls

            if o.pop("inputs", "model") != "model":
                raise ValueError(CONCEPT_INPUTS)
            for k in ("concepts", "layers"):
                if k in o:
                    o[k] = _csv(o[k]) or []
            if "concept_dir" in o:
                items = o.pop("concept_dir")
                items = [items] if isinstance(items, str) else items
                dirs = dict(items) if isinstance(items, dict) else {}
                for item in [] if isinstance(items, dict) else items:
                    if "=" not in item:
                        raise ValueError(f"concept_dir {item!r}: expected NAME=FOLDER")
                    k, v = item.split("=", 1)
                    dirs[k.strip()] = v
                o["concept_dirs"] = dirs
        if command == "lesion" and kw:
            raise TypeError(f"lesion: unknown option {next(iter(kw))!r}")
        return {"config": _config(cls, o, command), "kwargs": kw}
    simple = {
        "compare": {"n_boot": 1000, "n_perm": 1000, "block_trs": 10},
        "report": {"title": "cinevox report"},
        "regions": {"regions_atlas": None, "regions_labels": None, "aal_version": "3v2", "saliency": None,
                    "top": 0.2, "out": None},
        "export": {"checkpoint": "last", "trust_checkpoint": False, "regions_atlas": None, "regions_labels": None,
                   "aal_version": "3v2"},
        "predict": {"batch_size": 8, "device": None, "regions_atlas": None, "regions_labels": None,
                    "aal_version": "3v2", "checkpoint": "last", "trust_checkpoint": False, "progress": True,
                    "subject": None},
        "decode": {"onset": None, "events": None, "reference_video": None, "n_trs": None, "batch_size": 32,
                   "device": None, "checkpoint": "last", "trust_checkpoint": False, "confounds": None, "film": None,
                   "subject": None},
    }
    if command in simple:
        if command in ("regions", "export", "predict"):
            o = _renamed(o, _REGIONS_ALIASES)
        if command == "decode":  # --video: decode's film to compare against, now --reference-video
            o = _renamed(o, {"video": "reference_video"})
        if command == "decode" and "confounds_files" in o:  # --confounds-file (repeatable)
            v = o.pop("confounds_files")
            o["confounds"] = [v] if isinstance(v, (str, Path)) else v
        bad = sorted(set(o) - set(simple[command]))
        if bad:
            raise TypeError(f"{command}: unknown option {bad[0]!r}; valid options: {', '.join(simple[command])}")
        kw = simple[command] | o
        if command == "decode" and isinstance(kw["events"], (str, Path)):
            kw["events"] = [kw["events"]]
        if command == "decode":  # the function's parameter
            kw["video"] = kw.pop("reference_video")
        return {"config": None, "kwargs": kw}
    if command == "features":
        from cinevox.configs import PretrainedConfig

        if "layers" in o:
            o["layers"] = tuple(_csv(o["layers"]) or ())
        if o.get("rate") == "tr":
            o["rate"] = None
        return {"config": _config(PretrainedConfig, o, "features"), "kwargs": kw}
    if command == "demo":
        from cinevox.demo import DemoConfig

        return {"config": _config(DemoConfig, o, "demo"), "kwargs": kw}
    raise ValueError(f"unknown command {command!r}")


def simulate(out: str | Path, preset: str = "tiny", progress: bool = True, **options) -> Path:
    """Write a synthetic Emo-FilM with known truth (the options of ``cinevox simulate``: ``films_dir``,
    ``only_films``, ``n_subjects``, ...; or any :class:`cinevox.simulate.config.SimConfig` field)."""
    from cinevox.simulate.run import simulate as run

    return run(out, resolve("simulate", preset=preset, **options)["config"], progress=progress)


def prepare(bids_dir: str | Path, out_dir: str | Path, progress: bool = True, **options):
    """The paper's preprocessing (the options of ``cinevox prepare``: ``films_dir``, ``only_films``, ``dry_run``,
    ``config``, ...; or any :class:`cinevox.data.prepare.PrepareConfig` field). With ``dry_run=True``, the
    timeline table (pandas) instead of the prepared folder."""
    from cinevox.data.prepare import dry_run
    from cinevox.data.prepare import prepare as run

    r = resolve("prepare", **options)
    if r["kwargs"]["dry_run"]:
        return dry_run(bids_dir, out_dir, r["config"])
    return run(bids_dir, out_dir, r["config"], progress=progress)


def train(prepared_dir: str | Path, out: str | Path, progress: bool = True, **options) -> Path:
    """Train an encoder, decoder or encdec model (the options of ``cinevox train``: ``model="encdec", epochs=11,
    eps=0.5, vgg_weights=..., no_amp=True, resume=True``; or any :class:`cinevox.training.TrainConfig` /
    :class:`cinevox.losses.LossConfig` field)."""
    from cinevox.training import train as run

    r = resolve("train", **options)
    kw = r["kwargs"]
    if kw.pop("cv"):
        return _cv("train", prepared_dir, out, r["config"], kw.pop("cv_n_perm"), progress,
                   trust_checkpoint=kw["trust_checkpoint"])
    kw.pop("cv_n_perm")
    return run(prepared_dir, out, r["config"], progress=progress, **kw)


def _cv(how: str, prepared_dir, out, cfg, n_perm: int, progress: bool, **kw):
    """Leave-one-film-out cross-validation (``--cv films``): the table of :func:`cinevox.evaluation.cv_films`."""
    from cinevox.evaluation.cv_films import cv_films
    from cinevox.evaluation.evaluate import EvalConfig

    return cv_films(prepared_dir, out, how, cfg, EvalConfig(n_perm=n_perm), progress=progress, **kw)


def grid(prepared_dir: str | Path, out: str | Path, progress: bool = True, **options) -> dict:
    """The paper's grid over eps and epochs (the options of ``cinevox grid``: those of :func:`train` and
    ``eps_grid``, ``epoch_grid``, ``devices``, ``cell``, ``collect``)."""
    from cinevox.training.grid import grid as run

    r = resolve("grid", **options)
    kw = r["kwargs"]
    trust = kw.pop("trust_checkpoint")
    if kw.pop("cv"):
        if kw["only"] is not None or kw["collect"]:
            raise ValueError("cv='films' runs every fold's grid itself: drop cell and collect")
        return _cv("grid", prepared_dir, out, r["config"], kw.pop("cv_n_perm"), progress, grid_eps=kw["eps_values"],
                   grid_epochs=kw["epoch_values"], devices=kw["devices"], trust_checkpoint=trust)
    kw.pop("cv_n_perm")
    return run(prepared_dir, out, r["config"], kw.pop("eps_values"), kw.pop("epoch_values"), progress=progress,
               **kw)


def baseline(prepared_dir: str | Path, out: str | Path, progress: bool = True, **options) -> Path:
    """The motion-energy banded ridge (the options of ``cinevox baseline``; or any
    :class:`cinevox.training.ridge.RidgeConfig` / :class:`cinevox.data.features.FeatureConfig` field)."""
    from cinevox.training.ridge import baseline as run

    r = resolve("baseline", **options)
    if r["kwargs"]["cv"]:
        return _cv("baseline", prepared_dir, out, r["config"], r["kwargs"]["cv_n_perm"], progress)
    return run(prepared_dir, out, r["config"], progress)


def features(prepared_dir: str | Path, out: str | Path, **options) -> dict:
    """A pretrained network's features of every film, cached per film and layer into ``out`` (the options of
    ``cinevox features``: ``model``, ``layers``, ``rate`` (samples per second, or ``"tr"``), ``pool``, ``pca``,
    ``batch_size``, ``device``, ``dtype``, ``clip_seconds``, ``vgg_weights``, ``source``)."""
    from cinevox.pretrained.extract import extract_features

    return extract_features(prepared_dir, out, resolve("features", **options)["config"])


def evaluate(run: str | Path, **options) -> dict:
    """Test metrics, nulls and ceilings (options: :class:`cinevox.evaluation.evaluate.EvalConfig` fields)."""
    from cinevox.evaluation.evaluate import evaluate as go

    return go(run, resolve("evaluate", **options)["config"])


def saliency(run: str | Path, **options) -> dict:
    """Decoder saliency and Table II (the options of ``cinevox saliency``: ``regions_atlas``, ``videos``, ``out``,
    ...)."""
    from cinevox.analysis.saliency import saliency as go

    r = resolve("saliency", **options)
    return go(run, r["config"], **r["kwargs"])


def lesion(run: str | Path, **options):
    """Virtual lesions (the options of ``cinevox lesion``); a pandas table."""
    from cinevox.analysis.lesion import lesion as go

    return go(run, resolve("lesion", **options)["config"])


def concepts(run: str | Path, **options) -> dict:
    """TCAV and decoder concept saliency (the options of ``cinevox concepts``: ``concept_dir``, ``layers``, ...)."""
    from cinevox.analysis.concepts import concepts as go

    r = resolve("concepts", **options)
    return go(run, r["config"], **r["kwargs"])


def compare(runs: list, out: str | Path, **options) -> dict:
    """Table I between evaluated runs (options: ``n_boot``, ``n_perm``, ``block_trs``)."""
    from cinevox.evaluation.compare import compare as go

    kw = resolve("compare", **options)["kwargs"]
    return go(list(runs), out, kw["n_boot"], kw["n_perm"], kw["block_trs"])


def report(runs: list, out: str | Path, **options) -> Path:
    """The HTML report of evaluated runs (option: ``title``)."""
    from cinevox.report.html import report as go

    return go(list(runs), out, resolve("report", **options)["kwargs"]["title"])


def regions(mask: str | Path, **options) -> dict:
    """Region composition of a mask (the options of ``cinevox regions``)."""
    from cinevox.analysis.regions import default_atlas, mask_regions

    kw = resolve("regions", **options)["kwargs"]
    atlas, labels = default_atlas({}, kw["regions_atlas"], kw["regions_labels"], kw["aal_version"])
    return mask_regions(mask, atlas, labels, kw["saliency"], kw["top"], kw["out"])


def export(run: str | Path, out: str | Path, **options) -> Path:
    """A self-contained MODEL_DIR (``model.safetensors``, ``config.json``, ``mask.nii.gz``, model card). Options:
    ``checkpoint``, ``trust_checkpoint``, ``regions_atlas``, ``regions_labels``, ``aal_version``."""
    from cinevox.inference.bundle import export_model

    kw = resolve("export", **options)["kwargs"]
    return export_model(run, out, kw["checkpoint"], kw["trust_checkpoint"], kw["regions_atlas"],
                        kw["regions_labels"], kw["aal_version"])


def predict(model: str | Path, videos: list, out: str | Path, **options) -> list[dict]:
    """Predicted responses to videos, written as NIfTI + JSON + region tables (options: ``batch_size``,
    ``device``, ``regions_atlas``, ``regions_labels``, ``aal_version``, ``checkpoint``, ``trust_checkpoint``,
    ``subject``: a viewer's read-out of a ``--target subjects`` encoder, None for the average-viewer head)."""
    from cinevox.inference.predict import predict as go

    kw = resolve("predict", **options)["kwargs"]
    kw["atlas"], kw["atlas_labels"] = kw.pop("regions_atlas"), kw.pop("regions_labels")
    return go(model, [videos] if isinstance(videos, (str, Path)) else list(videos), out, **kw)


def decode(model: str | Path, bolds: list, out: str | Path, **options) -> dict:
    """Decoded frames of scans, written as MP4 + PNG + TSV (options: ``onset``, ``events``, ``reference_video`` (the
    film to compare against; ``video`` is its deprecated spelling), ``n_trs``, ``batch_size``, ``device``,
    ``checkpoint``, ``trust_checkpoint``, ``confounds``, ``film``)."""
    from cinevox.inference.decode import decode as go

    return go(model, [bolds] if isinstance(bolds, (str, Path, nib.spatialimages.SpatialImage)) else list(bolds), out,
              **resolve("decode", **options)["kwargs"])


def demo(out: str | Path = "cinevox-demo", **options) -> dict:
    """The whole pipeline on simulated data (options: :class:`cinevox.demo.DemoConfig` fields)."""
    from cinevox.demo import demo as go

    return go(out, resolve("demo", **options)["config"])


__all__ = ["Model", "baseline", "compare", "concepts", "decode", "demo", "evaluate", "export", "features", "grid",
           "lesion",
           "load_model", "predict", "prepare", "regions", "report", "resolve", "saliency", "simulate", "train"]
