"""``cinevox predict``: the predicted visual-cortex response to any video, from a CNN or a ridge model.

A video of any length, frame rate and size is cut into clips of one TR (``frames_per_tr`` frames sampled as the
training films were: by timestamp, or the authors' linspace pick), decoded once and streamed: memory holds a few
batches of clips, not the film. Clip t covers seconds ``[t TR, (t + 1) TR)`` of the video; with the model's
hemodynamic delay d (the prepared dataset's shift), its prediction is the BOLD volume ``t + d`` after the video
starts. The 4D output has ``n_clips + d`` volumes; the first d (responses to what came before the video) are 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cinevox.data.dataset import clips_to_model
from cinevox.data.features import (
    TorchMotionEnergy,
    _quiet_pymoten,
    colour_features,
    grey_frames,
    motion_pyramid,
)
from cinevox.data.nifti import NiftiStreamWriter
from cinevox.data.timeline import n_trs_of
from cinevox.data.video import VideoError, check_video, frame_times, linspace_indices, stream_frames
from cinevox.inference.bundle import ModelBundle, bundle_regions, check_checkpoint_kind
from cinevox.outputs import sidecar, space_label
from cinevox.training.ridge import delay_features
from cinevox.utils.io import write_json, write_text_atomic
from cinevox.utils.log import bar_disabled

logger = logging.getLogger(__name__)


def video_plan(b: ModelBundle, path: str | Path) -> tuple[int, np.ndarray]:
    """``(n_clips, frame times (n_clips * frames_per_tr,))`` of a video for this model's preparation."""
    p = b.preparation
    path = Path(path)
    if p.frame_sampling == "linspace":  # the authors' pick by frame count, over the whole video
        times, step, _, _ = frame_times(path)
        duration = float(times[-1] + step)
    else:
        duration = check_video(path, 0.0)  # opens, decodes; its stored duration
    n_clips = n_trs_of(duration, p.tr)
    if n_clips < 1:
        raise VideoError(f"{path}: lasts {duration:.2f} s, shorter than one TR ({p.tr} s): nothing to predict")
    n = n_clips * p.frames_per_tr
    if p.frame_sampling == "linspace":
        return n_clips, times[linspace_indices(len(times), n)]
    return n_clips, (np.arange(n) + 0.5) * p.tr / p.frames_per_tr


def iter_clips(b: ModelBundle, path: str | Path, times: np.ndarray, clips_per_block: int) -> Iterator[np.ndarray]:
    """uint8 clips ``(<= clips_per_block, T, S, S, 3)`` of a video, in order, decoding it once."""
    p = b.preparation
    for block in stream_frames(path, times, p.frame_size, resize=p.frame_resize,
                               block=clips_per_block * p.frames_per_tr):
        yield block.reshape(-1, p.frames_per_tr, *block.shape[1:])


