"""Checks of values that come from users, configs and files: one definition of each kind of value."""

from __future__ import annotations

import math
from typing import Any

from diffuse import DiffuseError

TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's `true` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_in(value: Any, low: int, high: int, name: str) -> int:
    """`value` must be an integer in low..high (inclusive)."""
    if not is_int(value) or not low <= value <= high:
        raise DiffuseError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def typed(value: Any, annotation: Any, name: str) -> Any:
    """`value` checked against a field's type ("int", "float", "bool", "str"; other types pass): ints are
    accepted for floats (and become floats), bools are not ints."""
    kind = TYPES.get(annotation) if isinstance(annotation, str) else (
        annotation if annotation in TYPES.values() else None)
    if kind is None:
        return value
    if kind is float and is_int(value):
        return float(value)
    if (kind is int and not is_int(value)) or not isinstance(value, kind):
        raise DiffuseError(f"{name} must be {kind.__name__}, got {value!r}")
    return value


def seed(value: Any) -> int:
    """Seeds are integers in 0..2^40 (room for per-image and per-rank offsets)."""
    if not is_int(value) or not 0 <= value < 2**40:
        raise DiffuseError(f"seed must be an integer in 0..2^40, got {value!r}")
    return value


def doubles_to(small: int, big: int) -> bool:
    """Whether big is small times a power of 2 (1, 2, 4, ...), both >= 1: a walk that doubles from small reaches big."""
    ratio = big // small if small >= 1 else 0
    return ratio >= 1 and ratio * small == big and not ratio & (ratio - 1)


def weight(value: Any, name: str, what: str) -> float:
    """A loss term's weight: a finite number >= 0 (0: the term is off); `what` names the term in the error."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise DiffuseError(f"{name}={value!r} must be a finite weight >= 0 ({what}; 0: none)")
    return float(value)
