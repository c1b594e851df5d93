"""Simulator configuration and presets."""

from __future__ import annotations

from dataclasses import fields, replace

from cinevox.configs import SimConfig

#: The 14 Emo-FilM films and their durations in seconds (from the ds004892 events files).
EMOFILM_FILMS = {
    "AfterTheRain": 496, "BetweenViewings": 808, "BigBuckBunny": 490, "Chatter": 405, "FirstBite": 599,
    "LessonLearned": 667, "Payload": 1008, "Sintel": 722, "Spaceman": 805, "Superhero": 1028,
    "TearsOfSteel": 588, "TheSecretNumber": 784, "ToClaireFromSonny": 402, "YouAgain": 798,
}


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
