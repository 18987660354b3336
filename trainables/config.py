"""Run configuration: frozen dataclasses built from the flat dicts Ray Tune passes around.

Each trainer declares one frozen dataclass whose fields are every knob of a run, and one
preset table (`tiny` for tests, `small` for a CPU laptop, `paper` for the published
setting) of flat deltas on the dataclass defaults. `build_config` merges preset and
overrides, rejects unknown keys, coerces strings from the command line (`--set lr=1e-3`)
to the field's type and calls the dataclass's `validate()` once.
"""

import dataclasses
import json
import types
import typing
from typing import Any, Mapping

from trainables.errors import UserInputError


def build_config(cls, presets: Mapping[str, Mapping[str, Any]], preset: str,
                 overrides: Mapping[str, Any] | None = None):
    """Config of type `cls` = dataclass defaults <- presets[preset] <- overrides."""
    if preset not in presets:
        raise UserInputError(f"preset={preset!r}: expected one of {sorted(presets)}")
    flat = {**presets[preset], **(overrides or {})}
    if "preset" in field_types(cls):
        flat.setdefault("preset", preset)
    return from_flat(cls, flat)


def from_flat(cls, flat: Mapping[str, Any]):
    """Instantiate `cls` from a flat dict; unknown keys and ill-typed values are errors."""
    types_ = field_types(cls)
    unknown = sorted(set(flat) - set(types_))
    if unknown:
        raise UserInputError(f"unknown config key(s) {unknown} for {cls.__name__}; "
                             f"known: {sorted(types_)}")
    values = {key: coerce(key, value, types_[key]) for key, value in flat.items()}
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def to_flat(cfg) -> dict[str, Any]:
    """The flat dict of a config (tuples become lists, for JSON and MLflow params)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """`["lr=1e-3", "lk=false"]` -> {"lr": "1e-3", "lk": "false"} (typed later by from_flat)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert `value` (possibly a command-line string) to the annotated type `typ`."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if origin is typing.Literal:
        literal_type = type(args[0])
        value = coerce(key, value, literal_type)
        if value not in args:
            raise UserInputError(f"{key}={value!r}: expected one of {list(args)}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = json.loads(value) if value.startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"{key}={value!r}: expected a list")
        item_type = args[0] if args else str
        return tuple(coerce(key, v, item_type) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UserInputError(f"{key}={value!r}: expected true or false")
    if typ in (int, float, str):
        try:
            if typ is int:
                number = float(value)  # accepts "1e3" from the command line
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return typ(value)
        except (TypeError, ValueError):
            raise UserInputError(f"{key}={value!r}: expected {typ.__name__}") from None
    return value
