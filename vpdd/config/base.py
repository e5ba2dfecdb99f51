"""Shared machinery for the typed config groups.

Each group is a dataclass. OmegaConf's structured configs reject unknown keys and wrong types when
``params.yaml`` is merged onto the schema; value checks (ranges, choices, cross-field rules) are declared
per dataclass in ``checks()`` and run by :func:`validate_tree`, which knows every field's full dotted key
so errors can name it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot be used: the message names the file, the key, the value and what was
    expected."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One value rule: ``ok`` is False when ``key`` (relative to the dataclass) holds a bad value."""

    key: str
    ok: bool
    expected: str


class Validated:
    """Mixin for config dataclasses: override :meth:`checks` to declare value rules."""

    def checks(self) -> Iterable[Check]:
        return ()


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate_tree(obj: Any, prefix: str = "") -> list[str]:
    """Run every ``checks()`` in a tree of dataclasses; return one message per failed rule."""
    problems: list[str] = []
    if isinstance(obj, Validated):
        for check in obj.checks():
            if not check.ok:
                key = f"{prefix}{check.key}"
                try:
                    value = _lookup(obj, check.key)
                except AttributeError:
                    value = "<unset>"
                problems.append(f"{key}={value!r}: expected {check.expected}")
    if dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            child = getattr(obj, field.name)
            # every number must be finite: inf / nan pass the range checks written as comparisons
            values = child if isinstance(child, list | tuple) else [child]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                problems.append(f"{prefix}{field.name}={child!r}: expected a finite number")
            if dataclasses.is_dataclass(child):
                problems.extend(validate_tree(child, f"{prefix}{field.name}."))
    return problems


def positive(obj: Any, *keys: str) -> list[Check]:
    """Checks that each named numeric field is > 0."""
    return [Check(k, _lookup(obj, k) > 0, "a value > 0") for k in keys]


def distinct(obj: Any, key: str) -> Check:
    """Checks that the list ``key`` names each entry once."""
    values = list(_lookup(obj, key))
    dups = sorted({v for v in values if values.count(v) > 1})
    return Check(key, not dups, f"each name once; repeated: {dups}")


def one_of(obj: Any, key: str, choices: Iterable[Any]) -> Check:
    choices = tuple(choices)
    return Check(key, _lookup(obj, key) in choices, f"one of {list(choices)}")


def in_range(obj: Any, key: str, low: float, high: float) -> Check:
    value = _lookup(obj, key)
    return Check(key, low <= value <= high, f"a value in [{low}, {high}]")
