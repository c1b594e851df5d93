"""Torch datasets over a prepared folder: memory-mapped arrays, the Dataset only indexes.

A sample is ``(clip (3, S, S, T) float in [0, 1], voxels (V,) float, frame (3, S, S) float)`` where the frame is
the clip's middle frame (index ``(T - 1) // 2``, i.e. 15 of 32). The clip intensity is the prepared dataset's
``frame_intensity`` choice: ``raw`` (uint8 / 255) or ``minmax`` (each frame stretched to [0, 1], the authors').
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cinevox.data.masks import mask_positions
from cinevox.metrics import minmax_frames
from cinevox.utils.folders import check_integrity
from cinevox.utils.io import read_json


def middle_index(n_frames: int) -> int:
    return (n_frames - 1) // 2


def clips_to_model(u8: torch.Tensor, minmax: bool = False) -> torch.Tensor:
    """uint8 clips as stored (B, T, S, S, 3) -> the model's input (B, 3, S, S, T) float in [0, 1].

    ``minmax`` stretches each frame to [0, 1] (the ``frame_intensity`` choice). The result is a permuted view:
    its memory stays frame-major, which the fast encoder reads without a copy."""
    x = u8.to(torch.float32).div_(255.0)  # (B, T, S, S, 3)
    if minmax:
        b, t = x.shape[:2]
        x = minmax_frames(x.reshape(b * t, *x.shape[2:])).reshape(x.shape)
    return x.permute(0, 4, 2, 3, 1)


#: the split label of a training film's prepared test TRs in a leave-one-film-out fold (neither fitted nor scored)
CV_UNUSED = "cv_unused"


def voxel_preparation(manifest: dict) -> dict:
    """Every preparation choice of a prepared dataset that shapes its voxels (``manifest.json``), as a run and a
    MODEL_DIR record it: TR and delay, baseline removal, confounds (nilearn ``load_confounds`` keyword arguments, or
    None), non-steady-state volumes (left out), the z-scoring window (each run's stimulus volumes)."""
    c = manifest["config"]
    strategy = manifest.get("confounds")
    return {"tr": float(manifest["tr"]), "delay_trs": int(c["delay_trs"]), "detrend": c.get("detrend") or "mean",
            "confounds": manifest.get("confound_options") or ({"strategy": list(strategy)} if strategy else None),
            "non_steady_state": "drop", "zscore_window": "stimulus"}


def film_fold_split(samples: pd.DataFrame, holdout_film: str) -> np.ndarray:
    """Split labels of a leave-one-film-out fold: every TR of ``holdout_film`` is ``test`` (its prepared train,
    validation, gap and test TRs alike); the other films keep their prepared ``train``, ``val`` and ``gap`` TRs,
    and their prepared ``test`` TRs become :data:`CV_UNUSED` (so that the fold's training data are the prepared
    split's, less the held-out film). samples: the prepared ``samples.csv`` -> (n_samples,) labels."""
    films = samples["film"].astype(str).to_numpy()
    labels = samples["split"].to_numpy(dtype=object).copy()
    labels[labels == "test"] = CV_UNUSED
    labels[films == str(holdout_film)] = "test"
    return labels


class PreparedData:
    """Read-only view of a ``cinevox prepare`` folder.

    ``holdout_film``: the view of a leave-one-film-out fold (:func:`film_fold_split`): ``samples["split"]`` holds the
    fold's labels (the prepared ones stay in ``prepared_split``), so that training, ridge fitting and evaluation
    see the fold through :meth:`indices` and ``samples`` alone."""

    def __init__(self, root: str | Path, holdout_film: str | None = None) -> None:
        self.root = Path(root)
        if not (self.root / "manifest.json").is_file():
            hint = (" (its files are there: an interrupted `cinevox prepare`? rerun it to finish)"
                    if (self.root / "voxels.npy").exists() or (self.root / ".staging").exists() else "")
            raise FileNotFoundError(f"{self.root} is not a prepared dataset (no manifest.json){hint}; run "
                                    "`cinevox prepare`")
        self.manifest = read_json(self.root / "manifest.json")
        step = self.manifest.get("step")
        if step not in (None, "prepare"):
            prep = (self.manifest.get("inputs") or {}).get("prepared") if isinstance(self.manifest.get("inputs"),
                                                                                      dict) else None
            raise ValueError(f"{self.root} is the output of `cinevox {step}`, not a prepared dataset: give the "
                             f"prepared dataset{f' it was made from ({prep})' if prep else ''} instead")
        if "integrity" in self.manifest:
            check_integrity(self.root, self.manifest["integrity"], "prepared dataset",
                            "Rerun `cinevox prepare` into this folder to rebuild it.")
        self.samples = pd.read_csv(self.root / "samples.csv")
        self.prepared_split = self.samples["split"].to_numpy(dtype=object).copy()
        self.holdout_film = None if holdout_film is None else str(holdout_film)
        if self.holdout_film is not None:
            films = sorted(self.samples["film"].astype(str).unique())
            if self.holdout_film not in films:
                raise ValueError(f"held-out film {self.holdout_film!r} is not a film of {self.root} "
                                 f"({', '.join(films)})")
            self.samples["split"] = film_fold_split(self.samples, self.holdout_film)
        self.voxels = np.load(self.root / "voxels.npy", mmap_mode="r")  # (n_samples, V)
        self.frames_per_tr = int(self.manifest["config"]["frames_per_tr"])
        self.frame_size = int(self.manifest["config"]["frame_size"])
        self.frame_intensity = self.manifest["config"].get("frame_intensity") or "raw"
        self._frames: dict[str, np.ndarray] = {}

    @property
    def n_voxels(self) -> int:
        return int(self.voxels.shape[1])

    def frames(self, film: str) -> np.ndarray:
        """uint8 (n_trs * T, S, S, 3), memory-mapped."""
        if film not in self._frames:
            self._frames[film] = np.load(self.root / "frames" / f"{film}.npy", mmap_mode="r")
        return self._frames[film]

    def indices(self, split: str) -> np.ndarray:
        return self.samples.index[self.samples["split"] == split].to_numpy()

    def fold_record(self) -> dict:
        """The manifest entry of a leave-one-film-out fold (``{}`` for the prepared split)."""
        if self.holdout_film is None:
            return {}
        f = self.holdout_film
        return {"cv_fold": {"holdout_film": f,
                            "train": "the prepared train TRs of the other films",
                            "validation": "the prepared validation TRs of the other films",
                            "test": f"every TR of {f} (its prepared train, validation, gap and test TRs)",
                            "unused": "the prepared test (and gap) TRs of the other films",
                            "n_train": int(len(self.indices("train"))), "n_val": int(len(self.indices("val"))),
                            "n_test": int(len(self.indices("test")))}}

    def clip(self, i: int) -> np.ndarray:
        """uint8 (T, S, S, 3)."""
        row = self.samples.iloc[i]
        s = int(row["frame_start"])
        return np.array(self.frames(row["film"])[s : s + self.frames_per_tr])

    def mask_img(self) -> nib.Nifti1Image:
        return nib.load(self.root / "mask.nii.gz")

    def voxels_ijk(self) -> np.ndarray:
        """(V, 3) grid indices of the voxels, in the column order of ``voxels``."""
        return np.load(self.root / "voxels_ijk.npy")

    def simulation_truth(self, name: str) -> np.ndarray | None:
        """A truth map of the simulator (``noise_ceiling.nii.gz``, ``informative.nii.gz``, ...) at the
        dataset's voxels, shape (V,); None when the data did not come from ``cinevox simulate``."""
        sim = self.manifest.get("bids_simulation")
        if not sim or not (Path(sim) / name).is_file():
            return None
        img = nib.load(Path(sim) / name)
        if img.shape[:3] != self.mask_img().shape[:3]:
            return None
        return np.asarray(img.dataobj, np.float64)[tuple(self.voxels_ijk().T)]

    def simulation_visual_index(self) -> np.ndarray | None:
        """Each voxel's position among the simulator's visual voxels (C order of ``visual_mask.nii.gz``: the column
        order of ``stimulus_signal/<film>.npy`` and ``tuning.npz``), (V,) int; None when the data did not come from
        ``cinevox simulate`` or a voxel lies outside its visual mask."""
        sim = self.manifest.get("bids_simulation")
        if not sim or not (Path(sim) / "visual_mask.nii.gz").is_file():
            return None
        vis = np.asarray(nib.load(Path(sim) / "visual_mask.nii.gz").dataobj) > 0
        if vis.shape != self.mask_img().shape[:3]:
            return None
        r = mask_positions(vis, self.voxels_ijk())
        return None if (r < 0).any() else r

    @property
    def subjects(self) -> list[str]:
        """The viewers, in the order of the first axis of :meth:`subject_voxels`."""
        return list(self.manifest.get("subjects", []))

    def subject_voxels(self) -> np.ndarray:
        """float32 (n_subjects, n_samples, V), memory-mapped: each viewer's series on the rows of ``samples``, NaN
        where the viewer did not see the film. Its NaN-mean over viewers is ``voxels``."""
        path = self.root / "subjects.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (prepared before per-viewer data existed); rerun "
                                    "`cinevox prepare` into this folder to add it")
        return np.load(path, mmap_mode="r")

    def viewers_mean(self, viewers: list[int], rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The mean over the viewers at positions ``viewers`` of their series on ``rows`` (default: every sample),
        each row over the viewers who saw it, read one viewer at a time (bounded memory; the other viewers' rows
        are never read): ``(mean (n, V) float32, 0 where no viewer saw the row; count (n,))``."""
        every = self.subject_voxels()
        n = len(self.samples) if rows is None else len(rows)
        acc, cnt = np.zeros((n, self.n_voxels)), np.zeros(n, np.int64)
        for j in viewers:
            x = np.asarray(every[j] if rows is None else every[j, rows], np.float64)
            ok = ~np.isnan(x).any(1)
            acc[ok] += x[ok]
            cnt += ok
        return (acc / np.maximum(cnt, 1)[:, None]).astype(np.float32), cnt

    def subject_index(self, subject: str) -> int:
        """Position of a viewer (``S07`` or ``sub-S07``) in :attr:`subjects`; ValueError naming those present."""
        s = subject.removeprefix("sub-")
        if s not in self.subjects:
            raise ValueError(f"subject {subject!r} is not in {self.root} (viewers: {', '.join(self.subjects)})")
        return self.subjects.index(s)

    def for_viewer(self, subject: str) -> PreparedData:
        """This dataset as viewer ``subject`` saw it (``S07`` or ``sub-S07``): ``voxels`` is the viewer's own series
        (memory-mapped rows of ``subjects.npy``) and rows the viewer did not see leave every split (label
        ``unseen``), so that anything reading ``voxels`` and :meth:`indices` (decoders' inputs, lesions, saliency)
        reads the viewer's data. ValueError naming the viewers present."""
        import copy

        j = self.subject_index(subject)
        view = copy.copy(self)
        view.voxels = self.subject_voxels()[j]  # (n_samples, V), NaN on unseen rows
        seen = ~np.isnan(np.asarray(view.voxels[:, 0]))
        view.samples = self.samples.copy()
        view.samples.loc[~seen, "split"] = "unseen"
        view.viewer = self.subjects[j]
        view._frames = self._frames
        return view

    def subjects_test(self) -> np.ndarray:
        """float32 (n_subjects, n_test, V), NaN where a subject did not see the film. In a leave-one-film-out view
        (whose test rows are the held-out film's) they come from ``subjects.npy``, which older prepared folders lack."""
        if self.holdout_film is not None:
            if (self.root / "subjects.npy").is_file():
                return np.asarray(self.subject_voxels()[:, self.indices("test")], np.float32)
            raise ValueError(f"{self.root}: per-subject data are kept for the prepared test split only, not for "
                             f"the fold that holds out {self.holdout_film}")
        return np.load(self.root / "subjects_test.npy", mmap_mode="r")


class ClipDataset(Dataset):
    """Samples of one split: ``(clip (3, S, S, T), voxels (V,), frame (3, S, S))``."""

    def __init__(self, data: PreparedData, split: str | None = None, indices: np.ndarray | None = None) -> None:
        self.data = data
        self.idx = data.indices(split) if indices is None else np.asarray(indices)
        if len(self.idx) == 0:
            raise ValueError(f"{data.root}: no samples in split {split!r}")

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k: int):
        i = int(self.idx[k])
        u8 = torch.from_numpy(self.data.clip(i))[None]  # (1, T, S, S, 3)
        clip = clips_to_model(u8, self.data.frame_intensity == "minmax")[0].contiguous()  # (3, S, S, T)
        frame = clip[..., middle_index(clip.shape[-1])]  # (3, S, S)
        voxels = torch.from_numpy(np.array(self.data.voxels[i], dtype=np.float32))
        return clip, voxels, frame
