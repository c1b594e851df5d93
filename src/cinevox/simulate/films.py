"""Procedural films: textured backgrounds with camera motion, moving objects of several shapes, colours and
contrasts, face-like objects, scene cuts and luminance changes. Each frame comes with its object and face
masks, which the brain model reads as "object presence" and "face presence".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SKIN = np.array([0.93, 0.74, 0.6], np.float32)


@dataclass
class _Shot:
    start: int  # first frame
    gratings: list  # (amp, freq, theta, phase, colour)
    base: np.ndarray  # background colour
    cam: np.ndarray  # camera velocity (field widths per second)
    objects: list  # dicts
    lum_period: float
    lum_amp: float
    lum_phase: float


class FilmRenderer:
    """Deterministic film of ``duration`` seconds at ``fps``; frames are rendered on demand by index.

    Parameters
    ----------
    rng : numpy Generator (consumed once, at construction)
    width, height : frame size in pixels
    fps : frames per second
    duration : seconds
    """

    def __init__(self, rng: np.random.Generator, width: int, height: int, fps: float, duration: float) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.n_frames = int(round(duration * fps))
        self.aspect = width / height
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._x, self._y = (xx + 0.5) / height, (yy + 0.5) / height  # height units; x spans [0, aspect]
        self.shots: list[_Shot] = []
        f = 0
        while f < self.n_frames:
            self.shots.append(self._new_shot(rng, f))
            f += int(rng.uniform(2.5, 7.0) * fps)  # a scene cut every 2.5-7 s
        self._starts = np.array([s.start for s in self.shots])
        # a few flashes (brief luminance bursts) over the film
        n_flash = max(1, int(duration / 40))
        self.flashes = rng.uniform(0, duration, n_flash)

    def _new_shot(self, rng: np.random.Generator, start: int) -> _Shot:
        gratings = []
        for _ in range(rng.integers(2, 5)):
            gratings.append((rng.uniform(0.03, 0.18), rng.uniform(1.0, 9.0), rng.uniform(0, np.pi),
                             rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0, 3).astype(np.float32)))
        objects = []
        for k in range(rng.integers(0, 4) + rng.integers(0, 2)):
            is_face = rng.random() < 0.4 or (k == 0 and rng.random() < 0.3)
            objects.append(dict(
                kind="face" if is_face else rng.choice(["disc", "square", "triangle", "ellipse"]),
                pos=np.array([rng.uniform(0.15, self.aspect - 0.15), rng.uniform(0.15, 0.85)]),
                vel=rng.normal(0, 0.12, 2) * (rng.random() < 0.8),
                size=rng.uniform(0.08, 0.28) if not is_face else rng.uniform(0.14, 0.3),
                colour=(SKIN * rng.uniform(0.75, 1.1)).clip(0, 1) if is_face
                else rng.uniform(0, 1, 3).astype(np.float32),
                contrast=rng.uniform(0.4, 1.0),
            ))
        return _Shot(start, gratings, rng.uniform(0.15, 0.7, 3).astype(np.float32), rng.normal(0, 0.08, 2),
                     objects, rng.uniform(3, 12), rng.uniform(0.0, 0.25), rng.uniform(0, 2 * np.pi))

    def render(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames ``start .. start+n-1``.

        Returns
        -------
        frames : float32 (n, H, W, 3) in [0, 1]
        objects, faces : float32 (n, H, W) in [0, 1], presence masks
        """
        h, w = self.height, self.width
        frames = np.empty((n, h, w, 3), np.float32)
        objm = np.zeros((n, h, w), np.float32)
        facem = np.zeros((n, h, w), np.float32)
        for i, f in enumerate(range(start, start + n)):
            shot = self.shots[int(np.searchsorted(self._starts, f, side="right")) - 1]
            t = f / self.fps
            tau = (f - shot.start) / self.fps
            frames[i], objm[i], facem[i] = self._frame(shot, t, tau)
        return frames, objm, facem

    def _frame(self, shot: _Shot, t: float, tau: float):
        x = self._x + shot.cam[0] * tau
        y = self._y + shot.cam[1] * tau
        img = np.broadcast_to(shot.base, (self.height, self.width, 3)).copy()
        for amp, freq, theta, phase, colour in shot.gratings:
            g = amp * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
            img += g[..., None] * (colour - 0.5)
        objm = np.zeros((self.height, self.width), np.float32)
        facem = np.zeros_like(objm)
        for ob in shot.objects:
            pos = _bounce(ob["pos"] + ob["vel"] * tau, self.aspect)
            alpha = _shape_alpha(ob["kind"], self._x - pos[0], self._y - pos[1], ob["size"], self.height)
            col = 0.5 + (ob["colour"] - 0.5) * ob["contrast"]
            img = img * (1 - alpha[..., None]) + col * alpha[..., None]
            if ob["kind"] == "face":
                img = _draw_face_features(img, self._x - pos[0], self._y - pos[1], ob["size"], self.height)
                facem = np.maximum(facem, alpha)
            else:
                objm = np.maximum(objm, alpha)
        gain = 1 + shot.lum_amp * np.sin(2 * np.pi * tau / shot.lum_period + shot.lum_phase)
        gain += 0.6 * np.exp(-(((t - self.flashes) / 0.3) ** 2)).sum()
        return np.clip(img * gain, 0, 1), objm, facem


