"""What ``recorder status`` reports: per symbol, how complete and how current the store is,
how many hour files and day files hold it, and which stored Parquet files cannot be read
(``recorder compact --repair`` mends them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from recorder.store import last_trade, layout, read_gaps, read_missing, unreadable_parquet
from recorder.store.files import day_file_hours
from recorder.store.lock import holder_pid

__all__ = ["store_status"]


def _count_lines(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
    return n


def _held(day_file: Path) -> list[int]:
    """The hours a day file holds; none if it cannot be read (listed as unreadable) or was
    merged again meanwhile."""
    try:
        return day_file_hours(day_file)
    except Exception:
        return []


def store_status(root: Path, now_ms: int | None = None) -> dict[str, Any]:
    """A JSON-ready summary of the store; works while the recorder writes it."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    live: dict[str, Any] = {}
    state = root / layout.STATE / "recorder.json"
    if state.exists():
        live = orjson.loads(state.read_bytes())
    symbols = sorted(set(layout.symbol_dirs(root)) | set(live.get("symbols", {})))
    rows = []
    for s in symbols:
        dirs = layout.hour_dirs(root, s)
        day_files = [d / layout.PARQUET for d in layout.day_dirs(root, s)]
        day_files = [f for f in day_files if f.exists()]
        last = last_trade(root, s, skip_unreadable=True)
        gaps = read_gaps(root, s)
        rows.append(
            {
                "symbol": s,
                "last_trade_id": last[0] if last else None,
                "last_trade_time": (
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(last[1] / 1000))
                    + f".{last[1] % 1000:03d}Z"
                    if last
                    else None
                ),
                "behind_seconds": round((now_ms - last[1]) / 1000, 3) if last else None,
                "hours_parquet": sum((d / layout.PARQUET).exists() for d in dirs),
                "hours_ndjson": sum(any(d.glob("*.ndjson")) for d in dirs),
                "day_files": len(day_files),
                "hours_in_day_files": sum(len(_held(f)) for f in day_files),
                "gaps": len(gaps),
                "gap_trades": sum(g["last_id"] - g["first_id"] + 1 for g in gaps),
                "missing_being_fetched": sum(m.last - m.first + 1 for m in read_missing(root, s)),
                "unreadable_parquet": [
                    {"path": str(path), "reason": why} for path, why in unreadable_parquet(root, s)
                ],
            }
        )
    rejects = sorted((root / layout.REJECTS).glob("*.ndjson"))
    pid = holder_pid(root)
    return {
        "data_dir": str(root),
        "recorder_running": pid is not None,
        "pid": pid,
        "rejects": _count_lines(rejects),
        "stats": live.get("stats", {}) if pid is not None else {},
        "rest_unavailable_since": live.get("rest_unavailable_since") if pid is not None else None,
        "symbols": rows,
    }
