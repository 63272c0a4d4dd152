"""Durations written in config files, dbt-style: `30s`, `5m`, `6h`, `3d`, `2w`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration(text: str | int | float) -> timedelta:
    """`"90m"` → 90 minutes; a bare number is minutes. Refuses anything else, naming it."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return timedelta(minutes=float(text))
    match = _PATTERN.match(str(text))
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 6h, 3d)")
    value, unit = match.groups()
    return timedelta(**{_UNITS[unit]: float(value)})


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling: 300 s → `5m`, 72 h → `3d`."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def floor_hour(moment: datetime) -> datetime:
    """The start of the UTC hour containing `moment`."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def epoch_seconds(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds())


def from_epoch(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=float(seconds))
