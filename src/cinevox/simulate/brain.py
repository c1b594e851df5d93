"""The generative brain model: population receptive fields, feature tuning, HRF, subjects and noise.

Group signal of visual voxel v (unit variance over the film segment)::

    neural_v(t) = sum_c w_vc * <pRF_v, F_c(t)>          (frame-rate features, binned at TR / 4)
    s_v(k)      = zscore_film( (neural_v * hrf)(k TR + TR / 2) )
    shared_v(k) = zscore_film( rho_v s_v(k) + sqrt(1 - rho_v^2) latent_v(k) )

with ``rho_v = 1`` in the planted informative regions and ``uninformative_visual_share`` elsewhere: there the
shared signal is mostly driven by non-visual latent processes, as reliable across subjects but not
decodable from the frames. ``shared`` is what the noise ceiling and ``signal/<film>.npy`` refer to.

Subject j, voxel v (noise in units of the noise sd)::

    y_jv(k) = baseline_jv + scale * ( g_j a_v shared_v(k) + n_jv(k) + d_jv(k) )

with ``a_v^2`` the per-subject SNR, AR(1) noise ``n`` of unit variance, slow drift ``d`` of variance
``drift_sd^2`` and subject gain ``g_j``. After z-scoring each run and averaging N subjects, the correlation
of the average with ``shared`` (the ceiling on Pearson r of any model) is ``A / sqrt(A^2 + B)`` with
``A = mean_j g_j a / sd_j``, ``B = sum_j (1 + drift_sd^2) / sd_j^2 / N^2``, ``sd_j^2 = g_j^2 a^2 + 1 + drift_sd^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve
from scipy.stats import gamma

from cinevox.data.atlas import base_name
from cinevox.simulate.atlas import SimSpace, region_family
from cinevox.simulate.films import CHANNELS
from cinevox.utils.timing import to_volume

#: Mean channel weights per region family (columns as ``CHANNELS``).
FAMILY_WEIGHTS = {
    "early": [1.0, 0.6, 0.3, 0.2, 0.4, 0.1, 0.05, 0.6, 0.6],
    "lateral": [0.2, 0.5, 0.3, 0.1, 0.1, 1.0, 0.3, 0.1, 0.1],
    "ventral": [0.1, 0.2, 0.1, 0.6, 0.1, 0.3, 1.0, 0.7, 0.7],
    "motion": [0.1, 0.2, 1.0, 0.05, 0.1, 0.2, 0.1, 0.05, 0.05],
    "other": [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
}
#: pRF size (sd, fraction of the frame height) at mid eccentricity, per family.
FAMILY_PRF = {"early": 0.06, "lateral": 0.14, "ventral": 0.22, "motion": 0.25, "other": 0.2}
BINS_PER_TR = 4
DATA_SCALE = 8.0  # arbitrary data units per noise sd
BASELINE = 600.0


def canonical_hrf(dt: float, length: float = 32.0) -> np.ndarray:
    """SPM's double-gamma HRF (peak ~5 s, undershoot ~15 s, ratio 1/6), unit sum, sampled every dt s."""
    t = np.arange(0, length, dt)
    h = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6.0
    return h / h.sum()


@dataclass
class Tuning:
    """Per visual voxel (C order of ``space.visual``)."""

    weights: np.ndarray  # (V, C)
    prf: np.ndarray  # (V, 3): x, y (fraction of frame width / height), sd (fraction of height)
    amplitude: np.ndarray  # (V,) a_v, signal sd relative to noise sd (per subject)
    family: np.ndarray  # (V,) str
    label: np.ndarray  # (V,) str, region label ("Calcarine_L", "other")
    informative: np.ndarray  # (V,) bool
    visual_share: np.ndarray  # (V,) correlation of the shared signal with its stimulus-driven part


def _smooth_field(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape), sigma_vox)
    return f / (f.std() + 1e-12)


