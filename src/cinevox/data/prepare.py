"""``cinevox prepare``: a BIDS dataset and films -> a training-ready dataset (paper II-A).

Order of operations, per run: keep the film segment shifted by the hemodynamic delay (fMRI TR
``onset_tr + t + delay`` pairs with film TR ``t``), remove the baseline (mean, or a linear trend) and z-score
each voxel. Across runs: exclude voxels that are constant or non-finite in any run, rank the visual voxels by
SNR and keep the top fraction, average the z-scored runs over the subjects who saw each film.

SNR. ``paper``: per film, signal = variance over time of the subject-mean, noise = variance across subjects of
each subject's time-mean, averaged over films. Both are taken on the *raw* (baseline-retaining) film segment:
after z-scoring every time-mean is 0 and the noise term vanishes. (The subject-mean of the raw series is
rebuilt from the cached z-scores and each run's raw mean and sd, which is exact for mean baseline removal.)
``ceiling``: the noise-ceiling SNR of the z-scored runs (NSD style): ``sigma_n^2`` = mean over TRs of the
across-subject variance, ``ncsnr = sqrt(max(1 - sigma_n^2, 0)) / sigma_n``.

Memory: runs are streamed volume block by volume block (see :mod:`cinevox.data.nifti`) and cached one by one
as masked arrays; later stages read the caches one film at a time. Peak memory is bounded by one run (per
worker) plus one film's ``(n_trs, n_mask)`` accumulators, whatever the number of subjects.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cinevox.configs import PrepareConfig
from cinevox.data.bids import discover_runs
from cinevox.data.layout import BIDSError, BoldRun, derivative_spec, find_bold_runs
from cinevox.data.masks import (
    atlas_visual_mask,
    check_same_grid,
    fetch_schaefer_visual_mask,
    load_mask,
)
from cinevox.data.nifti import NiftiError, bold_affine, fortran_index, load_header, read_volumes, save_nifti
from cinevox.data.splits import split_film
from cinevox.data.timeline import (
    DEFAULT_SEGMENTS,
    FilmClock,
    NoStimulus,
    Placement,
    RunPlan,
    film_clocks,
    group_films,
    placements_from_events,
    plan_run,
    read_timeline,
    read_tsv,
    resolve_open_placements,
    timeline_table,
    trim_overlap,
)
from cinevox.data.video import (
    VIDEO_EXTENSIONS,
    VideoError,
    check_video,
    find_film,
    linspace_indices,
    probe_video,
    sample_frame_indices,
    sample_frames,
)
from cinevox.outputs import space_label, write_dataset_description, write_sidecars
from cinevox.utils.folders import (
    check_output_folder,
    clean_stale_temps,
    exclusive_folder,
    integrity_record,
    worker_dies_with_parent,
)
from cinevox.utils.io import atomic_path, config_hash, file_identity, read_json, write_json, write_manifest
from cinevox.utils.log import bar_disabled

logger = logging.getLogger(__name__)


def load_config_file(path: str | Path) -> dict:
    """Options from a JSON or TOML file."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(path.read_text())
    else:
        data = read_json(path)
    known = {f.name for f in fields(PrepareConfig)}
    bad = sorted(set(data) - known)
    if bad:
        raise ValueError(f"{path}: unknown options {bad}")
    return data


CONFOUND_STRATEGIES = ("motion", "high_pass", "wm_csf", "global_signal", "compcor", "scrub", "non_steady_state")
CONFOUND_LEVELS = ("basic", "power2", "derivatives", "full")  # nilearn: 1, 2, 2 or 4 columns per signal
CONFOUND_VALUES = {"motion": CONFOUND_LEVELS, "wm_csf": CONFOUND_LEVELS, "global_signal": CONFOUND_LEVELS,
                   "compcor": ("anat_combined", "anat_separated", "temporal", "temporal_anat_combined",
                               "temporal_anat_separated")}
#: parameters of load_confounds that are not strategies, and their types; ``scrub:FD`` is ``scrub,fd_threshold:FD``
CONFOUND_PARAMETERS = {"fd_threshold": float, "std_dvars_threshold": float, "n_compcor": int}
#: cheaper strategies suggested when a run has too few volumes for the regressors asked, dearest first
CHEAPER_CONFOUNDS = ("motion:basic,wm_csf,high_pass", "motion:basic,wm_csf", "motion:basic", "wm_csf")


def confound_strategy(text: str) -> tuple[str, ...]:
    """``"motion:basic,wm_csf,high_pass"`` -> nilearn's ``load_confounds`` strategy, checked."""
    return tuple(confound_options(text)["strategy"])


def confound_options(text: str) -> dict:
    """``--confounds`` -> the keyword arguments of nilearn's ``load_confounds`` (JSON-able: recorded in the
    manifest and a MODEL_DIR). Items are strategies, optionally with nilearn's value (``motion:basic``,
    ``wm_csf:full``, ``compcor:temporal``; ``scrub:0.5`` scrubs at a framewise displacement of 0.5 mm), or a
    parameter (``fd_threshold:0.5``, ``std_dvars_threshold:1.5``, ``n_compcor:5``).

    >>> confound_options("motion:basic,wm_csf")
    {'strategy': ['motion', 'wm_csf'], 'motion': 'basic'}"""
    opts: dict = {"strategy": []}
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"--confounds {text!r}: no strategy; e.g. motion:basic,wm_csf")
    for item in items:
        name, _, value = (part.strip() for part in item.partition(":"))
        if name in CONFOUND_PARAMETERS:
            try:
                opts[name] = CONFOUND_PARAMETERS[name](value)
            except ValueError:
                raise ValueError(f"--confounds {text!r}: {name} needs a {CONFOUND_PARAMETERS[name].__name__} value, "
                                 f"got {value!r}") from None
            continue
        if name not in CONFOUND_STRATEGIES:
            raise ValueError(f"--confounds {text!r}: unknown strategy {name!r}; choose from "
                             f"{', '.join(CONFOUND_STRATEGIES)} (nilearn's load_confounds), as NAME or NAME:VALUE")
        if name in opts["strategy"]:
            raise ValueError(f"--confounds {text!r}: {name} given twice")
        opts["strategy"].append(name)
        if not value:
            continue
        if name == "scrub":
            try:
                opts["fd_threshold"] = float(value)
            except ValueError:
                raise ValueError(f"--confounds {text!r}: scrub:FD takes a framewise-displacement threshold in mm, "
                                 f"got {value!r}") from None
        elif name in CONFOUND_VALUES:
            if value not in CONFOUND_VALUES[name]:
                raise ValueError(f"--confounds {text!r}: {name}:{value} is not one of nilearn's values "
                                 f"({', '.join(CONFOUND_VALUES[name])})")
            opts[name] = value
        else:
            raise ValueError(f"--confounds {text!r}: {name} takes no value")
    return opts


def load_run_confounds(bold: Path, confounds: Path | None, options: dict) -> tuple[pd.DataFrame, np.ndarray | None]:
    """nilearn's ``load_confounds`` for one BOLD file (its fMRIPrep confounds file beside it): ``(regressors
    (n_volumes, k), kept volumes or None)``."""
    from nilearn.interfaces.fmriprep import load_confounds

    if confounds is None:
        raise BIDSError(f"{bold}: --confounds needs fMRIPrep's desc-confounds_timeseries.tsv beside the BOLD file; "
                        "there is none")
    kwargs = dict(options, strategy=tuple(options["strategy"]))
    try:
        conf, sample_mask = load_confounds(str(bold), **kwargs)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise BIDSError(f"{confounds}: cannot load confounds {options} ({' '.join(str(err).split())})") from None
    return conf, None if sample_mask is None else np.asarray(sample_mask, int)


