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
from collections.abc import Iterable

import numpy as np
import torch

from cinevox.data.dataset import PreparedData, clips_to_model, middle_index

logger = logging.getLogger(__name__)


#: what staging leaves free on the GPU: the larger of this many bytes and this share of its memory
STAGE_RESERVE_BYTES, STAGE_RESERVE_SHARE = 2 * 1024**3, 0.10


def staging_fits(frames_bytes: int, free_bytes: int, total_bytes: int) -> bool:
    """Whether ``frames_bytes`` of uint8 frames fit in ``free_bytes`` of GPU memory measured *after* a training
    step (the caching allocator then holds the step's peak: weights, Adam's state, activations), leaving
    :data:`STAGE_RESERVE_BYTES` or :data:`STAGE_RESERVE_SHARE` of the card for fragmentation and other use."""
    return frames_bytes + max(STAGE_RESERVE_BYTES, STAGE_RESERVE_SHARE * total_bytes) <= free_bytes


class ClipBatches:
    """``get(indices) -> (clip (B, 3, S, S, T) float, voxels (B, V) (per viewer: (B, N, V)), frame (B, 3, S, S))``
    on ``device``.

    Parameters
    ----------
    stage : "auto" | "device" | "host"
        "device" copies the uint8 films to the CUDA device at once (``--stage``); "host" never does (memory maps
        + pinned prefetch, ``--no-stage``); "auto" starts on the host and :meth:`decide_staging`, called after
        the first training step, stages when the frames fit beside the training's measured peak memory.
    prefetch : bool or None
        Prepare batches in a background thread (None: on CUDA when the frames are not staged).
    """

    def __init__(self, data: PreparedData, device: torch.device, stage: str = "auto",
                 prefetch: bool | None = None, targets=None):
        if stage not in ("auto", "device", "host"):
            raise ValueError(f"stage must be auto, device or host, got {stage!r}")
        self.data, self.device, self.stage, self.prefetch = data, device, stage, prefetch
        self.fpt = data.frames_per_tr
        films = sorted(data.manifest["films"])
        self._arrays = [data.frames(f) for f in films]
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        film_start = dict(zip(films, self._starts[:-1]))
        s = data.samples
        self.first_frame = (s["film"].map(film_start).to_numpy() + s["frame_start"].to_numpy()).astype(np.int64)
        self.film_index = s["film"].map({f: k for k, f in enumerate(films)}).to_numpy()
        self.local_start = s["frame_start"].to_numpy().astype(np.int64)
        # targets: None (voxels.npy), an array (n_samples, V) or a function indices (B,) -> (B, N, V) (per viewer)
        self.gather = targets if callable(targets) else None
        values = data.voxels if targets is None or self.gather is not None else targets
        self.voxels = torch.from_numpy(np.array(values, np.float32)).to(device)  # (n_samples, V): small
        self.minmax = data.frame_intensity == "minmax"
        self.frames_on_device = None
        self.frames_bytes = int(self._starts[-1]) * data.frame_size**2 * 3
        self.decided = device.type != "cuda" or stage != "auto"
        if device.type == "cuda" and stage == "device":
            self._stage()

    def _stage(self) -> None:
        """Copy every film's uint8 frames to the device, in pieces (bounded host memory)."""
        logger.info("staging %.2f GB of uint8 frames on %s", self.frames_bytes / 1e9, self.device)
        size = self.data.frame_size
        staged = torch.empty((int(self._starts[-1]), size, size, 3), dtype=torch.uint8, device=self.device)
        for a, lo in zip(self._arrays, self._starts[:-1]):
            for k in range(0, len(a), 4096):
                part = torch.from_numpy(np.ascontiguousarray(a[k : k + 4096]))
                staged[lo + k : lo + k + len(part)] = part.to(self.device)
        self.frames_on_device = staged  # published whole: a prefetch thread never sees a half-filled copy

    def decide_staging(self) -> bool:
        """The "auto" decision, once, after a training step: stage when the frames fit beside the measured peak
        (:func:`staging_fits`). Returns whether the frames are (now) on the device."""
        if not self.decided:
            self.decided = True
            free, total = torch.cuda.mem_get_info(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            fits = staging_fits(self.frames_bytes, free, total)
            logger.info("after the first step: peak %.2f GB allocated, %.2f of %.2f GB free; frames %.2f GB: %s",
                        peak / 1e9, free / 1e9, total / 1e9, self.frames_bytes / 1e9,
                        "staged on the GPU" if fits else "kept on the host (pinned prefetch)")
            if fits:
                try:
                    self._stage()
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    logger.warning("staging the frames ran out of GPU memory: kept on the host (pinned prefetch)")
        return self.frames_on_device is not None

    def _uint8(self, idx: np.ndarray) -> torch.Tensor:
        """uint8 (B, T, S, S, 3) on the device."""
        staged = self.frames_on_device
        if staged is not None:
            rows = torch.as_tensor(self.first_frame[idx][:, None] + np.arange(self.fpt), device=self.device)
            return staged[rows]
        host = np.stack([self._arrays[self.film_index[i]][self.local_start[i] : self.local_start[i] + self.fpt]
                         for i in idx])
        t = torch.from_numpy(host)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, np.int64)
        clip = clips_to_model(self._uint8(idx), self.minmax)  # (B, 3, S, S, T), a view: memory stays frame-major
        frame = clip[..., middle_index(self.fpt)].contiguous()  # (B, 3, S, S)
        if self.gather is not None:
            vox = torch.from_numpy(self.gather(idx)).to(self.device)  # (B, N, V), NaN where a viewer did not see
        else:
            vox = self.voxels[torch.as_tensor(idx, device=self.voxels.device)]
        return clip, vox, frame

    def stream(self, batches: Iterable, prefetch: int = 2) -> BatchStream:
        """The batches in order, as a context manager: ``with source.stream(b) as s: for clip, vox, frame in s``.
        On CUDA without staging (or with ``prefetch=True``) the next ones are prepared in a background thread,
        which is stopped and drained when the block ends, however it ends."""
        use_thread = self.prefetch if self.prefetch is not None else (
            self.device.type == "cuda" and self.frames_on_device is None)
        return BatchStream(self, batches, prefetch if use_thread else 0)


class BatchStream:
    """Iterator over prepared batches; with ``depth > 0``, a daemon thread prepares up to ``depth`` batches ahead.

    The thread checks a stop flag between batches and never blocks on a full queue for longer than 0.1 s, so
    :meth:`close` (called by ``with``, by ``for`` when the batches end, and on any exception) stops it, drains
    what it prepared (freeing pinned and GPU memory) and joins it. The thread makes the source's CUDA device
    current before it allocates anything (each rank's own GPU, never GPU 0)."""

    _DONE = object()

    def __init__(self, source: ClipBatches, batches: Iterable, depth: int) -> None:
        self.source, self.depth = source, depth
        self._batches = iter(batches)
        self._thread = None
        dev = source.device  # the thread makes this GPU current (a device "cuda" means the caller's current one)
        self._cuda_index = (dev.index if dev.index is not None else torch.cuda.current_device()) \
            if dev.type == "cuda" else None
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._work, name="cinevox-prefetch", daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            if self._cuda_index is not None:
                torch.cuda.set_device(self._cuda_index)
            for b in self._batches:
                if self._stop.is_set() or not self._put(self.source.get(b)):
                    return
        except BaseException as err:  # handed to the consumer
            self._put(err)
            return
        self._put(self._DONE)

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            return self.source.get(next(self._batches))
        item = self._queue.get()
        if item is self._DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # drain, so that a put in progress returns and prepared batches are freed
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
