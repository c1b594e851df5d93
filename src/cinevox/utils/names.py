"""One name per concept (issue 27), and the old spellings that stay readable with a deprecation warning.

- model kinds: ``encoder``, ``decoder``, ``encdec`` (``ED`` and ``E-D`` are accepted for ``encdec``);
- p-values of the voxel tests: ``p_shuffle``, ``p_circular``, ``p_phase`` and their q-values ``q_...``; metrics.json
  of older runs said ``p_value`` (the shuffled null) and ``p_value_circular``: :func:`upgrade_metrics` adds the new
  keys to such a file as it is read.
"""

from __future__ import annotations

import logging
import warnings

logger = logging.getLogger(__name__)

MODEL_KINDS = ("encoder", "decoder", "encdec")
MODEL_ALIASES = {"ED": "encdec", "E-D": "encdec", "ed": "encdec", "e-d": "encdec"}

# metrics.json, per part: old key -> new key
METRIC_ALIASES = {
    "encoder": {"p_value": "p_shuffle", "p_value_circular": "p_circular"},
    "decoder": {"p_value": "p_shuffle"},
}


def deprecated(old: str, new: str) -> None:
    """Log (and raise a DeprecationWarning for) an old spelling that was accepted."""
    msg = f"{old} is deprecated, use {new}"
    logger.warning(msg)
    warnings.warn(msg, DeprecationWarning, stacklevel=3)


def model_kind(name: str) -> str:
    """The model kind of ``name``: ``encdec`` for the old ``ED``/``E-D`` (with a deprecation warning)."""
    if name in MODEL_ALIASES:
        deprecated(f"model {name!r}", "'encdec'")
        return MODEL_ALIASES[name]
    return name


def upgrade_metrics(m: dict) -> dict:
    """A metrics.json of any cinevox version with the current keys (old keys kept as they were). In place."""
    if m.get("model") in MODEL_ALIASES:
        m["model"] = MODEL_ALIASES[m["model"]]
    for part, aliases in METRIC_ALIASES.items():
        d = m.get(part)
        if isinstance(d, dict):
            for old, new in aliases.items():
                if new not in d and old in d:
                    d[new] = d[old]
    return m
