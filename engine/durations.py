"""Durations as users write them: ``250ms``, ``20s``, ``5m``, ``1h``, ``1d`` (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from engine.errors import InputError

__all__ = ["format_ms", "parse_duration", "parse_durations", "parse_time"]

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def parse_duration(text: str) -> int:
    """``"20s"`` -> 20000 (milliseconds); InputError for anything else."""
    m = _RE.match(text)
    if not m or int(m.group(1)) == 0:
        raise InputError(
            f"cannot read duration {text!r}; write a positive whole number with a unit: "
            "250ms, 20s, 5m, 1h or 1d"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_durations(text: str) -> list[tuple[str, int]]:
    """``"1m,5m"`` -> ``[("1m", 60000), ("5m", 300000)]`` (label as given, milliseconds)."""
    out = [(part.strip(), parse_duration(part)) for part in text.split(",") if part.strip()]
    if not out:
        raise InputError("no duration given; write for example 1m,5m,15m,30m")
    return out


def format_ms(ms: int) -> str:
    """60000 -> ``"1m"``: the largest unit that divides ``ms`` exactly."""
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"


def parse_time(text: str) -> int:
    """ISO 8601 (``2024-08-08``, ``2024-08-08T23:00:00Z``; naive means UTC) -> UTC ms."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"cannot read time {text!r}; write ISO 8601 like 2024-08-08T23:00:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)