def check_confound_budget(bold: Path, confounds: Path | None, options: dict, n_volumes: int) -> int:
    """Refuse a run with fewer than 2 volumes per confound regressor (the regression would leave noise, or
    nothing), naming the run, its volumes and regressors, and a cheaper strategy that fits. Returns the count."""
    conf, kept = load_run_confounds(bold, confounds, options)
    n_reg, n_kept = int(conf.shape[1]), n_volumes if kept is None else len(kept)
    if n_kept >= 2 * n_reg:
        return n_reg
    fits = "no --confounds"
    for alt in CHEAPER_CONFOUNDS:
        try:
            c, k = load_run_confounds(bold, confounds, confound_options(alt))
        except BIDSError:  # columns this confounds file lacks (e.g. no cosine regressors for high_pass)
            continue
        if (n_volumes if k is None else len(k)) >= 2 * c.shape[1]:
            fits = f"--confounds {alt} ({c.shape[1]} regressors)"
            break
    raise BIDSError(f"{bold.name}: {n_kept} volumes for {n_reg} confound regressors ({_confound_text(options)}): "
                    f"fewer than 2 volumes per regressor; choose a cheaper strategy, e.g. {fits}")


def _confound_text(options: dict) -> str:
    params = {k: v for k, v in options.items() if k != "strategy"}
    return ",".join(f"{s}:{params.pop(s)}" if s in params else s for s in options["strategy"]) + \
        "".join(f",{k}:{v}" for k, v in params.items())


def non_steady_state(confounds: Path | None) -> set[int]:
    """Volumes fMRIPrep marks non-steady-state (``non_steady_state_outlier*`` columns), 0-based."""
    if confounds is None:
        return set()
    df = read_tsv(confounds, (), "confounds file")
    cols = [c for c in df.columns if c.startswith("non_steady_state_outlier")]
    marks = df[cols].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy()  # n/a -> 0
    return {int(v) for v in np.flatnonzero(marks.sum(1) > 0)} if cols else set()


def _run_tr(run: BoldRun, hdr, cfg: PrepareConfig, warn_header: bool = True) -> float:
    """``--tr``, else the nearest sidecar's RepetitionTime (checked against the header), else the header (with a
    warning when ``warn_header``: the Emo-FilM layout has always read its header silently)."""
    zooms = hdr.get_zooms()
    units = hdr.get_xyzt_units()[1] if hasattr(hdr, "get_xyzt_units") else "sec"
    tr_hdr = float(zooms[3]) / (1000.0 if units == "msec" else 1.0) if len(zooms) > 3 else 0.0
    tol = cfg.tr_tolerance
    if cfg.tr is not None:
        if tr_hdr > 0 and abs(tr_hdr - cfg.tr) > tol:
            logger.warning("%s: the header's TR (%.6g s) differs from --tr %.6g s; using --tr", run.bold, tr_hdr,
                           cfg.tr)
        return float(cfg.tr)
    if run.tr is not None:
        if tr_hdr > 0 and abs(tr_hdr - run.tr) > tol:
            raise NiftiError(f"{run.bold}: TR in the header ({tr_hdr:.6g} s) disagrees with {run.tr_source} "
                             f"(RepetitionTime {run.tr} s); pass --tr to choose")
        return float(run.tr)
    if tr_hdr > 0:
        if warn_header:
            logger.warning("%s: no RepetitionTime in any sidecar; using the NIfTI header's %.6g s (pass --tr to "
                           "be sure)", run.bold, tr_hdr)
        return tr_hdr
    raise NiftiError(f"{run.bold}: no TR in the header and no sidecar with RepetitionTime; pass --tr")


def standardise_segment(x: np.ndarray, detrend: str, nonfinite: np.ndarray | None = None,
                        times: np.ndarray | None = None):
    """The run-level preparation of a film segment: remove each voxel's baseline (mean, or mean and linear trend)
    and divide by its standard deviation. x: (n_trs, V) float64, NaN-free; ``nonfinite`` (V,) marks columns to
    zero; ``times`` (n_trs,): each row's volume index in its run (the linear trend is fitted over these, so rows
    of several clips or around dropped volumes keep their true spacing; default consecutive). Returns
    ``(z float32 (n_trs, V), raw mean (V,), sd (V,), constant (V,) bool)``; constant or non-finite voxels are 0 in
    ``z``."""
    nonfinite = np.zeros(x.shape[1], bool) if nonfinite is None else nonfinite
    x = np.where(nonfinite[None, :], 0.0, x)
    raw_mean = x.mean(0)
    if detrend == "linear":
        tt = np.arange(len(x), dtype=float) if times is None else np.asarray(times, float)
        tt = tt - tt.mean()
        slope = (tt[:, None] * (x - raw_mean)).sum(0) / (tt**2).sum()
        x = x - raw_mean - tt[:, None] * slope
    else:
        x = x - raw_mean
    sd = x.std(0)
    constant = (sd <= 1e-8 * np.maximum(np.abs(raw_mean), 1.0)) & ~nonfinite
    bad = nonfinite | constant
    z = np.where(bad, 0.0, x / np.where(bad, 1.0, sd)).astype(np.float32)
    return z, raw_mean, sd, constant


