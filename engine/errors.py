"""The engine's exceptions.

EngineError               anything the CLI turns into one ``Error:`` line (exit 1)
├── InputError            bad parameters: duration, horizon, symbol, too few windows
└── DataError             the store or an input file cannot be used (named in the message)
"""

from __future__ import annotations

__all__ = ["DataError", "EngineError", "InputError"]


class EngineError(Exception):
    pass


class InputError(EngineError):
    pass


class DataError(EngineError):
    pass
