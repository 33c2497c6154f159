"""The recorder's settings: one table gives each setting's name, default, range and help.

The table drives ``RecorderConfig`` (its defaults and its range check), the ``recorder run``
options (``--fsync-interval`` ...) and their environment variables (``TAPEWATCH_`` + the
option name in upper snake case, e.g. ``TAPEWATCH_FSYNC_INTERVAL``). A value out of range is
refused at start with one ``Error:`` line, whether it came from an option, the environment or
code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder.errors import ConfigError

__all__ = [
    "DEFAULT_ARCHIVE_URL",
    "DEFAULT_DATA_DIR",
    "DEFAULT_REST_URL",
    "DEFAULT_WS_URL",
    "HISTORICAL_TRADES_WEIGHT",
    "SETTINGS",
    "RecorderConfig",
    "Setting",
    "default",
]

DEFAULT_WS_URL = "wss://stream.binance.com:9443"
DEFAULT_REST_URL = "https://api.binance.com"
DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
DEFAULT_DATA_DIR = "./data"
# Binance's request weight of one /api/v3/historicalTrades call.
HISTORICAL_TRADES_WEIGHT = 25
_DAY = 86_400.0


@dataclass(frozen=True)
class Setting:
    """One tunable: ``lo <= value <= hi`` (``hi`` None: no upper bound)."""

    name: str
    default: float | int
    lo: float | int
    hi: float | int | None
    help: str

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        """ConfigError unless ``value`` is a finite number of the right type, in range."""
        ok_type = isinstance(value, int | float) and not isinstance(value, bool)
        if self.type is int:
            ok_type = ok_type and float(value).is_integer()
        if not ok_type or not math.isfinite(value):
            raise ConfigError(f"{self.option} must be a finite {self.type.__name__}, not {value!r}")
        if value < self.lo or (self.hi is not None and value > self.hi):
            upper = f" and {self.hi:g}" if self.hi is not None else ""
            word = "between" if self.hi is not None else "at least"
            raise ConfigError(
                f"{self.option} {value:g} is out of range: give a value {word} {self.lo:g}{upper}"
            )


# Ranges keep each setting where it means something: no busy loops (intervals of 0), no
# reconnect storms (Binance allows 300 connection attempts per 5 minutes per IP), no backfill
# that can never afford one request. The small lower bounds let tests run in seconds.
SETTINGS: tuple[Setting, ...] = (
    Setting("fsync_interval", 0.5, 0.01, 60.0, "Seconds between fsyncs of the open hour."),
    Setting(
        "compact_grace", 120.0, 0.0, _DAY, "Seconds after an hour ends before it is compacted."
    ),
    Setting("compact_interval", 30.0, 0.5, _DAY, "Seconds between looks for closed hours."),
    Setting(
        "max_connection_age",
        23.5 * 3600,
        0.5,
        24 * 3600.0,
        "Seconds before a connection is replaced (Binance's limit is 24 h).",
    ),
    Setting("overlap_max", 30.0, 0.1, 600.0, "Seconds both connections may run while switching."),
    Setting("ping_interval", 20.0, 0.1, 600.0, "Seconds between keepalive pings."),
    Setting(
        "ping_timeout", 20.0, 0.1, 600.0, "Seconds without a pong before a connection is dead."
    ),
    Setting(
        "backoff_initial", 1.0, 0.01, 60.0, "First reconnect delay, seconds (jittered, doubling)."
    ),
    Setting("backoff_max", 60.0, 0.01, 3600.0, "Largest reconnect or REST retry delay, seconds."),
    Setting("open_timeout", 10.0, 0.1, 300.0, "Seconds to wait for a connection to open."),
    Setting("rest_limit", 1000, 1, 1000, "Trades per REST backfill request (Binance's most)."),
    Setting(
        "rest_weight_per_minute",
        3000,
        HISTORICAL_TRADES_WEIGHT,
        None,
        f"REST request weight budget per minute (Binance allows 6000; one request weighs "
        f"{HISTORICAL_TRADES_WEIGHT}).",
    ),
    Setting("rest_timeout", 10.0, 0.1, 300.0, "Seconds one REST request may take, in all."),
    Setting("queue_max", 50_000, 1, 10_000_000, "Trades buffered between socket and disk."),
    Setting(
        "status_interval",
        2.0,
        0.05,
        3600.0,
        "Seconds between status updates (state/recorder.json, systemd STATUS).",
    ),
    Setting(
        "upload_interval",
        300.0,
        0.5,
        _DAY,
        "Seconds between uploads to --upload-to (one also follows each compaction).",
    ),
    Setting(
        "max_clock_skew",
        _DAY,
        1.0,
        100 * 365 * _DAY,
        "Seconds a trade's time may lie from its receive time before it is quarantined "
        "(REST items must also lie between their neighbours' times).",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def default(name: str) -> Any:
    """The default of setting ``name`` (e.g. ``"compact_grace"``)."""
    return _BY_NAME[name].default


@dataclass(frozen=True)
class RecorderConfig:
    """Everything ``recorder run`` needs; the defaults and ranges are those of ``SETTINGS``."""

    symbols: tuple[str, ...]
    data_dir: Path
    ws_url: str = DEFAULT_WS_URL
    rest_url: str = DEFAULT_REST_URL
    metrics_addr: str | None = None
    upload_to: str | None = None  # s3://bucket/prefix; None: no uploads
    endpoint_url: str | None = None  # S3-compatible server for upload_to; None: AWS S3
    fsync_interval: float = _BY_NAME["fsync_interval"].default
    compact_grace: float = _BY_NAME["compact_grace"].default
    compact_interval: float = _BY_NAME["compact_interval"].default
    max_connection_age: float = _BY_NAME["max_connection_age"].default
    overlap_max: float = _BY_NAME["overlap_max"].default
    ping_interval: float = _BY_NAME["ping_interval"].default
    ping_timeout: float = _BY_NAME["ping_timeout"].default
    backoff_initial: float = _BY_NAME["backoff_initial"].default
    backoff_max: float = _BY_NAME["backoff_max"].default
    open_timeout: float = _BY_NAME["open_timeout"].default
    rest_limit: int = int(_BY_NAME["rest_limit"].default)
    rest_weight_per_minute: int = int(_BY_NAME["rest_weight_per_minute"].default)
    rest_timeout: float = _BY_NAME["rest_timeout"].default
    queue_max: int = int(_BY_NAME["queue_max"].default)
    status_interval: float = _BY_NAME["status_interval"].default
    upload_interval: float = _BY_NAME["upload_interval"].default
    max_clock_skew: float = _BY_NAME["max_clock_skew"].default

    def __post_init__(self) -> None:
        for s in SETTINGS:
            s.check(getattr(self, s.name))
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("--backoff-max must be at least --backoff-initial")
        if not self.symbols:
            raise ConfigError("no symbols given; pass --symbols btcusdt[,ethusdt...]")

    @property
    def stream_url(self) -> str:
        """The combined-stream URL for all symbols, e.g. ``.../stream?streams=btcusdt@trade``."""
        streams = "/".join(f"{s.lower()}@trade" for s in self.symbols)
        return f"{self.ws_url.rstrip('/')}/stream?streams={streams}"
