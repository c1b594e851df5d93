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

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cinevox.data.bids import DEFAULT_BOLD_PATTERN, Run, discover_runs
from cinevox.data.masks import (
    atlas_visual_mask,
    check_same_grid,
    fetch_schaefer_visual_mask,
    load_mask,
    parse_parcel_ranges,
)
from cinevox.data.nifti import NiftiError, bold_affine, fortran_index, load_header, read_volumes, save_nifti
from cinevox.data.splits import split_film
from cinevox.data.video import (
    check_video,
    find_film,
    linspace_indices,
    probe_video,
    sample_frame_indices,
    sample_frames,
)
from cinevox.profiles import apply_profile
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


@dataclass
class PrepareConfig:
    """Options of ``cinevox prepare`` (a JSON/TOML config file may hold any of them)."""

    films_dir: str = ""
    bold_pattern: str = DEFAULT_BOLD_PATTERN
    subjects: list[str] | None = None
    films: list[str] | None = None
    mask: str | None = None  # ready mask (NIfTI or the authors' .npy)
    atlas: str | None = None  # Schaefer-style label image
    atlas_labels: str | None = None
    nilearn_data_dir: str | None = None
    delay_trs: int = 4
    detrend: str = "mean"  # "mean" (baseline) or "linear"
    snr: str = "paper"  # "paper" or "ceiling"
    snr_top: float = 0.3
    frame_size: int = 112
    frames_per_tr: int = 32
    heldout_film: str = "YouAgain"
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    val_mode: str | None = None  # "blocked" or "interleaved" (the authors'); None: profile
    gap_trs: int = 5
    val_blocks: int = 4
    max_bad_fraction: float = 0.5  # above this share of non-finite mask voxels a run is an error
    tr_tolerance: float = 1e-3
    hash_inputs: bool = False
    jobs: int = 1
    visual_parcels: str = "names"  # "names" (_Vis parcels), "kong2022" (the paper's label ranges) or "420-450,..."
    assume_mni: bool = False  # read BOLD headers whose qform and sform codes are 0 as MNI (their sform matrix)
    profile: str = "paper"  # table of choices (cinevox.profiles); the None fields below come from it
    frame_intensity: str | None = None  # "raw" (uint8 / 255) or "minmax" (per frame, the authors')
    frame_resize: str | None = None  # "area" or "skimage"
    frame_sampling: str | None = None  # "timestamp" or "linspace"
    snr_ddof: int | None = None
    snr_film_weight: str | None = None  # "mean" or "length"

    def validate(self) -> None:
        apply_profile(self, "prepare")
        if self.detrend not in ("mean", "linear"):
            raise ValueError(f"detrend must be 'mean' or 'linear', got {self.detrend!r}")
        if self.snr not in ("paper", "ceiling"):
            raise ValueError(f"snr must be 'paper' or 'ceiling', got {self.snr!r}")
        if not 0 < self.snr_top <= 1:
            raise ValueError(f"snr_top must lie in (0, 1], got {self.snr_top}")
        if self.frames_per_tr < 2 or self.frames_per_tr % 2:
            raise ValueError(f"frames_per_tr must be even and >= 2, got {self.frames_per_tr}")
        if self.frame_size % 8:
            raise ValueError(f"frame_size must be a multiple of 8, got {self.frame_size}")
        if self.delay_trs < 0:
            raise ValueError(f"delay_trs must be >= 0, got {self.delay_trs}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.gap_trs < 0:
            raise ValueError(f"gap_trs must be >= 0, got {self.gap_trs}")
        if self.val_blocks < 1:
            raise ValueError(f"val_blocks must be >= 1, got {self.val_blocks}")
        if not 0 < self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise ValueError("test_fraction and val_fraction must lie in (0, 1)")
        if not self.films_dir:
            raise ValueError("--films FOLDER (the film videos) is required")
        if self.visual_parcels != "names":
            parse_parcel_ranges(self.visual_parcels)


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


def _run_tr(run: Run, hdr, tol: float) -> float:
    zooms = hdr.get_zooms()
    units = hdr.get_xyzt_units()[1] if hasattr(hdr, "get_xyzt_units") else "sec"
    tr_hdr = float(zooms[3]) / (1000.0 if units == "msec" else 1.0) if len(zooms) > 3 else 0.0
    if run.sidecar_tr is not None and tr_hdr > 0 and abs(tr_hdr - run.sidecar_tr) > tol:
        raise NiftiError(f"{run.bold}: TR in the header ({tr_hdr:.6g} s) disagrees with {run.sidecar} "
                         f"(RepetitionTime {run.sidecar_tr} s)")
    tr = run.sidecar_tr if run.sidecar_tr is not None else tr_hdr
    if not tr or tr <= 0:
        raise NiftiError(f"{run.bold}: no TR in the header and no sidecar with RepetitionTime")
    return tr


def _segment(run: Run, tr: float, n_trs: int, delay: int) -> tuple[int, int]:
    on_tr = int(round(run.onset / tr))
    return on_tr + delay, on_tr + delay + n_trs


def standardise_segment(x: np.ndarray, detrend: str, nonfinite: np.ndarray | None = None):
    """The run-level preparation of a film segment: remove each voxel's baseline (mean, or mean and linear trend)
    and divide by its standard deviation. x: (n_trs, V) float64, NaN-free; ``nonfinite`` (V,) marks columns to
    zero. Returns ``(z float32 (n_trs, V), raw mean (V,), sd (V,), constant (V,) bool)``; constant or non-finite
    voxels are 0 in ``z``."""
    nonfinite = np.zeros(x.shape[1], bool) if nonfinite is None else nonfinite
    x = np.where(nonfinite[None, :], 0.0, x)
    raw_mean = x.mean(0)
    if detrend == "linear":
        tt = np.arange(len(x)) - (len(x) - 1) / 2
        slope = (tt[:, None] * (x - raw_mean)).sum(0) / (tt**2).sum()
        x = x - raw_mean - tt[:, None] * slope
    else:
        x = x - raw_mean
    sd = x.std(0)
    constant = (sd <= 1e-8 * np.maximum(np.abs(raw_mean), 1.0)) & ~nonfinite
    bad = nonfinite | constant
    z = np.where(bad, 0.0, x / np.where(bad, 1.0, sd)).astype(np.float32)
    return z, raw_mean, sd, constant


def _process_run(run: Run, flat_index: np.ndarray, start: int, stop: int, detrend: str, max_bad: float,
                 cache: Path, key: str) -> dict:
    """Stream one run, keep the shifted film segment of the mask voxels, z-score, cache. Returns stats."""
    hdr = load_header(run.bold)
    n_vols = hdr.get_data_shape()[3] if len(hdr.get_data_shape()) == 4 else 0
    if n_vols < stop:
        raise NiftiError(f"{run.bold}: run is shorter than its events: the film ({run.onset:.1f} s + "
                         f"{run.duration:.1f} s, from {run.events.name}) with the delay needs {stop} volumes, "
                         f"the file has {n_vols}")
    x = read_volumes(run.bold, flat_index, start, stop).astype(np.float64)  # (n_trs, n_mask)
    finite = np.isfinite(x)
    nonfinite = ~finite.all(0)
    if nonfinite.mean() > max_bad:
        raise NiftiError(f"{run.bold}: NaN/Inf in {int(nonfinite.sum())} of {x.shape[1]} mask voxels "
                         f"({100 * nonfinite.mean():.0f} %, above the {100 * max_bad:.0f} % allowed)")
    bad_vols = []
    if nonfinite.any():
        bad_vols = [int(v) for v in np.flatnonzero(~finite.all(1)) + start]
        shown = ", ".join(map(str, bad_vols[:8])) + (", ..." if len(bad_vols) > 8 else "")
        logger.warning("%s: NaN/Inf at %d mask voxels in volume(s) %s (0-based); these voxels are excluded for "
                       "every subject", run.bold, int(nonfinite.sum()), shown)
    z, raw_mean, sd, constant = standardise_segment(x, detrend, nonfinite)
    bad = nonfinite | constant
    with atomic_path(cache / f"{run.key}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, z=z, raw_mean=raw_mean.astype(np.float32), raw_sd=np.where(bad, 0, sd).astype(np.float32),
                 bad=bad)
    meta = {"key": key, "n_nonfinite": int(nonfinite.sum()), "n_constant": int(constant.sum()),
            "nonfinite_volumes": bad_vols}
    write_json(cache / f"{run.key}.json", meta)
    return meta


def _run_job(args):
    return _process_run(*args)


#: Files of a published prepared dataset (besides ``frames/<film>.npy``); the manifest is written last.
PUBLISHED = ("voxels.npy", "subjects_test.npy", "samples.csv", "mask.nii.gz", "visual_mask.nii.gz", "snr.nii.gz",
             "voxels_ijk.npy")
OWN_FILES = (*PUBLISHED, "manifest.json", "frames", "cache", ".staging")


@dataclass
class Plan:
    """Everything ``prepare`` decided before any heavy work: inputs checked, grid, mask, films, split."""

    bids_dir: Path
    out: Path
    cfg: PrepareConfig
    runs: list[Run]
    films: list[str]
    film_paths: dict[str, Path]
    shape: tuple
    affine: np.ndarray
    space_code: int
    tr: float
    visual: np.ndarray  # (X, Y, Z) bool
    n_trs: dict[str, int]
    samples: pd.DataFrame  # sample, film, tr, split

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.runs})

    def viewers(self, film: str) -> list[Run]:
        return [r for r in self.runs if r.film == film]


