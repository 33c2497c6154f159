"""Where things live in the store (pure paths; Hive-style so any engine can read it).

DATA_DIR/
  store.json                                   format marker
  trades/_schema.parquet, _schema.ndjson       zero-row seeds so an empty store reads as empty
  trades/symbol=BTCUSDT/date=2024-08-08/hour=23/
      trades.ndjson                            the open hour (append-only, the write-ahead log)
      trades-<ns>.ndjson                       sealed, waiting for compaction
      trades.parquet                           the closed hour (an hour file)
  trades/symbol=BTCUSDT/date=2024-08-07/
      trades.parquet                           a merged day (a day file): its hours' rows, same
                                               columns, sorted by trade id
  gaps/gaps.ndjson                             ids that could not be fetched
  rejects/rejects-2024-08-08.ndjson            quarantined frames, verbatim
  state/BTCUSDT.json                           ids known missing and being fetched
  state/recorder.json                          live counters of the running recorder
  state/generation                             bumped around every deletion of stored files
  recorder.lock                                held while a recorder or compaction runs

A day file sits in its date directory, beside the hour directories it replaces
(``recorder compact --days`` merges a closed day and then deletes its hour files; see
``recorder/store/days.py``). Normally a day has either hour files or a day file. A crash
during a merge, or trades stored into the day after it was merged (a late backfill, an archive
import), leave both: every reader then deduplicates that day on the trade id, and the next
merge folds the hours in. The key-value metadata ``tapewatch.hours`` of a day file lists the
hours of the day (0-23) it holds. Generic Hive readers glob the two kinds separately
(``trades/*/*/*/trades.parquet`` and ``trades/*/*/trades.parquet``: a day file has no
``hour=`` key) and deduplicate on ``(symbol, trade_id)``.

Only well-formed partitions are part of the store: ``symbol=`` ASCII capitals and digits,
``date=`` a real calendar day, ``hour=`` 00 to 23. Anything else under ``trades/`` (a copied
``hour=23.bak``, ``date=garbage``) is skipped by every reader, with one warning per directory.
"""

from __future__ import annotations

import calendar
import datetime
import logging
import re
import time
from functools import lru_cache
from pathlib import Path, PurePath

__all__ = [
    "ACTIVE_NDJSON",
    "DAY_MS",
    "HOUR_MS",
    "PARQUET",
    "day_dir",
    "day_dirs",
    "day_of",
    "hour_dir",
    "hour_dirs",
    "hour_of",
    "is_symbol",
    "parse_day_dir",
    "parse_hour_dir",
    "sealed_name",
    "symbol_dirs",
]

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
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
GENERATION = "state/generation"

_SYMBOL_RE = re.compile(r"[A-Z0-9]+")
_HOUR_RE = re.compile(r"symbol=([A-Z0-9]+)/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")
_DAY_RE = re.compile(r"symbol=([A-Z0-9]+)/date=(\d{4}-\d{2}-\d{2})$")
_warned: set[Path] = set()
log = logging.getLogger("recorder")


def is_symbol(name: str) -> bool:
    """True for a symbol as the store spells it: ASCII capitals and digits (``BTCUSDT``)."""
    return _SYMBOL_RE.fullmatch(name) is not None


def hour_of(trade_time_ms: int) -> int:
    """Hours since the epoch (UTC) of a trade time in ms."""
    return trade_time_ms // HOUR_MS


@lru_cache(maxsize=4096)
def _rel(symbol: str, hour: int) -> str:
    t = time.gmtime(hour * 3600)
    date = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    return f"{TRADES}/symbol={symbol}/date={date}/hour={t.tm_hour:02d}"


def day_of(trade_time_ms: int) -> int:
    """Days since the epoch (UTC) of a trade time in ms."""
    return trade_time_ms // DAY_MS


def day_dir(root: Path, symbol: str, day: int) -> Path:
    """``root/trades/symbol=S/date=YYYY-MM-DD`` for a day index (see ``day_of``); its day
    file, if merged, is ``day_dir(...) / PARQUET``."""
    return root / _rel(symbol, day * 24).rsplit("/", 1)[0]


