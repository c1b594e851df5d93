"""Hand-made BIDS datasets for tests: tiny NIfTI with deliberately unequal sides, real video files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cinevox import outputs
from cinevox.data.prepare import PrepareConfig
from cinevox.data.video import write_video

SHAPE = (7, 8, 9)
#: ridge options for tiny datasets: few regularisation values, few iterations, 3 folds
FAST_RIDGE = dict(n_iter=3, alphas=tuple(float(a) for a in np.logspace(-1, 5, 7)), n_folds=3)
AFFINE = np.array([[-4.0, 0, 0, 12], [0, 4, 0, -100], [0, 0, 4, -10], [0, 0, 0, 1]])


def write_film(path: Path, n_frames: int, fps: float = 10.0, marker: int | None = None, size=(32, 24)) -> None:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    frames = rng.uniform(0.2, 0.5, (n_frames, size[1], size[0], 3)).astype(np.float32)
    if marker is not None:
        frames[marker] = 1.0  # an all-white frame
    write_video(path, [frames], fps, size[0], size[1])


def make_bids(root: Path, films: dict[str, int], subjects=("S01", "S02", "S03"), tr: float = 1.3,
              onset_trs: int = 3, tail_trs: int = 6, signal=None, noise: float = 1.0, seed: int = 0,
              film_fps: float = 10.0, markers: dict | None = None, sidecar_tr: float | None = None) -> Path:
    """A BIDS tree like ds004892 with 4D runs of SHAPE and films of ``n_trs`` TRs each.

    ``signal(film, n_run_trs) -> (n_run_trs, *SHAPE)`` adds a shared component to every subject.
    """
    rng = np.random.default_rng(seed)
    vis = np.zeros(SHAPE, np.uint8)
    vis[1:6, 2:7, 3:8] = 1
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vis, AFFINE), root / "mask.nii.gz")
    (root / "stimuli").mkdir(exist_ok=True)
    for film, n_trs in films.items():
        write_film(root / "stimuli" / f"{film}.mp4", int(np.ceil(n_trs * tr * film_fps)) + 2, film_fps,
                   (markers or {}).get(film))
        n_run = onset_trs + n_trs + tail_trs
        shared = signal(film, n_run) if signal else 0.0
        for j, sub in enumerate(subjects):
            func = root / f"sub-{sub}" / "ses-1" / "func"
            dfunc = root / "derivatives" / "preprocessing" / f"sub-{sub}" / "ses-1" / "func"
            func.mkdir(parents=True, exist_ok=True)
            dfunc.mkdir(parents=True, exist_ok=True)
            data = 100 + 5 * j + noise * rng.standard_normal((n_run, *SHAPE)) + shared
            img = nib.Nifti1Image(np.moveaxis(data, 0, -1).astype(np.float32), AFFINE)
            img.header.set_zooms((4.0, 4.0, 4.0, tr))
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, dfunc / f"sub-{sub}_ses-1_task-{film}_space-MNI_desc-ppres_bold.nii.gz")
            pd.DataFrame({"onset": [0.0, onset_trs * tr, (onset_trs + n_trs) * tr],
                          "duration": [onset_trs * tr, n_trs * tr, tail_trs * tr],
                          "trial_type": ["rest", "film", "rest"]}).to_csv(
                func / f"sub-{sub}_ses-1_task-scan_acq-{film}_events.tsv", sep="\t", index=False)
            (func / f"sub-{sub}_ses-1_task-{film}_bold.json").write_text(
                json.dumps({"RepetitionTime": sidecar_tr or tr, "TaskName": film}))
    return root


def republish(prepared: Path, *names: str) -> None:
    """After a test deliberately edits files of a prepared dataset, record them in its integrity record (as
    `cinevox prepare` would), so that readers accept the edited dataset."""
    from cinevox.utils.folders import integrity_record

    man = json.loads((prepared / "manifest.json").read_text())
    man["integrity"].update(integrity_record(prepared, list(names)))
    (prepared / "manifest.json").write_text(json.dumps(man))


def cfg_for(root: Path, **kw) -> PrepareConfig:
    """Prepare options for a :func:`make_bids` dataset: its mask, small frames, every voxel kept."""
    base = dict(films_dir=str(root / "stimuli"), mask=str(root / "mask.nii.gz"), frame_size=16, frames_per_tr=4,
                gap_trs=1, val_blocks=2, snr_top=1.0)
    base.update(kw)
    return PrepareConfig(**base)


def sim_config(sim: Path, **kw) -> PrepareConfig:
    """Prepare options for a ``cinevox simulate`` dataset: its films and atlas, 32 px frames, 4 per TR, short gaps
    and blocks for short films, half the visual voxels kept; ``kw`` overrides."""
    s = sim / "derivatives" / "simulation"
    base = dict(films_dir=str(sim / "stimuli"), atlas=str(s / "atlas.nii.gz"), atlas_labels=str(s / "atlas_labels.tsv"),
                frame_size=32, frames_per_tr=4, gap_trs=2, val_blocks=2, snr_top=0.5)
    base.update(kw)
    return PrepareConfig(**base)


def _header(path: Path) -> list[str]:
    first = path.read_text().splitlines()[0]
    return first.split("\t" if path.suffix == ".tsv" else ",")


def undescribed(root: Path, folder: str, step: str | None = None) -> list[str]:
    """Every file under ``root`` (a folder of kind ``folder``) or column of its tables that the table of outputs
    does not describe; subfolders eval/saliency/lesion/concepts of a run are checked as their own kinds."""
    bad = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name in outputs.IGNORED:
            continue
        rel = p.relative_to(root).as_posix()
        kind = folder
        if folder == "RUN_DIR" and rel.split("/")[0].split("_sub-")[0] in ("eval", "saliency", "lesion", "concepts"):
            kind, rel = f"RUN_DIR/{rel.split('/')[0]}", rel.split("/", 1)[1]
        entry = outputs.find(kind, rel, step)
        if entry is None:
            bad.append(f"{kind}/{rel}: not in the table")
            continue
        if p.suffix in (".csv", ".tsv"):
            if not entry.columns:
                bad.append(f"{kind}/{rel}: a table without column meanings")
            bad += [f"{kind}/{rel}: column {c!r} not described" for c in _header(p)
                    if entry.column_meaning(c) is None]
    return bad