def make_tuning(space: SimSpace, cfg, rng: np.random.Generator) -> Tuning:
    vs = float(np.abs(np.linalg.det(space.affine[:3, :3])) ** (1 / 3))
    vis = space.visual
    xyz = space.mm(vis)
    labels = np.array([space.region_names.get(int(i), "other") for i in space.region[vis]], dtype=object)
    family = np.array([region_family(lb) for lb in labels], dtype=object)
    # retinotopy: left hemisphere -> right visual field; posterior -> fovea; dorsal -> lower field
    ecc = np.clip((xyz[:, 1] + 100) / 60, 0.05, 1.0)
    theta = np.clip((xyz[:, 2] - 5) / 25, -1, 1) * (np.pi / 2) * 0.9
    side = -np.sign(xyz[:, 0] + 1e-6)
    jitter = [_smooth_field(rng, vis.shape, 4.0 / vs)[vis] for _ in range(2)]
    px = 0.5 + 0.45 * np.clip(side * ecc * np.cos(theta) + 0.05 * jitter[0], -1, 1)
    py = 0.5 + 0.45 * np.clip(ecc * np.sin(theta) + 0.05 * jitter[1], -1, 1)
    size = np.array([FAMILY_PRF[f] for f in family]) * (0.5 + ecc)
    # channel weights: family means, modulated by spatially smooth fields
    sm = cfg.tuning_smoothness_mm / vs
    base = np.array([FAMILY_WEIGHTS[f] for f in family])
    mod = np.stack([_smooth_field(rng, vis.shape, sm)[vis] for _ in CHANNELS], axis=1)
    weights = base * np.exp(0.35 * mod)
    # SNR: spatially smooth log-normal, the same law everywhere in the visual mask
    log_snr = cfg.log10_snr_mean + cfg.log10_snr_sd * _smooth_field(rng, vis.shape, cfg.snr_smoothness_mm / vs)[vis]
    bases = np.array([base_name(lb) for lb in labels], dtype=object)
    informative = np.isin(bases, cfg.informative_regions)
    amplitude = np.sqrt(10 ** (log_snr + cfg.informative_log10_snr_boost * informative))
    share = np.where(informative, 1.0, cfg.uninformative_visual_share)
    return Tuning(weights.astype(np.float32), np.column_stack([px, py, size]).astype(np.float32),
                  amplitude.astype(np.float32), family, labels, informative, share.astype(np.float32))


def viewer_deviation(space: SimSpace, tuning: Tuning, cfg, j: int) -> np.ndarray:
    """The viewer-specific part of viewer ``j``'s channel weights, (V, C) float32: per channel a spatially smooth
    unit-sd field (seeded ``(seed, 30, j)``, smoothness ``tuning_smoothness_mm``) times the family's mean weight.
    Viewer j's weights are ``tuning.weights + cfg.subject_variability * viewer_deviation(...)``."""
    rng = np.random.default_rng([cfg.seed, 30, j])
    vs = float(np.abs(np.linalg.det(space.affine[:3, :3])) ** (1 / 3))
    base = np.array([FAMILY_WEIGHTS[f] for f in tuning.family])
    mod = np.stack([_smooth_field(rng, space.visual.shape, cfg.tuning_smoothness_mm / vs)[space.visual]
                    for _ in range(base.shape[1])], axis=1)
    return (base * mod).astype(np.float32)


def mix_latent(stim: np.ndarray, share: np.ndarray, rng: np.random.Generator, n_latent: int, tr: float,
               seg: slice) -> np.ndarray:
    """Shared signal = share * stimulus-driven + sqrt(1 - share^2) * non-visual latent, unit variance over seg.

    stim: (n_run_trs, V) z-scored over ``seg``; the latent processes are smooth (HRF-like time scale) random
    time courses with random voxel loadings. Returns (n_run_trs, V).
    """
    from scipy.ndimage import gaussian_filter1d

    n, v = stim.shape
    factors = gaussian_filter1d(rng.standard_normal((n, n_latent)), sigma=3.0 / tr * 1.3, axis=0)
    latent = factors @ rng.standard_normal((n_latent, v))
    latent = (latent - latent[seg].mean(0)) / latent[seg].std(0)
    mixed = share * stim + np.sqrt(np.clip(1 - share**2, 0, None)) * latent
    return (mixed - mixed[seg].mean(0)) / mixed[seg].std(0)


def prf_matrix(prf: np.ndarray, grid: int, aspect: float) -> np.ndarray:
    """Gaussian pRFs sampled on the feature grid. (V, 3) -> (grid*grid, V), columns sum to 1."""
    c = (np.arange(grid) + 0.5) / grid
    gy, gx = np.meshgrid(c, c, indexing="ij")  # rows = y
    gx, gy = gx.ravel()[:, None], gy.ravel()[:, None]
    dx = (gx - prf[None, :, 0]) * aspect  # in height units
    dy = gy - prf[None, :, 1]
    p = np.exp(-(dx**2 + dy**2) / (2 * prf[None, :, 2] ** 2))
    return (p / p.sum(0, keepdims=True)).astype(np.float32)


