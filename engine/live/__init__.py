"""The parts of ``engine watch`` (``engine/watch.py`` puts them together).

- ``follower``: follows the store as the recorder writes it, on the exchange's clock, and
  hands over each window once it has closed.
- ``scorer``: scores each closed window with the walk-forward model of ``engine/model.py``
  (its ``refit_plan`` and ``scoreable``), so live equals batch window for window. Pure: no
  store, no clock, no output.
- ``alerts``: the bounded queue that delivers flagged windows to the hooks, on a thread.
- ``hooks``: the hooks themselves (``--on-anomaly``, ``--webhook``) and the URL check.
"""

from __future__ import annotations

import time

__all__ = ["iso_ms"]


def iso_ms(ms: int) -> str:
    """``1723161600000`` -> ``"2024-08-09T00:00:00.000Z"`` (UTC ms to ISO 8601)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
