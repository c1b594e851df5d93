"""Checkpoints that cannot run code.

A cinevox checkpoint holds only tensors and plain containers (dicts, lists, strings, numbers): the model and
optimizer state dicts, the configuration, the history, library versions and the RNG states (converted to
tensors and lists). It is read with ``torch.load(weights_only=True)``, PyTorch's restricted unpickler, which
refuses any other object: a crafted file cannot execute code through any cinevox command.

Checkpoints written before this rule (their RNG state held numpy objects) load only with an explicit
``trust=True`` (``--trust-checkpoint``), after a one-line notice; :func:`convert_checkpoint` rewrites one in
the safe format once.
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from cinevox.utils.io import atomic_path

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the way out."""


def rng_state() -> dict:
    """The global RNG states (torch, numpy legacy, python, CUDA) as tensors and plain lists."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "internal": [int(v) for v in internal],
                        "gauss": None if gauss is None else float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (also the tuple form of checkpoints from before)."""
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np_state = (np_state["name"], np.asarray(np_state["keys"].cpu().numpy(), np.uint32), np_state["pos"],
                    np_state["has_gauss"], np_state["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    py = state["python"]
    if isinstance(py, dict):
        py = (py["version"], tuple(py["internal"]), py["gauss"])
    random.setstate(py)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors and plain containers only) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location=None, trust: bool = False,
                    required: tuple[str, ...] = ("model", "model_config", "config", "epoch")) -> dict:
    """Read a checkpoint without executing code (``weights_only=True``).

    ``trust=True`` also reads checkpoints that hold other Python objects (older cinevox versions), after a
    notice. Raises :class:`CheckpointError` for a file that is corrupt, truncated, not a cinevox checkpoint, or
    holds objects that loading would have to execute."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # not a refused object: a damaged or foreign file
            raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt") from err
        if not trust:
            raise CheckpointError(
                f"{path}: holds Python objects that loading would execute (a checkpoint from an older cinevox, "
                "or a crafted file); pass --trust-checkpoint only if you trust where it came from") from err
        logger.warning("%s: loading with full unpickling (--trust-checkpoint): it can execute code", path)
        try:
            ck = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err2:
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(err2).__name__}: {err2})") from err2
    except Exception as err:  # torch raises many kinds for a damaged file (RuntimeError, EOFError, IndexError...)
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(ck, dict) or any(k not in ck for k in required):
        missing = [k for k in required if not isinstance(ck, dict) or k not in ck]
        raise CheckpointError(f"{path}: not a cinevox checkpoint (missing {', '.join(missing)})")
    return ck


def convert_checkpoint(path: str | Path) -> None:
    """Rewrite a trusted old checkpoint in the safe format (RNG state as tensors and lists)."""
    ck = load_checkpoint(path, map_location="cpu", trust=True)
    if "rng" in ck:
        saved = rng_state()
        set_rng_state(ck["rng"])
        ck["rng"] = rng_state()
        set_rng_state(saved)
    save_checkpoint(path, ck)
