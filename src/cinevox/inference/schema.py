"""The schema of a MODEL_DIR's ``config.json``: each field's type, range or choices, checked before any other file
of the folder is read. A config that breaks it is refused with one line naming the field (``preparation.tr``),
its value and what it must be.

A field is a :class:`Field` (a leaf), a ``dict`` of fields (an object whose unknown keys are refused), or
:class:`Anything` (an object kept as written: metrics, provenance), :class:`Group` (an optional object of
fields) or :class:`Mapping` (free keys, one kind of value). Optional fields may be absent or ``null``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cinevox.data.prepare import CONFOUND_LEVELS, CONFOUND_STRATEGIES, CONFOUND_VALUES

#: values of the preparation choices a model can have been trained with
DETRENDS = ("mean", "linear")
FRAME_INTENSITIES = ("raw", "minmax")
FRAME_SAMPLINGS = ("timestamp", "linspace")
FRAME_RESIZES = ("area", "skimage")
NON_STEADY_STATE = ("drop",)  # volumes fMRIPrep marks non-steady-state are left out (prepare and decode)
ZSCORE_WINDOWS = ("stimulus",)  # each run's stimulus volumes (the film segment), as prepare does
MODEL_KINDS = ("encoder", "decoder", "encdec")


class SchemaError(ValueError):
    """A field of config.json that breaks the schema; ``field`` is its dotted name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Field:
    """A leaf: JSON type(s), optional bounds (inclusive), choices, list items, optional or not."""

    kind: type | tuple[type, ...]
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None
    items: Field | None = None
    length: int | None = None
    optional: bool = False
    pattern: str | None = None


@dataclass(frozen=True)
class Anything:
    """An object kept as written (not used to build the model): only its JSON type is checked."""

    kind: type = dict
    optional: bool = True


@dataclass(frozen=True)
class Mapping:
    """An object of free keys whose values all follow one field (the sha256 table)."""

    values: Field
    optional: bool = False


@dataclass(frozen=True)
class Group:
    """An object of fields that may be absent or null as a whole."""

    fields: dict


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
          dict: "an object"}

SHA256 = Field(str, pattern=r"[0-9a-f]{64}")

CONFOUNDS = Group({
    "strategy": Field(list, items=Field(str, choices=CONFOUND_STRATEGIES)),
    "motion": Field(str, choices=CONFOUND_LEVELS, optional=True),
    "wm_csf": Field(str, choices=CONFOUND_LEVELS, optional=True),
    "global_signal": Field(str, choices=CONFOUND_LEVELS, optional=True),
    "compcor": Field(str, choices=CONFOUND_VALUES["compcor"], optional=True),
    "n_compcor": Field(int, lo=1, hi=1000, optional=True),
    "fd_threshold": Field(float, lo=0, hi=100, optional=True),
    "std_dvars_threshold": Field(float, lo=0, hi=100, optional=True),
})

PREPARATION = {
    "tr": Field(float, lo=0.01, hi=60.0),
    "delay_trs": Field(int, lo=0, hi=100),
    "frames_per_tr": Field(int, lo=2, hi=1024),
    "frame_size": Field(int, lo=8, hi=1024),
    "detrend": Field(str, choices=DETRENDS, optional=True),
    "frame_intensity": Field(str, choices=FRAME_INTENSITIES, optional=True),
    "frame_sampling": Field(str, choices=FRAME_SAMPLINGS, optional=True),
    "frame_resize": Field(str, choices=FRAME_RESIZES, optional=True),
    "confounds": CONFOUNDS,
    "non_steady_state": Field(str, choices=NON_STEADY_STATE, optional=True),
    "zscore_window": Field(str, choices=ZSCORE_WINDOWS, optional=True),
    "film_trs": Mapping(Field(int, lo=1, hi=10_000_000), optional=True),
}

MODEL_CONFIG = Group({
    "kind": Field(str, choices=MODEL_KINDS),
    "n_voxels": Field(int, lo=1, hi=10_000_000),
    "n_frames": Field(int, lo=2, hi=1024),
    "frame_size": Field(int, lo=8, hi=1024),
    "dropout": Field(float, lo=0, hi=1),
    "final_batchnorm": Field(bool),
    "subjects": Field(list, items=Field(str), optional=True),  # a --target subjects model's viewers
    "subject_rank": Field(int, lo=1, hi=100_000, optional=True),
    "subject_heads": Field(str, choices=("centered", "free"), optional=True),
})

