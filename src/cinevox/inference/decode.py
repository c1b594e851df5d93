"""``cinevox decode``: reconstruct what a scan was watching, one frame per TR, with a model's decoder.

The scan (one subject, several subjects, or an average; 4D NIfTI in the model's space) gets the model's own
preparation (recorded in the run's prepared dataset or the MODEL_DIR's config): its voxels in the model's order,
the confounds the model was prepared with regressed out of the whole scan (nilearn ``load_confounds`` with the
recorded parameters, from the scan's fMRIPrep confounds file beside it or ``--confounds-file``; refused when the
model needs confounds and none is given), volumes fMRIPrep marks non-steady-state (or scrubbed) left out, the
segment from ``onset + delay`` to the end of the film (``--n-trs``, else the events' duration, the video's length,
or the recorded length of ``--film``; later volumes are left out, logged), baseline removal (mean or linear, as
prepared) and z-scoring per voxel over that segment; several scans are each prepared and then averaged over the
film TRs they all have, as ``prepare`` does over subjects. A scan on another grid of the same
space is resampled (nilearn, continuous interpolation; logged); a scan whose NIfTI header states another space
(scanner or Talairach coordinates, or none) is refused.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cinevox.data.bids import read_film_events
from cinevox.data.dataset import middle_index
from cinevox.data.layout import BIDSError
from cinevox.data.masks import check_same_grid
from cinevox.data.nifti import fortran_index, load_header, read_volumes
from cinevox.data.prepare import load_run_confounds, non_steady_state, standardise_segment
from cinevox.data.timeline import n_trs_of
from cinevox.data.video import stream_frames, write_video
from cinevox.inference.bundle import ModelBundle, check_checkpoint_kind
from cinevox.metrics import minmax_frames, ssim_frames
from cinevox.utils.io import write_json, write_text_atomic
from cinevox.utils.timing import to_volume

logger = logging.getLogger(__name__)

#: NIfTI space codes that place a scan in template (MNI-aligned) space; 1 = scanner, 3 = Talairach, 0 = unknown
TEMPLATE_CODES = (2, 4, 5)


def _space_code(hdr) -> int:
    return int(hdr["sform_code"]) or int(hdr["qform_code"])


def confounds_beside(bold: str | Path) -> Path | None:
    """fMRIPrep's confounds file of a BOLD file, beside it (``*_desc-confounds_timeseries.tsv``, or the older
    ``_regressors.tsv``), or None."""
    bold = Path(bold)
    stem = re.split(r"_(?:space|res|den|desc|bold)[-._]", bold.name, maxsplit=1)[0]
    for suffix in ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv"):
        if (bold.parent / f"{stem}{suffix}").is_file():
            return bold.parent / f"{stem}{suffix}"
    return None


def _scan_confounds(confounds: Path, options: dict, n_vols: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's confound regressors from a confounds file wherever it lies: ``(regressors (n_vols, k), kept
    volumes)`` (nilearn finds a confounds file by the BOLD file's name: it is read through links named so)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "sub-decode_task-decode"
        os.symlink(Path(confounds).resolve(), f"{base}_desc-confounds_timeseries.tsv")
        side = Path(str(confounds).replace(".tsv", ".json"))
        if side.is_file():
            os.symlink(side.resolve(), f"{base}_desc-confounds_timeseries.json")
        else:
            Path(f"{base}_desc-confounds_timeseries.json").write_text("{}")
        bold = Path(f"{base}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
        try:
            conf, kept = load_run_confounds(bold, Path(confounds), options)
        except BIDSError as err:
            raise ValueError(str(err).replace(str(bold), name)) from None
    if len(conf) != n_vols:
        raise ValueError(f"{confounds}: {len(conf)} rows, the scan {name} has {n_vols} volumes")
    kept = np.arange(n_vols) if kept is None else kept
    if len(kept) < 2 * conf.shape[1]:
        raise ValueError(f"{name}: {len(kept)} volumes for the model's {conf.shape[1]} confound regressors: fewer "
                         "than 2 volumes per regressor")
    return conf.to_numpy(), kept


def scan_segment(b: ModelBundle, bold, onset: float, n_trs: int | None, tr_tolerance: float = 1e-3,
                 film_trs: int | None = None, confounds: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The prepared segment of one scan: ``(z float32 (n, V), film TRs (n,))``, z-scored per voxel (see the module
    text). ``n_trs`` asks for exactly that many TRs (refused when the scan is shorter); else the segment ends with
    the film (``film_trs`` TRs, or the scan's end when unknown); ``confounds`` is the scan's fMRIPrep confounds
    file (needed when the model was prepared with confounds; else it only marks non-steady-state volumes)."""
    p = b.preparation
    name = str(bold) if not isinstance(bold, nib.spatialimages.SpatialImage) else "the scan"
    img = bold if isinstance(bold, nib.spatialimages.SpatialImage) else None
    hdr = img.header if img is not None else load_header(bold)
    shape = hdr.get_data_shape()
    if len(shape) != 4:
        raise ValueError(f"{name}: expected a 4D image (x, y, z, time), got shape {shape}")
    code, want = _space_code(hdr), int(b.mask.header["sform_code"]) or 4
    if code not in TEMPLATE_CODES or (want in TEMPLATE_CODES) != (code in TEMPLATE_CODES):
        raise ValueError(f"{name}: its header places it in {_SPACES.get(code, f'space code {code}')}, not the model's "
                         f"template space (code {want}); give the scan preprocessed into the model's space (e.g. "
                         "fMRIPrep's space-MNI152NLin2009cAsym output)")
    zooms = hdr.get_zooms()
    tr = float(zooms[3]) / (1000.0 if hdr.get_xyzt_units()[1] == "msec" else 1.0) if len(zooms) > 3 else 0.0
    if tr > 0 and abs(tr - p.tr) > tr_tolerance:
        raise ValueError(f"{name}: TR {tr:.4g} s, the model's is {p.tr:.4g} s; decoding needs scans at the model's TR")
    if p.confounds and confounds is None:
        raise ValueError(f"{name}: the model was prepared with confounds {p.confounds} regressed out; give the "
                         "scan's fMRIPrep confounds file (beside it as *_desc-confounds_timeseries.tsv, or "
                         "--confounds-file)")
    start = to_volume(onset, p.tr) + p.delay_trs
    n_vols = shape[3]
    if n_trs is not None:
        stop = start + n_trs
    elif film_trs is not None:
        stop = min(start + film_trs, n_vols)
        if start + film_trs < n_vols:
            logger.info("%s: volumes %d to %d come after the film's end (%d TRs from volume %d): left out", name,
                        start + film_trs, n_vols - 1, film_trs, start)
        elif start < n_vols and start + film_trs > n_vols:
            logger.info("%s: the scan ends %d TRs before the film: %d TRs decoded", name,
                        start + film_trs - n_vols, n_vols - start)
    else:
        stop = n_vols
        logger.warning("%s: the film's length is unknown (give --n-trs, --events, --reference-video or --film): "
                       "decoding to the end of the scan, z-scored with whatever follows the film", name)
    if start >= n_vols or stop > n_vols:
        raise ValueError(f"{name}: {n_vols} volumes; the film from {onset:.2f} s with the {p.delay_trs}-TR delay "
                         f"needs volumes {start} to {stop - 1}")
    lo, hi = (0, n_vols) if p.confounds else (start, stop)
    affine = img.affine if img is not None else nib.load(bold).affine
    same = True
    try:
        check_same_grid(shape[:3], affine, name, b.mask.shape[:3], b.mask.affine, "the model's mask")
    except ValueError:
        same = False
    if same and img is None:
        x = read_volumes(bold, fortran_index(_order_mask(b)), lo, hi)[:, _c_to_model(b)]
    else:
        from nilearn.image import resample_to_img

        src = img if img is not None else nib.load(bold)
        if not same:
            logger.info("%s: on another grid (%s) than the model's (%s): resampled with nilearn", name,
                        "x".join(map(str, shape[:3])), "x".join(map(str, b.mask.shape[:3])))
            src = resample_to_img(src, b.mask, interpolation="continuous", force_resample=True, copy_header=True)
        data = np.asarray(src.dataobj, np.float32)
        x = data[b.ijk[:, 0], b.ijk[:, 1], b.ijk[:, 2], lo:hi].T
    x = x.astype(np.float64)
    nonfinite = ~np.isfinite(x).all(0)
    if nonfinite.all():
        raise ValueError(f"{name}: no finite values at the model's voxels")
    x = np.nan_to_num(x)
    keep = np.ones(n_vols, bool)
    if confounds is not None:
        for v in non_steady_state(Path(confounds)):
            keep[v] = False
    if p.confounds:
        from nilearn.signal import clean

        conf, kept = _scan_confounds(Path(confounds), p.confounds, n_vols, name)
        cleaned = np.zeros_like(x)
        cleaned[kept] = clean(np.where(nonfinite[None, :], 0.0, x), confounds=conf, sample_mask=kept, t_r=p.tr,
                              detrend=False, standardize=None)
        keep &= np.isin(np.arange(n_vols), kept)
        x = cleaned[start:stop]
    window = keep[start:stop]
    if not window.all():
        logger.info("%s: %d volume(s) of the film's %d left out (non-steady-state or scrubbed), as prepared", name,
                    int((~window).sum()), len(window))
    if not window.any():
        raise ValueError(f"{name}: every volume of the film's segment is non-steady-state or scrubbed")
    # the trend over volume times, as prepare fits it (rows around left-out volumes keep their true spacing)
    z, _, _, _ = standardise_segment(x[window], p.detrend, nonfinite, times=start + np.flatnonzero(window))
    return z, np.flatnonzero(window)


