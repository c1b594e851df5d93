"""Clips of any videos, laid out like a prepared dataset, so that ``saliency`` and ``concepts`` run on a model
without its training data (a MODEL_DIR, or a run analysed on new films).

Every clip of the videos (one per TR, sampled as the model's training films were) is decoded once into a
memory-mapped uint8 array in a work folder; the clips are both the pool (``train``) and the analysed set
(``test``). There are no measured voxels: a decoder is fed its encoder's predictions (E-D), so a D model, which
reads measured voxels, needs its run's prepared data instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cinevox.inference.bundle import ModelBundle, bundle_regions
from cinevox.inference.predict import iter_clips, video_plan


class VideoClips:
    """The part of :class:`cinevox.data.dataset.PreparedData` that saliency and concepts read, from videos."""

    def __init__(self, b: ModelBundle, videos: list, work: str | Path, max_clips: int | None = None,
                 atlas: str | None = None, atlas_labels: str | None = None, aal_version: str = "3v2") -> None:
        if not videos:
            raise ValueError("no videos given")
        p = b.preparation
        self.root = Path(work)
        self.root.mkdir(parents=True, exist_ok=True)
        plans = [(Path(v), *video_plan(b, v)) for v in videos]  # every video checked first
        n = sum(k for _, k, _ in plans)
        self.frames_per_tr, self.frame_size, self.frame_intensity = p.frames_per_tr, p.frame_size, p.frame_intensity
        self._clips = np.lib.format.open_memmap(self.root / "clips.npy", mode="w+", dtype=np.uint8,
                                                shape=(n, p.frames_per_tr, p.frame_size, p.frame_size, 3))
        rows, k = [], 0
        for path, n_clips, times in plans:
            for block in iter_clips(b, path, times, 16):
                self._clips[k : k + len(block)] = block
                k += len(block)
            rows += [{"film": path.stem, "tr": t, "split": "test", "frame_start": t * p.frames_per_tr}
                     for t in range(n_clips)]
        self._clips.flush()
        self.samples = pd.DataFrame(rows)
        self.voxels = np.full((n, b.n_voxels), np.nan, np.float32)  # nothing measured
        self.manifest = {"tr": p.tr, "films": {f: {"n_trs": int((self.samples.film == f).sum())}
                                               for f in self.samples.film.unique()},
                         "config": {"frames_per_tr": p.frames_per_tr, "frame_size": p.frame_size},
                         "bids_simulation": None}
        self._b = b
        self.regions = bundle_regions(b, atlas, atlas_labels, aal_version)

    @property
    def n_voxels(self) -> int:
        return self._b.n_voxels

    def clip(self, i: int) -> np.ndarray:
        """uint8 (T, S, S, 3)."""
        return np.array(self._clips[i])

    def indices(self, split: str) -> np.ndarray:
        return np.arange(len(self.samples)) if split in ("train", "test") else np.arange(0)

    def mask_img(self):
        return self._b.mask

    def voxels_ijk(self) -> np.ndarray:
        return self._b.ijk

    def simulation_truth(self, name: str):
        return None
