"""The recorder's exceptions.

RecorderError                 anything the CLI turns into one ``Error:`` line
├── ConfigError               bad options: symbol, data directory, URL
├── StoreError                the store cannot be read or written as asked
│   ├── StoreLockedError      another recorder (or compact) holds the data directory
│   └── CompactionError       a Parquet file did not read back as written
└── ExchangeError             the exchange answered in a way we cannot use
    └── RestUnavailable       REST failed (network, 5xx, ban) after retries
"""

from __future__ import annotations

__all__ = [
    "CompactionError",
    "ConfigError",
    "ExchangeError",
    "RecorderError",
    "RestUnavailable",
    "StoreError",
    "StoreLockedError",
]


class RecorderError(Exception):
    """Base class: the message is shown to the user as ``Error: <message>``."""


class ConfigError(RecorderError):
    pass


class StoreError(RecorderError):
    pass


class StoreLockedError(StoreError):
    pass


class CompactionError(StoreError):
    pass


class ExchangeError(RecorderError):
    pass


class RestUnavailable(ExchangeError):
    """``status`` labels the failure for metrics: an HTTP status ("500", "429"), "timeout",
    "error" (network) or "invalid" (a reply we cannot use)."""

    def __init__(self, message: str, status: str = "error"):
        super().__init__(message)
        self.status = status


class ArchiveError(RecorderError):
    """A file that cannot be imported; the message names it (and the line)."""