def _order_mask(b: ModelBundle) -> np.ndarray:
    m = np.zeros(b.mask.shape[:3], bool)
    m[tuple(b.ijk.T)] = True
    return m


def _c_to_model(b: ModelBundle) -> np.ndarray:
    """Columns of the C-ordered mask voxels (``read_volumes`` with :func:`fortran_index`) in the model's order."""
    m = _order_mask(b)
    rank = -np.ones(m.shape, np.int64)
    rank[m] = np.arange(int(m.sum()))  # C order
    return rank[tuple(b.ijk.T)]


_SPACES = {0: "no stated space (qform and sform codes 0)", 1: "scanner coordinates (code 1)",
           3: "Talairach space (code 3)"}


@torch.no_grad()
def reconstruct(b: ModelBundle, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Frames from prepared voxels: float32 (n, V) -> (n, 3, S, S) in [0, 1]."""
    check_checkpoint_kind(b, "decoder")
    dec, dev = b.decoder, b.device
    out = [dec(torch.as_tensor(x[i : i + batch_size], dtype=torch.float32, device=dev)).float().cpu().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 3, b.preparation.frame_size, b.preparation.frame_size),
                                                    np.float32)


def decode_scans(b: ModelBundle, bolds: list, onset: float | None = None, events: list | None = None,
                 n_trs: int | None = None, batch_size: int = 32, video: str | Path | None = None,
                 confounds: list | None = None, film: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """``(frames (n, 3, S, S), prepared voxels (n, V), onset)`` from one or more scans of the same film."""
    frames, x, on, _ = decode_window(b, bolds, onset, events, n_trs, batch_size, video, confounds, film)
    return frames, x, on


def _film_length(b: ModelBundle, video, film: str | None, n_trs: int | None) -> int | None:
    """TRs of the film from the video or a film the model knows (None when neither is given)."""
    n = None
    if video is not None:
        from cinevox.inference.predict import video_plan

        n = video_plan(b, video)[0]
        if n_trs is not None and n_trs > n:
            raise ValueError(f"--n-trs {n_trs}: the video {video} has only {n} TRs of {b.preparation.tr} s")
    if film is not None:
        known = b.preparation.film_trs
        if film not in known:
            raise ValueError(f"--film {film!r}: not a film of the model's training data "
                             f"({', '.join(sorted(known)) or 'none recorded'})")
        n = known[film] if n is None else min(n, known[film])
    return n


def decode_window(b: ModelBundle, bolds: list, onset: float | None = None, events: list | None = None,
                  n_trs: int | None = None, batch_size: int = 32, video: str | Path | None = None,
                  confounds: list | None = None, film: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """:func:`decode_scans` and the film TRs (n,) of the decoded rows (those every scan has)."""
    check_checkpoint_kind(b, "decoder")
    if not bolds:
        raise ValueError("no scan given")
    if (onset is None) == (not events):
        raise ValueError("give the film's place in the scan: --events EVENTS.tsv (its 'film' row) or --onset SECONDS")
    if events and len(events) not in (1, len(bolds)):
        raise ValueError(f"{len(events)} events files for {len(bolds)} scans: give one, or one per scan")
    if confounds and len(confounds) != len(bolds):
        raise ValueError(f"{len(confounds)} confounds files for {len(bolds)} scans: give one per scan")
    film_len = _film_length(b, video, film, n_trs)
    segs = []
    for k, bold in enumerate(bolds):
        on, n = onset, film_len
        if events:
            on, dur = read_film_events(Path(events[k if len(events) > 1 else 0]))
            n_ev = n_trs_of(dur, b.preparation.tr)
            n = n_ev if n is None else min(n, n_ev)
        conf = Path(confounds[k]) if confounds else (confounds_beside(bold) if not isinstance(
            bold, nib.spatialimages.SpatialImage) else None)
        segs.append(scan_segment(b, bold, float(on), n_trs, film_trs=n, confounds=conf))
    common = segs[0][1]
    for _, t in segs[1:]:
        common = np.intersect1d(common, t)
    if len(common) == 0:
        raise ValueError("the scans have no film TR in common")
    x = np.mean([z[np.searchsorted(t, common)] for z, t in segs], axis=0).astype(np.float32)
    return reconstruct(b, x, batch_size), x, float(onset if onset is not None else on), common


def true_frames(b: ModelBundle, video: str | Path, n: int | np.ndarray) -> np.ndarray:
    """The middle frame of each clip of the film, as the model saw it (the first ``n`` clips, or the clips of the
    film TRs ``n``): (n, 3, S, S) in [0, 1]."""
    p = b.preparation
    trs = np.arange(n) if np.ndim(n) == 0 else np.asarray(n)
    times = (trs * p.frames_per_tr + middle_index(p.frames_per_tr) + 0.5) * p.tr / p.frames_per_tr
    frames = np.concatenate(list(stream_frames(video, times, p.frame_size, resize=p.frame_resize)))
    f = torch.from_numpy(frames).float().div_(255.0).permute(0, 3, 1, 2).contiguous()
    return (minmax_frames(f) if p.frame_intensity == "minmax" else f).numpy()


def _strip(frames: np.ndarray, true: np.ndarray | None, path: Path, tr: float, n_show: int = 12) -> None:
    from cinevox.utils.plotting import pyplot

    idx = np.unique(np.linspace(0, len(frames) - 1, min(n_show, len(frames))).round().astype(int))
    rows = 2 if true is not None else 1
    plt = pyplot()
    fig, axes = plt.subplots(rows, len(idx), figsize=(1.2 * len(idx), 1.3 * rows + 0.3), squeeze=False)
    for j, i in enumerate(idx):
        for r, (src, label) in enumerate(((true, "film"), (frames, "decoded")) if true is not None else
                                         ((frames, "decoded"),)):
            ax = axes[r, j]
            ax.imshow(np.clip(src[i].transpose(1, 2, 0), 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
            if r == 0:
                ax.set_title(f"TR {i} ({i * tr:.0f} s)", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def decode(source, bolds: list, out: str | Path, onset: float | None = None, events: list | None = None,
           video: str | Path | None = None, n_trs: int | None = None, batch_size: int = 32, device: str | None = None,
           checkpoint: str = "last", trust_checkpoint: bool = False, confounds: list | None = None,
           film: str | None = None, subject: str | None = None) -> dict:
    """Decode scans into ``out``: ``decoded.mp4``, ``decoded.png``, ``decoded.tsv``, ``decoded.json``; with
    ``video`` the film's frames beside the decoded ones and the SSIM of each TR. ``confounds``: the scans' fMRIPrep
    confounds files (default: beside each scan); ``film``: a film of the training data, for its length;
    ``subject``: the scans' viewer, decoded through its input layer (a ``--target subjects`` decoder; default: the
    average viewer's)."""
    from cinevox.inference.bundle import load_bundle, select_viewer
    from cinevox.utils.folders import exclusive_folder

    b = source if isinstance(source, ModelBundle) else load_bundle(source, device, checkpoint, trust_checkpoint)
    check_checkpoint_kind(b, "decoder")
    b = select_viewer(b, subject)
    frames, _, on, film_trs = decode_window(b, bolds, onset, events, n_trs, batch_size, video, confounds, film)
    p, out = b.preparation, Path(out)
    table = pd.DataFrame({"tr": film_trs, "film_time_s": film_trs * p.tr,
                          "scan_volume": to_volume(on, p.tr) + p.delay_trs + film_trs})
    true = None
    if video is not None:
        true = true_frames(b, video, film_trs)
        table["ssim"] = ssim_frames(frames, true)
    with exclusive_folder(out, "decode"):
        shown = frames if true is None else np.concatenate([true, frames], axis=3)  # film | decoded
        write_video(out / "decoded.mp4", [shown.transpose(0, 2, 3, 1)], 1.0 / p.tr, shown.shape[3], shown.shape[2])
        _strip(frames, true, out / "decoded.png", p.tr)
        write_text_atomic(out / "decoded.tsv", table.to_csv(sep="\t", index=False, float_format="%.6g"))
        summary = {"model": str(b.source), "kind": b.kind, "checksum": b.checksum, "scans": [str(x) for x in bolds],
                   "onset": on, "n_trs": len(frames), "tr": p.tr, "delay_trs": p.delay_trs,
                   "preparation": f"{_confound_words(p)}baseline removal ({p.detrend}) and z-score per voxel per "
                                  "scan over the film's segment, then the mean over scans",
                   "confounds": p.confounds, "confounds_files": [str(c) for c in confounds] if confounds else None,
                   "video": None if video is None else str(video), "head": b.info.get("head", "average")}
        if true is not None:
            summary["ssim_mean"] = float(table["ssim"].mean())
        write_json(out / "decoded.json", summary)
    logger.info("decoded %d TRs from %d scan(s) -> %s%s", len(frames), len(bolds), out / "decoded.mp4",
                f" (SSIM with the film {summary['ssim_mean']:.3f})" if true is not None else "")
    return summary


def _confound_words(p) -> str:
    return f"confounds {p.confounds} regressed out of the whole scan, " if p.confounds else ""
