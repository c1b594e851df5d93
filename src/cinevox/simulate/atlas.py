"""The simulated brain's space: an MNI grid, a brain mask, Schaefer-style parcels and AAL3-style regions.

Either a built-in synthetic atlas (ellipsoid brain, visual regions placed at their MNI locations and named
with their AAL3 labels and indices) or real atlases (Schaefer-1000 for the visual mask, AAL3 for the
regions, resampled through the affines).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from cinevox.data.atlas import base_name, clean_label, read_label_table, resample_labels, visual_parcel_ids

#: AAL3 index of each visual region, left hemisphere (right = left + 1).
AAL3_VISUAL = {
    "Calcarine": 47, "Cuneus": 49, "Lingual": 51, "Occipital_Sup": 53, "Occipital_Mid": 55,
    "Occipital_Inf": 57, "Fusiform": 59, "Temporal_Mid": 89, "Temporal_Inf": 93,
}
#: Synthetic region ellipsoids, left hemisphere: centre (x, y, z) and radii in MNI mm.
_ELLIPSOIDS = {
    "Calcarine": ((-10, -84, 6), (9, 16, 9)),
    "Cuneus": ((-8, -80, 28), (8, 10, 10)),
    "Lingual": ((-14, -68, -4), (9, 14, 7)),
    "Occipital_Sup": ((-20, -86, 32), (9, 9, 9)),
    "Occipital_Mid": ((-32, -82, 12), (10, 12, 11)),
    "Occipital_Inf": ((-38, -80, -8), (9, 10, 7)),
    "Fusiform": ((-34, -54, -16), (8, 18, 6)),
    "Temporal_Inf": ((-50, -56, -12), (8, 14, 8)),
    "Temporal_Mid": ((-50, -66, 8), (7, 10, 8)),
}
_NETWORKS = ["SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default"]


@dataclass
class SimSpace:
    """Grid and labels. ``visual``/``brain`` are boolean (x, y, z); ``region`` holds AAL3 indices."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    brain: np.ndarray
    visual: np.ndarray
    parcels: np.ndarray  # int (x, y, z), Schaefer-style parcel ids
    parcel_names: dict[int, str]
    region: np.ndarray  # int (x, y, z), AAL3 index (0 = none)
    region_names: dict[int, str]  # AAL3 index -> label (e.g. "Calcarine_L")

    def mm(self, mask: np.ndarray) -> np.ndarray:
        """MNI coordinates (n, 3) of the voxels of ``mask``, C order."""
        ijk = np.column_stack(np.nonzero(mask))
        return nib.affines.apply_affine(self.affine, ijk)


def fsl_like_affine(voxel_size: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """An MNI grid like FSL's (LAS, origin (90, -126, -72)); 2 mm gives exactly 91 x 109 x 91."""
    vs = float(voxel_size)
    shape = (int(180 // vs) + 1, int(216 // vs) + 1, int(180 // vs) + 1)
    affine = np.array([[-vs, 0, 0, 90], [0, vs, 0, -126], [0, 0, vs, -72], [0, 0, 0, 1]], float)
    return shape, affine


def synthetic_space(voxel_size: float, region_scale: float = 1.5) -> SimSpace:
    shape, affine = fsl_like_affine(voxel_size)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk)
    centre, radii = np.array([0, -18, 16]), np.array([68, 88, 64])
    brain = (((xyz - centre) / radii) ** 2).sum(1) <= 1
    region = np.zeros(len(xyz), int)
    best = np.full(len(xyz), np.inf)
    for name, (c, r) in _ELLIPSOIDS.items():
        for hemi, sign in (("L", 1), ("R", -1)):
            cc = np.array([c[0] * sign, c[1], c[2]], float)
            d = (((xyz - cc) / (np.array(r) * region_scale)) ** 2).sum(1)
            take = brain & (d <= 1) & (d < best)
            region[take] = AAL3_VISUAL[name] + (0 if hemi == "L" else 1)
            best[take] = d[take]
    region_names = {v + k: f"{n}_{'LR'[k]}" for n, v in AAL3_VISUAL.items() for k in (0, 1)}
    visual = region > 0
    # Schaefer-style parcels: each visual region one `_Vis_` parcel; other brain voxels in 30 mm blocks
    parcels = np.zeros(len(xyz), int)
    names: dict[int, str] = {}
    for k, idx in enumerate(sorted(region_names)):
        pid = k + 1
        parcels[region == idx] = pid
        names[pid] = f"7Networks_{'LH' if idx % 2 else 'RH'}_Vis_{k + 1}"
    block = np.floor((xyz + 200) / 30).astype(int)
    keys = block[:, 0] * 10000 + block[:, 1] * 100 + block[:, 2]
    rest = brain & ~visual
    for k, key in enumerate(np.unique(keys[rest])):
        pid = len(names) + 1
        sel = rest & (keys == key)
        hemi = "LH" if xyz[sel, 0].mean() < 0 else "RH"
        parcels[sel] = pid
        names[pid] = f"7Networks_{hemi}_{_NETWORKS[k % len(_NETWORKS)]}_{k + 1}"
    return SimSpace(shape, affine, brain.reshape(shape), visual.reshape(shape), parcels.reshape(shape), names,
                    region.reshape(shape), region_names)


def real_space(atlas: str, atlas_labels: str, regions_atlas: str | None, regions_labels: str | None) -> SimSpace:
    """Space of a real Schaefer-1000 atlas; regions from AAL3 resampled onto it (nearest neighbour)."""
    img = nib.load(atlas)
    parcels = np.asarray(img.dataobj).astype(int)
    if parcels.ndim != 3:
        raise ValueError(f"{atlas}: expected a 3D label image, got shape {parcels.shape}")
    names = read_label_table(atlas_labels)
    vis_ids = visual_parcel_ids(names)
    if not vis_ids:
        raise ValueError(f"{atlas_labels}: no visual parcels (names containing '_Vis')")
    visual = np.isin(parcels, vis_ids)
    region = np.zeros(parcels.shape, int)
    region_names: dict[int, str] = {}
    if regions_atlas:
        region = resample_labels(nib.load(regions_atlas), img)
        region_names = read_label_table(regions_labels)
        region_names = {k: clean_label(v, k) for k, v in region_names.items()}
    return SimSpace(parcels.shape, img.affine.copy(), parcels > 0, visual, parcels, names, region, region_names)


def region_family(label: str) -> str:
    """Which tuning family an AAL3 label belongs to."""
    base = base_name(label)
    if base in ("Calcarine", "Cuneus", "Lingual"):
        return "early"
    if base.startswith("Occipital"):
        return "lateral"
    if base == "Fusiform":
        return "ventral"
    if base.startswith("Temporal"):
        return "motion"
    return "other"
