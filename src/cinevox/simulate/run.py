"""Write a simulated dataset laid out like OpenNeuro ds004892 (Emo-FilM), streaming one run at a time."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cinevox.data.atlas import base_name
from cinevox.data.nifti import NiftiStreamWriter, save_nifti
from cinevox.data.video import VIDEO_EXTENSIONS, iter_frames, probe_video, write_video
from cinevox.metrics import pearson_columns
from cinevox.outputs import write_dataset_description, write_sidecars
from cinevox.simulate.atlas import SimSpace, real_space, synthetic_space
from cinevox.simulate.brain import (
    BASELINE,
    DATA_SCALE,
    FAMILY_PRF,
    FAMILY_WEIGHTS,
    NeuralAccumulator,
    SubjectNoise,
    Tuning,
    analytic_ceiling,
    group_signal,
    make_tuning,
    mix_latent,
    viewer_deviation,
)
from cinevox.simulate.config import SimConfig, subject_ids
from cinevox.simulate.films import CHANNELS, FilmRenderer, frame_features
from cinevox.utils.io import save_npy_atomic, write_json, write_text_atomic
from cinevox.utils.log import bar_disabled
from cinevox.utils.timing import to_volume

logger = logging.getLogger(__name__)
DELAY_TRS = 4  # the paper's shift; the truth's film segment is defined with it
FILMS_PER_SESSION = 4


def _tsv(path: Path, df: pd.DataFrame) -> None:
    write_text_atomic(path, df.to_csv(sep="\t", index=False, float_format="%.6g", na_rep="n/a"))


def _film_list(cfg: SimConfig) -> dict[str, dict]:
    """name -> {duration, source}."""
    if cfg.films_dir is None:
        out = {}
        for name, dur in cfg.films.items():
            d = cfg.film_trs(dur) * cfg.tr if cfg.max_trs else float(dur)
            out[name] = {"duration": round(d, 4), "source": None}
        return out
    films_dir = Path(cfg.films_dir)
    out = {}
    for p in sorted(films_dir.iterdir()) if films_dir.is_dir() else []:
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            if not p.stem.isalnum():
                raise ValueError(f"{p}: film names must be alphanumeric (they become BIDS labels)")
            info = probe_video(p)
            d = min(info.duration, cfg.max_trs * cfg.tr) if cfg.max_trs else info.duration
            out[p.stem] = {"duration": round(d, 4), "source": str(p)}
    if not out:
        raise ValueError(f"--films {films_dir}: no video files found")
    return out


def plant_nulls(tuning, cfg: SimConfig) -> np.ndarray:
    """Mark ``null_fraction`` of the visual voxels (drawn from their own seed, so that the other voxels' brains do
    not change) as true nulls: their shared signal is wholly non-visual (the latent processes: still reliable
    across subjects and autocorrelated), and they are not informative. Returns the (V,) null mask."""
    null = np.random.default_rng([cfg.seed, 7]).random(len(tuning.visual_share)) < cfg.null_fraction
    tuning.visual_share[null] = 0.0
    tuning.informative[null] = False
    return null


def _seen_matrix(cfg: SimConfig, n_films: int) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 3])
    seen = rng.random((cfg.n_subjects, n_films)) >= cfg.p_missing
    seen[:2] = True  # every film has at least two viewers
    return seen


def simulate(out: str | Path, cfg: SimConfig, progress: bool = True) -> Path:
    """Write the dataset to ``out``; returns ``out``. Same config and seed, same bytes."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_subjects = subject_ids(cfg.n_subjects)
    chosen = cfg.subjects or all_subjects
    chosen = [s if s.startswith("S") else f"S{int(s):02d}" for s in chosen]
    unknown = sorted(set(chosen) - set(all_subjects))
    if unknown:
        raise ValueError(f"--subjects {unknown} not among the {cfg.n_subjects} simulated subjects")
    films = _film_list(cfg)
    space = (real_space(cfg.atlas, cfg.atlas_labels, cfg.regions_atlas, cfg.regions_labels) if cfg.atlas
             else synthetic_space(cfg.voxel_size, cfg.region_scale))
    tuning = make_tuning(space, cfg, np.random.default_rng([cfg.seed, 1]))
    null = plant_nulls(tuning, cfg)
    gains = np.clip(1 + cfg.subject_gain_sd * np.random.default_rng([cfg.seed, 2]).standard_normal(cfg.n_subjects),
                    0.5, 1.5)
    names = list(films)
    seen = _seen_matrix(cfg, len(names))
    F = cfg.subject_variability
    viewer_weights = ({s: tuning.weights + np.float32(F) * viewer_deviation(space, tuning, cfg, all_subjects.index(s))
                       for s in chosen} if F > 0 else {})
    order_rng = np.random.default_rng([cfg.seed, 4])
    sessions = {s: {names[f]: k // FILMS_PER_SESSION + 1 for k, f in enumerate(order_rng.permutation(len(names)))}
                for s in all_subjects}
    anat_rng = np.random.default_rng([cfg.seed, 5])
    brain_flat = np.flatnonzero(space.brain)  # C order
    baseline = (BASELINE * (1 + 0.05 * anat_rng.standard_normal(len(brain_flat)))).astype(np.float32)
    offsets = anat_rng.normal(0, 20, cfg.n_subjects).astype(np.float32)
    vis_in_brain = np.searchsorted(brain_flat, np.flatnonzero(space.visual))
    logger.info("simulating %d subjects x %d films on a %s grid (%d brain, %d visual voxels)",
                len(chosen), len(names), "x".join(map(str, space.shape)), len(brain_flat), len(vis_in_brain))

    _write_layout(out, cfg, chosen, names, sessions, seen, all_subjects)
    sim_dir = out / "derivatives" / "simulation"
    ceilings, explainable, film_meta = {}, {}, {}
    runs = [(s, f) for f in names for s in chosen if seen[all_subjects.index(s), names.index(f)]]
    bar = tqdm(total=len(runs), desc="simulate runs", unit="run", disable=bar_disabled(progress))
    for fi, film in enumerate(names):
        dur = films[film]["duration"]
        n_trs = cfg.film_trs(dur)
        neural, acc = _render_film(out, cfg, film, films[film], tuning, fi)
        onset = cfg.washout + cfg.onset_extra
        n_run = int(np.ceil((onset + dur + 1.0 + cfg.washout) / cfg.tr))
        on_tr = to_volume(onset, cfg.tr)
        seg = slice(on_tr + DELAY_TRS, on_tr + DELAY_TRS + n_trs)
        stim = group_signal(neural, cfg.tr, onset, n_run, seg)  # (n_run, V) stimulus-driven
        s = mix_latent(stim, tuning.visual_share, np.random.default_rng([cfg.seed, 20, fi]), cfg.n_latent, cfg.tr,
                       seg).astype(np.float32)
        save_npy_atomic(sim_dir / "signal" / f"{film}.npy", s[seg])
        stim[:, null] = 0.0  # true nulls: no stimulus-driven response at all
        save_npy_atomic(sim_dir / "stimulus_signal" / f"{film}.npy", stim[seg].astype(np.float32))
        viewers = [s_ for s_ in chosen if seen[all_subjects.index(s_), fi]]
        ceilings[film] = analytic_ceiling(tuning.amplitude, gains[[all_subjects.index(v) for v in viewers]],
                                          cfg.drift_sd)
        # the best any function of the film can do: corr(stimulus-driven part, shared) x corr(shared, average)
        explainable[film] = ceilings[film] * np.clip(np.nan_to_num(pearson_columns(stim[seg], s[seg])), 0, 1)
        film_meta[film] = {"duration": dur, "n_trs": n_trs, "onset": onset, "run_trs": n_run,
                           "film_segment_trs": [seg.start, seg.stop], "viewers": viewers,
                           "source": films[film]["source"], "render_index": fi}
        for subj in viewers:
            j = all_subjects.index(subj)
            ses = sessions[subj][film]
            s_subj = s
            if F > 0:  # the viewer's own tuning; the same latent processes (same seed) as the group's
                stim_j = group_signal(acc.neural(viewer_weights[subj]), cfg.tr, onset, n_run, seg)
                stim_j[:, null] = 0.0
                s_subj = mix_latent(stim_j, tuning.visual_share, np.random.default_rng([cfg.seed, 20, fi]),
                                    cfg.n_latent, cfg.tr, seg).astype(np.float32)
                save_npy_atomic(sim_dir / f"signal_sub-{subj}" / f"{film}.npy", s_subj[seg])
            _write_run(out, cfg, space, subj, ses, film, s_subj, n_run, gains[j], tuning.amplitude,
                       baseline + offsets[j], brain_flat, vis_in_brain, np.random.default_rng([cfg.seed, 100, j, fi]))
            _write_events(out, cfg, subj, ses, film, onset, dur)
            bar.update(1)
    bar.close()
    _write_truth(sim_dir, cfg, space, tuning, gains, all_subjects, chosen, ceilings, film_meta, explainable)
    for subj, w in viewer_weights.items():
        np.savez(sim_dir / f"tuning_sub-{subj}.npz", **_tuning_arrays(tuning, w))
    save_nifti(sim_dir / "null_voxels.nii.gz", _visual_volume(space, null, np.uint8), space.affine)
    # sources relative to the derivative (the raw dataset two levels up): same seed, same bytes, wherever written
    write_sidecars(sim_dir, "BIDS_DIR", sources=["../.."], space="MNI", prefix="derivatives/simulation/")
    write_dataset_description(sim_dir, "cinevox simulation ground truth", "simulate", ["../.."])
    logger.info("simulated dataset written to %s", out)
    return out


def _write_layout(out, cfg, chosen, names, sessions, seen, all_subjects) -> None:
    write_json(out / "dataset_description.json", {
        "Name": "cinevox simulated Emo-FilM", "BIDSVersion": "1.7.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "cinevox simulate", "Description": "synthetic data with known ground truth"}],
    })
    rng = np.random.default_rng([cfg.seed, 6])
    _tsv(out / "participants.tsv", pd.DataFrame({
        "participant_id": [f"sub-{s}" for s in chosen],
        "age": rng.integers(20, 40, len(chosen)), "sex": rng.choice(["F", "M"], len(chosen)),
    }))
    for s in chosen:
        j = all_subjects.index(s)
        ses_ids = sorted({sessions[s][f] for i, f in enumerate(names) if seen[j, i]})
        _tsv(out / f"sub-{s}" / f"sub-{s}_sessions.tsv",
             pd.DataFrame({"session_id": [f"ses-{k}" for k in ses_ids]}))
    (out / "derivatives" / "simulation" / "signal").mkdir(parents=True, exist_ok=True)
    (out / "stimuli").mkdir(exist_ok=True)


def film_blocks(cfg: SimConfig, meta: dict, fi: int):
    """The frames of one film of a simulation, block by block: rendered (the film's renderer is seeded with
    ``(seed, 10, fi)``, ``fi`` its position in the config) or read from ``meta["source"]``.

    Returns ``(fps, aspect, n_frames, blocks)``; ``blocks`` yields ``(start, frames (n, H, W, 3) float32 in [0, 1],
    object masks (n, H, W) or None, face masks or None)``."""
    dur = meta["duration"]
    if meta["source"] is None:
        renderer = FilmRenderer(np.random.default_rng([cfg.seed, 10, fi]), cfg.film_width, cfg.film_height,
                                cfg.fps, dur)
        block = max(1, int(round(cfg.fps * cfg.tr)))

        def rendered():
            for start in range(0, renderer.n_frames, block):
                yield (start, *renderer.render(start, min(block, renderer.n_frames - start)))

        return cfg.fps, cfg.film_width / cfg.film_height, renderer.n_frames, rendered()
    src = Path(meta["source"])
    info = probe_video(src)
    n_frames = int(round(dur * info.fps))

    def read():
        k = 0
        for _times, frames in iter_frames(src, cfg.film_width, cfg.film_height):
            frames = frames[: max(0, n_frames - k)]
            if not len(frames):
                break
            yield k, frames, None, None
            k += len(frames)

    return info.fps, info.width / info.height, n_frames, read()


def _render_film(out: Path, cfg: SimConfig, film: str, meta: dict, tuning: Tuning, fi: int):
    """Write ``stimuli/<film>.mp4`` (or link the user's file) and return its neural drive (n_bins, V) with the
    accumulator (whose ``neural(weights)`` gives a viewer's drive)."""
    fps, aspect, n_frames, blocks = film_blocks(cfg, meta, fi)
    acc = NeuralAccumulator(tuning, cfg.feature_grid, aspect, fps, cfg.tr, n_frames)
    state = {"prev": None}
    areas: list[np.ndarray] = []

    def features():
        for start, frames, objm, facem in blocks:
            feats, state["prev"] = frame_features(frames, state["prev"], objm, facem, cfg.feature_grid)
            acc.add(start, feats)
            if objm is not None:
                areas.append(np.stack([objm.mean(axis=(1, 2)), facem.mean(axis=(1, 2))], 1))
            yield frames

    if meta["source"] is None:
        write_video(out / "stimuli" / f"{film}.mp4", features(), fps, cfg.film_width, cfg.film_height)
        a = np.concatenate(areas)
        _tsv(out / "derivatives" / "simulation" / "annotations" / f"{film}.tsv",
             pd.DataFrame({"frame": np.arange(len(a)), "onset": np.arange(len(a)) / fps,
                           "objects": a[:, 0].round(5), "faces": a[:, 1].round(5)}))
        return acc.neural(), acc
    src = Path(meta["source"])
    dst = out / "stimuli" / src.name
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    for _ in features():
        pass
    return acc.neural(), acc


def _write_run(out, cfg, space: SimSpace, subj, ses, film, signal, n_run, gain, amplitude, baseline, brain_flat,
               vis_in_brain, rng) -> None:
    func = f"sub-{subj}/ses-{ses}/func"
    stem = f"sub-{subj}_ses-{ses}_task-{film}"
    path = out / "derivatives" / "preprocessing" / func / f"{stem}_space-MNI_desc-ppres_bold.nii.gz"
    noise = SubjectNoise(rng, len(brain_flat), cfg.ar_coef, cfg.drift_sd, cfg.tr)
    amp = (gain * amplitude).astype(np.float32)
    block = 16
    with NiftiStreamWriter(path, space.shape, n_run, space.affine, cfg.tr, cfg.compresslevel) as w:
        for k0 in range(0, n_run, block):
            n = min(block, n_run - k0)
            vols = np.zeros((n, int(np.prod(space.shape))), np.float32)
            for i in range(n):
                v = noise.next()
                v[vis_in_brain] += amp * signal[k0 + i]
                vols[i, brain_flat] = baseline + DATA_SCALE * v
            w.write(vols.reshape(n, *space.shape))
    write_json(path.with_name(f"{stem}_space-MNI_desc-ppres_bold.json"), {
        "SkullStripped": "true", "RepetitionTime": cfg.tr,
        "description": "cinevox simulation: signal x subject gain + AR(1) noise + drift + baseline, MNI space",
    })
    write_json(out / func / f"{stem}_bold.json", {"RepetitionTime": cfg.tr, "TaskName": film})


def _write_events(out, cfg, subj, ses, film, onset, dur) -> None:
    func = out / f"sub-{subj}" / f"ses-{ses}" / "func"
    stem = f"sub-{subj}_ses-{ses}_task-scan_acq-{film}_events"
    pre = max(onset - cfg.washout - 1.0, 0.0)
    _tsv(func / f"{stem}.tsv", pd.DataFrame({
        "onset": [pre, onset, onset + dur + 1.0],
        "duration": [min(cfg.washout, onset - pre), dur, cfg.washout],
        "trial_type": ["rest", "film", "rest"],
    }))
    write_json(func / f"{stem}.json",
               {"trial_type": {"Name": film, "Description": "Film with washout before and after"}})


def _visual_volume(space, values, dtype=np.float32) -> np.ndarray:
    a = np.zeros(space.shape, dtype)
    a[space.visual] = values
    return a


def _tuning_arrays(tuning: Tuning, weights: np.ndarray) -> dict:
    """The arrays of ``tuning.npz`` (and of a viewer's ``tuning_sub-<S>.npz``, with that viewer's ``weights``)."""
    return dict(weights=weights, prf=tuning.prf, amplitude=tuning.amplitude, label=tuning.label.astype(str),
                family=tuning.family.astype(str), informative=tuning.informative, visual_share=tuning.visual_share,
                channels=np.array(CHANNELS))


def _write_truth(sim_dir: Path, cfg, space: SimSpace, tuning: Tuning, gains, all_subjects, chosen, ceilings,
                 film_meta, explainable) -> None:
    vis = space.visual

    def vol(values, dtype=np.float32):
        a = np.zeros(space.shape, dtype)
        a[vis] = values
        return a

    weights = np.array([film_meta[f]["n_trs"] for f in ceilings], float)
    ceiling = np.average(np.stack(list(ceilings.values())), axis=0, weights=weights)
    save_nifti(sim_dir / "noise_ceiling.nii.gz", vol(ceiling), space.affine)
    explainable_ceiling = np.average(np.stack([explainable[f] for f in ceilings]), axis=0, weights=weights)
    save_nifti(sim_dir / "explainable_ceiling.nii.gz", vol(explainable_ceiling), space.affine)
    save_nifti(sim_dir / "informative.nii.gz", vol(tuning.informative, np.uint8), space.affine)
    save_nifti(sim_dir / "snr.nii.gz", vol(tuning.amplitude**2), space.affine)
    save_nifti(sim_dir / "visual_mask.nii.gz", vis.astype(np.uint8), space.affine)
    save_nifti(sim_dir / "atlas.nii.gz", space.parcels.astype(np.int16), space.affine)
    _tsv(sim_dir / "atlas_labels.tsv",
         pd.DataFrame({"index": list(space.parcel_names), "name": list(space.parcel_names.values())}))
    save_nifti(sim_dir / "regions.nii.gz", space.region.astype(np.int16), space.affine)
    _tsv(sim_dir / "regions.tsv", pd.DataFrame({
        "index": sorted(space.region_names),
        "label": [f"{space.region_names[i]}_{i}" for i in sorted(space.region_names)],
    }))
    np.savez(sim_dir / "tuning.npz", **_tuning_arrays(tuning, tuning.weights))
    regions = {}
    for lb in sorted(set(tuning.label)):
        sel = tuning.label == lb
        regions[lb] = {"n_voxels": int(sel.sum()), "family": str(tuning.family[sel][0]),
                       "informative": bool(tuning.informative[sel][0]),
                       "mean_weights": dict(zip(CHANNELS, tuning.weights[sel].mean(0).round(4).tolist())),
                       "mean_prf_sd": round(float(tuning.prf[sel, 2].mean()), 4),
                       "mean_ceiling": round(float(ceiling[sel].mean()), 4)}
    write_json(sim_dir / "truth.json", {
        "config": _config_record(cfg), "seed": cfg.seed, "delay_trs": DELAY_TRS, "channels": CHANNELS,
        "family_weights": FAMILY_WEIGHTS, "family_prf_sd": FAMILY_PRF,
        "informative_regions": cfg.informative_regions,
        "informative_labels": sorted({str(lb) for lb in tuning.label[tuning.informative]}),
        "region_bases": sorted({base_name(str(lb)) for lb in tuning.label}),
        "subjects": {s: {"gain": float(gains[all_subjects.index(s)])} for s in chosen},
        "films": film_meta, "mean_ceiling": {f: float(c.mean()) for f, c in ceilings.items()},
        "mean_explainable_ceiling": {f: float(c.mean()) for f, c in explainable.items()},
        "grid": {"shape": list(space.shape), "affine": space.affine.tolist()},
        "n_visual_voxels": int(vis.sum()), "regions": regions,
        "model": "y = baseline + scale * (gain * a * s + AR(1) noise + drift); ceiling = corr(s, z-scored average); "
                 "explainable ceiling = corr(stimulus-driven part of s, z-scored average) = ceiling x corr(stim, s)",
    })


def _config_record(cfg: SimConfig) -> dict:
    """``truth.json``'s config: without ``subject_variability`` when it is 0 (the bytes of simulations made before
    it existed stay the same)."""
    rec = asdict(cfg)
    if not rec.get("subject_variability"):
        rec.pop("subject_variability", None)
    return rec
