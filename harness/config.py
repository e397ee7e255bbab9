"""Typed configs whose fields are the single source of truth for defaults, help, validation and CLI flags.

A field made with `param(...)` carries its help text and its allowed range or choices; `validate` checks a
config against them, and the CLI, `show` and the run record are all derived from the same fields.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

from harness.errors import UserError


def param(default: Any, help: str, *, low: float | None = None, high: float | None = None,
          choices: tuple | None = None) -> Any:
    """A config field: its default, one line of help, and the range (inclusive) or choices it accepts."""
    meta = {"help": help, "low": low, "high": high, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def field_type(cls: type, name: str) -> Any:
    return type_hints(cls)[name]


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """A config class's resolved annotations, once per class: resolving them evaluates every annotation string
    (about 1 ms a class), and validating one config asks for each field's."""
    return typing.get_type_hints(cls)


def parse_value(cls: type, name: str, raw: str) -> Any:
    """Turn a command-line string into the field's declared type, or raise a UserError that says why."""
    kind = field_type(cls, name)
    flag = "--" + name.replace("_", "-")
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind is str:
            return raw
        origin = typing.get_origin(kind)
        if origin is tuple:
            inner = typing.get_args(kind)[0]
            text = raw.strip().strip("[]()")
            return tuple(inner(part) for part in text.split(",") if part.strip()) if text else ()
    except ValueError:
        pass
    else:
        raise TypeError(f"unsupported config field type {kind!r} for {name}")
    raise UserError(f"{flag} expects {type_name(kind)}, got {raw!r}")


def type_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return f"a comma-separated list of {typing.get_args(kind)[0].__name__}"
    return {bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}.get(kind, str(kind))


def _has_type(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)[0]
        return isinstance(value, tuple) and all(_has_type(v, inner) for v in value)
    if isinstance(value, bool):  # bool is an int subclass, but True is not a layer count
        return kind is bool
    if kind is float:  # NaN and ±inf pass every range check, then break training and JSON
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def validate(config: Any) -> None:
    """Check every field against its declared type, range and choices; raise UserError naming the flag."""
    cls = type(config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(cls, f.name)
        if not _has_type(value, kind):
            raise UserError(f"{flag} expects {type_name(kind)}, got {value!r}")
        meta = f.metadata
        if meta.get("choices") is not None and value not in meta["choices"]:
            allowed = ", ".join(str(c) for c in meta["choices"])
            raise UserError(f"{flag}={value} is not allowed; choose one of: {allowed}")
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if meta.get("low") is not None and item < meta["low"]:
                raise UserError(f"{flag}={value} is below its minimum {meta['low']}; {meta['help']}")
            if meta.get("high") is not None and item > meta["high"]:
                raise UserError(f"{flag}={value} is above its maximum {meta['high']}; {meta['help']}")


def replace(config: Any, overrides: dict[str, Any], source: str) -> Any:
    """A copy of `config` with `overrides` applied; unknown names are a UserError naming `source`."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"{source}: unknown parameter {unknown[0]!r} for {type(config).__name__}; "
                        f"known: {', '.join(sorted(names))}")
    coerced = {}
    for name, value in overrides.items():
        kind = field_type(type(config), name)
        if typing.get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        coerced[name] = value
    new = dataclasses.replace(config, **coerced)
    validate(new)
    return new


def as_dict(config: Any) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
            for f in dataclasses.fields(config)}


def stable_hash(obj: Any) -> str:
    """A hash of JSON-able data that does not depend on key order or the Python process."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()



def read_toml(path: Path, what: str) -> dict:
    """A TOML file as a dict, or a UserError naming the file: `what` says what it should have been."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the .toml file itself")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}") from None
