"""EventBridge event patterns (also Lambda event-source filter criteria): the common operators.

Supported: literal values (any listed value matches; arrays in the event match when any element does),
nested objects, ``prefix``, ``suffix``, ``equals-ignore-case``, ``wildcard``, ``anything-but`` (value, list,
or ``{"prefix": ...}``), ``exists``, ``numeric`` and ``$or``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

_MISSING = object()


def matches(pattern: Any, event: Any) -> bool:
    if not isinstance(pattern, Mapping):
        return True
    for key, expected in pattern.items():
        if key == "$or":
            if not any(matches(alternative, event) for alternative in expected):
                return False
            continue
        actual = event.get(key, _MISSING) if isinstance(event, Mapping) else _MISSING
        if isinstance(expected, Mapping):
            if actual is _MISSING or not matches(expected, actual):
                return False
        elif isinstance(expected, list):
            if not _match_values(expected, actual):
                return False
        elif actual != expected:
            return False
    return True


def _match_values(rules: list[Any], actual: Any) -> bool:
    values = actual if isinstance(actual, list) else [actual]
    for rule in rules:
        if isinstance(rule, Mapping) and "exists" in rule:
            if bool(rule["exists"]) == (actual is not _MISSING):
                return True
            continue
        if actual is _MISSING:
            continue
        if any(_match_one(rule, value) for value in values):
            return True
    return False


def _match_one(rule: Any, value: Any) -> bool:
    if not isinstance(rule, Mapping):
        return bool(rule == value)
    if "prefix" in rule:
        prefix = rule["prefix"]
        if isinstance(prefix, Mapping):
            return isinstance(value, str) and value.lower().startswith(
                str(prefix.get("equals-ignore-case", "")).lower()
            )
        return isinstance(value, str) and value.startswith(str(prefix))
    if "suffix" in rule:
        return isinstance(value, str) and value.endswith(str(rule["suffix"]))
    if "equals-ignore-case" in rule:
        return isinstance(value, str) and value.lower() == str(rule["equals-ignore-case"]).lower()
    if "wildcard" in rule:
        return isinstance(value, str) and fnmatch.fnmatchcase(value, str(rule["wildcard"]))
    if "anything-but" in rule:
        return _anything_but(rule["anything-but"], value)
    if "numeric" in rule:
        return _numeric(rule["numeric"], value)
    return False


def _anything_but(but: Any, value: Any) -> bool:
    if isinstance(but, Mapping):
        if "prefix" in but:
            return not (isinstance(value, str) and value.startswith(str(but["prefix"])))
        if "suffix" in but:
            return not (isinstance(value, str) and value.endswith(str(but["suffix"])))
        return True
    return value not in (but if isinstance(but, list) else [but])


def _numeric(ops: Any, value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return False
    for op, bound in zip(ops[::2], ops[1::2], strict=False):
        ok = {
            "=": value == bound,
            ">": value > bound,
            ">=": value >= bound,
            "<": value < bound,
            "<=": value <= bound,
        }.get(op, False)
        if not ok:
            return False
    return True
