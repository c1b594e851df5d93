"""``cinevox decode``: reconstruct what a scan was watching, one frame per TR, with a model's decoder.

The scan (one subject, several subjects, or an average; 4D NIfTI in the model's space) gets the model's own
preparation: its voxels in the model's order, the segment from ``onset + delay`` (the film onset from an events
file's ``film`` row or ``--onset``), baseline removal (mean or linear, as prepared) and z-scoring per voxel; several
scans are each prepared and then averaged, as ``prepare`` does over subjects. A scan on another grid of the same
space is resampled (nilearn, continuous interpolation; logged); a scan whose NIfTI header states another space
(scanner or Talairach coordinates, or none) is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cinevox.data.bids import read_film_events
from cinevox.data.dataset import middle_index
from cinevox.data.masks import check_same_grid
from cinevox.data.nifti import fortran_index, load_header, read_volumes
from cinevox.data.prepare import standardise_segment
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


def scan_segment(b: ModelBundle, bold, onset: float, n_trs: int | None, tr_tolerance: float = 1e-3
                 ) -> np.ndarray:
    """The prepared segment of one scan: float32 (n_trs, V), z-scored per voxel (see the module text)."""
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
    start = to_volume(onset, p.tr) + p.delay_trs
    n_vols = shape[3]
    stop = n_vols if n_trs is None else start + n_trs
    if start >= n_vols or stop > n_vols:
        raise ValueError(f"{name}: {n_vols} volumes; the film from {onset:.2f} s with the {p.delay_trs}-TR delay "
                         f"needs volumes {start} to {stop - 1}")
    affine = img.affine if img is not None else nib.load(bold).affine
    same = True
    try:
        check_same_grid(shape[:3], affine, name, b.mask.shape[:3], b.mask.affine, "the model's mask")
    except ValueError:
        same = False
    if same and img is None:
        x = read_volumes(bold, fortran_index(_order_mask(b)), start, stop)[:, _c_to_model(b)]
    else:
        from nilearn.image import resample_to_img

        src = img if img is not None else nib.load(bold)
        if not same:
            logger.info("%s: on another grid (%s) than the model's (%s): resampled with nilearn", name,
                        "x".join(map(str, shape[:3])), "x".join(map(str, b.mask.shape[:3])))
            src = resample_to_img(src, b.mask, interpolation="continuous", force_resample=True, copy_header=True)
        data = np.asarray(src.dataobj, np.float32)
        x = data[b.ijk[:, 0], b.ijk[:, 1], b.ijk[:, 2], start:stop].T
    x = x.astype(np.float64)
    nonfinite = ~np.isfinite(x).all(0)
    if nonfinite.all():
        raise ValueError(f"{name}: no finite values at the model's voxels")
    z, _, _, _ = standardise_segment(np.nan_to_num(x), p.detrend, nonfinite)
    return z


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
                 n_trs: int | None = None, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, float]:
    """``(frames (n, 3, S, S), prepared voxels (n, V), onset)`` from one or more scans of the same film."""
    check_checkpoint_kind(b, "decoder")
    if not bolds:
        raise ValueError("no scan given")
    if (onset is None) == (not events):
        raise ValueError("give the film's place in the scan: --events EVENTS.tsv (its 'film' row) or --onset SECONDS")
    if events and len(events) not in (1, len(bolds)):
        raise ValueError(f"{len(events)} events files for {len(bolds)} scans: give one, or one per scan")
    segs = []
    for k, bold in enumerate(bolds):
        on, n = onset, n_trs
        if events:
            on, dur = read_film_events(Path(events[k if len(events) > 1 else 0]))
            n = n if n is not None else int(dur / b.preparation.tr + 1e-6)
        segs.append(scan_segment(b, bold, float(on), n))
    n = min(len(s) for s in segs)
    x = np.mean([s[:n] for s in segs], axis=0).astype(np.float32)
    return reconstruct(b, x, batch_size), x, float(onset if onset is not None else on)


def true_frames(b: ModelBundle, video: str | Path, n: int) -> np.ndarray:
    """The middle frame of each of the first ``n`` clips of the film, as the model saw it: (n, 3, S, S) in [0, 1]."""
    p = b.preparation
    times = (np.arange(n) * p.frames_per_tr + middle_index(p.frames_per_tr) + 0.5) * p.tr / p.frames_per_tr
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
           checkpoint: str = "last", trust_checkpoint: bool = False) -> dict:
    """Decode scans into ``out``: ``decoded.mp4``, ``decoded.png``, ``decoded.tsv``, ``decoded.json``; with
    ``video`` the film's frames beside the decoded ones and the SSIM of each TR."""
    from cinevox.inference.bundle import load_bundle
    from cinevox.utils.folders import exclusive_folder

    b = load_bundle(source, device, checkpoint, trust_checkpoint)
    check_checkpoint_kind(b, "decoder")
    frames, _, on = decode_scans(b, bolds, onset, events, n_trs, batch_size)
    p, out = b.preparation, Path(out)
    table = pd.DataFrame({"tr": np.arange(len(frames)), "film_time_s": np.arange(len(frames)) * p.tr,
                          "scan_volume": to_volume(on, p.tr) + p.delay_trs + np.arange(len(frames))})
    true = None
    if video is not None:
        true = true_frames(b, video, len(frames))
        table["ssim"] = ssim_frames(frames, true)
    with exclusive_folder(out, "decode"):
        shown = frames if true is None else np.concatenate([true, frames], axis=3)  # film | decoded
        write_video(out / "decoded.mp4", [shown.transpose(0, 2, 3, 1)], 1.0 / p.tr, shown.shape[3], shown.shape[2])
        _strip(frames, true, out / "decoded.png", p.tr)
        write_text_atomic(out / "decoded.tsv", table.to_csv(sep="\t", index=False, float_format="%.6g"))
        summary = {"model": str(b.source), "kind": b.kind, "checksum": b.checksum, "scans": [str(x) for x in bolds],
                   "onset": on, "n_trs": len(frames), "tr": p.tr, "delay_trs": p.delay_trs,
                   "preparation": f"baseline removal ({p.detrend}) and z-score per voxel per scan, then the mean "
                                  "over scans", "video": None if video is None else str(video)}
        if true is not None:
            summary["ssim_mean"] = float(table["ssim"].mean())
        write_json(out / "decoded.json", summary)
    logger.info("decoded %d TRs from %d scan(s) -> %s%s", len(frames), len(bolds), out / "decoded.mp4",
                f" (SSIM with the film {summary['ssim_mean']:.3f})" if true is not None else "")
    return summary