def _day_index(path: PurePath) -> tuple[str, int] | None:
    m = _DAY_RE.search(path.as_posix())
    if not m:
        return None
    try:
        day = datetime.date.fromisoformat(m.group(2))
    except ValueError:
        return None
    return m.group(1), calendar.timegm(day.timetuple()) // 86400


def parse_day_dir(path: PurePath) -> tuple[str, int]:
    """(symbol, day index) of a date directory; ValueError if it is not one."""
    parsed = _day_index(path)
    if parsed is None:
        raise ValueError(f"not a date directory: {path}")
    return parsed


def day_dirs(root: Path, symbol: str) -> list[Path]:
    """Every well-formed date directory of ``symbol`` (holding hours, a day file or both),
    oldest first. A day file in a stray one (``date=garbage``) is skipped with a warning (its
    hours are warned about by ``hour_dirs``)."""
    days: list[tuple[int, Path]] = []
    for p in (root / TRADES / f"symbol={symbol}").glob("date=*"):
        parsed = _day_index(p) if p.is_dir() else None
        if parsed is not None and parsed[0] == symbol:
            days.append((parsed[1], p))
        elif (p / PARQUET).is_file():
            _skip(p / PARQUET)
    return [p for _, p in sorted(days)]


def hour_dir(root: Path, symbol: str, hour: int) -> Path:
    """``root/trades/symbol=S/date=YYYY-MM-DD/hour=HH`` for an hour index (see ``hour_of``)."""
    return root / _rel(symbol, hour)


def _hour_index(path: PurePath) -> tuple[str, int] | None:
    m = _HOUR_RE.search(path.as_posix())
    if not m or int(m.group(3)) > 23:
        return None
    try:
        day = datetime.date.fromisoformat(m.group(2))
    except ValueError:
        return None
    return m.group(1), calendar.timegm(day.timetuple()) // 3600 + int(m.group(3))


def parse_hour_dir(path: PurePath) -> tuple[str, int]:
    """(symbol, hour index) of an hour directory; ValueError if it is not one."""
    parsed = _hour_index(path)
    if parsed is None:
        raise ValueError(f"not an hour directory: {path}")
    return parsed


def _skip(path: Path) -> None:
    """Warn once per process about a directory that is not part of the store's layout."""
    if path not in _warned:
        _warned.add(path)
        log.warning(
            "skipping %s: not a store partition (symbol=ASCII capitals and digits, "
            "date=YYYY-MM-DD, hour=00..23); move it out of the store",
            path,
        )


def symbol_dirs(root: Path) -> list[str]:
    """Symbols with a well-formed ``symbol=`` directory in the store, sorted."""
    out = []
    for p in sorted((root / TRADES).glob("symbol=*")):
        name = p.name.split("=", 1)[1]
        if p.is_dir() and is_symbol(name):
            out.append(name)
        elif p.is_dir():
            _skip(p)
    return out


def hour_dirs(root: Path, symbol: str | None = None) -> list[Path]:
    """Every well-formed hour directory in the store (optionally of one symbol), oldest first.
    Stray directories (``hour=05.old``, ``date=garbage``, ``symbol=ｅｔｈ``) are skipped with
    one warning each."""
    out: list[Path] = []
    for sym in [symbol] if symbol is not None else symbol_dirs(root):
        hours: list[tuple[int, Path]] = []
        for p in (root / TRADES / f"symbol={sym}").glob("*/*"):
            parsed = _hour_index(p) if p.is_dir() else None
            if parsed is not None and parsed[0] == sym:
                hours.append((parsed[1], p))
            elif p.is_dir():
                _skip(p)
        out += [p for _, p in sorted(hours)]
    return out


def sealed_name(now_ns: int) -> str:
    """Name for an NDJSON file taken out of the writer's hands, awaiting compaction."""
    return f"trades-{now_ns}.ndjson"
