"""How the detector did against a simulation's ground truth (``engine run`` on a simulated
symbol): precision and recall within a tolerance, and lead time.

Flagged windows closer than ``merge_ms`` are one detection episode. An event (regime shift,
activity burst, price jump) is found when an episode starts within ``tolerance_ms`` of it;
an episode is correct when it starts within ``tolerance_ms`` of some event. Lead time is the
event's time minus the first matching episode's start (positive: the flag came first).

Chance levels come with the scores, because a detector that fires often finds events by luck:
``recall_chance`` is the recall of the same number of episodes placed uniformly at random
(``1 - (1 - 2 tol / span) ** episodes``), ``precision_chance`` the share of the span lying within
the tolerance of some event (what a randomly placed episode would score).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

__all__ = ["evaluate"]


def evaluate(
    scored: pl.DataFrame, truth: dict[str, Any], tolerance_ms: int = 300_000, merge_ms: int = 60_000
) -> dict[str, Any]:
    done = scored.filter(pl.col("prediction").is_not_null())
    if done.is_empty():
        return {"tolerance_s": tolerance_ms / 1000, "episodes": 0, "events": 0}
    lo = int(done["window_start"].min().timestamp() * 1000)  # type: ignore[union-attr]
    hi = int(done["window_start"].max().timestamp() * 1000)  # type: ignore[union-attr]
    flags = np.sort(
        done.filter(pl.col("prediction") == -1)["window_start"].dt.epoch("ms").to_numpy()
    )
    starts = flags[np.concatenate([[True], np.diff(flags) > merge_ms])] if len(flags) else flags
    events = [e for e in truth.get("events", []) if lo <= e["time_ms"] <= hi]
    et = np.array([e["time_ms"] for e in events], dtype=np.int64)
    correct = int(sum(bool(len(et)) and np.abs(et - s).min() <= tolerance_ms for s in starts))
    by_kind: dict[str, dict[str, Any]] = {}
    leads = []
    for e in events:
        k = by_kind.setdefault(e["kind"], {"events": 0, "found": 0, "lead_s": []})
        k["events"] += 1
        near = starts[np.abs(starts - e["time_ms"]) <= tolerance_ms] if len(starts) else starts
        if len(near):
            k["found"] += 1
            lead = (e["time_ms"] - int(near.min())) / 1000
            k["lead_s"].append(lead)
            leads.append(lead)
    for k in by_kind.values():
        k["recall"] = k["found"] / k["events"]
        k["median_lead_s"] = float(np.median(k["lead_s"])) if k["lead_s"] else None
        del k["lead_s"]
    span = max(1, hi - lo)
    hit = min(1.0, 2 * tolerance_ms / span)
    covered = 0
    end = lo
    for t in np.sort(et):  # length of the union of [t - tol, t + tol] within the span
        a, b = max(lo, t - tolerance_ms, end), min(hi, t + tolerance_ms)
        covered += max(0, b - a)
        end = max(end, b)
    return {
        "tolerance_s": tolerance_ms / 1000,
        "episodes": len(starts),
        "events": len(events),
        "precision": correct / len(starts) if len(starts) else None,
        "precision_chance": float(covered / span),
        "recall": sum(k["found"] for k in by_kind.values()) / len(events) if events else None,
        "recall_chance": float(1 - (1 - hit) ** len(starts)),
        "median_lead_s": float(np.median(leads)) if leads else None,
        "by_kind": by_kind,
    }
