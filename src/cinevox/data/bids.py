"""Discover film runs in a BIDS dataset laid out like OpenNeuro ds004892 (Emo-FilM). Other layouts:
:mod:`cinevox.data.layout` and :mod:`cinevox.data.timeline`.

- preprocessed BOLD: ``derivatives/preprocessing/sub-X/ses-Y/func/``
  ``sub-X_ses-Y_task-<Film>_space-MNI_desc-ppres_bold.nii.gz``
- film timing: ``sub-X/ses-Y/func/sub-X_ses-Y_task-scan_acq-<Film>_events.tsv`` (row ``trial_type == film``)
- TR: the raw sidecar ``sub-X/ses-Y/func/sub-X_ses-Y_task-<Film>_bold.json`` (or one beside the BOLD file)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cinevox.configs import DEFAULT_BOLD_PATTERN
from cinevox.data.layout import BIDSError, natural_key, read_sidecars

logger = logging.getLogger(__name__)
_ENTITIES = re.compile(r"sub-(?P<sub>[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+)_task-(?P<film>[A-Za-z0-9]+)_")


@dataclass
class Run:
    subject: str
    session: str
    film: str
    bold: Path
    events: Path
    sidecar: Path | None
    onset: float  # film onset in the run (s)
    duration: float  # film duration (s)
    sidecar_tr: float | None

    @property
    def key(self) -> str:
        return f"sub-{self.subject}_ses-{self.session}_{self.film}"


def read_film_events(path: Path) -> tuple[float, float]:
    """(onset, duration) of the ``film`` row of an events file."""
    if not path.is_file():
        raise BIDSError(f"events file {path} does not exist")
    df = pd.read_csv(path, sep="\t")
    missing = {"onset", "duration", "trial_type"} - set(df.columns)
    if missing:
        raise BIDSError(f"{path}: missing columns {sorted(missing)}")
    film = df[df["trial_type"].astype(str).str.lower() == "film"]
    if len(film) != 1:
        raise BIDSError(f"{path}: expected exactly one row with trial_type 'film', found {len(film)}")
    onset, dur = float(film["onset"].iloc[0]), float(film["duration"].iloc[0])
    if not (onset >= 0 and dur > 0):
        raise BIDSError(f"{path}: invalid film onset {onset} / duration {dur}")
    return onset, dur


def _sidecar_tr(path: Path | None) -> float | None:
    if path is None:
        return None
    tr = read_sidecars([path]).get("RepetitionTime")
    return float(tr) if tr is not None else None


def discover_runs(bids_dir: str | Path, pattern: str = DEFAULT_BOLD_PATTERN, subjects: list[str] | None = None,
                  films: list[str] | None = None) -> list[Run]:
    """All film runs, sorted by film, subject, session."""
    root = Path(bids_dir)
    if not root.is_dir():
        raise BIDSError(f"BIDS folder {root} does not exist")
    runs: list[Run] = []
    for bold in sorted(root.glob(pattern)):
        m = _ENTITIES.search(bold.name)
        if not m:
            continue
        sub, ses, film = m["sub"], m["ses"], m["film"]
        if film.lower() in ("rest", "mc") or (subjects and sub not in subjects and f"sub-{sub}" not in subjects):
            continue
        if films and film not in films:
            continue
        func = root / f"sub-{sub}" / f"ses-{ses}" / "func"
        events = func / f"sub-{sub}_ses-{ses}_task-scan_acq-{film}_events.tsv"
        if not events.is_file():
            alt = func / f"sub-{sub}_ses-{ses}_task-{film}_events.tsv"
            events = alt if alt.is_file() else events
        onset, dur = read_film_events(events)
        sidecar = None
        for cand in (func / f"sub-{sub}_ses-{ses}_task-{film}_bold.json",
                     bold.with_name(bold.name.split(".nii")[0] + ".json")):
            if cand.is_file() and _sidecar_tr(cand) is not None:
                sidecar = cand
                break
        runs.append(Run(sub, ses, film, bold, events, sidecar, onset, dur, _sidecar_tr(sidecar)))
    if not runs:
        raise BIDSError(f"no film runs matching {pattern!r} under {root}"
                        + (f" for subjects {subjects}" if subjects else "") + (f" and films {films}" if films else ""))
    keys = [r.key for r in runs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise BIDSError(f"several BOLD files for the same subject, session and film: {dup}")
    # a film seen twice by a subject (a rescan in a later session): the latest session is the one kept
    latest: dict[tuple[str, str], Run] = {}
    for r in sorted(runs, key=lambda r: (r.subject, r.film, natural_key(r.session))):
        if (r.subject, r.film) in latest:
            logger.warning("sub-%s saw %s in several sessions: using ses-%s, not ses-%s", r.subject, r.film,
                           r.session, latest[(r.subject, r.film)].session)
        latest[(r.subject, r.film)] = r
    return sorted(latest.values(), key=lambda r: (r.film, r.subject, r.session))