RIDGE = Group({
    "features": Field(dict),
    "delays": Field(list, items=Field(int, lo=-100, hi=100)),
    "spaces": Field(list, items=Field(str), optional=True),
    "n_fit_samples": Field(int, lo=0, optional=True),
    "n_features": Field(int, lo=0, optional=True),
    "cv": Field((int, str), optional=True),
    "backend": Field(str, optional=True),
    "pretrained": Field(list, items=Field(str), optional=True),  # FEATURES_DIR:LAYER bands (cinevox features)
    "features_pins": Field(dict, optional=True),  # {FEATURES_DIR: {key, pca}} at fit time; predict checks it
})

CONFIG = {
    "format": Field(str),
    "format_version": Field(int, lo=1),
    "cinevox_version": Field(str, optional=True),
    "kind": Field(str, choices=(*MODEL_KINDS, "ridge")),
    "n_voxels": Field(int, lo=1, hi=10_000_000),
    "grid_shape": Field(list, items=Field(int, lo=1, hi=4096), length=3, optional=True),
    "space_code": Field(int, lo=0, hi=5, optional=True),
    "preparation": PREPARATION,
    "sha256": Mapping(SHA256),
    "model_config": MODEL_CONFIG,
    "ridge": RIDGE,
    "source": Anything(),
    "normalisation": Anything(),
    "profile": Anything(),
    "data": Anything(),
    "training": Anything(),
    "test_metrics": Anything(),
    "heads": Anything(),  # a --target subjects model: its per-viewer read-outs / input layers and the average viewer
}


def _type_ok(value: Any, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)


def _leaf(name: str, value: Any, f: Field) -> None:
    if not _type_ok(value, f.kind):
        raise SchemaError(name, f"{value!r} is not {_type_name(f.kind)}")
    if f.choices is not None and value not in f.choices:
        raise SchemaError(name, f"unknown choice {value!r}; expected one of {', '.join(map(str, f.choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or (f.lo is not None and value < f.lo) or (f.hi is not None and value > f.hi):
            rng = f"[{f.lo if f.lo is not None else '-inf'}, {f.hi if f.hi is not None else 'inf'}]"
            raise SchemaError(name, f"{value!r} is outside {rng}")
    if f.pattern is not None and not re.fullmatch(f.pattern, value):
        raise SchemaError(name, f"{value!r} does not match {f.pattern}")
    if isinstance(value, list):
        if f.length is not None and len(value) != f.length:
            raise SchemaError(name, f"{len(value)} items, expected {f.length}")
        if f.items is not None:
            for k, v in enumerate(value):
                _leaf(f"{name}[{k}]", v, f.items)


def _object(prefix: str, obj: Any, spec: dict) -> None:
    if not isinstance(obj, dict):
        raise SchemaError(prefix.rstrip("."), f"{obj!r} is not an object")
    unknown = sorted(set(obj) - set(spec))
    if unknown:
        raise SchemaError(prefix + unknown[0], f"unknown field (known: {', '.join(spec)})")
    for key, f in spec.items():
        name = prefix + key
        value = obj.get(key)
        if value is None:
            if isinstance(f, dict) or (isinstance(f, (Field, Mapping)) and not f.optional):
                raise SchemaError(name, "missing" if key not in obj else "null")
            continue
        if isinstance(f, dict):
            _object(name + ".", value, f)
        elif isinstance(f, Group):
            _object(name + ".", value, f.fields)
        elif isinstance(f, Mapping):
            if not isinstance(value, dict):
                raise SchemaError(name, f"{value!r} is not an object")
            for k, v in value.items():
                _leaf(f"{name}.{k}", v, f.values)
        elif isinstance(f, Anything):
            if not isinstance(value, f.kind):
                raise SchemaError(name, f"{value!r} is not {_type_name(f.kind)}")
        else:
            _leaf(name, value, f)


def check_config(cfg: Any) -> None:
    """Raise :class:`SchemaError` naming the first field of ``cfg`` (a parsed config.json) that breaks the schema,
    and when the model's part for its kind is missing (``model_config`` of a CNN, ``ridge`` of a ridge model)."""
    _object("", cfg, CONFIG)
    kind = cfg["kind"]
    need = "ridge" if kind == "ridge" else "model_config"
    if cfg.get(need) is None:
        raise SchemaError(need, f"missing (a {kind} model needs it)")
    if need == "model_config" and cfg[need]["kind"] != kind:
        raise SchemaError("model_config.kind", f"{cfg[need]['kind']!r} disagrees with kind {kind!r}")
    if need == "model_config":
        for a, b in (("n_voxels", "n_voxels"), ("n_frames", "preparation.frames_per_tr"),
                     ("frame_size", "preparation.frame_size")):
            want = cfg
            for part in b.split("."):
                want = want[part]
            if cfg[need][a] != want:
                raise SchemaError(f"model_config.{a}", f"{cfg[need][a]} disagrees with {b} {want}")


__all__ = ["CONFIG", "SchemaError", "check_config"]