def _bounce(p: np.ndarray, aspect: float) -> np.ndarray:
    lo, hi = np.array([0.1, 0.1]), np.array([aspect - 0.1, 0.9])
    span = hi - lo
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q > span, 2 * span - q, q)


def _smooth_edge(d: np.ndarray, px: float) -> np.ndarray:
    """1 inside (d < 0), 0 outside, a one-pixel ramp between (d in height units)."""
    return np.clip(0.5 - d / px, 0, 1).astype(np.float32)


def _shape_alpha(kind: str, dx: np.ndarray, dy: np.ndarray, r: float, height: int) -> np.ndarray:
    px = 1.0 / height
    if kind == "disc":
        d = np.hypot(dx, dy) - r
    elif kind == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) - 0.8 * r
    elif kind == "triangle":
        d = np.maximum.reduce([dy - 0.5 * r, -0.866 * dx - 0.5 * dy - 0.5 * r, 0.866 * dx - 0.5 * dy - 0.5 * r])
    else:  # ellipse and face
        d = (np.hypot(dx / 0.75, dy) - r) * 0.75
    return _smooth_edge(d, px)


def _draw_face_features(img: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: float, height: int) -> np.ndarray:
    dark = np.float32(0.08)
    px = 1.0 / height
    for ex in (-0.32 * r, 0.32 * r):
        a = _smooth_edge(np.hypot(dx - ex, dy + 0.2 * r) - 0.12 * r, px)
        img = img * (1 - a[..., None]) + dark * a[..., None]
    mouth = _smooth_edge((np.hypot((dx) / 0.4, (dy - 0.42 * r) / 0.1) - r) * 0.1, px)
    return img * (1 - mouth[..., None]) + np.float32(0.35) * mouth[..., None] * np.array([0.7, 0.2, 0.2])


CHANNELS = ["edges_fine", "contrast_coarse", "motion", "colour", "luminance", "objects", "faces", "red_green",
            "blue_yellow"]


def frame_features(frames: np.ndarray, prev: np.ndarray | None, objects: np.ndarray | None,
                   faces: np.ndarray | None, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Visual feature maps of a block of frames, pooled onto a ``grid x grid`` visual field.

    Parameters
    ----------
    frames : float32 (n, H, W, 3)
    prev : float32 (H, W) luminance of the frame before the block (None for a film's first frame)
    objects, faces : float32 (n, H, W) presence masks, or None (real films: channels stay 0)

    Returns
    -------
    features : float32 (n, n_channels, grid * grid), channels as in ``CHANNELS``
    last : float32 (H, W) luminance of the last frame (the next block's ``prev``)
    """
    from scipy.ndimage import gaussian_filter

    n, h, w, _ = frames.shape
    lum = frames @ np.array([0.299, 0.587, 0.114], np.float32)  # (n, H, W)
    s1, s2 = max(h / 48, 0.6), max(h / 12, 1.5)
    b1 = gaussian_filter(lum, (0, s1, s1))
    b2 = gaussian_filter(lum, (0, s2, s2))
    prev_l = np.concatenate([lum[:1] if prev is None else prev[None], lum[:-1]])
    maps = [
        np.abs(lum - b1) * 4,  # fine edges / local contrast
        np.abs(b1 - b2) * 2,  # coarse contrast
        np.abs(lum - prev_l) * 4,  # motion energy (temporal difference)
        frames.max(-1) - frames.min(-1),  # colour saturation
        lum,  # luminance
        objects if objects is not None else np.zeros_like(lum),
        faces if faces is not None else np.zeros_like(lum),
        frames[..., 0] - frames[..., 1],  # colour opponency: red - green
        frames[..., 2] - 0.5 * (frames[..., 0] + frames[..., 1]),  # blue - yellow
    ]
    feats = np.stack([_pool(m, grid) for m in maps], axis=1)  # (n, C, g*g)
    return feats.astype(np.float32), lum[-1]


def _pool(m: np.ndarray, g: int) -> np.ndarray:
    """Area-average (n, H, W) onto (n, g*g)."""
    n, h, w = m.shape
    ri = (np.arange(g) * h) // g
    ci = (np.arange(g) * w) // g
    rows = np.add.reduceat(m, ri, axis=1) / np.diff(np.append(ri, h))[None, :, None]
    cells = np.add.reduceat(rows, ci, axis=2) / np.diff(np.append(ci, w))[None, None, :]
    return cells.reshape(n, g * g)
