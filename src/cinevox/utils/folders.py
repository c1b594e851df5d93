"""Output folders that are whole or untouched: one writer at a time, integrity records, stale temporaries.

- :func:`exclusive_folder`: an exclusive lock per output folder (``filelock``, an OS lock released when its
  process dies, even by ``kill -9``), so that a second writer fails at once, naming the holder.
- :func:`integrity_record` / :func:`check_integrity`: sizes, ``.npy`` shapes and sha256 (for files up to
  ``HASH_LIMIT``) of a folder's outputs, written in its manifest and checked by every reader.
- :func:`clean_stale_temps`: the hidden temporaries of :func:`cinevox.utils.io.atomic_path` left by a killed
  writer; only called while holding the folder's lock, when none can belong to a live writer.
- :func:`worker_dies_with_parent`: a process-pool initializer, so that workers end with the process that
  started them (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cinevox.utils.io import sha256_file

logger = logging.getLogger(__name__)

LOCK_NAME = ".cinevox.lock"
HASH_LIMIT = 64 * 2**20
#: ``atomic_path`` temporaries: ``.<name>.<8 random chars><suffixes>``
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+){0,2}$")


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


class IntegrityError(ValueError):
    """A folder's files do not match its integrity record."""


@contextlib.contextmanager
def exclusive_folder(folder: str | Path, step: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) for the block; fail at once if held."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME))
    info_path = folder / f"{LOCK_NAME}.json"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = "another process"
        with contextlib.suppress(OSError, ValueError):
            h = json.loads(info_path.read_text())
            holder = (f"`cinevox {h.get('step')}` (pid {h.get('pid')} on {h.get('host')}, since "
                      f"{h.get('started')})")
        raise FolderBusyError(f"{folder} is being written by {holder}; wait for it to finish or choose another "
                              "output folder") from None
    try:
        info_path.write_text(json.dumps({"step": step, "pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "command": " ".join(sys.argv[:3])}))
        yield folder
    except BaseException:
        if created:  # a step that failed in a folder it made leaves no empty, locked folder behind
            with contextlib.suppress(OSError):
                info_path.unlink()
            lock.release()
            _remove_if_only_lock(folder)
        raise
    finally:
        with contextlib.suppress(OSError):
            info_path.unlink()
        if lock.is_locked:
            lock.release()


def _remove_if_only_lock(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but its lock file (and empty folders)."""
    with contextlib.suppress(OSError):
        if any(p.is_file() and not p.name.startswith(LOCK_NAME) for p in folder.rglob("*")):
            return
        for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        folder.rmdir()


def clean_stale_temps(folder: str | Path) -> int:
    """Remove ``atomic_path`` temporaries under ``folder`` (call only while holding its lock). Returns a count."""
    n = 0
    for p in Path(folder).rglob(".*"):
        if p.is_file() and _TEMP.match(p.name) and not p.name.startswith(LOCK_NAME):
            p.unlink(missing_ok=True)
            n += 1
    if n:
        logger.info("removed %d temporary files left by an interrupted run in %s", n, folder)
    return n


def check_output_folder(folder: str | Path, own: tuple[str, ...], what: str) -> None:
    """Refuse a non-empty folder that holds none of cinevox's own files (``own``): its files would be mixed
    with (or overwritten by) ours."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir() if not p.name.startswith(LOCK_NAME)]
    if names and not any(n in own for n in names):
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise FileExistsError(f"{folder} holds other files ({shown}); cinevox writes a {what} only into an empty "
                              "folder or one of its own: choose another folder")


def file_record(path: Path) -> dict:
    """Size, and for ``.npy`` its shape and dtype, and sha256 up to ``HASH_LIMIT`` bytes."""
    st = path.stat()
    rec: dict = {"size": st.st_size}
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        rec["shape"], rec["dtype"] = list(arr.shape), str(arr.dtype)
        del arr
    if st.st_size <= HASH_LIMIT:
        rec["sha256"] = sha256_file(path)
    return rec


def integrity_record(root: str | Path, names: list[str]) -> dict[str, dict]:
    root = Path(root)
    return {n: file_record(root / n) for n in names}


def check_integrity(root: str | Path, record: dict[str, dict], what: str, fix: str) -> None:
    """Compare the files of ``root`` with ``record``; one line naming every mismatch and ``fix``."""
    root = Path(root)
    problems = []
    for name, rec in record.items():
        p = root / name
        if not p.is_file():
            problems.append(f"{name} is missing")
            continue
        size = p.stat().st_size
        if size != rec["size"]:
            problems.append(f"{name} has {size} bytes, the manifest records {rec['size']}")
            continue
        if "shape" in rec:
            try:
                arr = np.load(p, mmap_mode="r")
                shape = list(arr.shape)
                del arr
            except Exception as err:  # a corrupt header
                problems.append(f"{name} is not a readable array ({err})")
                continue
            if shape != rec["shape"]:
                problems.append(f"{name} has shape {shape}, the manifest records {rec['shape']}")
                continue
        if "sha256" in rec and sha256_file(p) != rec["sha256"]:
            problems.append(f"{name} differs from the manifest's content hash")
    if problems:
        raise IntegrityError(f"{root} is not a consistent {what}: " + "; ".join(problems[:4])
                             + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else "") + f". {fix}")


def worker_dies_with_parent() -> None:
    """Process-pool initializer: the worker gets SIGKILL when its parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)
