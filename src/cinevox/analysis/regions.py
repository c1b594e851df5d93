"""Anatomical regions of the run's voxels: AAL3 (or SPM12 AAL) resampled to the data grid through the affines.

The AAL3 file in MNI152NLin6Asym is stored RAS, the FSL grid LAS: the arrays are left-right flipped relative to
each other, so labels are always looked up by world (mm) position, never by array index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cinevox.data.atlas import base_name, clean_label, read_label_table, resample_labels

logger = logging.getLogger(__name__)

#: The paper's Table II groups, matched on the AAL label (without hemisphere and index suffix).
PAPER_GROUPS = [
    ("Oc.I.", ("Occipital_Inf",)),
    ("Oc.M.", ("Occipital_Mid",)),
    ("Oc.S.", ("Occipital_Sup",)),
    ("Fusi.", ("Fusiform",)),
    ("Calc.", ("Calcarine",)),
    ("Ling.", ("Lingual",)),
    ("Temp.", ("Temporal_",)),
]


def paper_group(label: str) -> str:
    base = base_name(label)
    for group, keys in PAPER_GROUPS:
        if any(base == k or (k.endswith("_") and base.startswith(k)) for k in keys):
            return group
    return "Other"


def voxel_regions(ijk: np.ndarray, affine: np.ndarray, shape, atlas: str | Path | nib.Nifti1Image,
                  labels: str | Path | dict[int, str]) -> pd.DataFrame:
    """Region of each voxel. ijk: (V, 3) indices on the grid ``(shape, affine)``.

    Returns a frame with ``index`` (atlas label, 0 = none), ``label`` (e.g. Calcarine_L, or 'unlabelled'),
    ``group`` (the paper's region groups).
    """
    img = nib.load(atlas) if not isinstance(atlas, nib.Nifti1Image) else atlas
    names = read_label_table(labels) if not isinstance(labels, dict) else labels
    lab = resample_labels(img, (tuple(shape[:3]), affine))
    idx = lab[tuple(np.asarray(ijk).T)]
    label = np.array([clean_label(names[i], i) if i in names else ("unlabelled" if i == 0 else f"label_{i}")
                      for i in idx], dtype=object)
    return pd.DataFrame({"index": idx, "label": label, "group": [paper_group(lb) for lb in label]})


def region_table(regions: pd.DataFrame, salient: np.ndarray, key: str = "label") -> pd.DataFrame:
    """Table II: per region A (voxels in mask), A / sum A, B (salient voxels), B / sum B, B / A (percent)."""
    df = pd.DataFrame({"region": regions[key].to_numpy(), "salient": np.asarray(salient, bool)})
    g = df.groupby("region", sort=True)["salient"].agg(A="size", B="sum").reset_index()
    if key == "group":
        order = [p for p, _ in PAPER_GROUPS] + ["Other"]
        g = g.set_index("region").reindex(order, fill_value=0).reset_index()
    g["A_pct_of_mask"] = 100 * g["A"] / max(g["A"].sum(), 1)
    g["B_pct_of_salient"] = 100 * g["B"] / max(g["B"].sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g["B_over_A_pct"] = np.where(g["A"] > 0, 100 * g["B"] / g["A"].clip(lower=1), np.nan)
    return g


def default_atlas(data_manifest: dict, atlas: str | None, labels: str | None, version: str = "3v2"):
    """The atlas to use: explicit files, else the simulator's regions, else nilearn's AAL fetcher."""
    if atlas:
        if not labels:
            raise ValueError("--atlas needs --atlas-labels")
        return atlas, labels
    sim = data_manifest.get("bids_simulation")
    if sim and (Path(sim) / "regions.nii.gz").is_file():
        return str(Path(sim) / "regions.nii.gz"), str(Path(sim) / "regions.tsv")
    from nilearn.datasets import fetch_atlas_aal

    try:
        aal = fetch_atlas_aal(version=version)
    except Exception as err:
        raise ValueError(f"no region atlas: pass --atlas AAL3.nii.gz --atlas-labels AAL3.tsv (nilearn could not "
                         f"fetch AAL {version}: {err})") from err
    names = {int(i): str(n) for i, n in zip(aal.indices, aal.labels)}
    return aal.maps, names
