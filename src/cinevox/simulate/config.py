"""Simulator configuration and presets."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

#: The 14 Emo-FilM films and their durations in seconds (from the ds004892 events files).
EMOFILM_FILMS = {
    "AfterTheRain": 496, "BetweenViewings": 808, "BigBuckBunny": 490, "Chatter": 405, "FirstBite": 599,
    "LessonLearned": 667, "Payload": 1008, "Sintel": 722, "Spaceman": 805, "Superhero": 1028,
    "TearsOfSteel": 588, "TheSecretNumber": 784, "ToClaireFromSonny": 402, "YouAgain": 798,
}


@dataclass
class SimConfig:
    """Everything the simulator does is set here; ``truth.json`` records it with the seed.

    Durations are in seconds; ``films`` maps film name -> duration.
    """

    seed: int = 0
    n_subjects: int = 3
    subjects: list[str] | None = None  # subset of subject ids to write (e.g. ["S01", "S02"])
    films: dict[str, float] = field(default_factory=lambda: {"FilmA": 52.0, "FilmB": 52.0, "YouAgain": 39.0})
    tr: float = 1.3
    washout: float = 6.5  # fixation-cross rest before and after each film (90 s in Emo-FilM)
    onset_extra: float = 1.3  # film onset = washout + onset_extra (Emo-FilM: ~93.8 s)
    max_trs: int | None = None  # cap each film's length in TRs (for quick subsets of big presets)
    fps: float = 10.0
    film_width: int = 64
    film_height: int = 48
    voxel_size: float = 8.0  # synthetic MNI grid (mm); ignored when an atlas is given
    atlas: str | None = None  # Schaefer-1000 NIfTI on an MNI grid (then the data use that grid)
    atlas_labels: str | None = None  # its label table (index + name)
    regions_atlas: str | None = None  # AAL3 NIfTI (regions of the visual mask)
    regions_labels: str | None = None  # AAL3 label table
    region_scale: float = 1.5  # enlarges the synthetic regions so coarse grids keep enough voxels
    informative_regions: list[str] = field(default_factory=lambda: ["Calcarine", "Fusiform"])
    # outside the informative regions the shared signal is mostly driven by non-visual latent processes
    # (narrative, sound, arousal): as reliable across subjects, but not decodable from the frames
    uninformative_visual_share: float = 0.3  # correlation of their shared signal with the stimulus-driven one
    n_latent: int = 3  # non-visual latent time courses per film
    log10_snr_mean: float = -0.6  # per-subject SNR (shared signal var / noise var)
    informative_log10_snr_boost: float = 0.25  # early visual and fusiform cortex are among the most reliable
    log10_snr_sd: float = 0.35
    snr_smoothness_mm: float = 8.0
    tuning_smoothness_mm: float = 10.0
    ar_coef: float = 0.4  # AR(1) coefficient of the noise, per TR
    drift_sd: float = 0.3  # slow drift, relative to the noise sd
    subject_gain_sd: float = 0.15
    p_missing: float = 0.0  # probability that a subject misses a film
    null_fraction: float = 0.0  # share of visual voxels with no stimulus signal at all (true nulls; still reliable)
    # each viewer's channel weights = the shared weights + subject_variability x a viewer-specific part (issue 26)
    subject_variability: float = 0.0
    feature_grid: int = 12  # visual-field resolution of the feature maps
    films_dir: str | None = None  # real films to use instead of rendering (then only brains are simulated)
    compresslevel: int = 1

    def film_trs(self, duration: float) -> int:
        n = int(duration / self.tr + 1e-6)
        return min(n, self.max_trs) if self.max_trs else n

    def validate(self) -> None:
        if self.n_subjects < 2:
            raise ValueError(f"n_subjects must be >= 2 (subjects are the repeats), got {self.n_subjects}")
        if self.tr <= 0 or self.fps <= 0:
            raise ValueError(f"tr and fps must be positive, got tr={self.tr}, fps={self.fps}")
        if not self.films:
            raise ValueError("no films to simulate")
        for name, dur in self.films.items():
            if not name.isalnum():
                raise ValueError(f"film name {name!r} must be alphanumeric (it becomes a BIDS label)")
            if self.film_trs(dur) < 10:
                raise ValueError(f"film {name} is {dur} s long: fewer than 10 TRs of {self.tr} s")
        if self.film_width % 2 or self.film_height % 2:
            raise ValueError("film_width and film_height must be even (H.264 with 4:2:0 chroma)")
        if not 0 <= self.p_missing < 1:
            raise ValueError(f"p_missing must lie in [0, 1), got {self.p_missing}")
        if not 0 <= self.null_fraction < 1:
            raise ValueError(f"null_fraction must lie in [0, 1), got {self.null_fraction}")
        if self.subject_variability < 0:
            raise ValueError(f"subject_variability must be >= 0, got {self.subject_variability}")
        if (self.atlas is None) != (self.atlas_labels is None):
            raise ValueError("--atlas and --atlas-labels go together")
        if (self.regions_atlas is None) != (self.regions_labels is None):
            raise ValueError("--regions-atlas and --regions-labels go together")


PRESETS: dict[str, dict] = {
    # seconds, for tests: 3 subjects, 3 short films, 8 mm grid
    "tiny": {},
    # what `cinevox demo` trains on: 6 subjects, 6 films of ~3 min, 6 mm grid
    "demo": dict(
        n_subjects=6, voxel_size=6.0, fps=8.0, film_width=64, film_height=48, washout=6.5,
        films={"Meadow": 182.0, "Harbour": 182.0, "Circus": 182.0, "Orbit": 182.0, "Market": 182.0,
               "YouAgain": 130.0},
    ),
    # the real study's size: 30 subjects, the 14 Emo-FilM films, 90 s washouts, FSL 2 mm grid when an
    # atlas on that grid is given. Generate subsets with --subjects / --films / --max-trs.
    "emofilm": dict(
        n_subjects=30, films=dict(EMOFILM_FILMS), washout=90.0, onset_extra=3.8, fps=24.0,
        film_width=160, film_height=90, voxel_size=2.0, region_scale=1.0, p_missing=0.03,
        feature_grid=16,
    ),
}


def preset(name: str, **overrides) -> SimConfig:
    """A preset with options overridden (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(SimConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown simulator options {bad}")
    cfg = replace(SimConfig(), **PRESETS[name])
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def subject_ids(n: int) -> list[str]:
    """Emo-FilM style ids: S01, S02, ..."""
    return [f"S{i + 1:02d}" for i in range(n)]
