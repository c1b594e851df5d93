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


def rng_state(device: torch.device | str | None = None) -> dict:
    """The global RNG states (torch, numpy legacy, python) as tensors and plain lists, plus the CUDA generator of
    the training ``device`` only (never every visible GPU's: a run may resume on a node with fewer GPUs)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "internal": [int(v) for v in internal],
                        "gauss": None if gauss is None else float(gauss)}}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | str | None = None) -> None:
    """Restore what :func:`rng_state` saved (also the tuple form of checkpoints from before).

    The saved CUDA generator goes to the resuming ``device`` whatever GPU it was saved on; a run trained on the
    CPU and resumed on a GPU (or the reverse) keeps the CPU generators and logs that the CUDA one starts afresh.
    Checkpoints of earlier versions saved a list (every visible GPU): the entry of the resuming device's index
    is used when it exists, else the first."""
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
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return
    saved = state.get("cuda")
    if isinstance(saved, (list, tuple)):  # older checkpoints: one state per visible GPU
        saved = saved[device.index or 0] if len(saved) > (device.index or 0) else (saved[0] if saved else None)
    if saved is None:
        logger.info("the checkpoint holds no CUDA generator state (trained on the CPU?): %s starts from its seed",
                    device)
        return
    torch.cuda.set_rng_state(saved.cpu() if isinstance(saved, torch.Tensor) else torch.as_tensor(saved), device)


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
    try:  # read on the CPU: any failure here is the file's; moving to the device comes after
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # not a refused object: a damaged or foreign file
            raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt") from err
        if not trust:
            raise CheckpointError(
                f"{path}: holds Python objects that loading would execute (a checkpoint from an older cinevox, "
                "or a crafted file); pass --trust-checkpoint only if you trust where it came from") from err
        logger.warning("%s: loading with full unpickling (--trust-checkpoint): it can execute code", path)
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(err2).__name__}: {err2})") from err2
    except Exception as err:  # torch raises many kinds for a damaged file (RuntimeError, EOFError, IndexError...)
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(ck, dict) or any(k not in ck for k in required):
        missing = [k for k in required if not isinstance(ck, dict) or k not in ck]
        raise CheckpointError(f"{path}: not a cinevox checkpoint (missing {', '.join(missing)})")
    if map_location is not None and torch.device(map_location).type != "cpu":
        try:
            ck = _to_device(ck, torch.device(map_location))
        except (RuntimeError, AssertionError) as err:  # the device's problem, never the file's
            raise RuntimeError(f"{path} was read, but its tensors cannot be moved to {map_location}: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return ck


def _to_device(obj, device: torch.device):
    """``obj`` with every tensor moved to ``device`` (the RNG states stay on the CPU, where they must be)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: (v if k in ("rng", "rng_per_rank") else _to_device(v, device)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def convert_checkpoint(path: str | Path) -> None:
    """Rewrite a trusted old checkpoint in the safe format (RNG state as tensors and lists)."""
    ck = load_checkpoint(path, map_location="cpu", trust=True)
    if "rng" in ck:
        saved, cuda = rng_state(), ck["rng"].get("cuda") if isinstance(ck["rng"], dict) else None
        set_rng_state(ck["rng"])
        ck["rng"] = rng_state()
        if cuda is not None:  # kept as saved: restored onto whichever GPU resumes
            ck["rng"]["cuda"] = cuda
        set_rng_state(saved)
    save_checkpoint(path, ck)