def prepare(bids_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig, progress: bool = True) -> Path:
    """Run the whole preparation; resumable (finished runs and films are not redone). Returns ``out_dir``.

    Steps: :func:`plan_preparation` (every input checked, nothing written), :func:`prepare_runs` (per-run caches),
    :func:`select_voxels` (exclusion and SNR), then the outputs are staged in ``OUT/.staging``
    (:func:`stage_samples`, :func:`stage_frames`, :func:`stage_maps`) and published together
    (:func:`publish`): until then the previous dataset stays whole. One writer at a time (a folder lock)."""
    cfg.validate()
    out = Path(out_dir)
    check_output_folder(out, OWN_FILES, "prepared dataset")
    with exclusive_folder(out, "prepare"):
        clean_stale_temps(out)
        plan = plan_preparation(bids_dir, out, cfg)
        metas = prepare_runs(plan, progress)
        sel = select_voxels(plan, metas)
        staging = out / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        stage_samples(plan, sel, staging)
        film_info = stage_frames(plan, staging, progress)
        stage_maps(plan, sel, staging)
        inputs, record = _manifest(plan, sel, metas, film_info)
        publish(out, staging, cfg, inputs, record)
    logger.info("prepared %d samples x %d voxels (%d visual, %d excluded) from %d runs into %s", len(plan.samples),
                len(sel["keep"]), int(plan.visual.sum()), int(sel["bad"].sum()), len(plan.runs), out)
    return out


