"""Streaming NIfTI-1 reading and writing, one block of volumes at a time.

A 4D NIfTI stores volume after volume (x fastest), so a gzip stream can be read and written sequentially
with memory bounded by a few volumes: no seeking, about the cost of ``gzip -dc`` itself.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from cinevox.outputs import nifti_intent
from cinevox.utils.io import atomic_path


class NiftiError(ValueError):
    """A NIfTI file that cannot be used, with the file named in the message."""


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.name.endswith(".gz") else open(path, mode)


def load_header(path: str | Path) -> nib.Nifti1Header:
    """The on-disk header (with its real ``scl_slope``, ``scl_inter`` and ``vox_offset``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with _open(path, "rb") as fh:
            raw = fh.read(540)
        size = int(np.frombuffer(raw[:4], "<i4")[0])
        if size in (348, 540):
            cls = nib.Nifti1Header if size == 348 else nib.Nifti2Header
        else:
            cls = nib.Nifti1Header if int(np.frombuffer(raw[:4], ">i4")[0]) == 348 else nib.Nifti2Header
        hdr = cls.from_fileobj(io.BytesIO(raw), check=True)
    except Exception as err:
        raise NiftiError(f"{path}: not a readable NIfTI file ({err})") from err
    return hdr


def iter_volumes(
    path: str | Path, flat_index: np.ndarray | None = None, block: int = 16
) -> Iterator[np.ndarray]:
    """Yield blocks of volumes of a 4D NIfTI as float32 arrays.

    Parameters
    ----------
    path : path to ``.nii`` or ``.nii.gz``.
    flat_index : array of shape (n_voxels,), optional
        Fortran-order flat indices of the voxels to keep (see :func:`fortran_index`); all voxels if None.
    block : int
        Volumes per block.

    Yields
    ------
    array of shape (n_block, n_voxels)
        Scaled values (``scl_slope``/``scl_inter`` applied), in file order.
    """
    path = Path(path)
    hdr = load_header(path)
    shape = hdr.get_data_shape()
    if len(shape) != 4:
        raise NiftiError(f"{path}: expected a 4D image (x, y, z, time), got shape {shape}")
    nvox = int(np.prod(shape[:3]))
    dtype = hdr.get_data_dtype()
    slope, inter = hdr.get_slope_inter()
    offset = max(int(hdr.get_data_offset()), int(getattr(hdr, "single_vox_offset", 352)))
    vol_bytes = nvox * dtype.itemsize
    with _open(path, "rb") as fh:
        _read(fh, offset, path)
        left = shape[3]
        while left:
            n = min(block, left)
            buf = _read(fh, n * vol_bytes, path)
            if len(buf) != n * vol_bytes:
                raise NiftiError(f"{path}: file is truncated ({shape[3] - left + len(buf) // vol_bytes} of "
                                 f"{shape[3]} volumes readable)")
            arr = np.frombuffer(buf, dtype=dtype).reshape(n, nvox)
            if flat_index is not None:
                arr = arr[:, flat_index]
            arr = arr.astype(np.float32)
            if slope not in (None, 1.0) or inter not in (None, 0.0):
                arr = arr * np.float32(1.0 if slope is None else slope) + np.float32(inter or 0.0)
            yield arr
            left -= n


def read_volumes(path: str | Path, flat_index: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    """Volumes ``start:stop`` of a 4D NIfTI at ``flat_index`` (see :func:`iter_volumes`), streamed: float32
    (stop - start, n_voxels)."""
    blocks, t = [], 0
    for blk in iter_volumes(path, flat_index, block=32):
        lo, hi = max(start - t, 0), min(stop - t, len(blk))
        if hi > lo:
            blocks.append(blk[lo:hi])
        t += len(blk)
        if t >= stop:
            break
    if not blocks:
        return np.empty((0, len(flat_index) if flat_index is not None else 0), np.float32)
    return np.concatenate(blocks)


def _read(fh, n: int, path: Path) -> bytes:
    """``fh.read(n)``; a broken gzip stream becomes a NiftiError naming the file."""
    import zlib

    try:
        return fh.read(n)
    except (EOFError, OSError, zlib.error) as err:
        raise NiftiError(f"{path}: truncated or corrupt file ({type(err).__name__}: {err})") from err


def bold_affine(hdr, path: str | Path, assume_mni: bool = False) -> np.ndarray:
    """The voxel-to-world affine of a BOLD header, refusing a header that states no space.

    With qform_code and sform_code both 0, nibabel falls back to a default affine centred on the grid, not the
    file's MNI placement: a mask would land in the wrong place. ``assume_mni`` reads the header's sform (else
    qform) matrix as MNI anyway."""
    if int(hdr["sform_code"]) or int(hdr["qform_code"]):
        return hdr.get_best_affine()
    if not assume_mni:
        raise NiftiError(f"{path}: qform_code and sform_code are both 0, so the header states no space and its "
                         "voxels cannot be placed in MNI; fix the header (e.g. `fslorient -setsformcode 4`) or pass "
                         "--assume-mni to read its sform matrix as MNI")
    sform = hdr.get_sform(coded=False)
    if sform is not None and np.any(sform[:3, :3]):
        return sform
    return hdr.get_qform(coded=False)


def fortran_index(mask: np.ndarray) -> np.ndarray:
    """Flat Fortran-order indices of ``mask``'s voxels, listed in C order (``np.nonzero`` order)."""
    ijk = np.nonzero(mask)
    return np.ravel_multi_index(ijk, mask.shape, order="F")


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray, code: int = 4) -> Path:
    """Write a NIfTI atomically with sform and qform set (code 4 = MNI), units mm and s, and the intent that
    :mod:`cinevox.outputs` gives its file name."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=code)
    img.header.set_qform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    intent = nifti_intent(Path(path).name)
    if intent is not None:
        img.header.set_intent(intent[0], name=intent[1])
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


def save_voxel_map(path: str | Path, values: np.ndarray, ijk: np.ndarray, ref: nib.Nifti1Image) -> Path:
    """Per-voxel values (V,) placed at ``ijk`` (V, 3) on ``ref``'s grid (zero elsewhere, NaN as 0), float32."""
    vol = np.zeros(ref.shape[:3], np.float32)
    vol[tuple(np.asarray(ijk).T)] = np.nan_to_num(np.asarray(values, np.float32))
    return save_nifti(path, vol, ref.affine, int(ref.header["sform_code"]) or 4)


class NiftiStreamWriter:
    """Write a 4D float32 NIfTI volume by volume (atomically, deterministic gzip without a timestamp).

    Use as a context manager; call :meth:`write` with arrays of shape (n, x, y, z) until ``n_vols``
    volumes are written.
    """

    def __init__(self, path: str | Path, shape3: tuple[int, int, int], n_vols: int, affine: np.ndarray,
                 tr: float, compresslevel: int = 1) -> None:
        self.path, self.shape3, self.n_vols = Path(path), tuple(shape3), n_vols
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((*self.shape3, n_vols))
        hdr.set_data_dtype(np.float32)
        hdr.set_qform(affine, code=4)  # MNI
        hdr.set_sform(affine, code=4)
        hdr.set_xyzt_units("mm", "sec")
        zooms = list(hdr.get_zooms())
        zooms[3] = float(tr)
        hdr.set_zooms(zooms)
        hdr.set_slope_inter(1.0, 0.0)
        hdr["vox_offset"] = 352
        self.header = hdr
        self.compresslevel = compresslevel
        self._written = 0

    def __enter__(self) -> NiftiStreamWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._raw = open(tmp, "wb")
        if self.path.name.endswith(".gz"):
            self._fh = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw,
                                     compresslevel=self.compresslevel, mtime=0)
        else:
            self._fh = self._raw
        bio = io.BytesIO()
        self.header.write_to(bio)
        head = bio.getvalue()
        offset = 352
        self._fh.write(head[:348] + b"\x00" * (offset - 348))
        return self

    def write(self, vols: np.ndarray) -> None:
        """vols: (n, x, y, z)."""
        if vols.shape[1:] != self.shape3:
            raise ValueError(f"volume shape {vols.shape[1:]} != {self.shape3}")
        for v in np.asarray(vols, dtype=np.float32):
            self._fh.write(v.tobytes(order="F"))
        self._written += len(vols)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fh is not self._raw:
            self._fh.close()
        self._raw.close()
        if exc_type is None and self._written != self.n_vols:
            exc_type, exc = ValueError, ValueError(f"{self.path}: wrote {self._written} of {self.n_vols} volumes")
            self._atomic.__exit__(exc_type, exc, None)
            raise exc
        self._atomic.__exit__(exc_type, exc, tb)