def _clean_confounds(x: np.ndarray, rp: RunPlan, options: dict, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """Regress fMRIPrep confounds out of a whole run (nilearn ``load_confounds`` with ``options`` +
    ``signal.clean``). x: (n_volumes, V) -> (cleaned (n_kept, V), kept volume indices (n_kept,))."""
    from nilearn.signal import clean

    conf, sample_mask = load_run_confounds(rp.run.bold, rp.run.confounds, options)
    kept = np.arange(len(x)) if sample_mask is None else sample_mask
    if len(conf) != len(x):
        raise BIDSError(f"{rp.run.confounds}: {len(conf)} rows, the run has {len(x)} volumes")
    cleaned = clean(x, confounds=conf.to_numpy(), sample_mask=kept, t_r=tr, detrend=False, standardize=None)
    return np.asarray(cleaned, np.float64), kept


def _process_run(rp: RunPlan, flat_index: np.ndarray, detrend: str, max_bad: float, cache: Path, key: str,
                 strategy: dict | None, tr: float) -> dict:
    """Read one run's mask voxels at its stimulus volumes (after confound regression when asked), z-score over
    those volumes, cache ``z`` with each row's film and film TR. Returns stats."""
    run, vols = rp.run, rp.volumes
    if strategy:
        x = read_volumes(run.bold, flat_index, 0, rp.n_volumes).astype(np.float64)
    else:
        lo = int(vols.min())
        x = read_volumes(run.bold, flat_index, lo, int(vols.max()) + 1).astype(np.float64)[vols - lo]
    finite = np.isfinite(x)
    nonfinite = ~finite.all(0)
    if nonfinite.mean() > max_bad:
        raise NiftiError(f"{run.bold}: NaN/Inf in {int(nonfinite.sum())} of {x.shape[1]} mask voxels "
                         f"({100 * nonfinite.mean():.0f} %, above the {100 * max_bad:.0f} % allowed)")
    bad_vols = []
    if nonfinite.any():
        rows = np.flatnonzero(~finite.all(1))
        bad_vols = [int(v) for v in (rows if strategy else vols[rows])]
        shown = ", ".join(map(str, bad_vols[:8])) + (", ..." if len(bad_vols) > 8 else "")
        logger.warning("%s: NaN/Inf at %d mask voxels in volume(s) %s (0-based); these voxels are excluded for "
                       "every subject", run.bold, int(nonfinite.sum()), shown)
    films, film_trs, times = rp.films, rp.film_trs, vols
    if strategy:
        x, kept = _clean_confounds(np.where(nonfinite[None, :], 0.0, x), rp, strategy, tr)
        pos = np.full(rp.n_volumes, -1)
        pos[kept] = np.arange(len(kept))
        ok = pos[vols] >= 0
        x, films, film_trs, times = x[pos[vols[ok]]], films[ok], film_trs[ok], vols[ok]
    z, raw_mean, sd, constant = standardise_segment(x, detrend, nonfinite, times)
    bad = nonfinite | constant
    with atomic_path(cache / f"{run.key}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, z=z, raw_mean=raw_mean.astype(np.float32), raw_sd=np.where(bad, 0, sd).astype(np.float32),
                 bad=bad, films=np.asarray(films, str), film_trs=np.asarray(film_trs, np.int64))
    meta = {"key": key, "n_nonfinite": int(nonfinite.sum()), "n_constant": int(constant.sum()),
            "nonfinite_volumes": bad_vols, "n_rows": int(len(z))}
    write_json(cache / f"{run.key}.json", meta)
    return meta


def _run_job(args):
    return _process_run(*args)


#: Files of a published prepared dataset (besides ``frames/<film>.npy``); the manifest is written last.
PUBLISHED = ("voxels.npy", "subjects_test.npy", "subjects.npy", "samples.csv", "mask.nii.gz", "visual_mask.nii.gz",
             "snr.nii.gz", "voxels_ijk.npy", "timeline.tsv", "timeline.png", "mask.json", "visual_mask.json",
             "snr.json", "dataset_description.json")
OWN_FILES = (*PUBLISHED, "manifest.json", "frames", "cache", ".staging")


@dataclass
class Plan:
    """Everything ``prepare`` decided before any heavy work: runs and their stimulus timelines, grid, mask, films,
    split."""

    bids_dir: Path
    out: Path
    cfg: PrepareConfig
    layout: str
    runs: list[RunPlan]
    clocks: dict[str, FilmClock]
    stim_paths: dict[str, Path]  # stim_file -> video
    shape: tuple
    affine: np.ndarray
    space_code: int
    tr: float
    visual: np.ndarray | None  # (X, Y, Z) bool; None in a dry run
    samples: pd.DataFrame  # sample, film, tr, split, stim_file, stim_time
    timeline: pd.DataFrame
    strategy: dict | None = None  # load_confounds keyword arguments (confound_options), None without --confounds

    @property
    def films(self) -> list[str]:
        return sorted(self.clocks)

    @property
    def subjects(self) -> list[str]:
        return sorted({r.run.subject for r in self.runs})

    def viewers(self, film: str) -> list[str]:
        return sorted({r.run.subject for r in self.runs if film in set(r.films)})

    def runs_of(self, subject: str, film: str) -> list[RunPlan]:
        return [r for r in self.runs if r.run.subject == subject and film in set(r.films)]


def prepare(bids_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig, progress: bool = True) -> Path:
    """Run the whole preparation; resumable (finished runs and films are not redone). Returns ``out_dir``.

    Steps: :func:`plan_preparation` (every input checked, nothing written), :func:`prepare_runs` (per-run caches),
    :func:`select_voxels` (exclusion and SNR), then the outputs are staged in ``OUT/.staging``
    (:func:`stage_samples`, :func:`stage_frames`, :func:`stage_maps`) and published together
    (:func:`publish`): until then the previous dataset stays whole. One writer at a time (a folder lock)."""
    cfg.validate()
    out = Path(out_dir)
    check_output_folder(out, OWN_FILES, "prepared dataset")
    plan = plan_preparation(bids_dir, out, cfg)  # every input checked before anything is written
    with exclusive_folder(out, "prepare"):
        clean_stale_temps(out)
        metas = prepare_runs(plan, progress)
        sel = select_voxels(plan, metas)
        staging = out / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        stage_samples(plan, sel, staging)
        film_info = stage_frames(plan, staging, progress)
        stage_maps(plan, sel, staging)
        inputs, record = _manifest(plan, sel, metas, film_info)
        write_sidecars(staging, "PREPARED", sources=[str(plan.bids_dir)], space=space_label(record, plan.space_code))
        write_dataset_description(staging, f"cinevox prepared data of {plan.bids_dir.name}", "prepare",
                                  [plan.bids_dir])
        publish(out, staging, cfg, inputs, record)
    logger.info("prepared %d samples x %d voxels (%d visual, %d excluded) from %d runs into %s", len(plan.samples),
                len(sel["keep"]), int(plan.visual.sum()), int(sel["bad"].sum()), len(plan.runs), out)
    return out


def dry_run(bids_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig) -> pd.DataFrame:
    """``prepare --dry-run``: discover the runs, place the stimuli, split, check BOLD lengths and videos (no mask,
    no voxel read, no frame decoded) and write the timeline table and its figure to ``OUT/timeline.tsv`` and
    ``OUT/timeline.png``. Returns the table."""
    cfg.validate()
    out = Path(out_dir)
    check_output_folder(out, OWN_FILES, "prepared dataset")
    plan = plan_preparation(bids_dir, out, cfg, with_mask=False)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "timeline.tsv") as tmp:
        Path(tmp).write_text(plan.timeline.to_csv(sep="\t", index=False))
    with atomic_path(out / "timeline.png") as tmp:
        plot_timeline(plan.timeline, Path(tmp))
    counts = plan.samples.groupby("split").size().to_dict()
    logger.info("%s layout: %d runs of %d subjects, %d films, TR %.4g s; samples: %s", plan.layout, len(plan.runs),
                len(plan.subjects), len(plan.films), plan.tr, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return plan.timeline


def heldout_film(cfg: PrepareConfig, layout: str) -> str:
    """The held-out film actually used: ``--heldout-film``, else YouAgain in the Emo-FilM layout, else ``none``."""
    return cfg.heldout_film if cfg.heldout_film is not None else ("YouAgain" if layout == "emofilm" else "none")


def bold_description(bids_dir: Path, bolds: list[Path]) -> dict:
    """What the BOLD runs read were: the derivatives folder (relative to the dataset; None for raw BOLD) and
    their ``space``, ``res`` and ``desc`` entities, from the files' own names (one value, or the sorted values)."""
    folders, ents = set(), {"space": set(), "res": set(), "desc": set()}
    for b in bolds:
        parts = Path(b).parts
        top = next((i for i, p in enumerate(parts) if p.startswith("sub-")), len(parts) - 1)
        folders.add(_relative(Path(*parts[:top]), bids_dir) if top else None)
        for key, value in re.findall(r"(?:^|_)(space|res|desc)-([A-Za-z0-9]+)", Path(b).name):
            ents[key].add(value)
    folders.discard(".")
    one = lambda v: (sorted(v)[0] if len(v) == 1 else sorted(v)) if v else None  # noqa: E731
    return {"derivatives": one({f for f in folders if f}), **{k: one(v) for k, v in ents.items()}}


def _relative(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute."""
    path, root = Path(path).resolve(), Path(root).resolve()
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def detect_layout(bids_dir: Path, cfg: PrepareConfig) -> str:
    """``emofilm`` when BOLD files match Emo-FilM's derivatives pattern, else ``bids``."""
    if cfg.layout != "auto":
        return cfg.layout
    return "emofilm" if next(iter(Path(bids_dir).glob(cfg.bold_pattern)), None) is not None else "bids"


def _emofilm_placements(bids_dir: Path, cfg: PrepareConfig) -> tuple[list[BoldRun], list[Placement]]:
    """Emo-FilM (ds004892): one film per run, its ``film`` events row; every viewer's film cut to the shortest
    film event of that film (all viewers cover every TR)."""
    old = discover_runs(bids_dir, cfg.bold_pattern, cfg.subjects, cfg.films)
    shortest: dict[str, float] = {}
    for r in old:
        shortest[r.film] = min(shortest.get(r.film, np.inf), r.duration)
    runs, placements = [], []
    for r in old:
        sidecars = [r.sidecar] if r.sidecar else []
        br = BoldRun({"sub": r.subject, "ses": r.session, "task": r.film}, r.bold, sidecars, r.events, r.sidecar_tr,
                     str(r.sidecar) if r.sidecar else None)
        runs.append(br)
        placements.append(Placement(br.key, r.film, r.onset, 0.0, shortest[r.film], str(r.events), film=r.film))
    return runs, placements


def _bids_placements(bids_dir: Path, cfg: PrepareConfig) -> tuple[list[BoldRun], list[Placement]]:
    """Any BIDS dataset: runs from the fMRIPrep derivatives (or raw), stimuli from the timeline table or from each
    run's (possibly inherited) events; runs without a stimulus are skipped (rest, localisers) when their tasks
    were not asked for."""
    spec = derivative_spec(bids_dir, cfg.derivatives, cfg.space, cfg.res, cfg.desc)
    filters: dict[str, list[str]] = {}
    for f in cfg.filters or []:
        k, v = f.split("=", 1)
        filters.setdefault(k.strip(), []).append(v.strip())
    runs = find_bold_runs(bids_dir, spec, cfg.subjects, cfg.tasks, filters)
    if cfg.timeline:
        placements = read_timeline(cfg.timeline, runs)
        used = {p.run_key for p in placements}
        runs = [r for r in runs if r.key in used]
    else:
        placements, skipped = [], []
        for r in runs:
            try:
                placements += placements_from_events(r, cfg.trial_type, tuple(cfg.lead_in or ()), cfg.stim_name)
            except NoStimulus:
                if cfg.tasks:  # a task the user asked for must have stimuli
                    raise
                skipped.append(r)
        if skipped:
            logger.info("%d run(s) without stimulus rows skipped (tasks %s); choose tasks with --task",
                        len(skipped), ", ".join(sorted({r.task for r in skipped})))
            runs = [r for r in runs if r not in skipped]
        if not placements:
            raise BIDSError(f"{bids_dir}: no run has stimulus rows (events with a {cfg.trial_type!r} trial_type or "
                            "stim_file); choose --trial-type, or give --timeline FILE.tsv")
    return runs, placements


def plan_timelines(bids_dir: str | Path, cfg: PrepareConfig) -> tuple[str, list[BoldRun], list[Placement]]:
    """Runs and their stimulus placements, films grouped and (``--segment-overlap``) trimmed."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise BIDSError(f"BIDS folder {bids_dir} does not exist")
    layout = detect_layout(bids_dir, cfg)
    if layout == "emofilm":
        runs, placements = _emofilm_placements(bids_dir, cfg)
    else:
        runs, placements = _bids_placements(bids_dir, cfg)
        rule = None if cfg.segments == "none" else DEFAULT_SEGMENTS if cfg.segments == "auto" else cfg.segments
        group_films(placements, rule)
        trim_overlap(placements, cfg.segment_overlap)
        if cfg.films:
            placements = [p for p in placements if p.film in cfg.films]
            if not placements:
                raise ValueError(f"--only-films {cfg.films}: no such film in this dataset")
            runs = [r for r in runs if r.key in {p.run_key for p in placements}]
    return layout, runs, placements


def resolve_stim(films_dir: str | Path, stim: str, source: str) -> Path:
    """The video of a stimulus: ``films_dir/stim`` when ``stim`` has a video extension, else ``<stim>.<ext>``."""
    d = Path(films_dir)
    if not d.is_dir():
        raise VideoError(f"films folder {d} does not exist")
    p = d / stim
    if Path(stim).suffix.lower() in VIDEO_EXTENSIONS:
        if not p.is_file():
            raise VideoError(f"{source}: stim_file {stim} does not exist in the films folder {d}")
        return p
    return find_film(p.parent, p.name)


def plan_preparation(bids_dir: str | Path, out: Path, cfg: PrepareConfig, with_mask: bool = True) -> Plan:
    """Read and check every input before any heavy work: runs and their stimuli, every BOLD header (4D, one grid,
    one TR, a stated space, long enough), the mask, every film (opens, decodes, long enough) and the split."""
    bids_dir = Path(bids_dir)
    layout, runs, placements, tr, n_vols, clocks, plans = plan_runs(bids_dir, cfg)
    if cfg.confounds:  # before the films, the mask and any voxel
        _check_confounds(plans, confound_options(cfg.confounds), n_vols)
    stim_paths = {}
    for p in placements:  # a missing film fails before any work
        if p.stim_file not in stim_paths:
            stim_paths[p.stim_file] = resolve_stim(cfg.films_dir, p.stim_file, p.source)
    films = sorted(clocks)
    heldout = heldout_film(cfg, layout)
    if heldout.lower() != "none" and heldout not in films:
        raise ValueError(f"--heldout-film {heldout!r} is not a film of this dataset ({', '.join(films)}); "
                         "name one of them, or pass --heldout-film none for no held-out film")
    for clock in clocks.values():
        for seg in clock.segments:
            check_video(stim_paths[seg.stim_file], seg.lo + seg.n_trs * tr)
    covered = {f: np.unique(np.concatenate([rp.film_trs[rp.films == f] for rp in plans])) for f in films}
    samples = plan_split(films, clocks, covered, cfg, heldout, tr)
    rel = {k: Path(os.path.relpath(v, cfg.films_dir)).as_posix() for k, v in stim_paths.items()}
    samples["stim_file"] = samples["stim_file"].map(rel)  # the video file, relative to --films
    split_of = {(f, int(t)): s for f, t, s in zip(samples["film"], samples["tr"], samples["split"])}
    table = timeline_table(plans, tr, cfg.delay_trs, split_of)
    table["stim_file"] = table["stim_file"].map(rel)
    ref = load_header(runs[0].bold)
    shape, affine = ref.get_data_shape(), bold_affine(ref, runs[0].bold, cfg.assume_mni)
    visual = _visual_mask(cfg, shape, affine, runs[0].bold) if with_mask else None
    space_code = _space_code_of(ref, runs[0].bold, cfg.assume_mni)
    strategy = confound_options(cfg.confounds) if cfg.confounds else None
    return Plan(bids_dir, out, cfg, layout, plans, clocks, stim_paths, tuple(shape), affine, space_code, tr, visual,
                samples, table, strategy)


def _check_confounds(plans: list[RunPlan], options: dict, n_vols: dict[str, int]) -> None:
    """Before any voxel is read: every run has its confounds file, and at least 2 volumes per regressor."""
    missing = [rp.run.bold.name for rp in plans if rp.run.confounds is None]
    if missing:
        raise BIDSError(f"--confounds: {len(missing)} of {len(plans)} runs have no fMRIPrep confounds file "
                        f"(*_desc-confounds_timeseries.tsv) beside the BOLD, e.g. {missing[0]}; give fMRIPrep "
                        "derivatives (--derivatives) or drop --confounds")
    for rp in plans:
        check_confound_budget(rp.run.bold, rp.run.confounds, options, n_vols[rp.run.key])


def _space_code_of(hdr, bold: Path, assume_mni: bool) -> int:
    """The space code the outputs record: the BOLD header's sform (else qform) code, 4 (MNI) when it states none.
    A scanner code (1) on data in a template grid is a common conversion quirk (the Sherlock PMC extraction): one
    warning line, kept as is unless ``assume_mni`` records it as MNI."""
    code = int(hdr["sform_code"]) or int(hdr["qform_code"])
    if code == 1:
        if assume_mni:
            logger.info("%s: header space code 1 (scanner) read as MNI (--assume-mni)", bold)
            return 4
        logger.warning("%s: its header places it in scanner space (sform code 1), not a template: the outputs "
                       "keep code 1, and predict/decode will refuse template-space scans; if its grid is MNI, "
                       "pass --assume-mni", bold)
    return code or 4


def plan_runs(bids_dir: str | Path, cfg: PrepareConfig):
    """Discovery without the films: runs, placements, every BOLD header checked (4D, one grid, one TR), film
    clocks and each run's volume -> film TR map. Returns ``(layout, runs, placements, tr, n_volumes, clocks,
    run_plans)``."""
    layout, runs, placements = plan_timelines(bids_dir, cfg)
    ref = load_header(runs[0].bold)
    shape = ref.get_data_shape()
    affine = bold_affine(ref, runs[0].bold, cfg.assume_mni)
    trs, n_vols = {}, {}
    for r in runs:
        h = load_header(r.bold)
        if len(h.get_data_shape()) != 4:
            raise NiftiError(f"{r.bold}: expected a 4D image (x, y, z, time), got shape {h.get_data_shape()}")
        check_same_grid(h.get_data_shape(), bold_affine(h, r.bold, cfg.assume_mni), f"BOLD {r.bold}", shape, affine,
                        f"BOLD {runs[0].bold}")
        trs[r.key] = _run_tr(r, h, cfg, warn_header=layout == "bids")
        n_vols[r.key] = int(h.get_data_shape()[3])
    tr_values = sorted(set(round(v, 6) for v in trs.values()))
    if max(tr_values) - min(tr_values) > cfg.tr_tolerance:
        raise NiftiError(f"runs have different TRs: {tr_values}")
    tr = float(np.median(list(trs.values())))
    resolve_open_placements(placements, runs, n_vols, tr)
    clocks = film_clocks(placements, tr)
    max_trim = 0 if layout == "emofilm" else cfg.max_trim_trs
    by_run: dict[str, list[Placement]] = {}
    for p in placements:
        by_run.setdefault(p.run_key, []).append(p)
    options = confound_options(cfg.confounds) if cfg.confounds else None
    plans, unscrubbed = [], []
    for r in runs:
        dropped = non_steady_state(r.confounds)
        scrubbed = _scrubbed_volumes(r, options, n_vols[r.key]) - dropped
        rp = plan_run(r, by_run[r.key], clocks, tr, cfg.delay_trs, n_vols[r.key], max_trim, dropped | scrubbed,
                      strict=layout == "emofilm")
        if scrubbed:  # the film TRs this run would have covered without scrubbing (for the log line below)
            unscrubbed.append(plan_run(r, by_run[r.key], clocks, tr, cfg.delay_trs, n_vols[r.key], max_trim,
                                       dropped, strict=layout == "emofilm"))
        if len(rp.volumes):
            plans.append(rp)
    if unscrubbed:
        _log_scrubbed_trs(plans, unscrubbed, options)
    return layout, runs, placements, tr, n_vols, clocks, plans


def _scrubbed_volumes(run: BoldRun, options: dict | None, n_volumes: int) -> set[int]:
    """The volumes of ``run`` that its confound strategy censors (``scrub``, nilearn's sample mask), 0-based: they
    are left out of the run's plan like non-steady-state volumes, so a film TR that every viewer lost has no
    sample (no row of voxels, subjects or timeline) instead of a row without data. Empty without a sample mask
    (or without the run's confounds file, refused later with its own message)."""
    if not options or run.confounds is None:
        return set()
    kept = load_run_confounds(run.bold, run.confounds, options)[1]
    return set() if kept is None else set(range(n_volumes)) - {int(v) for v in kept}


def _log_scrubbed_trs(plans: list[RunPlan], unscrubbed: list[RunPlan], options: dict) -> None:
    """One log line: the film TRs that scrubbing removed from every viewer (so from the samples), per film."""
    def covered(rps):
        return {(f, int(t)) for rp in rps for f, t in zip(rp.films, rp.film_trs)}

    lost = covered(unscrubbed) - covered(plans)
    if lost:
        by_film: dict[str, list[int]] = {}
        for f, t in sorted(lost):
            by_film.setdefault(f, []).append(t)
        logger.info("--confounds %s: %d film TR(s) dropped from the samples, every viewer's volume for them "
                    "scrubbed: %s", _confound_text(options), len(lost),
                    "; ".join(f"{f} {len(t)} (TR {', '.join(map(str, t[:8]))}{', ...' if len(t) > 8 else ''})"
                              for f, t in by_film.items()))


def _visual_mask(cfg: PrepareConfig, shape, affine, ref_bold: Path) -> np.ndarray:
    if cfg.mask:
        return load_mask(cfg.mask, shape, affine, f"BOLD {ref_bold}")
    if cfg.atlas:
        if not cfg.atlas_labels and cfg.visual_parcels == "names":
            raise ValueError("--atlas needs --atlas-labels (the parcel names pick the visual networks) or "
                             "--visual-parcels RANGES (e.g. kong2022)")
        return atlas_visual_mask(cfg.atlas, cfg.atlas_labels, shape, affine, cfg.visual_parcels)
    return fetch_schaefer_visual_mask(shape, affine, cfg.nilearn_data_dir, cfg.visual_parcels)


def plan_split(films: list[str], clocks: dict[str, FilmClock], covered: dict[str, np.ndarray], cfg: PrepareConfig,
               heldout: str, tr: float) -> pd.DataFrame:
    """Every sample's split, checked: no split may be empty, and gaps that take a large share of a film are
    reported. ``films``: the paper's per-film split on each film's clock (a film's TRs shown twice share one
    label); ``stimuli``: whole films to train, validation and test. -> samples (sample, film, tr, split,
    stim_file, stim_time)."""
    rows = []
    if cfg.split == "stimuli":
        labels_of = _stimulus_split(films, heldout, cfg)
    for f in films:
        n = clocks[f].n_trs
        if cfg.split == "films":
            if n < 5:
                raise ValueError(f"film {f}: only {n} TRs in its events; too short for a per-film split (for "
                                 "datasets of many short clips use --split stimuli)")
            labels = split_film(n, f == heldout, cfg.test_fraction, cfg.val_fraction, cfg.val_mode, cfg.gap_trs,
                                cfg.val_blocks)
        else:
            labels = np.full(n, labels_of[f], object)
        t = covered[f]
        files, times = clocks[f].source(t, tr)
        rows.append(pd.DataFrame({"film": f, "tr": t, "split": labels[t], "stim_file": files,
                                  "stim_time": np.round(times, 6)}))
    samples = pd.concat(rows, ignore_index=True)
    samples.insert(0, "sample", np.arange(len(samples)))
    counts = samples.groupby(["film", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["train", "val", "gap", "test"], fill_value=0)
    table = "; ".join(f"{f}: " + ", ".join(f"{k} {int(v)}" for k, v in row.items()) for f, row in
                      counts.head(20).iterrows())
    empty = [k for k in ("train", "val", "test") if counts[k].sum() == 0]
    if empty:
        raise ValueError(f"the split leaves no {' and no '.join(empty)} samples ({table}); with short films use "
                         "fewer validation blocks and smaller gaps (--val-blocks 1 --gap-trs 1), or --val-mode "
                         "interleaved")
    for f, row in counts.iterrows():
        share = row["gap"] / max(int(row.sum()), 1)
        if share > 0.3:
            logger.warning("film %s: the gaps around validation blocks take %.0f %% of its TRs (%s); consider "
                           "--gap-trs or --val-blocks", f, 100 * share, ", ".join(f"{k} {int(v)}" for k, v in
                                                                                   row.items()))
    return samples


def _stimulus_split(films: list[str], heldout: str, cfg: PrepareConfig) -> dict[str, str]:
    """Whole films (stimuli) to test, validation and train, in an order fixed by ``split_seed`` (a hash of each
    name: the same stimulus gets the same split whatever else is in the dataset)."""
    if len(films) < 3:
        raise ValueError(f"--split stimuli needs at least 3 stimuli, found {len(films)}")
    order = sorted(films, key=lambda f: hashlib.sha256(f"{cfg.split_seed}:{f}".encode()).hexdigest())
    if heldout in films:
        order.remove(heldout)
        order.insert(0, heldout)
    n_test = max(1, int(round(cfg.test_fraction * len(films))))
    n_val = max(1, int(round(cfg.val_fraction * (len(films) - n_test))))
    return {f: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, f in enumerate(order)}


def prepare_runs(plan: Plan, progress: bool = True) -> dict[str, dict]:
    """Stage 1: each run's mask voxels at its stimulus volumes, z-scored, cached in ``OUT/cache/runs`` (a run
    whose inputs and options did not change is not redone). Returns each run's statistics."""
    cfg, out = plan.cfg, plan.out
    flat_index = fortran_index(plan.visual)
    mask_key = config_hash({"ijk": np.argwhere(plan.visual).tolist(), "affine": plan.affine.tolist()})
    cache = out / "cache" / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    jobs, metas = [], {}
    for rp in plan.runs:
        r = rp.run
        key = config_hash({"bold": file_identity(r.bold), "events": file_identity(r.events) if r.events else None,
                           "mask": mask_key, "volumes": rp.volumes.tolist(), "films": rp.films.tolist(),
                           "film_trs": rp.film_trs.tolist(), "detrend": cfg.detrend,
                           "confounds": [plan.strategy, file_identity(r.confounds) if r.confounds else None]})
        meta_path = cache / f"{r.key}.json"
        if meta_path.is_file() and (cache / f"{r.key}.npz").is_file() and read_json(meta_path).get("key") == key:
            metas[r.key] = read_json(meta_path)
            continue
        jobs.append((rp, flat_index, cfg.detrend, cfg.max_bad_fraction, cache, key, plan.strategy, plan.tr))
    if len(metas):
        logger.info("resuming: %d of %d runs already prepared", len(metas), len(plan.runs))
    bar = tqdm(total=len(jobs), desc="prepare runs", unit="run", disable=True if not jobs else bar_disabled(progress))
    if cfg.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=cfg.jobs, initializer=worker_dies_with_parent) as ex:
            for job, meta in zip(jobs, ex.map(_run_job, jobs)):
                metas[job[0].run.key] = meta
                bar.update(1)
    else:
        for job in jobs:
            metas[job[0].run.key] = _run_job(job)
            bar.update(1)
    bar.close()
    return metas


def subject_series(plan: Plan, film: str, subject: str, cols: np.ndarray | slice = slice(None),
                   raw: bool = False, only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One subject's series of one film on the film clock, repeats (a clip seen twice, overlapping segments)
    averaged. ``raw``: the baseline-retaining series minus each run's mean (``z * sd``), else z-scores. ``only``
    (n_trs,) bool: the film TRs to use (the others count as not seen). Returns ``(series (n_trs, V) float64, NaN
    where not seen; seen (n_trs,) bool; time-mean of the raw series over the seen TRs (V,))``."""
    cache = plan.out / "cache" / "runs"
    n = plan.clocks[film].n_trs
    acc, count, tmean, n_obs = None, np.zeros(n), 0.0, 0
    for rp in plan.runs_of(subject, film):
        with np.load(cache / f"{rp.run.key}.npz") as z:
            rows = z["films"] == film
            if only is not None:
                rows &= only[np.minimum(z["film_trs"], n - 1)] & (z["film_trs"] < n)
            t = z["film_trs"][rows]
            vals = z["z"][rows][:, cols].astype(np.float64)
            sd, mean = z["raw_sd"][cols].astype(np.float64), z["raw_mean"][cols].astype(np.float64)
        x = vals * sd if raw else vals
        acc = np.zeros((n, x.shape[1])) if acc is None else acc
        np.add.at(acc, t, x)
        np.add.at(count, t, 1)
        tmean = tmean + (vals * sd + mean).sum(0)
        n_obs += len(t)
    seen = count > 0
    series = np.full_like(acc, np.nan)
    series[seen] = acc[seen] / count[seen, None]
    return series, seen, tmean / max(n_obs, 1)


def select_voxels(plan: Plan, metas: dict[str, dict]) -> dict:
    """Stage 2: exclude voxels constant or non-finite in any run, rank the others by SNR, keep the top fraction.
    Returns ``keep`` (indices into the mask voxels, C order), ``bad`` and ``snr`` (over the mask voxels)."""
    cfg, cache = plan.cfg, plan.out / "cache" / "runs"
    n_mask = int(plan.visual.sum())
    bad = np.zeros(n_mask, bool)
    for rp in plan.runs:
        with np.load(cache / f"{rp.run.key}.npz") as z:
            bad |= z["bad"]
    if bad.all():
        raise ValueError("every mask voxel is constant or non-finite in some run: nothing left")
    snr_num, snr_w = np.zeros(n_mask), 0.0
    for f in plan.films:
        snr_f = _film_snr(plan, f, cfg.snr, cfg.snr_ddof, cfg.select_on)
        if snr_f is not None:
            w = plan.clocks[f].n_trs if cfg.snr_film_weight == "length" else 1.0
            snr_num += snr_f * w
            snr_w += w
    if snr_w == 0:
        raise ValueError("SNR needs at least one film seen by two or more subjects")
    snr = snr_num / snr_w
    snr[bad] = -np.inf
    good = np.flatnonzero(~bad)
    n_keep = max(1, int(round(cfg.snr_top * len(good))))
    order = good[np.argsort(-snr[good], kind="stable")]
    return {"keep": np.sort(order[:n_keep]), "bad": bad, "snr": snr}


def stage_samples(plan: Plan, sel: dict, staging: Path) -> None:
    """Stage 3: the subject-averaged voxels (n_samples, V), the per-subject test data, every viewer's series and
    ``samples.csv``.

    ``subjects.npy`` (n_subjects, n_samples, V) float32: viewer ``plan.subjects[j]``'s z-scored series on the
    film clock (repeats averaged), the rows of ``samples.csv`` (same voxels, same split), NaN where the viewer did
    not see the film (or that TR of it). Its NaN-mean over viewers is ``voxels.npy``. Written through a memory
    map one film at a time: peak memory stays one film's ``(n_trs, V)`` per viewer; on disk it is
    ``4 n_subjects n_samples V`` bytes (Emo-FilM: 30 x ~7,400 x ~4,600 -> ~4.1 GB)."""
    keep, samples = sel["keep"], plan.samples.copy()
    subjects = plan.subjects
    test_rows = samples.index[samples["split"] == "test"].to_numpy()
    vox = np.lib.format.open_memmap(staging / "voxels.npy", mode="w+", dtype=np.float32,
                                    shape=(len(samples), len(keep)))
    subj = np.lib.format.open_memmap(staging / "subjects_test.npy", mode="w+", dtype=np.float32,
                                     shape=(len(subjects), len(test_rows), len(keep)))
    subj[:] = np.nan
    every = np.lib.format.open_memmap(staging / "subjects.npy", mode="w+", dtype=np.float32,
                                      shape=(len(subjects), len(samples), len(keep)))
    for j in range(len(subjects)):  # one viewer at a time: the memory map is not filled in one temporary
        every[j] = np.nan
    test_pos = {s: i for i, s in enumerate(test_rows)}
    for f in plan.films:
        rows_f = samples.index[samples["film"] == f].to_numpy()
        t_f = samples.loc[rows_f, "tr"].to_numpy()
        is_test = samples.loc[rows_f, "split"].to_numpy() == "test"
        pos = [test_pos[s] for s in rows_f[is_test]]
        acc = np.zeros((len(rows_f), len(keep)), np.float64)
        n_seen = np.zeros(len(rows_f))
        for s in plan.viewers(f):
            series, seen, _ = subject_series(plan, f, s, keep)
            x, ok = series[t_f], seen[t_f]
            acc[ok] += x[ok]
            n_seen += ok
            subj[subjects.index(s), pos] = x[is_test]
            every[subjects.index(s), rows_f] = x
        if not n_seen.all():  # the plan keeps only film TRs some viewer has a volume for (scrubbed ones are left out)
            raise RuntimeError(f"film {f}: {int((n_seen == 0).sum())} sample(s) without any viewer's data, e.g. film "
                               f"TR {int(t_f[n_seen == 0][0])}; this is a bug in prepare")
        vox[rows_f] = (acc / n_seen[:, None]).astype(np.float32)
    vox.flush()
    subj.flush()
    every.flush()
    del vox, subj, every
    samples["frame_start"] = samples["tr"] * plan.cfg.frames_per_tr
    (staging / "samples.csv").write_text(samples.to_csv(index=False))
    (staging / "timeline.tsv").write_text(plan.timeline.to_csv(sep="\t", index=False))


def stage_frames(plan: Plan, staging: Path, progress: bool = True) -> dict:
    """32 frames per TR of every film on its clock, cached in ``OUT/cache/frames`` (keyed on the videos and the
    frame options) and staged as hard links (no copy)."""
    cfg = plan.cfg
    cache = plan.out / "cache" / "frames"
    cache.mkdir(parents=True, exist_ok=True)
    (staging / "frames").mkdir()
    info = {}
    for f in tqdm(plan.films, desc="prepare films", unit="film", disable=bar_disabled(progress)):
        clock, n = plan.clocks[f], plan.clocks[f].n_trs
        segs = [(str(plan.stim_paths[s.stim_file]), s.lo, s.offset, s.n_trs) for s in clock.segments]
        key = config_hash({"videos": [file_identity(plan.stim_paths[s.stim_file]) for s in clock.segments],
                           "segments": [s[1:] for s in segs], "n_trs": n, "tr": plan.tr, "fpt": cfg.frames_per_tr,
                           "size": cfg.frame_size, "resize": cfg.frame_resize, "sampling": cfg.frame_sampling})
        target, meta_path = cache / f"{f}.npy", cache / f"{f}.json"
        if not (target.is_file() and meta_path.is_file() and read_json(meta_path).get("key") == key):
            _film_frames(plan, clock, target, cfg)
            write_json(meta_path, {"key": key})
        try:
            os.link(target, staging / "frames" / f"{f}.npy")
        except OSError:  # a file system without hard links
            shutil.copy2(target, staging / "frames" / f"{f}.npy")
        info[f] = {"video": segs[0][0], "n_trs": n, "n_frames": n * cfg.frames_per_tr, "frames_key": key,
                   "segments": [{"video": v, "start_s": lo, "film_tr": off, "n_trs": k} for v, lo, off, k in segs]}
    return info


def stage_maps(plan: Plan, sel: dict, staging: Path) -> None:
    """The selected and usable masks, the SNR map (NIfTI on the BOLD grid) and the voxels' grid indices."""
    keep, bad, snr = sel["keep"], sel["bad"], sel["snr"]
    ijk_visual = np.argwhere(plan.visual)

    def save(name, data):
        save_nifti(staging / name, data, plan.affine, plan.space_code)

    selected = np.zeros(plan.shape[:3], bool)
    selected[tuple(ijk_visual[keep].T)] = True
    save("mask.nii.gz", selected.astype(np.uint8))
    usable = plan.visual.copy()
    usable[tuple(ijk_visual[bad].T)] = False
    save("visual_mask.nii.gz", usable.astype(np.uint8))
    snr_vol = np.zeros(plan.shape[:3], np.float32)
    snr_vol[plan.visual] = np.where(np.isfinite(snr), snr, 0)
    save("snr.nii.gz", snr_vol)
    np.save(staging / "voxels_ijk.npy", ijk_visual[keep])
    plot_timeline(plan.timeline, staging / "timeline.png")


def publish(out: Path, staging: Path, cfg: PrepareConfig, inputs: dict, record: dict) -> None:
    """Move the staged outputs into ``out`` and write the manifest (with the integrity record) last.

    The old manifest goes first: from then until the new one is written (a moment of renames), readers find no
    manifest and refuse the folder, so they never use a mix of old and new files."""
    names = list(PUBLISHED) + [f"frames/{p.name}" for p in sorted((staging / "frames").iterdir())]
    integrity = integrity_record(staging, names)
    (out / "manifest.json").unlink(missing_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    for old in (out / "frames").glob("*.npy"):
        if not (staging / "frames" / old.name).exists():
            old.unlink()
    for n in names:
        os.replace(staging / n, out / n)
    write_manifest(out, "prepare", cfg, inputs, integrity=integrity, **record)
    shutil.rmtree(staging, ignore_errors=True)


def plot_timeline(table: pd.DataFrame, path: Path) -> Path:
    from cinevox.utils.plotting import timeline_figure

    return timeline_figure(table, path)


def _manifest(plan: Plan, sel: dict, metas: dict, film_info: dict) -> tuple[dict, dict]:
    """What the manifest records besides the config: ``(inputs, the dataset's description)``."""
    cfg, samples, films = plan.cfg, plan.samples, plan.films
    counts = {f: {s: int(((samples.film == f) & (samples.split == s)).sum()) for s in ("train", "val", "test", "gap")}
              for f in films}
    missing = {s: sorted(set(films) - {f for rp in plan.runs if rp.run.subject == s for f in rp.films})
               for s in plan.subjects}
    nonfinite = {k: m["nonfinite_volumes"] for k, m in metas.items() if m.get("nonfinite_volumes")}
    sim = plan.bids_dir / "derivatives" / "simulation"
    root = plan.bids_dir

    def ident(path, with_hash=False):  # inputs inside the dataset are recorded relative to it
        rec = file_identity(path, with_hash)
        rec["path"] = _relative(path, root)
        return rec

    inputs = {
        "bids_dir": str(plan.bids_dir.resolve()),
        "runs": [{"key": rp.run.key, "bold": ident(rp.run.bold, cfg.hash_inputs),
                  "events": ident(rp.run.events) if rp.run.events else None,
                  "sidecar": _relative(rp.run.sidecars[-1], root) if rp.run.sidecars else None,
                  "confounds": ident(rp.run.confounds) if rp.run.confounds else None,
                  "placements": [{"stim_file": p.stim_file, "onset": p.onset, "stim_start": p.stim_start,
                                  "duration": p.duration, "film": p.film} for p in rp.placements],
                  "n_volumes_used": int(len(rp.volumes)), "trimmed_trs": rp.trimmed}
                 for rp in plan.runs],
        "films": {s: ident(p, cfg.hash_inputs) for s, p in plan.stim_paths.items()},
        "timeline": ident(cfg.timeline) if cfg.timeline else None,
        "mask": {k: (ident(v, cfg.hash_inputs) if v else None)
                 for k, v in (("mask", cfg.mask), ("atlas", cfg.atlas), ("atlas_labels", cfg.atlas_labels))},
    }
    return inputs, {
        "tr": plan.tr, "layout": plan.layout, "grid": {"shape": list(plan.shape[:3]), "affine": plan.affine.tolist()},
        "subjects": plan.subjects, "films": film_info, "viewers": {f: plan.viewers(f) for f in films},
        "missing_films": missing, "counts": counts, "n_samples": len(samples),
        "n_visual_voxels": int(plan.visual.sum()), "n_excluded_voxels": int(sel["bad"].sum()),
        "n_excluded_nonfinite_run_voxels": int(np.sum([m["n_nonfinite"] for m in metas.values()])),
        "nonfinite_volumes": nonfinite, "n_voxels": len(sel["keep"]), "snr_method": cfg.snr,
        "select_on": cfg.select_on,
        "confounds": list(plan.strategy["strategy"]) if plan.strategy else None, "confound_options": plan.strategy,
        "split_mode": cfg.split,
        "bids_simulation": str(sim) if (sim / "truth.json").is_file() else None,
        "heldout_film": None if (h := heldout_film(cfg, plan.layout)).lower() == "none" else h,
        "bold": bold_description(plan.bids_dir, [rp.run.bold for rp in plan.runs]),
    }


def _film_frames(plan: Plan, clock: FilmClock, target: Path, cfg: PrepareConfig) -> None:
    """``n_trs * frames_per_tr`` frames of a film on its clock into ``target`` (uint8 (n, S, S, 3) .npy),
    atomically, segment by segment.

    ``timestamp``: the frame shown at ``start + (k + 0.5) TR / frames_per_tr`` of the segment's file;
    ``linspace``: the authors' pick by frame count over the whole video (one-file films only)."""
    fpt, tr = cfg.frames_per_tr, plan.tr
    n = clock.n_trs * fpt
    with atomic_path(target) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, cfg.frame_size, cfg.frame_size, 3))
        for seg in clock.segments:
            video = plan.stim_paths[seg.stim_file]
            part = arr[seg.offset * fpt:(seg.offset + seg.n_trs) * fpt]
            if cfg.frame_sampling == "linspace":
                if len(clock.segments) > 1:
                    raise ValueError(f"film {clock.film}: linspace frame sampling needs one video per film")
                idx = linspace_indices(probe_video(video).n_frames, len(part))
                sample_frame_indices(video, idx, cfg.frame_size, cfg.frame_resize, out=part)
            else:
                times = seg.lo + (np.arange(len(part)) + 0.5) * tr / fpt
                sample_frames(video, times, cfg.frame_size, out=part, resize=cfg.frame_resize)
        arr.flush()
        del arr


def _film_snr(plan: Plan, film: str, method: str, ddof: int = 0, select_on: str = "all") -> np.ndarray | None:
    """Per-voxel SNR of one film over its viewers (None with fewer than two). ``ddof`` of the paper's noise.
    Each viewer's series is first averaged over its repeats (:func:`subject_series`). ``select_on="trainval"``: on
    the film's training and validation TRs only (None for a film without any, e.g. the held-out film)."""
    viewers = plan.viewers(film)
    if len(viewers) < 2:
        return None
    only = None
    if select_on == "trainval":
        rows = plan.samples[(plan.samples["film"] == film) & plan.samples["split"].isin(["train", "val"])]
        if rows.empty:
            return None
        only = np.zeros(plan.clocks[film].n_trs, bool)
        only[rows["tr"].to_numpy()] = True
    s1 = s2 = n = None
    means = []
    for s in viewers:
        x, seen, tmean = subject_series(plan, film, s, raw=method == "paper", only=only)
        x = np.where(seen[:, None], x, 0.0)
        s1 = x if s1 is None else s1 + x
        s2 = x**2 if s2 is None else s2 + x**2
        n = seen.astype(float) if n is None else n + seen
        means.append(tmean)
    return snr_from_sums(s1, s2, n, np.stack(means), method, ddof)


def snr_from_sums(s1: np.ndarray, s2: np.ndarray, n: np.ndarray, means: np.ndarray, method: str,
                  ddof: int = 0) -> np.ndarray:
    """SNR from per-TR sums over subjects. s1, s2: (n_trs, V) sum and sum of squares; n: (n_trs,) subjects seen;
    means: (n_subjects, V) each subject's time-mean of the raw series."""
    if method == "paper":
        seen = n > 0
        signal = (s1[seen] / n[seen, None]).var(0)  # variance over time of the subject-mean
        noise = np.var(means, axis=0, ddof=ddof)  # variance across subjects of the time-means
        return signal / np.maximum(noise, 1e-12)
    two = n >= 2
    across = (s2[two] - s1[two] ** 2 / n[two, None]) / (n[two, None] - 1)  # across-subject variance per TR
    sigma2 = across.mean(0)
    return np.sqrt(np.maximum(1.0 - sigma2, 0.0)) / np.sqrt(np.maximum(sigma2, 1e-12))