def plan_preparation(bids_dir: str | Path, out: Path, cfg: PrepareConfig) -> Plan:
    """Read and check every input before any heavy work: runs and events, every BOLD header (4D, one grid, TR,
    a stated space), the mask, every film (opens, decodes, long enough) and the split (no empty split)."""
    bids_dir = Path(bids_dir)
    runs = discover_runs(bids_dir, cfg.bold_pattern, cfg.subjects, cfg.films)
    films = sorted({r.film for r in runs})
    if cfg.heldout_film and cfg.heldout_film.lower() != "none" and cfg.heldout_film not in films:
        raise ValueError(f"--heldout-film {cfg.heldout_film!r} is not a film of this dataset ({', '.join(films)}); "
                         "name one of them, or pass --heldout-film none for no held-out film")
    film_paths = {f: find_film(cfg.films_dir, f) for f in films}  # a missing film fails before any work
    ref = load_header(runs[0].bold)
    shape = ref.get_data_shape()
    affine = bold_affine(ref, runs[0].bold, cfg.assume_mni)
    trs = {}
    for r in runs:
        h = load_header(r.bold)
        if len(h.get_data_shape()) != 4:
            raise NiftiError(f"{r.bold}: expected a 4D image (x, y, z, time), got shape {h.get_data_shape()}")
        check_same_grid(h.get_data_shape(), bold_affine(h, r.bold, cfg.assume_mni), f"BOLD {r.bold}", shape, affine,
                        f"BOLD {runs[0].bold}")
        trs[r.key] = _run_tr(r, h, cfg.tr_tolerance)
    tr_values = sorted(set(round(v, 6) for v in trs.values()))
    if max(tr_values) - min(tr_values) > cfg.tr_tolerance:
        raise NiftiError(f"runs have different TRs: {tr_values}")
    tr = float(np.median(list(trs.values())))
    if cfg.mask:
        visual = load_mask(cfg.mask, shape, affine, f"BOLD {runs[0].bold}")
    elif cfg.atlas:
        if not cfg.atlas_labels and cfg.visual_parcels == "names":
            raise ValueError("--atlas needs --atlas-labels (the parcel names pick the visual networks) or "
                             "--visual-parcels RANGES (e.g. kong2022)")
        visual = atlas_visual_mask(cfg.atlas, cfg.atlas_labels, shape, affine, cfg.visual_parcels)
    else:
        visual = fetch_schaefer_visual_mask(shape, affine, cfg.nilearn_data_dir, cfg.visual_parcels)
    # film lengths: the shortest film event of each film over its runs
    n_trs = {f: min(int(r.duration / tr + 1e-6) for r in runs if r.film == f) for f in films}
    for f, n in n_trs.items():
        if n < 5:
            raise ValueError(f"film {f}: only {n} TRs in its events; too short to use")
        check_video(film_paths[f], n * tr)
    samples = plan_split(films, n_trs, cfg)
    space_code = int(ref["sform_code"]) or int(ref["qform_code"]) or 4
    return Plan(bids_dir, out, cfg, runs, films, film_paths, tuple(shape), affine, space_code, tr, visual, n_trs,
                samples)


