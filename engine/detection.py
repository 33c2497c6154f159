"""Did the detector warn *before* the simulated events, more often than chance? (``engine run``
on a simulated symbol scores its flags against the simulation's ground truth.)

Episodes and alarms. Flagged windows whose starts are at most ``merge_ms`` apart are one
episode. Its alarm is the moment a live watcher could raise it: the end of its first flagged
window plus ``grace_ms`` (``engine watch --grace``), not the window's start.

Leading. An episode leads an event at time ``t`` when its alarm comes at or before ``t`` and at
most ``tolerance_ms`` before it. A flagged window that holds the event ends after ``t``: that is
a hit after the event, not a lead, however early the window starts. An episode that goes on
through the event still leads it when its alarm came first (the alarm was standing).

Scores:
- ``recall``: share of events with a leading episode;
- ``precision``: share of episodes that lead some event;
- lead of an event: ``t`` minus the alarm of the latest leading episode (the most recent alarm
  before the event: alarms that chance puts in the tolerance make it shorter, never longer);
  ``median_lead_s`` over the events led;
- ``late``: events not led but with an alarm within the tolerance after them (noticed, not
  anticipated).

Chance. Alarms land near events by luck, the more so as flags cluster in busy, volatile
stretches. The null keeps everything about the flags but their timing against the events: the
flag series is rotated circularly over the scored span by ``shifts`` offsets, evenly spaced,
of at least a day (at most a quarter of the span when the data are shorter), and scored the
same way, all offsets at once (no loop over windows). ``*_chance`` are the means (for the lead,
the median) over the rotations. p-values count the rotations that do at least as well:
``(1 + #{rotated >= observed}) / (1 + shifts)``, one-sided for precision and recall (more
anticipation than chance), two-sided for the median lead (alarms at a distance from the events
unlike chance; recall's p is the test of anticipation itself). With too short a span for a
rotation of ``2 * tolerance`` or more, chance levels and p-values are None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from engine import config
from engine.durations import parse_duration

__all__ = ["GRACE_MS", "MERGE_MS", "SHIFTS", "TOLERANCE_MS", "evaluate", "shift_offsets"]

TOLERANCE_MS = 300_000  # an alarm at most this long before an event leads it
MERGE_MS = 60_000  # flagged windows whose starts are this close are one episode
GRACE_MS = parse_duration(config.GRACE)  # from a window's end to its alarm (`engine watch --grace`)
SHIFTS = 499  # rotations of the flag series (p-values in steps of 1/500)
MIN_SHIFT_MS = 86_400_000  # a rotation moves the flags by at least a day ...
MIN_SHIFT_SHARE = 0.25  # ... or a quarter of the span, when that is shorter
_CELLS = 4_000_000  # rotated flags held at a time (memory: ~32 MB per array)


def shift_offsets(span_ms: int, every_ms: int, tolerance_ms: int, n: int = SHIFTS) -> np.ndarray:
    """Up to ``n`` rotation offsets (ms, multiples of ``every_ms``), evenly spaced in
    ``[m, span - m]`` with ``m = min(1 day, span / 4)``; empty when ``m < 2 * tolerance``."""
    m = min(MIN_SHIFT_MS, int(span_ms * MIN_SHIFT_SHARE))
    lo, hi = -(-m // every_ms), (span_ms - m) // every_ms
    if m < 2 * tolerance_ms or hi < lo:
        return np.zeros(0, dtype=np.int64)
    steps = np.unique(np.round(np.linspace(lo, hi, min(n, hi - lo + 1))).astype(np.int64))
    return steps * every_ms


def _episodes(
    flags: np.ndarray, offsets: np.ndarray, span: int, merge_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """Episode starts of the flags (ms from the span's start) rotated by each offset, as
    (row, start) pairs sorted by row, then time."""
    x = (flags[None, :] + offsets[:, None]) % span
    x.sort(axis=1)
    new = np.ones(x.shape, dtype=bool)
    new[:, 1:] = np.diff(x, axis=1) > merge_ms
    rows, cols = np.nonzero(new)
    return rows, x[rows, cols]


def _row_medians(a: np.ndarray) -> np.ndarray:
    """Median of each row over its non-NaN values; NaN for a row without any."""
    k = (~np.isnan(a)).sum(axis=1)
    s = np.sort(a, axis=1)  # NaN last
    r = np.arange(len(a))
    lo, hi = np.maximum((k - 1) // 2, 0), np.maximum(k // 2, 0)
    return np.where(k > 0, (s[r, lo] + s[r, hi]) / 2, np.nan)


def _score(
    flags: np.ndarray,
    offsets: np.ndarray,
    span: int,
    ev: np.ndarray,
    every_ms: int,
    grace_ms: int,
    tolerance_ms: int,
    merge_ms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each offset: episodes, episodes leading an event, and each event's lead (ms, NaN
    when not led), shaped (offsets,), (offsets,), (offsets, events). ``flags`` and ``ev`` in ms
    from the span's start, ``ev`` sorted."""
    n = len(offsets)
    rows, starts = _episodes(flags, offsets, span, merge_ms)
    alarm = starts + every_ms + grace_ms
    # An episode leads some event when the first event at or after its alarm is within tolerance.
    j = np.searchsorted(ev, alarm, side="left")
    leads = np.zeros(len(alarm), dtype=bool)
    ok = j < len(ev)
    leads[ok] = ev[j[ok]] - alarm[ok] <= tolerance_ms
    episodes = np.bincount(rows, minlength=n)
    correct = np.bincount(rows, weights=leads, minlength=n)
    # The latest alarm at or before each event, per offset: one search over (row, alarm) keys.
    big = span + every_ms + grace_ms + 1  # above every alarm: rows never mix
    keys = rows.astype(np.int64) * big + alarm
    r = np.arange(n, dtype=np.int64)[:, None]
    i = np.searchsorted(keys, r * big + ev[None, :], side="right") - 1
    ic = np.maximum(i, 0)
    lead = (ev[None, :] - alarm[ic]).astype(np.float64) if len(alarm) else np.full(i.shape, 0.0)
    led = (i >= 0) & (rows[ic] == r if len(rows) else False) & (lead <= tolerance_ms)
    return episodes, correct, np.where(led, lead, np.nan)


def _p_greater(observed: float, null: np.ndarray) -> float:
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def _p_two_sided(observed: float, null: np.ndarray) -> float:
    less = (1 + np.sum(null <= observed + 1e-12)) / (1 + len(null))
    return float(min(1.0, 2 * min(_p_greater(observed, null), less)))


def _seconds(ms: float) -> float | None:
    return None if np.isnan(ms) else float(ms) / 1000


def evaluate(
    scored: pl.DataFrame,
    truth: dict[str, Any],
    tolerance_ms: int = TOLERANCE_MS,
    merge_ms: int = MERGE_MS,
    grace_ms: int = GRACE_MS,
    every_ms: int | None = None,
    shifts: int = SHIFTS,
) -> dict[str, Any]:
    """Precision, recall and lead of the flags (``prediction == -1``) in ``scored`` against
    ``truth["events"]`` (each with ``kind`` and ``time_ms``, UTC ms), with chance levels and
    p-values from rotated flags (see the module docstring). ``every_ms`` defaults to the
    spacing of ``scored``'s window starts (a complete grid)."""
    done = scored.filter(pl.col("prediction").is_not_null())
    if done.is_empty():
        return {"tolerance_s": tolerance_ms / 1000, "episodes": 0, "events": 0}
    if every_ms is None:
        diffs = scored["window_start"].dt.epoch("ms").diff().drop_nulls()
        diffs = diffs.filter(diffs > 0)
        if diffs.is_empty():
            raise ValueError("one window only: give every_ms")
        every_ms = int(diffs.min())  # type: ignore[arg-type]
    lo = int(done["window_start"].min().timestamp() * 1000)  # type: ignore[union-attr]
    hi = int(done["window_start"].max().timestamp() * 1000)  # type: ignore[union-attr]
    span = hi - lo + every_ms
    flags = np.sort(
        done.filter(pl.col("prediction") == -1)["window_start"].dt.epoch("ms").to_numpy() - lo
    ).astype(np.int64)
    events = sorted(
        (e for e in truth.get("events", []) if lo <= e["time_ms"] <= hi),
        key=lambda e: e["time_ms"],
    )
    ev = np.array([e["time_ms"] - lo for e in events], dtype=np.int64)
    kinds = np.array([e["kind"] for e in events])
    null_offsets = shift_offsets(span, every_ms, tolerance_ms, shifts)
    offsets = np.concatenate([[0], null_offsets if len(flags) else []]).astype(np.int64)

    # All offsets at once, in chunks that bound memory (row 0 is the observed flags).
    chunk = max(1, _CELLS // max(1, len(flags), len(events)))
    parts = [
        _score(flags, offsets[c : c + chunk], span, ev, every_ms, grace_ms, tolerance_ms, merge_ms)
        for c in range(0, len(offsets), chunk)
    ]
    episodes = np.concatenate([p[0] for p in parts])
    correct = np.concatenate([p[1] for p in parts])
    lead = np.concatenate([p[2] for p in parts]) if len(events) else np.zeros((len(offsets), 0))
    led = ~np.isnan(lead)
    precision = np.where(episodes > 0, correct / np.maximum(episodes, 1), np.nan)
    recall = led.mean(axis=1) if len(events) else np.full(len(offsets), np.nan)
    medians = _row_medians(lead) if len(events) else np.full(len(offsets), np.nan)
    has_null = len(offsets) > 1

    def chance(stat: np.ndarray, how: Callable[[np.ndarray], Any] = np.mean) -> float | None:
        null = stat[1:][~np.isnan(stat[1:])]
        return float(how(null)) if has_null and len(null) else None

    def p_value(stat: np.ndarray, two_sided: bool = False) -> float | None:
        null = stat[1:][~np.isnan(stat[1:])]
        if not has_null or np.isnan(stat[0]) or not len(null):
            return None
        return (_p_two_sided if two_sided else _p_greater)(float(stat[0]), null)

    # Late: not led, but an (observed) alarm within the tolerance after the event.
    alarms0 = _episodes(flags, offsets[:1], span, merge_ms)[1] + every_ms + grace_ms
    k = np.searchsorted(alarms0, ev, side="right")
    after = np.zeros(len(ev), dtype=bool)
    ok = k < len(alarms0)
    after[ok] = alarms0[k[ok]] - ev[ok] <= tolerance_ms
    late = after & ~led[0]

    by_kind: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(kinds.tolist()):
        m = kinds == kind
        kr = led[:, m].mean(axis=1)
        lead_k = lead[0, m][led[0, m]]
        by_kind[kind] = {
            "events": int(m.sum()),
            "found": int(led[0, m].sum()),
            "recall": float(kr[0]),
            "recall_chance": chance(kr),
            "p_recall": p_value(kr),
            "median_lead_s": float(np.median(lead_k)) / 1000 if len(lead_k) else None,
            "late": int(late[m].sum()),
        }
    med_chance = chance(medians, np.median)
    return {
        "tolerance_s": tolerance_ms / 1000,
        "grace_s": grace_ms / 1000,
        "merge_s": merge_ms / 1000,
        "episodes": int(episodes[0]),
        "events": len(events),
        "precision": None if np.isnan(precision[0]) else float(precision[0]),
        "precision_chance": chance(precision),
        "p_precision": p_value(precision),
        "recall": None if np.isnan(recall[0]) else float(recall[0]),
        "recall_chance": chance(recall),
        "p_recall": p_value(recall),
        "median_lead_s": _seconds(medians[0]),
        "median_lead_chance_s": None if med_chance is None else med_chance / 1000,
        "p_lead": p_value(medians, two_sided=True),
        "late": int(late.sum()),
        "shifts": len(offsets) - 1,
        "min_shift_s": float(offsets[1:].min()) / 1000 if has_null else None,
        "by_kind": by_kind,
    }
