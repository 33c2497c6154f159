"""Where things live in the store (pure paths; Hive-style so any engine can read it).

DATA_DIR/
  store.json                                   format marker
  trades/_schema.parquet, _schema.ndjson       zero-row seeds so an empty store reads as empty
  trades/symbol=BTCUSDT/date=2024-08-08/hour=23/
      trades.ndjson                            the open hour (append-only, the write-ahead log)
      trades-<ns>.ndjson                       sealed, waiting for compaction
      trades.parquet                           the closed hour
  gaps/gaps.ndjson                             ids that could not be fetched
  rejects/rejects-2024-08-08.ndjson            quarantined frames, verbatim
  state/BTCUSDT.json                           ids known missing and being fetched
  state/recorder.json                          live counters of the running recorder
  recorder.lock                                held while a recorder or compaction runs
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from pathlib import Path

__all__ = [
    "ACTIVE_NDJSON",
    "HOUR_MS",
    "PARQUET",
    "hour_dir",
    "hour_dirs",
    "hour_of",
    "parse_hour_dir",
    "sealed_name",
]

HOUR_MS = 3_600_000
TRADES = "trades"
ACTIVE_NDJSON = "trades.ndjson"
PARQUET = "trades.parquet"
GAPS = "gaps/gaps.ndjson"
STATE = "state"
REJECTS = "rejects"
LOCK = "recorder.lock"
MARKER = "store.json"
SCHEMA_PARQUET = "trades/_schema.parquet"
SCHEMA_NDJSON = "trades/_schema.ndjson"

_HOUR_RE = re.compile(r"symbol=([A-Z0-9]+)/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")


def hour_of(trade_time_ms: int) -> int:
    """Hours since the epoch (UTC) of a trade time in ms."""
    return trade_time_ms // HOUR_MS


@lru_cache(maxsize=4096)
def _rel(symbol: str, hour: int) -> str:
    t = time.gmtime(hour * 3600)
    date = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    return f"{TRADES}/symbol={symbol}/date={date}/hour={t.tm_hour:02d}"


def hour_dir(root: Path, symbol: str, hour: int) -> Path:
    """``root/trades/symbol=S/date=YYYY-MM-DD/hour=HH`` for an hour index (see ``hour_of``)."""
    return root / _rel(symbol, hour)


def parse_hour_dir(path: Path) -> tuple[str, int]:
    """(symbol, hour index) of an hour directory; ValueError if it is not one."""
    m = _HOUR_RE.search(path.as_posix())
    if not m:
        raise ValueError(f"not an hour directory: {path}")
    y, mo, d = (int(x) for x in m.group(2).split("-"))
    import calendar

    return m.group(1), calendar.timegm((y, mo, d, int(m.group(3)), 0, 0)) // 3600


def hour_dirs(root: Path, symbol: str | None = None) -> list[Path]:
    """Every hour directory in the store (optionally of one symbol), oldest first."""
    pattern = f"symbol={symbol or '*'}/date=*/hour=*"
    return sorted(p for p in (root / TRADES).glob(pattern) if p.is_dir())


def sealed_name(now_ns: int) -> str:
    """Name for an NDJSON file taken out of the writer's hands, awaiting compaction."""
    return f"trades-{now_ns}.ndjson"
