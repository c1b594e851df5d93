"""Whole training batches on the compute device, without per-sample Python work.

A batch is gathered as uint8 frames ``(B, T, S, S, 3)`` (from memory-mapped films, or from a copy of all the
films staged on the GPU when it fits: Emo-FilM's 8.9 GB does on an H100), converted to float and scaled on the
device, and handed to the model as a permuted *view* ``(B, 3, S, S, T)`` whose memory is frame-major: the fast
encoder reads it without a copy. On CUDA without staging, batches are prepared in a background thread into
pinned memory and copied asynchronously, so the GPU does not wait for the disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from cinevox.data.dataset import PreparedData, clips_to_model, middle_index

logger = logging.getLogger(__name__)


class ClipBatches:
    """``get(indices) -> (clip (B, 3, S, S, T) float, voxels (B, V), frame (B, 3, S, S))`` on ``device``.

    Parameters
    ----------
    stage : "auto" | "device" | "host"
        "auto" stages the uint8 films on a CUDA device when they take less than ``max_fraction`` of its free
        memory; "device" forces it; "host" never stages (memory maps + pinned prefetch).
    """

    def __init__(self, data: PreparedData, device: torch.device, stage: str = "auto", max_fraction: float = 0.5):
        self.data, self.device = data, device
        self.fpt = data.frames_per_tr
        films = sorted(data.manifest["films"])
        self._arrays = [data.frames(f) for f in films]
        starts = np.cumsum([0] + [len(a) for a in self._arrays])
        film_start = dict(zip(films, starts[:-1]))
        s = data.samples
        self.first_frame = (s["film"].map(film_start).to_numpy() + s["frame_start"].to_numpy()).astype(np.int64)
        self.film_index = s["film"].map({f: k for k, f in enumerate(films)}).to_numpy()
        self.local_start = s["frame_start"].to_numpy().astype(np.int64)
        self.voxels = torch.from_numpy(np.array(data.voxels, np.float32)).to(device)  # (n_samples, V): small
        self.minmax = data.frame_intensity == "minmax"
        self.frames_on_device = None
        total = int(starts[-1]) * data.frame_size**2 * 3
        if device.type == "cuda" and stage != "host":
            free = torch.cuda.mem_get_info(device)[0]
            if stage == "device" or total < max_fraction * free:
                logger.info("staging %.2f GB of uint8 frames on %s", total / 1e9, device)
                self.frames_on_device = torch.empty((int(starts[-1]), data.frame_size, data.frame_size, 3),
                                                    dtype=torch.uint8, device=device)
                for a, lo in zip(self._arrays, starts[:-1]):
                    for k in range(0, len(a), 4096):  # in pieces: bounded host memory
                        part = torch.from_numpy(np.ascontiguousarray(a[k : k + 4096]))
                        self.frames_on_device[lo + k : lo + k + len(part)] = part.to(device)
            else:
                logger.info("frames (%.2f GB) do not fit the GPU comfortably: pinned-memory prefetch", total / 1e9)

    def _uint8(self, idx: np.ndarray) -> torch.Tensor:
        """uint8 (B, T, S, S, 3) on the device."""
        if self.frames_on_device is not None:
            rows = torch.as_tensor(self.first_frame[idx][:, None] + np.arange(self.fpt), device=self.device)
            return self.frames_on_device[rows]
        host = np.stack([self._arrays[self.film_index[i]][self.local_start[i] : self.local_start[i] + self.fpt]
                         for i in idx])
        t = torch.from_numpy(host)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, np.int64)
        clip = clips_to_model(self._uint8(idx), self.minmax)  # (B, 3, S, S, T), a view: memory stays frame-major
        frame = clip[..., middle_index(self.fpt)].contiguous()  # (B, 3, S, S)
        vox = self.voxels[torch.as_tensor(idx, device=self.voxels.device)]
        return clip, vox, frame

    def iterate(self, batches: Iterable, prefetch: int = 2) -> Iterator:
        """Batches in order; on CUDA without staging, the next ones are prepared in a background thread."""
        if self.device.type != "cuda" or self.frames_on_device is not None:
            for b in batches:
                yield self.get(b)
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        done = object()

        def work():
            try:
                for b in batches:
                    q.put(self.get(b))
            except BaseException as err:  # handed to the consumer
                q.put(err)
            q.put(done)

        threading.Thread(target=work, daemon=True).start()
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