class NeuralAccumulator:
    """Bins frame-rate features at TR / BINS_PER_TR and projects them on the voxels' tuning."""

    def __init__(self, tuning: Tuning, grid: int, aspect: float, fps: float, tr: float, n_frames: int):
        self.P = prf_matrix(tuning.prf, grid, aspect)  # (g*g, V)
        self.W = tuning.weights  # (V, C)
        self.fps, self.dt = fps, tr / BINS_PER_TR
        self.n_bins = int(np.ceil(n_frames / fps / self.dt))
        self.sums = np.zeros((self.n_bins, len(CHANNELS), grid * grid), np.float64)
        self.counts = np.zeros(self.n_bins)

    def add(self, start: int, feats: np.ndarray) -> None:
        """feats: (n, C, g*g) for frames start .. start+n-1."""
        b = np.minimum(((start + np.arange(len(feats))) / self.fps / self.dt).astype(int), self.n_bins - 1)
        np.add.at(self.sums, b, feats)
        np.add.at(self.counts, b, 1)

    def features(self) -> np.ndarray:
        """(n_bins, C, g*g): the binned feature maps, each channel normalised by its film-wide sd."""
        filled = self.counts > 0
        f = np.zeros_like(self.sums)
        f[filled] = self.sums[filled] / self.counts[filled, None, None]
        if (~filled).any():  # a bin without frames (low fps) repeats the previous one
            idx = np.maximum.accumulate(np.where(filled, np.arange(self.n_bins), 0))
            f = f[idx]
        sd = f.std(axis=(0, 2), keepdims=True)
        return f / np.where(sd > 1e-9, sd, 1.0)

    def neural(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(n_bins, V): per-channel features normalised by their film-wide sd, projected and weighted (by the
        tuning's weights, or ``weights`` (V, C): a viewer's)."""
        f = self.features()
        w = self.W if weights is None else weights
        out = np.zeros((self.n_bins, w.shape[0]), np.float64)
        for c in range(f.shape[1]):
            out += (f[:, c] @ self.P) * w[:, c]  # (n_bins, g*g) @ (g*g, V)
        return out


def group_signal(neural: np.ndarray, tr: float, onset_s: float, n_run_trs: int, seg: slice) -> np.ndarray:
    """Noise-free BOLD of a run: HRF-convolved neural drive sampled at each TR's middle, z-scored over ``seg``.

    Parameters
    ----------
    neural : (n_film_bins, V) drive during the film (zero during the washouts)
    onset_s : film onset in the run (seconds)
    seg : run TRs over which the result has zero mean and unit variance (film segment after the delay)

    Returns
    -------
    (n_run_trs, V) float64
    """
    s = bold_at_trs(neural, tr, onset_s, n_run_trs)
    mu, sd = s[seg].mean(0), s[seg].std(0)
    return (s - mu) / np.where(sd > 1e-12, sd, 1.0)


def bold_at_trs(neural: np.ndarray, tr: float, onset_s: float, n_run_trs: int) -> np.ndarray:
    """HRF-convolved drive sampled at each TR's middle, not normalised: (n_film_bins, V) -> (n_run_trs, V)."""
    dt = tr / BINS_PER_TR
    n_bins = n_run_trs * BINS_PER_TR
    drive = np.zeros((n_bins, neural.shape[1]))
    b0 = to_volume(onset_s, dt)
    nb = min(len(neural), n_bins - b0)
    drive[b0 : b0 + nb] = neural[:nb]
    bold = fftconvolve(drive, canonical_hrf(dt)[:, None], axes=0)[:n_bins]
    sample = (np.arange(n_run_trs) * BINS_PER_TR + BINS_PER_TR // 2).clip(max=n_bins - 1)
    return bold[sample]


def analytic_ceiling(amplitude: np.ndarray, gains: np.ndarray, drift_sd: float) -> np.ndarray:
    """Ceiling on r of the z-scored subject average (see module docstring). (V,), (N,) -> (V,)."""
    a = amplitude[None, :].astype(np.float64)
    g = np.asarray(gains, np.float64)[:, None]
    noise_var = 1.0 + drift_sd**2
    sd = np.sqrt(g**2 * a**2 + noise_var)
    A = (g * a / sd).mean(0)
    B = (noise_var / sd**2).sum(0) / len(gains) ** 2
    return A / np.sqrt(A**2 + B)


class SubjectNoise:
    """Streams one run's noise TR by TR: AR(1) noise + slow drift, for the brain voxels."""

    def __init__(self, rng: np.random.Generator, n_vox: int, ar: float, drift_sd: float, tr: float):
        self.rng, self.ar, self.tr = rng, ar, tr
        self.state = rng.standard_normal(n_vox).astype(np.float32)
        n_cos = 3
        self.periods = rng.uniform(120, 400, (n_cos, 1)).astype(np.float32)
        self.phases = rng.uniform(0, 2 * np.pi, (n_cos, n_vox)).astype(np.float32)
        self.amp = np.float32(drift_sd * np.sqrt(2.0 / n_cos))
        self.k = 0

    def next(self) -> np.ndarray:
        """(n_vox,) noise of the next TR."""
        if self.k:
            e = self.rng.standard_normal(self.state.shape[0]).astype(np.float32)
            self.state = self.ar * self.state + np.float32(np.sqrt(1 - self.ar**2)) * e
        t = np.float32(self.k * self.tr)
        drift = self.amp * np.cos(2 * np.pi * t / self.periods + self.phases).sum(0)
        self.k += 1
        return self.state + drift
