"""Atomic writes, file identity and step manifests.

Every step writes a folder with ``manifest.json``: the resolved config, the inputs it read (size, mtime
and optionally sha256) and the library versions, so that each step can be rerun, resumed and checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix(es) so that writers picking a format by extension (nibabel, numpy) still work
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes[-2:]))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs are meant to be shared
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, data: Any) -> None:
    """Atomic, sorted, indented JSON (dataclasses, numpy scalars and paths allowed)."""
    write_text_atomic(path, json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | Path, with_hash: bool = False) -> dict[str, Any]:
    """What identifies an input: path, size, mtime (ns), and sha256 when asked."""
    path = Path(path)
    st = path.stat()
    ident: dict[str, Any] = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        ident["sha256"] = sha256_file(path)
    return ident


def config_hash(obj: Any) -> str:
    """Stable short hash of any JSON-able object (dataclasses included)."""
    return hashlib.sha256(json.dumps(_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape results."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        from cinevox import __version__ as cinevox_version  # the source tree's, installed or not
    except ImportError:  # pragma: no cover
        cinevox_version = "unknown"
    out["cinevox"] = cinevox_version
    for key, dist in _DISTRIBUTIONS.items():
        try:
            out[key] = version(dist)  # the installed distribution's metadata: no import, no "?"
        except PackageNotFoundError:  # a missing optional library is recorded, not fatal
            out[key] = "not installed"
    return out


#: manifest key -> distribution name of every library whose version can shape results
_DISTRIBUTIONS = {
    "torch": "torch", "numpy": "numpy", "scipy": "scipy", "nibabel": "nibabel", "nilearn": "nilearn", "av": "av",
    "pytorch_msssim": "pytorch-msssim", "pandas": "pandas", "scikit-learn": "scikit-learn", "himalaya": "himalaya",
    "pymoten": "pymoten", "transformers": "transformers", "safetensors": "safetensors", "matplotlib": "matplotlib",
    "Pillow": "Pillow", "filelock": "filelock",
}


def write_manifest(folder: str | Path, step: str, config: Any, inputs: Any = None, **extra: Any) -> Path:
    """Write ``folder/manifest.json`` for a step."""
    path = Path(folder) / "manifest.json"
    write_json(path, {"step": step, "config": config, "inputs": inputs or {}, "versions": versions(), **extra})
    return path
