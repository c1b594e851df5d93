"""Where each stimulus is in each run, and where each run's TRs are on their film's clock.

A *placement* is one stimulus shown in one run: ``(stim_file, stim_start in the file, onset in the run,
duration)``. Placements come from events files (a ``trial_type`` row, or ``stim_file`` rows), from a timeline
table (``--timeline``), or from Emo-FilM's ``film`` rows. Placements whose stimulus files are segments of one
film (``bourne01``, ``bourne02``; ``s01e01a``, ``s01e01b``; or a ``film`` column of the timeline) are grouped
into one *film* with one clock: the segments' used parts end to end, in segment order. Placements of one file
share that file's clock, so a second showing of a clip lands on the same film TRs as the first (and so in the
same split: it is averaged with the first as a repeat, never in train and test both).

TR rounding: a placement's first volume is ``onset / TR`` rounded half up (plus the hemodynamic delay), and its first
film TR ``film time / TR`` rounded half up (:func:`cinevox.utils.timing.to_volume`); frames are rendered at the film
TRs, so the stimulus and the BOLD volume paired with it are offset by less than half a TR, as in the paper's
preparation.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cinevox.data.layout import BIDSError, BoldRun, _same_entity, natural_key
from cinevox.utils.timing import to_volume

logger = logging.getLogger(__name__)

#: ``<film><NN>`` (bourne01, sherlockPart2, movie3) or ``<film ending in a digit><letter>`` (s01e01a).
DEFAULT_SEGMENTS = r"^(?P<film>.*[A-Za-z].*?)(?P<seg>(?<![0-9])[0-9]{1,3}|(?<=[0-9])[a-z])$"
_NA = {"", "n/a", "na", "nan", "none"}


class NoStimulus(BIDSError):
    """A run without stimulus rows (rest, a localiser) or without any events file."""


@dataclass
class Placement:
    """One stimulus shown in one run (seconds)."""

    run_key: str
    stim_file: str  # relative to the films folder (POSIX), or a film name without extension
    onset: float  # in the run
    stim_start: float  # in the stimulus file
    duration: float
    source: str  # the events file or timeline it came from
    film: str = ""  # set by group_films
    segment: str = ""
    declared_film: str = ""  # a timeline's ``film`` column

    @property
    def stim_id(self) -> str:
        """The stimulus as a film-like name: path without extension, '/' -> '-'."""
        return re.sub(r"[^A-Za-z0-9_.-]", "-", str(Path(self.stim_file).with_suffix(""))
                      if Path(self.stim_file).suffix else self.stim_file)


def _is_na(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in _NA


def read_tsv(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """A TSV with ``required`` columns; one line naming the file when it cannot be used."""
    if not Path(path).is_file():
        raise BIDSError(f"{what} {path} does not exist")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise BIDSError(f"{path}: not a readable TSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise BIDSError(f"{path}: no {', '.join(repr(c) for c in missing)} column (columns: "
                        f"{', '.join(df.columns)})")
    return df


@functools.lru_cache(maxsize=1024)
def _events_table(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    return read_tsv(Path(path), ("onset", "duration"), "events file")


def _number(v, path, col: str, row: int) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise BIDSError(f"{path}: row {row + 2}: {col} {v!r} is not a number") from None
    if not math.isfinite(x):
        raise BIDSError(f"{path}: row {row + 2}: {col} {v!r} is not a finite number")
    return x


def stim_name(template: str, run: BoldRun) -> str:
    """The stimulus of a run without ``stim_file`` rows: ``template`` with ``{task}``, ``{run}`` (an integer
    when numeric, so ``{run:02d}`` works), ``{sub}``, ``{ses}``, ``{acq}``."""
    ents = {k: run.entities.get(k, "") for k in ("sub", "ses", "task", "acq")}
    r = run.run
    try:
        return template.format(run=int(r) if r.isdigit() else r, **ents)
    except (KeyError, ValueError, IndexError) as err:
        raise ValueError(f"--stim-name {template!r}: cannot fill it for {run.bold.name} ({err})") from None


def placements_from_events(run: BoldRun, trial_type: str = "film", lead_in: tuple[str, ...] = (),
                           template: str = "{task}") -> list[Placement]:
    """The stimuli of one run from its (possibly inherited) events file.

    Stimulus rows: rows with a ``stim_file`` other than ``n/a`` (whatever their ``trial_type``); without a
    ``stim_file`` column, rows whose ``trial_type`` is ``trial_type`` (case-insensitive), their file named by
    ``template``; without either column, every row. A ``lead_in`` row just before a stimulus row plays the start
    of the same file (Budapest's ``overlap_with_previous_run``): the stimulus row then starts that far into the
    file, and the lead-in is not used (those seconds were shown in the previous run)."""
    path = run.events
    if path is None:
        raise NoStimulus(f"{run.bold}: no events file applies to this run (none beside it, none inherited); give "
                        "the stimulus placements with --timeline FILE.tsv")
    st = Path(path).stat()
    df = _events_table(str(path), st.st_mtime_ns, st.st_size)  # an inherited file is read once
    rows = []
    for i, row in df.iterrows():
        rows.append((i, _number(row["onset"], path, "onset", i), row))
    rows.sort(key=lambda x: x[1])
    has_stim = "stim_file" in df.columns
    has_type = "trial_type" in df.columns
    if "videotime" in df.columns and not has_stim and not has_type:
        return [_per_frame_placement(run, df, path, template)]
    lead = {t.lower() for t in lead_in}
    out, prev_lead = [], None
    for i, onset, row in rows:
        ttype = str(row["trial_type"]).strip().lower() if has_type else ""
        if ttype in lead:
            prev_lead = onset
            continue
        if has_stim and not _is_na(row["stim_file"]):
            stim = str(row["stim_file"]).strip()
        elif has_stim or (has_type and ttype != trial_type.lower()):
            prev_lead = None
            continue
        else:
            stim = stim_name(template, run)
        dur = _number(row["duration"], path, "duration", i)
        if onset < 0 or dur <= 0:
            raise BIDSError(f"{path}: row {i + 2}: invalid onset {onset} / duration {dur}")
        start = _number(row["stim_start"], path, "stim_start", i) if "stim_start" in df.columns and not _is_na(
            row["stim_start"]) else 0.0
        if prev_lead is not None:
            start += onset - prev_lead
        out.append(Placement(run.key, stim, onset, start, dur, str(path)))
        prev_lead = None
    if not out:
        what = "stim_file rows" if has_stim else f"rows with trial_type {trial_type!r}" if has_type else "rows"
        raise NoStimulus(f"{path}: no {what} (choose the stimulus rows with --trial-type, or give --timeline)")
    return out


def _per_frame_placement(run: BoldRun, df: pd.DataFrame, path: Path, template: str) -> Placement:
    """Events with one row per video frame (StudyForrest's ``onset duration frameidx videotime ...``): one
    placement from the first frame's onset and video time to the last frame's end."""
    onset = np.array([_number(v, path, "onset", i) for i, v in enumerate(df["onset"])])
    dur = np.array([_number(v, path, "duration", i) for i, v in enumerate(df["duration"])])
    video = np.array([_number(v, path, "videotime", i) for i, v in enumerate(df["videotime"])])
    first = int(np.argmin(onset))
    end = float((onset + dur).max())
    if end <= onset[first]:
        raise BIDSError(f"{path}: per-frame events without a positive duration")
    return Placement(run.key, stim_name(template, run), float(onset[first]), float(video[first]),
                     end - float(onset[first]), str(path))


def read_timeline(path: str | Path, runs: list[BoldRun]) -> list[Placement]:
    """Placements from a timeline table: columns ``sub ses task run stim_file onset stim_start duration``
    (``ses`` and ``run`` may be absent or ``n/a``; optional ``film`` and ``segment`` group segments).

    ``sub`` ``*`` applies a row to every subject with that run; ``duration`` ``n/a`` lasts until the run's end;
    ``stim_start`` ``continue`` starts where the subject's previous run of the same file stopped (a film cut
    into runs, NNDb): both are resolved from the BOLD lengths by :func:`resolve_open_placements`."""
    path = Path(path)
    df = read_tsv(path, ("sub", "task", "stim_file", "onset", "duration"), "timeline")
    out = []
    for i, row in df.iterrows():
        want = {"task": str(row["task"]).removeprefix("task-")}
        sub = str(row["sub"]).strip().removeprefix("sub-")
        if sub != "*":
            want["sub"] = sub
        for k in ("ses", "run"):
            if k in df.columns and not _is_na(row[k]):
                want[k] = str(row[k]).removeprefix(f"{k}-")
        hits = [r for r in runs if all(k in r.entities and _same_entity(r.entities[k], v) for k, v in want.items())]
        shown = ", ".join(f"{k}-{v}" for k, v in (("sub", sub), *((k, v) for k, v in want.items() if k != "sub")))
        if not hits:
            raise BIDSError(f"{path}: row {i + 2} names a run that was not found ({shown})")
        subjects = [r.subject for r in hits]
        if len(set(subjects)) < len(subjects):
            raise BIDSError(f"{path}: row {i + 2} matches {len(hits)} runs ({', '.join(r.key for r in hits)}); "
                            "give ses and run")
        start = str(row.get("stim_start", "0")).strip()
        start = math.nan if start.lower() == "continue" else 0.0 if _is_na(start) else _number(
            start, path, "stim_start", i)
        onset = _number(row["onset"], path, "onset", i)
        dur = math.nan if _is_na(row["duration"]) else _number(row["duration"], path, "duration", i)
        if onset < 0 or dur <= 0 or start < 0:
            raise BIDSError(f"{path}: row {i + 2}: invalid onset {onset} / stim_start {start} / duration {dur}")
        for r in hits:
            p = Placement(r.key, str(row["stim_file"]).strip(), onset, start, dur, str(path))
            if "film" in df.columns and not _is_na(row["film"]):
                p.declared_film = str(row["film"]).strip()
                p.segment = str(row["segment"]).strip() if "segment" in df.columns and not _is_na(
                    row["segment"]) else ""
            out.append(p)
    check_no_overlap([p for p in out if math.isfinite(p.duration)])
    return out


def resolve_open_placements(placements: list[Placement], runs: list[BoldRun], n_volumes: dict[str, int],
                            tr: float) -> None:
    """Fill a timeline's open ends: ``duration`` n/a -> until the run's last volume; ``stim_start`` continue ->
    the end of the same subject's previous placement of that file (runs in their BIDS order)."""
    order = {r.key: k for k, r in enumerate(runs)}
    subject = {r.key: r.subject for r in runs}
    for p in placements:
        if not math.isfinite(p.duration):
            p.duration = n_volumes[p.run_key] * tr - p.onset
            if p.duration <= 0:
                raise BIDSError(f"{p.source}: {p.run_key}: onset {p.onset:g} s is after the run's end")
    last: dict[tuple[str, str], float] = {}
    for p in sorted(placements, key=lambda p: (order[p.run_key], p.onset)):
        key = (subject[p.run_key], p.stim_file)
        if not math.isfinite(p.stim_start):
            p.stim_start = last.get(key, 0.0)
        last[key] = p.stim_start + p.duration
    check_no_overlap(placements)


def check_no_overlap(placements: list[Placement]) -> None:
    """Two placements of one run may not overlap in the run."""
    by_run: dict[str, list[Placement]] = {}
    for p in placements:
        by_run.setdefault(p.run_key, []).append(p)
    for key, ps in by_run.items():
        ps = sorted(ps, key=lambda p: p.onset)
        for a, b in zip(ps[:-1], ps[1:]):
            if b.onset < a.onset + a.duration - 1e-6:
                raise BIDSError(f"{b.source}: {key}: {b.stim_file} at {b.onset:g} s overlaps {a.stim_file} "
                                f"({a.onset:g}-{a.onset + a.duration:g} s) in the same run")


def group_films(placements: list[Placement], rule: str | None = DEFAULT_SEGMENTS) -> None:
    """Set each placement's ``film`` and ``segment``: a declared film, else stimuli whose names match ``rule``
    with the same film part, at least two of them and each alone in its runs (a film's segments each fill a run;
    clips named ``clip1``, ``clip2`` shown several to a run are not segments), else the stimulus itself
    (``rule`` None: no grouping)."""
    pattern = re.compile(rule) if rule else None
    members: dict[str, set[str]] = {}
    parsed = {}
    for p in placements:
        if p.declared_film or pattern is None:
            continue
        m = pattern.match(p.stim_id)
        if m:
            parsed[p.stim_id] = (m["film"].rstrip("_-"), m["seg"])
            members.setdefault(parsed[p.stim_id][0], set()).add(p.stim_id)
    stims_of_run: dict[str, set[str]] = {}
    for p in placements:
        stims_of_run.setdefault(p.run_key, set()).add(p.stim_id)
    grouped = {f for f, ms in members.items()
               if len(ms) > 1 and all(len(ss & ms) <= 1 for ss in stims_of_run.values())}
    for p in placements:
        if p.declared_film:
            p.film = p.declared_film
            p.segment = p.segment or p.stim_id
        elif p.stim_id in parsed and parsed[p.stim_id][0] in grouped:
            p.film, p.segment = parsed[p.stim_id]
        else:
            p.film, p.segment = p.stim_id, ""


@dataclass
class Segment:
    """A stimulus file's used part on its film's clock: file seconds ``[lo, lo + n_trs * TR)`` are film TRs
    ``[offset, offset + n_trs)``."""

    stim_file: str
    lo: float
    offset: int
    n_trs: int


@dataclass
class FilmClock:
    """A film's segments, end to end (a one-file film: its file clock from 0)."""

    film: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def n_trs(self) -> int:
        return max(s.offset + s.n_trs for s in self.segments)

    def segment_of(self, stim_file: str) -> Segment:
        return next(s for s in self.segments if s.stim_file == stim_file)

    def source(self, film_tr: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray]:
        """(stim_file, seconds into it) of film TRs (the first segment covering each)."""
        files = np.empty(len(film_tr), object)
        times = np.full(len(film_tr), np.nan)
        for s in reversed(self.segments):
            inside = (film_tr >= s.offset) & (film_tr < s.offset + s.n_trs)
            files[inside] = s.stim_file
            times[inside] = s.lo + (film_tr[inside] - s.offset) * tr
        return files, times


def n_trs_of(duration: float, tr: float) -> int:
    return int(duration / tr + 1e-6)


def delayed_volumes(p: Placement, tr: float, delay: int) -> range:
    """The run volumes (0-based) holding the responses to a placement's TRs: from its onset's TR plus the delay,
    one per whole TR of the placement."""
    first = to_volume(p.onset, tr) + delay
    return range(first, first + n_trs_of(p.duration, tr))


def film_clocks(placements: list[Placement], tr: float) -> dict[str, FilmClock]:
    """One clock per film from its placements (after :func:`group_films`)."""
    by_film: dict[str, dict[str, list[Placement]]] = {}
    for p in placements:
        by_film.setdefault(p.film, {}).setdefault(p.stim_file, []).append(p)
    clocks = {}
    for film, stims in by_film.items():
        clock = FilmClock(film)
        if len(stims) == 1:
            (stim, ps), = stims.items()
            end = max(to_volume(p.stim_start, tr) + n_trs_of(p.duration, tr) for p in ps)
            clock.segments.append(Segment(stim, 0.0, 0, end))
        else:
            order = sorted(stims, key=lambda s: natural_key(stims[s][0].segment))
            offset = 0
            for stim in order:
                ps = stims[stim]
                lo = min(p.stim_start for p in ps)
                n = max(to_volume(p.stim_start - lo, tr) + n_trs_of(p.duration, tr) for p in ps)
                clock.segments.append(Segment(stim, lo, offset, n))
                offset += n
        clocks[film] = clock
    return clocks


def trim_overlap(placements: list[Placement], seconds: float) -> None:
    """Drop the first ``seconds`` of every segment after a film's first (segments that repeat the end of the
    previous one): those seconds are then never samples."""
    if seconds <= 0:
        return
    firsts = {}
    for p in placements:
        k = natural_key(p.segment) if p.segment else (0, 0, "")
        firsts[p.film] = min(firsts.get(p.film, k), k)
    for p in placements:
        if p.segment and natural_key(p.segment) != firsts[p.film]:
            p.onset += seconds
            p.stim_start += seconds
            p.duration -= seconds
            if p.duration <= 0:
                raise ValueError(f"--segment-overlap {seconds:g} s is longer than {p.stim_file} in {p.run_key}")


@dataclass
class RunPlan:
    """Where a run's volumes go: ``volumes[i]`` (0-based, the delay included) is film ``films[i]``'s TR
    ``film_trs[i]``."""

    run: BoldRun
    placements: list[Placement]
    volumes: np.ndarray
    films: np.ndarray
    film_trs: np.ndarray
    n_volumes: int
    trimmed: int = 0


def plan_run(run: BoldRun, placements: list[Placement], clocks: dict[str, FilmClock], tr: float, delay: int,
             n_volumes: int, max_trim: int = 2, dropped: set[int] | frozenset = frozenset(),
             strict: bool = False) -> RunPlan:
    """The volume -> film TR map of a run. The responses to a stimulus's last seconds fall after the run when it
    ends with the stimulus: those TRs are dropped (the hemodynamic delay, logged). A run up to ``max_trim`` TRs
    shorter than its stimuli themselves is trimmed with a warning naming it; more is an error naming the run and
    both lengths. ``strict`` (the Emo-FilM layout): every stimulus TR must have its delayed volume. Volumes in
    ``dropped`` (non-steady-state) are left out."""
    vols, films, ftrs, ends = [], [], [], []
    for p in sorted(placements, key=lambda p: p.onset):
        seg = clocks[p.film].segment_of(p.stim_file)
        placed = delayed_volumes(p, tr, delay)
        n = len(placed)
        first_tr = seg.offset + to_volume(p.stim_start - seg.lo, tr)
        vols += placed
        films += [p.film] * n
        ftrs += range(first_tr, first_tr + n)
        ends.append(placed.stop - delay)
    vols, films, ftrs = np.asarray(vols, int), np.asarray(films, object), np.asarray(ftrs, int)
    need = int(vols.max()) + 1 if len(vols) else 0
    stim_end = max(ends) if ends else 0
    src = Path(placements[0].source).name if placements else "?"
    trimmed = 0
    if strict and need > n_volumes:
        raise BIDSError(f"{run.bold}: run is shorter than its events: {n_volumes} volumes, its stimuli (from {src}) "
                        f"with the {delay}-TR delay need {need}: {need - n_volumes} missing")
    if stim_end - n_volumes > max_trim:
        raise BIDSError(f"{run.bold}: run is shorter than its stimuli: {n_volumes} volumes ({n_volumes * tr:g} s), "
                        f"its stimuli (from {src}) last until volume {stim_end} ({stim_end * tr:g} s); at most "
                        f"{max_trim} TRs are trimmed (--max-trim-trs)")
    if stim_end > n_volumes:
        logger.warning("%s: %d TR(s) shorter than its stimuli (%d volumes, stimuli until %d); the last TRs are "
                       "trimmed", run.bold, stim_end - n_volumes, n_volumes, stim_end)
    if need > n_volumes:
        trimmed = need - n_volumes
        logger.info("%s: the responses to the last %d stimulus TR(s) fall after the run (%d-TR delay); dropped",
                    run.bold.name, trimmed, delay)
    keep = (vols < n_volumes) & ~np.isin(vols, list(dropped))
    _, first = np.unique(vols, return_index=True)  # a volume claimed twice (rounding of back-to-back clips)
    once = np.zeros(len(vols), bool)
    once[first] = True
    keep &= once
    return RunPlan(run, placements, vols[keep], films[keep], ftrs[keep], n_volumes, trimmed)


def timeline_table(plans: list[RunPlan], tr: float, delay: int, split_of: dict[tuple[str, int], str] | None = None
                   ) -> pd.DataFrame:
    """One row per placement: subject, session, task, run, stimulus, film, start-end in the file and in the run,
    TRs used, the volumes used and (given the samples' splits) the split of its TRs."""
    rows = []
    for rp in plans:
        for p in sorted(rp.placements, key=lambda p: p.onset):
            placed = delayed_volumes(p, tr, delay)
            used = (rp.volumes >= placed.start) & (rp.volumes < placed.stop)
            splits = ""
            if split_of is not None and used.any():
                labels = [split_of.get((f, int(t)), "-") for f, t in zip(rp.films[used], rp.film_trs[used])]
                splits = ", ".join(f"{k} {labels.count(k)}" for k in ("train", "val", "gap", "test")
                                   if labels.count(k))
            rows.append({"sub": rp.run.subject, "ses": rp.run.session or "n/a", "task": rp.run.task,
                         "run": rp.run.run or "n/a", "stim_file": p.stim_file, "film": p.film,
                         "stim_start": round(p.stim_start, 3), "stim_end": round(p.stim_start + p.duration, 3),
                         "onset": round(p.onset, 3), "offset": round(p.onset + p.duration, 3),
                         "first_volume": placed.start, "n_trs": int(used.sum()),
                         "film_tr_start": int(rp.film_trs[used][0]) if used.any() else -1, "split": splits,
                         "run_s": round(rp.n_volumes * tr, 3), "bold": rp.run.bold.name})
    return pd.DataFrame(rows)
