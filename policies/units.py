"""Units in configuration values: durations ("50ms", "1m30s") and sizes ("1MiB").

Both the control core's parameter models and the YAML schema use these types,
so they live at the bottom of the import graph. Internally every duration is a
float of seconds and every size an int of bytes.

A bare number is ambiguous in a config file (is `max_wait: 50` seconds or
milliseconds?), so when the loader validates YAML it sets the validation
context flag `units_required` and a bare number is refused with the fix.
Python callers pass plain seconds and bytes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

UNITS_REQUIRED = "units_required"

_DURATION_UNITS_S = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(us|µs|ms|s|m|h|d)")
_DURATION_TEXT = re.compile(rf"^(?:{_DURATION_PART.pattern})+$")

_SIZE_UNITS_BYTES = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_TEXT = re.compile(r"^(\d+(?:\.\d*)?)\s*([kmg]i?b|b)?$", re.IGNORECASE)


def parse_duration_s(text: str) -> float:
    """Seconds in a duration string such as "250ms", "2s", "1m30s" or "24h"."""
    compact = text.strip().replace(" ", "")
    if not _DURATION_TEXT.match(compact):
        raise ValueError(text)
    return sum(float(n) * _DURATION_UNITS_S[u] for n, u in _DURATION_PART.findall(compact))


def duration_text(seconds: float) -> str:
    """Seconds as a config writes them: "5s", "50ms", "10m", "1h" (the largest unit that divides them)."""
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def schema_defaults_as_text(schema: Any) -> Any:
    """A JSON Schema whose duration fields show their defaults as the text a config writes ("5s", not 5.0)."""
    if isinstance(schema, dict):
        fixed = {key: schema_defaults_as_text(value) for key, value in schema.items()}
        default = fixed.get("default")
        if fixed.get("pattern") == _DURATION_TEXT.pattern and isinstance(default, int | float):
            fixed["default"] = duration_text(float(default))
        return fixed
    if isinstance(schema, list):
        return [schema_defaults_as_text(item) for item in schema]
    return schema


def parse_size_bytes(text: str) -> int:
    """Bytes in a size string such as "512KiB", "10MB" or "1048576"."""
    match = _SIZE_TEXT.match(text.strip())
    if not match:
        raise ValueError(text)
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS_BYTES[(unit or "").lower()])


def _units_required(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(UNITS_REQUIRED))


def _to_seconds(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, bool):
        return value  # let the float validator refuse it
    if isinstance(value, (int, float)):
        if _units_required(info) and value != 0:
            raise PydanticCustomError(
                "duration_unit",
                'expected a duration with a unit like "50ms", "2s" or "5m"; a bare number is ambiguous',
            )
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration_s(value)
        except ValueError:
            raise PydanticCustomError(
                "duration",
                'expected a duration like "50ms", "2s", "5m" or "1h30m"',
            ) from None
    return value


def _to_bytes(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        try:
            return parse_size_bytes(value)
        except ValueError:
            raise PydanticCustomError("size", 'expected a size like "64KiB", "10MiB" or a number of bytes') from None
    return value


_DURATION_SCHEMA = {
    "type": "string",
    "pattern": _DURATION_TEXT.pattern,
    "examples": ["50ms", "2s", "5m"],
}
_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": _SIZE_TEXT.pattern, "examples": ["64KiB", "10MiB"]},
    ]
}

MAX_DURATION_S = 30 * 86_400.0  # no setting waits longer: a larger value is a slip of the unit
MIN_TIMER_S = 0.01  # a loop that runs more often than this takes a core and measures nothing


def _within_a_month(seconds: float) -> float:
    if seconds > MAX_DURATION_S:
        raise PydanticCustomError("duration_too_long", "at most 30 days (720h); is the unit right?")
    return seconds


def _a_timer(seconds: float) -> float:
    if seconds < MIN_TIMER_S:
        raise PydanticCustomError(
            "timer_too_short", "at least 10ms: a loop that runs more often takes a core and measures nothing"
        )
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    Field(ge=0),
    AfterValidator(_within_a_month),
    WithJsonSchema(_DURATION_SCHEMA),
]
"""Seconds; written "50ms", "2s", "5m", "1h30m" in YAML; at most 30 days."""

Timer = Annotated[Duration, AfterValidator(_a_timer)]
"""A Duration that paces a loop (a tick, a poll, a window's slot): at least 10 ms."""

ByteSize = Annotated[
    int,
    BeforeValidator(_to_bytes),
    Field(ge=0),
    WithJsonSchema(_SIZE_SCHEMA),
]
"""Bytes; written "64KiB", "10MiB" or a plain integer in YAML."""
