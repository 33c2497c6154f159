"""The typed result of a horizon table, a run or a sweep: what ``horizons.json`` holds.

Built by ``engine.pipeline``, printed by the CLI, drawn by ``engine.plots`` and read back by
``engine.report``. The table's rows stay plain dicts (one per horizon, metric and group, the
columns documented in ``engine.horizons``): they go straight to a Polars frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["HorizonTable"]


@dataclass(frozen=True)
class HorizonTable:
    parameters: dict[str, Any]
    flag_rate: float | dict[str, float]  # a sweep: per window size
    comparisons: int  # rows with a p-value, the Benjamini-Hochberg family
    rows: list[dict[str, Any]]
    scored_windows: int | None = None  # not for a sweep
    evaluate: dict[str, Any] | None = None  # `engine run`: the verdict (engine.evaluate)
    detection: dict[str, Any] | None = None  # a simulated store: against its truth
    seconds: float | None = None  # `engine run`: wall time

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: every field that is set."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HorizonTable:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