def plan_split(films: list[str], n_trs: dict[str, int], cfg: PrepareConfig) -> pd.DataFrame:
    """Every TR's split (train, val, test, gap), checked: no split may be empty, and gaps that take a large share
    of a film are reported. -> samples (sample, film, tr, split)."""
    rows = []
    for f in films:
        labels = split_film(n_trs[f], f == cfg.heldout_film, cfg.test_fraction, cfg.val_fraction, cfg.val_mode,
                            cfg.gap_trs, cfg.val_blocks)
        rows += [{"film": f, "tr": t, "split": labels[t]} for t in range(n_trs[f])]
    samples = pd.DataFrame(rows)
    samples.insert(0, "sample", np.arange(len(samples)))
    counts = samples.groupby(["film", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["train", "val", "gap", "test"], fill_value=0)
    table = "; ".join(f"{f}: " + ", ".join(f"{k} {int(v)}" for k, v in row.items()) for f, row in counts.iterrows())
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


def prepare_runs(plan: Plan, progress: bool = True) -> dict[str, dict]:
    """Stage 1: each run's shifted film segment of the mask voxels, z-scored, cached in ``OUT/cache/runs``
    (a run whose inputs and options did not change is not redone). Returns each run's statistics."""
    cfg, out = plan.cfg, plan.out
    flat_index = fortran_index(plan.visual)
    mask_key = config_hash({"ijk": np.argwhere(plan.visual).tolist(), "affine": plan.affine.tolist()})
    cache = out / "cache" / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    jobs, metas = [], {}
    for r in plan.runs:
        start, stop = _segment(r, plan.tr, plan.n_trs[r.film], cfg.delay_trs)
        key = config_hash({"bold": file_identity(r.bold), "events": file_identity(r.events), "mask": mask_key,
                           "start": start, "stop": stop, "detrend": cfg.detrend})
        meta_path = cache / f"{r.key}.json"
        if meta_path.is_file() and (cache / f"{r.key}.npz").is_file() and read_json(meta_path).get("key") == key:
            metas[r.key] = read_json(meta_path)
            continue
        jobs.append((r, flat_index, start, stop, cfg.detrend, cfg.max_bad_fraction, cache, key))
    if len(metas):
        logger.info("resuming: %d of %d runs already prepared", len(metas), len(plan.runs))
    bar = tqdm(total=len(jobs), desc="prepare runs", unit="run", disable=True if not jobs else bar_disabled(progress))
    if cfg.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=cfg.jobs, initializer=worker_dies_with_parent) as ex:
            for job, meta in zip(jobs, ex.map(_run_job, jobs)):
                metas[job[0].key] = meta
                bar.update(1)
    else:
        for job in jobs:
            metas[job[0].key] = _run_job(job)
            bar.update(1)
    bar.close()
    return metas


