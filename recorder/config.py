"""The recorder's tunables: every default in one place.

Each one is a ``recorder run`` option (shown in ``--help``) and can also be set by the
environment variable named beside it (``TAPEWATCH_`` + the option name in upper snake case).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_REST_URL", "DEFAULT_WS_URL", "RecorderConfig"]

DEFAULT_WS_URL = "wss://stream.binance.com:9443"
DEFAULT_REST_URL = "https://api.binance.com"
DEFAULT_DATA_DIR = "./data"

# Open-hour NDJSON is flushed and fsynced at least this often (seconds).
FSYNC_INTERVAL = 0.5
# A closed hour is compacted to Parquet this long after it ends (seconds), for late trades.
COMPACT_GRACE = 120.0
# How often the compactor looks for closed hours (seconds).
COMPACT_INTERVAL = 30.0
# Binance drops a connection after 24 h; switch (make before break) well before.
MAX_CONNECTION_AGE = 23.5 * 3600
# While switching, keep the old connection at most this long (seconds).
OVERLAP_MAX = 30.0
# Keepalive: our own ping every PING_INTERVAL s; no pong within PING_TIMEOUT s means dead.
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
# Reconnect backoff: first delay, cap (seconds), with full jitter.  With a 1 s floor the
# recorder makes at most ~300 attempts in 5 minutes only if every attempt fails at once,
# and the exponential growth keeps a sustained outage near one attempt a minute.
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
OPEN_TIMEOUT = 10.0
# REST backfill: page size, request weight budget per minute (Binance allows 6000; use half),
# how long to keep retrying a failing REST endpoint before recording a gap (seconds).
REST_LIMIT = 1000
REST_WEIGHT_PER_MINUTE = 3000
REST_GIVE_UP = 300.0
REST_TIMEOUT = 10.0
# Bounded queue between the socket reader and the disk writer (trades); a slow disk makes the
# reader wait (backpressure) rather than grow memory.
QUEUE_MAX = 50_000
# Status file refresh (seconds).
STATUS_INTERVAL = 2.0


@dataclass(frozen=True)
class RecorderConfig:
    """Everything ``recorder run`` needs; defaults are the constants above."""

    symbols: tuple[str, ...]
    data_dir: Path
    ws_url: str = DEFAULT_WS_URL
    rest_url: str = DEFAULT_REST_URL
    fsync_interval: float = FSYNC_INTERVAL
    compact_grace: float = COMPACT_GRACE
    compact_interval: float = COMPACT_INTERVAL
    max_connection_age: float = MAX_CONNECTION_AGE
    overlap_max: float = OVERLAP_MAX
    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    open_timeout: float = OPEN_TIMEOUT
    rest_limit: int = REST_LIMIT
    rest_weight_per_minute: int = REST_WEIGHT_PER_MINUTE
    rest_give_up: float = REST_GIVE_UP
    rest_timeout: float = REST_TIMEOUT
    queue_max: int = QUEUE_MAX
    status_interval: float = STATUS_INTERVAL
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def stream_url(self) -> str:
        """The combined-stream URL for all symbols, e.g. ``.../stream?streams=btcusdt@trade``."""
        streams = "/".join(f"{s.lower()}@trade" for s in self.symbols)
        return f"{self.ws_url.rstrip('/')}/stream?streams={streams}"
