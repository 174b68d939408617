"""Parsing of durations (`1h`, `15m`, `7d`) and instants (ISO 8601 or epoch seconds)."""

from __future__ import annotations

import datetime as dt
import re

from msewatch.errors import InputError

__all__ = ["format_duration", "parse_duration", "parse_instant"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


MAX_DURATION_SECONDS = 1000 * 366 * 86_400  # windows past this leave the timestamp range


def parse_duration(text: str, *, option: str = "duration") -> int:
    """Seconds in a duration such as `90s`, `15m`, `1h`, `7d` or `2w`.

    >>> parse_duration("1h")
    3600
    """
    match = _DURATION.match(str(text).lower())
    if not match or int(match.group(1)) == 0:
        raise InputError(
            f"{option} must be a positive whole number followed by s, m, h, d or w "
            f"(like 15m, 1h, 7d); got {text!r}."
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise InputError(f"{option} must be at most 1000 years; got {text!r}.")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact spelling of a duration: 3600 → '1h'."""
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_instant(text: str, *, option: str = "time") -> dt.datetime:
    """A UTC instant from ISO 8601 (naive means UTC) or epoch seconds."""
    raw = str(text).strip()
    try:
        return dt.datetime.fromtimestamp(float(raw), tz=dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{option} must be an ISO 8601 time (2024-05-01T12:00:00Z) or epoch seconds; got {text!r}."
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)
