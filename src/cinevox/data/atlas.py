"""Atlases and masks: label tables, visual parcels by name, resampling through affines."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Schaefer visual networks by name: 7-network ``_Vis_``, 17-network ``_VisCent_`` / ``_VisPeri_``,
#: Kong2022 ``_VisualA_`` ... (matched on the network field of the parcel name).
VISUAL_PATTERN = re.compile(r"_(Vis|Visual)[A-Za-z]*_")


def read_label_table(path: str | Path) -> dict[int, str]:
    """Read a label table: TSV/CSV with an index column and a name column (``name``, ``label``, ``node``),
    a FreeSurfer/CBIG lookup text file (``index name R G B A`` per line), or one name per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} does not exist")
    if path.suffix in (".tsv", ".csv"):
        df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
        cols = {c.lower(): c for c in df.columns}
        idx = cols.get("index")
        name = next((cols[c] for c in ("name", "label", "node", "labels") if c in cols), None)
        if idx is None or name is None:
            raise ValueError(f"{path}: expected columns 'index' and 'name'/'label'/'node', got {list(df.columns)}")
        return {int(i): str(n) for i, n in zip(df[idx], df[name])}
    out: dict[int, str] = {}
    for i, ln in enumerate(ln.strip() for ln in path.read_text().splitlines() if ln.strip()):
        parts = ln.split()
        if len(parts) >= 2 and parts[0].isdigit():  # FreeSurfer/CBIG LUT: index name R G B A
            out[int(parts[0])] = parts[1]
        else:  # one name per line
            out[i + 1] = ln
    return out


def clean_label(label: str, index: int | None = None) -> str:
    """``Calcarine_L_47`` -> ``Calcarine_L`` (AAL3 tables carry the index as a suffix)."""
    suffix = f"_{index}"
    return label[: -len(suffix)] if index is not None and label.endswith(suffix) else label


def base_name(label: str) -> str:
    """``Calcarine_L`` -> ``Calcarine`` (the region without its hemisphere)."""
    return label[:-2] if label.endswith(("_L", "_R")) else label


def visual_parcel_ids(names: dict[int, str]) -> list[int]:
    return sorted(i for i, n in names.items() if VISUAL_PATTERN.search(n))


def resample_labels(src: nib.Nifti1Image, target: nib.Nifti1Image | tuple) -> np.ndarray:
    """Nearest-neighbour resampling of a label image onto ``target``'s grid, through the affines.

    ``target`` is an image or ``(shape, affine)``. Works whatever the two orientations (e.g. the RAS AAL3
    file onto the LAS FSL grid): each target voxel takes the label at its world position in ``src``.
    """
    shape, affine = (target.shape[:3], target.affine) if hasattr(target, "affine") else target
    data = np.asarray(src.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    ijk = np.indices(shape).reshape(3, -1).T
    src_ijk = nib.affines.apply_affine(np.linalg.inv(src.affine) @ affine, ijk)
    src_ijk = np.rint(src_ijk).astype(int)
    inside = np.all((src_ijk >= 0) & (src_ijk < np.array(data.shape[:3])), axis=1)
    out = np.zeros(len(ijk), dtype=np.int64)
    si = src_ijk[inside]
    out[inside] = data[si[:, 0], si[:, 1], si[:, 2]].astype(np.int64)
    return out.reshape(shape)