def select_voxels(plan: Plan, metas: dict[str, dict]) -> dict:
    """Stage 2: exclude voxels constant or non-finite in any run, rank the others by SNR, keep the top fraction.
    Returns ``keep`` (indices into the mask voxels, C order), ``bad`` and ``snr`` (over the mask voxels)."""
    cfg, cache = plan.cfg, plan.out / "cache" / "runs"
    n_mask = int(plan.visual.sum())
    bad = np.zeros(n_mask, bool)
    for r in plan.runs:
        with np.load(cache / f"{r.key}.npz") as z:
            bad |= z["bad"]
    if bad.all():
        raise ValueError("every mask voxel is constant or non-finite in some run: nothing left")
    snr_num, snr_w = np.zeros(n_mask), 0.0
    for f in plan.films:
        snr_f = _film_snr(plan.viewers(f), cache, cfg.snr, cfg.snr_ddof)
        if snr_f is not None:
            w = plan.n_trs[f] if cfg.snr_film_weight == "length" else 1.0
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
    """Stage 3: the subject-averaged voxels (n_samples, V), the per-subject test data and ``samples.csv``."""
    keep, samples, cache = sel["keep"], plan.samples.copy(), plan.out / "cache" / "runs"
    subjects = plan.subjects
    test_rows = samples.index[samples["split"] == "test"].to_numpy()
    vox = np.lib.format.open_memmap(staging / "voxels.npy", mode="w+", dtype=np.float32,
                                    shape=(len(samples), len(keep)))
    subj = np.lib.format.open_memmap(staging / "subjects_test.npy", mode="w+", dtype=np.float32,
                                     shape=(len(subjects), len(test_rows), len(keep)))
    subj[:] = np.nan
    test_pos = {s: i for i, s in enumerate(test_rows)}
    for f in plan.films:
        rows_f = samples.index[samples["film"] == f].to_numpy()
        is_test = samples.loc[rows_f, "split"].to_numpy() == "test"
        pos = [test_pos[s] for s in rows_f[is_test]]
        acc = np.zeros((len(rows_f), len(keep)), np.float64)
        viewers = plan.viewers(f)
        for r in viewers:
            with np.load(cache / f"{r.key}.npz") as z:
                zf = z["z"][:, keep]
            acc += zf
            subj[subjects.index(r.subject), pos] = zf[is_test]
        vox[rows_f] = (acc / len(viewers)).astype(np.float32)
    vox.flush()
    subj.flush()
    del vox, subj
    samples["frame_start"] = samples["tr"] * plan.cfg.frames_per_tr
    (staging / "samples.csv").write_text(samples.to_csv(index=False))


def stage_frames(plan: Plan, staging: Path, progress: bool = True) -> dict:
    """32 frames per TR of every film, cached in ``OUT/cache/frames`` (keyed on the video and the frame options)
    and staged as hard links (no copy)."""
    cfg = plan.cfg
    cache = plan.out / "cache" / "frames"
    cache.mkdir(parents=True, exist_ok=True)
    (staging / "frames").mkdir()
    info = {}
    for f in tqdm(plan.films, desc="prepare films", unit="film", disable=bar_disabled(progress)):
        path, n = plan.film_paths[f], plan.n_trs[f]
        key = config_hash({"video": file_identity(path), "n_trs": n, "tr": plan.tr, "fpt": cfg.frames_per_tr,
                           "size": cfg.frame_size, "resize": cfg.frame_resize, "sampling": cfg.frame_sampling})
        target, meta_path = cache / f"{f}.npy", cache / f"{f}.json"
        if not (target.is_file() and meta_path.is_file() and read_json(meta_path).get("key") == key):
            _film_frames(path, target, n, plan.tr, cfg)
            write_json(meta_path, {"key": key})
        try:
            os.link(target, staging / "frames" / f"{f}.npy")
        except OSError:  # a file system without hard links
            shutil.copy2(target, staging / "frames" / f"{f}.npy")
        info[f] = {"video": str(path), "n_trs": n, "n_frames": n * cfg.frames_per_tr, "frames_key": key}
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


