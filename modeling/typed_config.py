"""Typed dataclass construction from config dicts: every config section and checkpoint config becomes its
dataclass here, unknown keys refused with the list of known ones, values coerced to the annotated types
(YAML lists to tuples). YAML presets and command-line overrides are `jobs.config`'s."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """`value` as the field's type where that is safe (int -> float, 1000.0 -> 1000 for an int, list -> tuple);
    a value of the wrong scalar type is an error naming the field, before any worker sees it."""
    origin = typing.get_origin(annotation)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return value if value is None or len(args) != 1 else _coerce(value, args[0], name)
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return build_dataclass(annotation, value)
    if annotation in (int, float, bool, str):
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if annotation is int and isinstance(value, float) and value.is_integer():  # `steps: 1e4`
            return int(value)
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ValueError(f"{name} must be {annotation.__name__}, got {value!r} ({type(value).__name__})")
    return value


def build_dataclass(cls: type[T], values: dict | None) -> T:
    """Build `cls` from a dict, rejecting unknown keys with the list of known ones (typos fail loudly)."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**{k: _coerce(v, hints[k], f"{cls.__name__}.{k}") for k, v in values.items()})
