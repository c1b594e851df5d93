"""The visual mask on the BOLD grid: a ready mask, a Schaefer atlas by parcel name, or nilearn's fetcher."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from cinevox.data.atlas import read_label_table, resample_labels, visual_parcel_ids

logger = logging.getLogger(__name__)

#: The FSL MNI152 2 mm grid (91 x 109 x 91, LAS) of the authors' ``.npy`` masks.
FSL_2MM_AFFINE = np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)
FSL_2MM_SHAPE = (91, 109, 91)


class MaskError(ValueError):
    pass


#: The parcels of the paper's mask in the authors' code: Schaefer-1000 Kong2022 17-network ordering, labels
#: LH 420-450 and 478-500, RH 910-940 and 976-1000 (VisualA ExStr, VisualB Striate, VisualC), inclusive.
KONG2022_VISUAL_RANGES = ((420, 450), (478, 500), (910, 940), (976, 1000))


def parse_parcel_ranges(spec: str) -> list[int]:
    """``"420-450,478-500,12"`` -> the label indices (inclusive ranges); ``"kong2022"`` -> the paper's ranges."""
    if spec.strip().lower() == "kong2022":
        return sorted({i for a, b in KONG2022_VISUAL_RANGES for i in range(a, b + 1)})
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise MaskError(f"--visual-parcels {spec!r}: {part!r} is not a label index or an a-b range; valid values: "
                            "names (the _Vis parcels by name), kong2022 (the paper's label ranges), or label ranges "
                            "such as 420-450,478-500") from None
    if not out or min(out) < 1:
        raise MaskError(f"visual parcels {spec!r}: give label indices >= 1 (e.g. 420-450,478-500)")
    return sorted(out)


def visual_ids(spec: str, names: dict[int, str] | None, labels_name: str = "the label table") -> list[int]:
    """The atlas labels of the visual mask: by name (``spec == "names"``: ``_Vis`` parcels) or by ranges."""
    if spec == "names":
        if names is None:
            raise MaskError("selecting visual parcels by name needs --atlas-labels (or give --visual-parcels RANGES)")
        ids = visual_parcel_ids(names)
        if not ids:
            raise MaskError(f"{labels_name}: no visual parcels (no names with '_Vis')")
        return ids
    return parse_parcel_ranges(spec)


def check_same_grid(shape_a, affine_a, name_a: str, shape_b, affine_b, name_b: str, atol: float = 1e-3) -> None:
    if tuple(shape_a[:3]) != tuple(shape_b[:3]):
        raise MaskError(f"{name_a} shape {tuple(shape_a[:3])} is different from {name_b} shape {tuple(shape_b[:3])}")
    if not np.allclose(affine_a, affine_b, atol=atol):
        raise MaskError(f"{name_a} affine\n{np.round(affine_a, 4)}\nis different from {name_b} affine\n"
                        f"{np.round(affine_b, 4)}")


def mask_positions(mask: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Position of each voxel ``ijk`` (V, 3) among the voxels of the boolean ``mask`` in C order (the column order
    of arrays stored per mask voxel), -1 where the voxel is outside the mask. -> (V,) int64."""
    row = -np.ones(mask.shape, np.int64)
    row[mask] = np.arange(int(mask.sum()))
    return row[tuple(np.asarray(ijk).T)]


def read_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(bool mask (X, Y, Z), affine)`` of a NIfTI mask, or of the authors' ``.npy`` on the FSL 2 mm grid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {path} does not exist")
    if path.suffix == ".npy":
        data = np.load(path)
        if data.shape != FSL_2MM_SHAPE:
            raise MaskError(f"{path}: a .npy mask must be on the FSL 2 mm grid {FSL_2MM_SHAPE}, got {data.shape}")
        return np.asarray(data) > 0.5, FSL_2MM_AFFINE.copy()
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise MaskError(f"{path}: not a readable NIfTI mask ({err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MaskError(f"{path}: a mask must be 3D, got shape {data.shape}")
    return np.asarray(data) > 0.5, img.affine


def load_mask(path: str | Path, shape, affine, ref_name: str) -> np.ndarray:
    """A ready mask (NIfTI, or the authors' ``.npy`` on the FSL 2 mm grid) that must match the BOLD grid."""
    mask, m_affine = read_mask(path)
    check_same_grid(mask.shape, m_affine, f"mask {path}", shape, affine, ref_name)
    if not mask.any():
        raise MaskError(f"{path}: mask is empty")
    return mask


def atlas_visual_mask(atlas: str | Path, labels: str | Path | None, shape, affine,
                      parcels: str = "names") -> np.ndarray:
    """Voxels of the atlas' visual parcels (by name, or by label ranges such as the paper's ``kong2022``),
    resampled (nearest) onto the BOLD grid if needed."""
    img = nib.load(atlas)
    names = read_label_table(labels) if labels else None
    ids = visual_ids(parcels, names, str(labels))
    if tuple(img.shape[:3]) == tuple(shape[:3]) and np.allclose(img.affine, affine, atol=1e-3):
        lab = np.asarray(img.dataobj).astype(int)
    else:
        logger.info("resampling atlas %s onto the BOLD grid (nearest neighbour)", atlas)
        lab = resample_labels(img, (tuple(shape[:3]), affine))
    mask = np.isin(lab, ids)
    if not mask.any():
        raise MaskError(f"atlas {atlas}: no visual parcel voxels on the BOLD grid (is it in MNI space?)")
    logger.info("visual mask: %d parcels, %d voxels", len(ids), int(mask.sum()))
    return mask


def fetch_schaefer_visual_mask(shape, affine, data_dir: str | None = None, parcels: str = "names") -> np.ndarray:
    """Schaefer-1000 (7 networks, 2 mm) through nilearn's fetcher (downloads once, then reads its cache)."""
    from nilearn.datasets import fetch_atlas_schaefer_2018

    try:
        atlas = fetch_atlas_schaefer_2018(n_rois=1000, yeo_networks=7, resolution_mm=2, data_dir=data_dir)
    except Exception as err:
        raise MaskError(f"could not fetch the Schaefer-1000 atlas with nilearn ({err}); pass --atlas FILE "
                        "--atlas-labels TSV or --mask FILE") from err
    labels = [lb.decode() if isinstance(lb, bytes) else str(lb) for lb in atlas.labels]
    labels = [lb for lb in labels if lb.lower() != "background"]
    img = nib.load(atlas.maps) if isinstance(atlas.maps, (str, Path)) else atlas.maps
    ids = visual_ids(parcels, {i + 1: lb for i, lb in enumerate(labels)}, "nilearn Schaefer-1000 labels")
    lab = resample_labels(img, (tuple(shape[:3]), affine))
    return np.isin(lab, ids)