def _manifest(plan: Plan, sel: dict, metas: dict, film_info: dict) -> tuple[dict, dict]:
    """What the manifest records besides the config: ``(inputs, the dataset's description)``."""
    cfg, samples, runs, films = plan.cfg, plan.samples, plan.runs, plan.films
    counts = {f: {s: int(((samples.film == f) & (samples.split == s)).sum()) for s in ("train", "val", "test", "gap")}
              for f in films}
    missing = {s: sorted(set(films) - {r.film for r in runs if r.subject == s}) for s in plan.subjects}
    nonfinite = {k: m["nonfinite_volumes"] for k, m in metas.items() if m.get("nonfinite_volumes")}
    sim = plan.bids_dir / "derivatives" / "simulation"
    inputs = {
        "bids_dir": str(plan.bids_dir),
        "runs": [{"key": r.key, "bold": file_identity(r.bold, cfg.hash_inputs), "events": file_identity(r.events),
                  "sidecar": str(r.sidecar) if r.sidecar else None, "onset": r.onset, "duration": r.duration}
                 for r in runs],
        "films": {f: file_identity(p, cfg.hash_inputs) for f, p in plan.film_paths.items()},
        "mask": {k: (file_identity(v, cfg.hash_inputs) if v else None)
                 for k, v in (("mask", cfg.mask), ("atlas", cfg.atlas), ("atlas_labels", cfg.atlas_labels))},
    }
    return inputs, {
        "tr": plan.tr, "grid": {"shape": list(plan.shape[:3]), "affine": plan.affine.tolist()},
        "subjects": plan.subjects, "films": film_info, "viewers": {f: [r.subject for r in plan.viewers(f)]
                                                                    for f in films},
        "missing_films": missing, "counts": counts, "n_samples": len(samples),
        "n_visual_voxels": int(plan.visual.sum()), "n_excluded_voxels": int(sel["bad"].sum()),
        "n_excluded_nonfinite_run_voxels": int(np.sum([m["n_nonfinite"] for m in metas.values()])),
        "nonfinite_volumes": nonfinite, "n_voxels": len(sel["keep"]), "snr_method": cfg.snr,
        "bids_simulation": str(sim) if (sim / "truth.json").is_file() else None,
    }


def _film_frames(video: Path, target: Path, n_trs: int, tr: float, cfg: PrepareConfig) -> None:
    """``n_trs * frames_per_tr`` frames of a film into ``target`` (uint8 (n, S, S, 3) .npy), atomically.

    ``timestamp``: the frame shown at ``(k + 0.5) TR / frames_per_tr``; ``linspace``: the authors' pick by frame
    count over the whole video."""
    n = n_trs * cfg.frames_per_tr
    with atomic_path(target) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, cfg.frame_size, cfg.frame_size, 3))
        if cfg.frame_sampling == "linspace":
            idx = linspace_indices(probe_video(video).n_frames, n)
            sample_frame_indices(video, idx, cfg.frame_size, cfg.frame_resize, out=arr)
        else:
            times = (np.arange(n) + 0.5) * tr / cfg.frames_per_tr
            sample_frames(video, times, cfg.frame_size, out=arr, resize=cfg.frame_resize)
        arr.flush()
        del arr


def _film_snr(runs: list[Run], cache: Path, method: str, ddof: int = 0) -> np.ndarray | None:
    """Per-voxel SNR of one film over its viewers (None with fewer than two). ``ddof`` of the paper's noise."""
    if len(runs) < 2:
        return None
    s1 = s2 = None
    means = []
    for r in runs:
        with np.load(cache / f"{r.key}.npz") as z:
            zz = z["z"].astype(np.float64)
            x = zz * z["raw_sd"] if method == "paper" else zz  # raw minus its mean (paper) or z-scores
            means.append(z["raw_mean"].astype(np.float64))
        s1 = x if s1 is None else s1 + x
        s2 = x**2 if s2 is None else s2 + x**2
    n = len(runs)
    if method == "paper":
        signal = (s1 / n).var(0)  # variance over time of the subject-mean
        noise = np.var(np.stack(means), axis=0, ddof=ddof)  # variance across subjects of the time-means
        return signal / np.maximum(noise, 1e-12)
    across = (s2 - s1**2 / n) / (n - 1)  # (n_trs, n_mask) across-subject variance
    sigma2 = across.mean(0)
    return np.sqrt(np.maximum(1.0 - sigma2, 0.0)) / np.sqrt(np.maximum(sigma2, 1e-12))
