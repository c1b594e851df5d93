"""Video files through PyAV: writing (simulator) and timestamp-based frame sampling (preparation).

Frames are picked by presentation time, not by counting, so variable frame rates and odd sizes cannot
shift the alignment between frames and TRs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from cinevox.utils.io import atomic_path

logger = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")


class VideoError(ValueError):
    """A video that is missing, unreadable or too short; the message names the file."""


@dataclass
class VideoInfo:
    path: str
    duration: float  # seconds, end of the last frame
    fps: float  # average
    n_frames: int
    width: int
    height: int


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, width: int, height: int,
                bit_rate: int = 0) -> None:
    """Encode blocks of float frames (n, H, W, 3) in [0, 1] as MPEG-4 Part 2 in an .mp4 container, atomically.

    FFmpeg's own MPEG-4 encoder, single-threaded, fed planes converted here: the same frames give the same
    bytes. (libx264 was tried and produced occasional byte differences for identical input.)
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            stream = out.add_stream("mpeg4", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.bit_rate = bit_rate or max(400_000, width * height * 3 * int(np.ceil(fps)))
            stream.codec_context.thread_count = 1
            for block in frames:
                for f in np.asarray(block):
                    frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(f), format="yuv420p")
                    for packet in stream.encode(frame):
                        out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """Float RGB (H, W, 3) in [0, 1] -> planar YUV 4:2:0 uint8 (H * 3 / 2, W), BT.601 limited range.

    Done here rather than by swscale, whose SIMD paths can round differently from call to call (their
    choice depends on memory alignment), which would break "same seed, same bytes".
    """
    f = np.clip(np.asarray(rgb, np.float64), 0, 1)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    h, w = y.shape

    def sub(c):
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y.ravel(), sub(cb).ravel(), sub(cr).ravel()]
    return np.rint(np.concatenate(planes)).clip(0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def _open(path: Path):
    if not path.is_file():
        raise VideoError(f"film file {path} does not exist")
    try:
        container = av.open(str(path))
    except Exception as err:
        raise VideoError(f"{path}: cannot open as a video ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: contains no video stream")
    return container


def check_video(path: str | Path, needed: float, tolerance: float = 1.0) -> float:
    """Cheap up-front check of a film: it opens, its first frame decodes, and it lasts ``needed`` seconds
    (container or stream duration; when neither is stored, a frame near ``needed`` must decode).
    Returns the duration in seconds (as stored, or the last decoded time)."""
    path = Path(path)
    with _open(path) as c:
        s = c.streams.video[0]
        try:
            first = next(c.decode(s), None)
        except (av.error.FFmpegError, StopIteration) as err:
            raise VideoError(f"{path}: undecodable video ({err})") from err
        if first is None:
            raise VideoError(f"{path}: no decodable frames")
        duration = None
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / 1e6
        if duration is None:  # no stored duration: seek near the end and decode one frame
            try:
                c.seek(int(max(needed - 1.0, 0) / s.time_base), stream=s, any_frame=False, backward=True)
                last = None
                for frame in c.decode(s):
                    last = frame.time
                    if last is not None and last >= needed - tolerance:
                        break
            except av.error.FFmpegError as err:
                raise VideoError(f"{path}: undecodable video ({err})") from err
            duration = float(last or 0.0)
    if duration + tolerance < needed:
        raise VideoError(f"{path}: film is too short: its events need {needed:.2f} s of film, the video lasts "
                         f"{duration:.2f} s")
    return duration


def frame_times(path: str | Path) -> tuple[np.ndarray, float, int, int]:
    """Presentation times of every frame, from the first (decoding the whole file once: robust to bad metadata).
    Returns ``(times (n,) sorted, frame step s, width, height)``."""
    path = Path(path)
    with _open(path) as c:
        s = c.streams.video[0]
        times = []
        try:
            for frame in c.decode(s):
                if frame.time is not None:
                    times.append(frame.time)
        except Exception as err:
            raise VideoError(f"{path}: undecodable video ({err})") from err
        if not times:
            raise VideoError(f"{path}: no decodable frames")
        times = np.sort(np.asarray(times, float))
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / float(s.average_rate or 25)
        return times - times[0], step, s.codec_context.width, s.codec_context.height


def probe_video(path: str | Path) -> VideoInfo:
    """Decode the whole file once to get its true frame count and duration (robust to bad metadata)."""
    times, step, width, height = frame_times(path)
    return VideoInfo(str(path), float(times[-1] + step), 1.0 / step, len(times), width, height)


RESIZE_METHODS = ("area", "skimage")


def resize_frame(frame: av.VideoFrame, size: int, method: str = "area") -> np.ndarray:
    """One decoded frame -> uint8 (size, size, 3) RGB, anti-aliased.

    ``area``: swscale's area interpolation at decode time. ``skimage``: the authors' code,
    ``skimage.transform.resize(rgb, (size, size), anti_aliasing=True)`` on the full-size frame (float in
    [0, 1], rounded to uint8 here: at most 0.5 / 255 away from the authors' float frames)."""
    if method == "area":
        return frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="AREA")
    if method == "skimage":
        from skimage.transform import resize

        small = resize(frame.to_ndarray(format="rgb24"), (size, size), anti_aliasing=True)
        return np.rint(np.clip(small, 0, 1) * 255).astype(np.uint8)
    raise ValueError(f"frame resize must be one of {RESIZE_METHODS}, got {method!r}")


