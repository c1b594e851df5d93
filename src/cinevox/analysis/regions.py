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
from cinevox.data.masks import MaskError, read_mask
from cinevox.utils.io import write_json, write_text_atomic

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


UNLABELLED = "unlabelled"


def region_table(regions: pd.DataFrame, salient: np.ndarray | None = None, key: str = "label") -> pd.DataFrame:
    """Table II: per region A (voxels in mask), A / sum A, and with ``salient`` B (salient voxels), B / sum B,
    B / A (percent).

    As the paper (and the authors' code), voxels without an atlas label are left out of every region and of the
    denominators; they are reported apart, in a last row ``unlabelled`` whose percentages are empty.
    """
    labelled = np.asarray(regions["index"]) != 0
    sal = np.zeros(len(regions), bool) if salient is None else np.asarray(salient, bool)
    df = pd.DataFrame({"region": regions[key].to_numpy()[labelled], "salient": sal[labelled]})
    g = df.groupby("region", sort=True)["salient"].agg(A="size", B="sum").reset_index()
    if key == "group":
        order = [p for p, _ in PAPER_GROUPS] + ["Other"]
        g = g.set_index("region").reindex(order, fill_value=0).reset_index()
    g["A_pct_of_mask"] = 100 * g["A"] / max(g["A"].sum(), 1)
    g["B_pct_of_salient"] = 100 * g["B"] / max(g["B"].sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g["B_over_A_pct"] = np.where(g["A"] > 0, 100 * g["B"] / g["A"].clip(lower=1), np.nan)
    extra = pd.DataFrame([{"region": UNLABELLED, "A": int((~labelled).sum()), "B": int(sal[~labelled].sum()),
                           "A_pct_of_mask": np.nan, "B_pct_of_salient": np.nan, "B_over_A_pct": np.nan}])
    g = pd.concat([g, extra], ignore_index=True)
    if salient is None:
        g = g[["region", "A", "A_pct_of_mask"]]
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


def top_fraction(values: np.ndarray, top: float) -> np.ndarray:
    """The ``top`` fraction (at least one) of the largest values, as a boolean mask (ties: the first ones)."""
    n_top = max(1, int(round(top * len(values))))
    out = np.zeros(len(values), bool)
    out[np.argsort(-np.asarray(values), kind="stable")[:n_top]] = True
    return out


def salient_from_map(values: np.ndarray, top: float) -> np.ndarray:
    """Salient voxels from a map's values at the mask voxels: a binary map as it is, else the top fraction."""
    values = np.nan_to_num(np.asarray(values, np.float64))
    if np.isin(values, (0.0, 1.0)).all():
        return values > 0
    return top_fraction(values, top)


def mask_regions(mask: str | Path, atlas, labels, saliency_map: str | Path | None = None, top: float = 0.2,
                 out_dir: str | Path | None = None) -> dict:
    """Region composition of any mask (NIfTI, or the authors' ``.npy`` on the FSL 2 mm grid) in an atlas.

    With ``saliency_map`` (a NIfTI on the mask's grid: a binary map of salient voxels, or saliency values whose
    top ``top`` fraction of mask voxels is called salient) the B columns of Table II too. Unlabelled voxels are
    reported apart (rule of the paper's Table II). Writes ``regions.csv`` and ``regions_grouped.csv`` in
    ``out_dir`` (same format as ``cinevox saliency``). Returns ``{"full", "grouped", "n_voxels", "n_unlabelled"}``.
    """
    m, affine = read_mask(mask)
    if not m.any():
        raise MaskError(f"{mask}: mask is empty")
    ijk = np.argwhere(m)
    regions = voxel_regions(ijk, affine, m.shape, atlas, labels)
    salient = None
    if saliency_map is not None:
        img = nib.load(saliency_map)
        data = np.asarray(img.dataobj, np.float64)
        if data.shape[:3] != m.shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise MaskError(f"saliency map {saliency_map} is not on the grid of mask {mask} "
                            f"({data.shape[:3]} vs {m.shape})")
        if not 0 < top <= 1:
            raise ValueError(f"--top must lie in (0, 1], got {top}")
        salient = salient_from_map(data[tuple(ijk.T)], top)
    full = region_table(regions, salient, "label")
    grouped = region_table(regions, salient, "group")
    result = {"full": full, "grouped": grouped, "n_voxels": len(ijk),
              "n_unlabelled": int((regions["index"] == 0).sum()),
              "n_salient": None if salient is None else int(salient.sum())}
    if out_dir is not None:
        out = Path(out_dir)
        write_text_atomic(out / "regions.csv", full.to_csv(index=False, float_format="%.2f"))
        write_text_atomic(out / "regions_grouped.csv", grouped.to_csv(index=False, float_format="%.2f"))
        write_json(out / "regions.json", {
            "mask": str(mask), "saliency_map": str(saliency_map) if saliency_map else None,
            "atlas": str(atlas) if not isinstance(labels, dict) else "nilearn AAL", "n_voxels": result["n_voxels"],
            "n_unlabelled": result["n_unlabelled"], "n_salient": result["n_salient"], "top": top})
    return result


def subsample(indices: np.ndarray, max_clips: int | None) -> np.ndarray:
    """At most ``max_clips`` of ``indices``, evenly spaced (every film of the split keeps its share)."""
    if max_clips is None or len(indices) <= max_clips:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, max_clips).round().astype(int))]