@torch.no_grad()
def predict_clips(b: ModelBundle, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Predicted voxels of uint8 clips ``(n, T, S, S, 3)`` -> float32 ``(n, V)``.

    For a CNN every clip stands alone. For the ridge model the clips are taken as consecutive TRs of one film
    (its features look a TR back and ahead)."""
    check_checkpoint_kind(b, "encoder")
    clips = np.asarray(clips)
    p = b.preparation
    if clips.ndim != 5 or clips.shape[1:] != (p.frames_per_tr, p.frame_size, p.frame_size, 3):
        raise ValueError(f"clips must be uint8 (n, {p.frames_per_tr}, {p.frame_size}, {p.frame_size}, 3) for this "
                         f"model, got {clips.shape}")
    if b.kind == "ridge":
        rp = RidgeStream(b)
        rp.feed(clips)
        return rp.finish()
    enc, dev = b.encoder, b.device
    out = [enc(clips_to_model(torch.from_numpy(np.ascontiguousarray(clips[i : i + batch_size])).to(dev),
                              p.frame_intensity == "minmax")).float().cpu().numpy()
           for i in range(0, len(clips), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, b.n_voxels), np.float32)


class RidgeStream:
    """The ridge model's features of consecutive clips, fed block by block, and its predictions.

    Motion energy needs frames a filter width before and after each frame: frames are kept for a window of
    ``chunk + 2 margins`` and each frame's energy is taken from a window that holds both margins (or the film's
    edge), so that the result equals the projection of the whole film (tested)."""

    def __init__(self, b: ModelBundle, chunk_frames: int = 1024) -> None:
        self.b, self.cfg = b, b.ridge_config
        p = b.preparation
        self.fpt = p.frames_per_tr
        self.size = self.cfg.features.motion_size or p.frame_size
        self.pyramid = motion_pyramid(self.size, p.frames_per_tr / p.tr, self.cfg.features) \
            if "motion" in self.cfg.features.spaces else None
        self.engine = None
        if self.pyramid is not None and self.cfg.features.motion_backend == "torch":
            self.engine = TorchMotionEnergy(self.pyramid, str(b.device) if b.model is not None else None)
        self.margin = int(self.pyramid.definition["filter_temporal_width"]) if self.pyramid is not None else 0
        self.chunk = chunk_frames
        self.grey: list[np.ndarray] = []  # frames not yet dropped, from absolute index self.start
        self.start, self.done, self.n_frames = 0, 0, 0
        self.motion: list[np.ndarray] = []  # per-frame energies, finalised
        self.colour: list[np.ndarray] = []  # per-TR colour features
        self._frames_file = None  # pretrained bands: the frames, spooled to a temporary file (not kept in memory)
        self._frame_shape: tuple = ()
        self.video: str | Path | None = None  # the video (bands whose features come from videos read it again)
        self._spool = False
        if self.cfg.pretrained:
            from cinevox.pretrained.extract import read_manifest

            self._spool = any(read_manifest(p.rsplit(":", 1)[0])["settings"].get("source", "frames") == "frames"
                              for p in self.cfg.pretrained)

    def _project(self, lo: int, hi: int, upto: int) -> None:
        """Energies of frames [self.done, upto) from the buffered window [lo, hi)."""
        window = np.concatenate(self.grey)[lo - self.start : hi - self.start]
        if self.engine is not None:
            me = self.engine.project(window)
        else:
            with _quiet_pymoten():
                me = self.pyramid.project_stimulus(window, dtype="float32")
        self.motion.append(me[self.done - lo : upto - lo])
        self.done = upto

    def feed(self, clips: np.ndarray) -> None:
        """uint8 clips (n, T, S, S, 3), the next TRs of the film."""
        frames = clips.reshape(-1, *clips.shape[2:])
        if self._spool:
            import tempfile

            if self._frames_file is None:
                self._frames_file = tempfile.TemporaryFile()
                self._frame_shape = frames.shape[1:]
            self._frames_file.write(np.ascontiguousarray(frames, np.uint8).tobytes())
        if "colour" in self.cfg.features.spaces:
            self.colour.append(colour_features(frames, self.fpt, self.cfg.features.colour_grid))
        if self.pyramid is None:
            self.n_frames += len(frames)
            return
        self.grey.append(grey_frames(frames, self.size))
        self.n_frames += len(frames)
        while self.n_frames - self.done >= self.chunk + self.margin:
            upto = self.done + self.chunk
            self._project(max(self.start, self.done - self.margin), upto + self.margin, upto)
            keep_from = self.done - self.margin
            buf = np.concatenate(self.grey)
            if keep_from > self.start:
                buf = buf[keep_from - self.start :]
                self.start = keep_from
            self.grey = [buf]

    def features(self) -> dict[str, np.ndarray]:
        """Per-TR features of every space, ``{space: (n_trs, F)}`` (finishing the motion energy)."""
        out = {}
        if self.pyramid is not None:
            if self.done < self.n_frames:
                self._project(max(self.start, self.done - self.margin), self.n_frames, self.n_frames)
            me = np.concatenate(self.motion)
            out["motion"] = me.reshape(len(me) // self.fpt, self.fpt, -1).mean(1)
        if self.colour:
            out["colour"] = np.concatenate(self.colour)
        if self.cfg.pretrained:
            from cinevox.pretrained.extract import video_tr_features
            from cinevox.training.ridge import band_names

            frames = None
            if self._spool:
                self._frames_file.flush()
                frames = np.memmap(self._frames_file, np.uint8, mode="r").reshape(-1, *self._frame_shape)
            device = str(self.b.device) if self.b.model is not None else None
            names = band_names(self.cfg)[len(self.cfg.features.spaces):]
            p = self.b.preparation
            from cinevox.pretrained.extract import check_features_pin

            rm = self.b.info.get("ridge_manifest") or (self.b.info.get("config") or {}).get("ridge") or {}
            pins = rm.get("features_pins")
            for name, entry in zip(names, self.cfg.pretrained):
                d, layer = entry.rsplit(":", 1)
                if pins is not None:
                    check_features_pin(d, pins.get(d), self.b.source)
                out[name] = video_tr_features(d, layer, frames, self.fpt, p.tr, device, video=self.video,
                                              n_trs=self.n_frames // self.fpt, resize=p.frame_resize)
        return out

    def finish(self) -> np.ndarray:
        """Predicted voxels (n_trs, V) float32."""
        feats, a = self.features(), self.b.ridge
        blocks = np.zeros(len(next(iter(feats.values()))), np.int64)  # one film: lags never leave it
        from cinevox.training.ridge import band_names

        xs = []
        for s in band_names(self.cfg):
            x = (feats[s] - a[f"mean_{s}"]) / a[f"sd_{s}"]
            xs.append(delay_features(x.astype(np.float32), blocks, self.cfg.delays))
        x = np.concatenate(xs, axis=1)
        if x.shape[1] != a["weights"].shape[0]:
            raise ValueError(f"{self.b.source}: {x.shape[1]} features, the ridge weights expect "
                             f"{a['weights'].shape[0]}")
        return (x @ a["weights"] + a["y_mean"]).astype(np.float32)


def predict_video(b: ModelBundle, path: str | Path, batch_size: int = 8, progress: bool = False
                  ) -> tuple[np.ndarray, dict]:
    """Predicted voxels for each clip of a video: ``(float32 (n_clips, V), details)`` (streamed)."""
    check_checkpoint_kind(b, "encoder")
    t0 = time.time()
    n_clips, times = video_plan(b, path)
    bar = tqdm(total=n_clips, desc=f"predict {Path(path).name}", unit="clip", disable=bar_disabled(progress))
    if b.kind == "ridge":
        stream = RidgeStream(b)
        stream.video = path
        for clips in iter_clips(b, path, times, max(batch_size, 32)):
            stream.feed(clips)
            bar.update(len(clips))
        pred = stream.finish()
    else:
        parts = []
        for clips in iter_clips(b, path, times, batch_size):
            parts.append(predict_clips(b, clips, batch_size))
            bar.update(len(clips))
        pred = np.concatenate(parts)
    bar.close()
    sec = time.time() - t0
    return pred, {"n_clips": n_clips, "seconds": round(sec, 3), "clips_per_s": round(n_clips / max(sec, 1e-9), 2)}


def prediction_image(b: ModelBundle, pred: np.ndarray) -> nib.Nifti1Image:
    """The 4D image of a prediction (in memory: for the API; the command streams it to disk)."""
    d = b.preparation.delay_trs
    vol = np.zeros((*b.mask.shape[:3], len(pred) + d), np.float32)
    vol[b.ijk[:, 0], b.ijk[:, 1], b.ijk[:, 2], d:] = pred.T
    img = nib.Nifti1Image(vol, b.mask.affine)
    code = int(b.mask.header["sform_code"]) or 4
    img.header.set_sform(b.mask.affine, code=code)
    img.header.set_qform(b.mask.affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    zooms = list(img.header.get_zooms())
    zooms[3] = b.preparation.tr
    img.header.set_zooms(zooms)
    return img


def write_prediction(b: ModelBundle, pred: np.ndarray, out: Path, stem: str, details: dict,
                     regions: pd.DataFrame | None) -> dict[str, Path]:
    """``<stem>_pred.nii.gz`` (written volume by volume), ``<stem>_pred.json``, ``<stem>_regions.tsv``."""
    p, d = b.preparation, b.preparation.delay_trs
    shape3 = tuple(b.mask.shape[:3])
    n_vol = len(pred) + d
    paths = {"nifti": out / f"{stem}_pred.nii.gz", "json": out / f"{stem}_pred.json"}
    with NiftiStreamWriter(paths["nifti"], shape3, n_vol, b.mask.affine, p.tr) as w:
        zero = np.zeros((1, *shape3), np.float32)
        for _ in range(d):
            w.write(zero)
        for k in range(0, len(pred), 16):
            block = np.zeros((min(16, len(pred) - k), *shape3), np.float32)
            block[:, b.ijk[:, 0], b.ijk[:, 1], b.ijk[:, 2]] = pred[k : k + 16]
            w.write(block)
    if regions is not None:
        names = sorted(set(regions["label"]) - {"unlabelled"})
        tab = pd.DataFrame({"volume": np.arange(n_vol), "time_s": np.arange(n_vol) * p.tr})
        lab = regions["label"].to_numpy()
        for name in names:
            tab[name] = np.r_[np.zeros(d), pred[:, lab == name].mean(1)]
        paths["regions"] = out / f"{stem}_regions.tsv"
        write_text_atomic(paths["regions"], tab.to_csv(sep="\t", index=False, float_format="%.6g"))
    bids = sidecar("OUT", f"{stem}_pred.nii.gz", sources=[str(b.source)], step="predict",
                   space=space_label(None, int(b.mask.header["sform_code"])), RepetitionTime=p.tr)
    write_json(paths["json"], bids | {
        "video": details.get("video"), "model": str(b.source), "kind": b.kind, "checksum": b.checksum,
        "head": b.info.get("head", "average"),
        "tr": p.tr, "delay_trs": d, "n_voxels": b.n_voxels, "n_clips": len(pred), "n_volumes": n_vol,
        "frames_per_tr": p.frames_per_tr, "frame_size": p.frame_size, "frame_sampling": p.frame_sampling,
        "convention": f"volume k is the predicted BOLD k TRs after the video starts: the response to clip k - {d} "
                      f"(seconds [(k - {d}) TR, (k - {d} + 1) TR) of the video); volumes 0..{d - 1} are 0",
        "units": "the training data's: per-run z-scored BOLD, averaged over subjects",
        "regions": None if regions is None else "mean over each region's voxels, in <video>_regions.tsv",
        "seconds": details.get("seconds"), "clips_per_s": details.get("clips_per_s")})
    return paths


def predict(source: str | Path, videos: list[str | Path], out: str | Path, batch_size: int = 8,
            device: str | None = None, atlas: str | None = None, atlas_labels: str | None = None,
            aal_version: str = "3v2", checkpoint: str = "last", trust_checkpoint: bool = False,
            progress: bool = True, subject: str | None = None) -> list[dict]:
    """Predict each video with a run or MODEL_DIR into ``out``; returns each video's details. Every video is
    checked (opens, lasts a TR) before any prediction. ``subject``: a viewer's read-out of a ``--target subjects``
    encoder (None: the average-viewer head)."""
    from cinevox.inference.bundle import load_bundle, select_viewer
    from cinevox.utils.folders import exclusive_folder

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    scans = [str(v) for v in videos if str(v).lower().endswith((".nii", ".nii.gz"))]
    if scans:
        raise ValueError(f"{scans[0]} is a brain scan, not a video: predict maps videos to brain responses; to "
                         f"reconstruct frames from scans use `cinevox decode {source} {scans[0]} --onset SECONDS "
                         "--out DIR`")
    b = select_viewer(load_bundle(source, device, checkpoint, trust_checkpoint), subject)
    check_checkpoint_kind(b, "encoder")
    plans = {Path(v): video_plan(b, v) for v in videos}  # bad videos fail before any work
    stems = [Path(v).stem for v in videos]
    if len(set(stems)) != len(stems):
        raise ValueError(f"videos with the same name would write the same files: {sorted(stems)}")
    regions = bundle_regions(b, atlas, atlas_labels, aal_version)
    out = Path(out)
    results = []
    with exclusive_folder(out, "predict"):
        for v, (n_clips, _) in plans.items():
            pred, details = predict_video(b, v, batch_size, progress)
            details["video"] = str(v)
            details["head"] = b.info.get("head", "average")
            paths = write_prediction(b, pred, out, v.stem, details, regions)
            logger.info("%s: %d clips at %.1f clips/s -> %s", v.name, n_clips, details["clips_per_s"],
                        paths["nifti"])
            results.append({**details, **{k: str(p) for k, p in paths.items()}})
    return results