def linspace_indices(n_frames: int, n_out: int) -> np.ndarray:
    """The authors' frame pick: ``np.linspace(0, n_frames - 1, n_out).astype(int)`` (uniform by frame count)."""
    return np.linspace(0, n_frames - 1, n_out).astype(int)


def sample_frame_indices(path: str | Path, indices: np.ndarray, size: int, resize: str = "area",
                         out: np.ndarray | None = None) -> np.ndarray:
    """Frames by decode order (0 = the first frame), e.g. :func:`linspace_indices`. -> uint8 (n, size, size, 3)."""
    path = Path(path)
    indices = np.asarray(indices, int)
    if len(indices) and (np.any(np.diff(indices) < 0) or indices[0] < 0):
        raise ValueError("frame indices must be non-negative and non-decreasing")
    if out is None:
        out = np.empty((len(indices), size, size, 3), np.uint8)
    i, n, k = 0, len(indices), -1
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        try:
            for k, frame in enumerate(c.decode(s)):
                if i >= n:
                    break
                if indices[i] != k:
                    continue
                img = resize_frame(frame, size, resize)
                while i < n and indices[i] == k:
                    out[i] = img
                    i += 1
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: undecodable video ({err})") from err
    if i < n:
        raise VideoError(f"{path}: film is too short: needs frame {indices[i]} but the video has {k + 1} frames")
    return out


def sample_frames(path: str | Path, times: np.ndarray, size: int, tolerance: float = 1.0,
                  out: np.ndarray | None = None, resize: str = "area") -> np.ndarray:
    """Frames shown at ``times`` (seconds from the first frame), resized (anti-aliased) to size x size RGB.

    The frame shown at time t is the last one whose presentation time is <= t. Each needed frame is
    converted once (see :func:`resize_frame`).

    Parameters
    ----------
    times : float array (n,), non-decreasing
    size : output side in pixels
    tolerance : seconds past the last frame that may still show it; beyond, a VideoError
    out : optional uint8 array (n, size, size, 3) to fill (e.g. a memory map)
    resize : "area" (swscale) or "skimage" (the authors' code)

    Returns
    -------
    uint8 array (n, size, size, 3)
    """
    times = np.asarray(times, float)
    if out is None:
        out = np.empty((len(times), size, size, 3), np.uint8)
    i = 0
    for block in stream_frames(path, times, size, tolerance, resize, block=256):
        out[i : i + len(block)] = block
        i += len(block)
    return out


def stream_frames(path: str | Path, times: np.ndarray, size: int, tolerance: float = 1.0, resize: str = "area",
                  block: int = 256):
    """:func:`sample_frames` as a generator of uint8 blocks ``(<= block, size, size, 3)``, in order, decoding the
    video once: memory holds one block, whatever the length of the video."""
    path = Path(path)
    times = np.asarray(times, float)
    if len(times) and np.any(np.diff(times) < 0):
        raise ValueError("times must be non-decreasing")
    buf = np.empty((min(block, max(len(times), 1)), size, size, 3), np.uint8)
    i, k, n = 0, 0, len(times)  # next time to fill; frames in buf
    t0, last_img, last_t, step = None, None, None, 0.0
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        try:
            for frame in c.decode(s):
                if frame.time is None:
                    continue
                if t0 is None:
                    t0 = frame.time
                ft = frame.time - t0
                if last_t is not None:
                    step = ft - last_t
                while i < n and times[i] < ft and last_img is not None:  # frames before this one: times < ft
                    buf[k] = last_img
                    i, k = i + 1, k + 1
                    if k == len(buf):
                        yield buf.copy()
                        k = 0
                if i >= n:
                    break
                last_img = resize_frame(frame, size, resize)
                last_t = ft
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: undecodable video ({err})") from err
    if last_img is None:
        raise VideoError(f"{path}: no decodable frames")
    end = (last_t or 0.0) + max(step, 0.0)
    while i < n:
        if times[i] > end + tolerance:
            raise VideoError(
                f"{path}: film is too short: needs a frame at {times[i]:.2f} s but the video ends at {end:.2f} s"
            )
        buf[k] = last_img
        i, k = i + 1, k + 1
        if k == len(buf):
            yield buf.copy()
            k = 0
    if k:
        yield buf[:k].copy()


def find_film(films_dir: str | Path, film: str) -> Path:
    """The video file for ``film`` in ``films_dir`` (``<film>.<ext>``, case-insensitive)."""
    films_dir = Path(films_dir)
    if not films_dir.is_dir():
        raise VideoError(f"films folder {films_dir} does not exist")
    for p in sorted(films_dir.iterdir()):
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.stem.lower() == film.lower():
            return p
    raise VideoError(f"film {film!r} missing: no {film}.mp4 (or .mkv/.webm/...) in {films_dir}")


def iter_frames(path: str | Path, width: int, height: int, block: int = 64):
    """Decode a whole video in blocks: yields ``(times (n,), frames float32 (n, height, width, 3))``."""
    path = Path(path)
    times, frames = [], []
    t0 = None
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        try:
            for frame in c.decode(s):
                if frame.time is None:
                    continue
                t0 = frame.time if t0 is None else t0
                times.append(frame.time - t0)
                frames.append(frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA"))
                if len(frames) == block:
                    yield np.asarray(times), np.stack(frames).astype(np.float32) / 255.0
                    times, frames = [], []
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: undecodable video ({err})") from err
    if frames:
        yield np.asarray(times), np.stack(frames).astype(np.float32) / 255.0
