"""The vocabulary of checks for values people give: YAML keys, command-line flags, studio fields.

A rule checks one value and returns it, or raises ValueError with one line that names where the value
was given (a key path such as `methods.ddrm.eta`, or a flag such as `--budget`), the value, and what is
allowed:

    methods.ddrm.eta must be a number in [0, 1], got 1.5

Rules check the shape first (a mapping, a list, an integer …) and then the range, so no value is ever
used before its type is known. `Fields` checks a mapping's keys (unknown and missing ones) and each of
its values with its own rule; `ListOf`, `MapOf` and `NullOr` compose rules; `plain_name` and `confined`
guard the names that become paths.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

MAX_SEED = 2**63 - 1


def key_path(where: str, key) -> str:
    """`where` extended by a mapping key: `methods.ddrm`, `methods.nested.splits.20`."""
    return f"{where}.{key}" if where else str(key)


def item_path(where: str, index: int) -> str:
    """`where` extended by a list position: `tasks[2]`."""
    return f"{where}[{index}]"


def shown(value) -> str:
    """A value in YAML's words: true / false, null, nan / inf, lists and mappings in flow style; text
    quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def refuse(where: str, what: str, value) -> ValueError:
    return ValueError(f"{where} must be {what}, got {shown(value)}")


class Integer:
    """A whole number (never a bool or a float) in [low, high] (None: unbounded)."""

    def __init__(self, low: int | None = None, high: int | None = None):
        self.low, self.high = low, high

    @property
    def what(self) -> str:
        if self.low == 1 and self.high is None:
            return "a positive integer"
        if self.high is None:
            return "an integer" if self.low is None else f"an integer of at least {self.low}"
        return f"an integer from {self.low} to {self.high}"

    def __call__(self, value, where: str):
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse(where, self.what, value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise refuse(where, self.what, value)
        return value


class Number:
    """A finite real number (an int or a float, never a bool, NaN or ±inf) in [low, high]; `above`
    excludes `low` itself (a positive number)."""

    def __init__(self, low: float | None = None, high: float | None = None, above: bool = False):
        self.low, self.high, self.above = low, high, above

    @property
    def what(self) -> str:
        if self.low is not None and self.high is not None:
            return f"a number in {'(' if self.above else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"a finite number {'>' if self.above else '≥'} {self.low:g}"
        return "a finite number"

    def __call__(self, value, where: str):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse(where, self.what, value)
        number = float(value) if abs(value) <= sys.float_info.max else math.inf  # 10**400 is no float
        below = self.low is not None and (number < self.low or (self.above and number == self.low))
        if not math.isfinite(number) or below or (self.high is not None and number > self.high):
            raise refuse(where, self.what, value)
        return number


class Flag:
    what = "true or false"

    def __call__(self, value, where: str):
        if not isinstance(value, bool):
            raise refuse(where, self.what, value)
        return value


class Text:
    """A non-empty string."""
    what = "a non-empty text"

    def __call__(self, value, where: str):
        if not isinstance(value, str) or not value.strip():
            raise refuse(where, self.what, value)
        return value


class Choice:
    """One of `options` (None among them allows null)."""

    def __init__(self, *options):
        self.options = options
        self.what = "one of " + ", ".join("null" if o is None else str(o) for o in options)

    def __call__(self, value, where: str):
        if isinstance(value, bool) or value not in self.options:
            raise refuse(where, self.what, value)
        return value


class Name:
    """A plain name, used as a file or folder name (see `plain_name`)."""
    what = "a plain name (no / or \\, not . or .., not starting with a dot)"

    def __call__(self, value, where: str):
        return plain_name(value, where)


def is_plain_name(value) -> bool:
    """Whether `value` can name a file or folder of its own: text without separators, not `.` or `..`, not
    hidden (no leading dot), no control characters."""
    return (isinstance(value, str) and bool(value.strip()) and not value.startswith(".")
            and not any(c in value for c in "/\\") and not any(ord(c) < 32 for c in value))


def plain_name(value, where: str) -> str:
    """`value` when `is_plain_name`, else ValueError naming `where`."""
    if not is_plain_name(value):
        raise refuse(where, Name.what, value)
    return value


class ListOf:
    """A list of one or more items (exactly `count` when given), each checked by `item`."""

    def __init__(self, item, count: int | None = None):
        self.item, self.count = item, count
        self.what = f"a list of {count or 'one or more'} items, each {item.what}"

    def __call__(self, value, where: str):
        if not isinstance(value, list) or not value or (self.count is not None and len(value) != self.count):
            raise refuse(where, self.what, value)
        return [self.item(entry, item_path(where, i)) for i, entry in enumerate(value)]


class MapOf:
    """A mapping of one or more entries (`least` 0: possibly empty); keys checked by `key`, values by `value`."""

    def __init__(self, key, value, least: int = 1):
        self.key, self.value, self.least = key, value, least
        self.what = f"a mapping of {'one or more ' if least else ''}`key: value` entries"

    def __call__(self, data, where: str):
        if not isinstance(data, dict) or len(data) < self.least:
            raise refuse(where, self.what, data)
        checked = {}
        for key, value in data.items():
            self.key(key, key_path(where, key))
            checked[key] = self.value(value, key_path(where, key))
        return checked


class Fields:
    """A mapping with `required` and `optional` keys, each checked by its own rule; other keys refused.
    A value of an optional key may be null when its rule accepts None."""

    what = "a mapping of `key: value` lines"

    def __init__(self, required: dict | None = None, optional: dict | None = None):
        self.required, self.optional = dict(required or {}), dict(optional or {})

    def __call__(self, data, where: str):
        if not isinstance(data, dict):
            raise refuse(where, self.what, data)
        rules = {**self.required, **self.optional}
        unknown = [key for key in data if key not in rules]
        if unknown:
            raise ValueError(f"{key_path(where, unknown[0])} is not a key here: "
                             f"{'the allowed keys are ' + ', '.join(rules) if rules else 'it takes none'}")
        missing = [key for key in self.required if key not in data]
        if missing:
            raise ValueError(f"{key_path(where, missing[0])} is missing ({self.required[missing[0]].what})")
        return {key: rules[key](value, key_path(where, key)) for key, value in data.items()}


class NullOr:
    """null (YAML `~`, or a key with nothing after it), or a value checked by `rule`."""

    def __init__(self, rule):
        self.rule, self.what = rule, f"null or {rule.what}"

    def __call__(self, value, where: str):
        return None if value is None else self.rule(value, where)


def confined(root, path, where: str) -> Path:
    """`path` resolved (links followed), refused unless it lies inside `root` (resolved too)."""
    root, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{where} resolves to {resolved}, outside the output folder {root}")
    return resolved


def first_difference(before, now, where: str = ""):
    """(key path, value before, value now) of the first difference between two trees of mappings and
    lists, or None when they are equal."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in [*before, *(k for k in now if k not in before)]:
            found = first_difference(before.get(key), now.get(key), key_path(where, key))
            if found:
                return found
        return None
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        for i, (old, new) in enumerate(zip(before, now)):
            found = first_difference(old, new, item_path(where, i))
            if found:
                return found
        return None
    return None if before == now else (where, before, now)


class Anything:
    """Any value (checked later by what uses it, e.g. an operator's own keyword arguments)."""
    what = "any value"

    def __call__(self, value, where: str):
        return value
