"""A synthetic trade tape that looks like BTCUSDT to the engine, with known regime shifts.

Per second of simulated time:
- arrivals are self-exciting (a discrete Hawkes process: each second's trades raise the next
  seconds' intensity, decaying with a 5 s time constant, branching ratio 0.6) around a
  baseline of ~4 M trades a day with a daily cycle, scaled by the current activity regime;
- the mid price follows a random walk whose volatility is the current volatility regime;
  trades print at mid plus or minus half a spread, on the 0.01 tick grid;
- sizes are heavy-tailed (lognormal body, Pareto tail), on the 0.00001 lot grid.

Activity and volatility regimes switch at known times (segments of 30 min to 8 h). On top:
activity bursts that do not move the price, and price jumps while activity is quiet. All of
them are saved beside the tape (``DATA_DIR/simulations/SYMBOL.json``) as the ground truth
``engine run`` scores the detector against. Deterministic for a seed.

Scenarios:
- ``calibration`` (the default): nothing announces any event, so no detector can anticipate
  one; a detector's anticipation scores must sit at chance here.
- ``precursor``: the same tape (same seed, same draws) plus ``volatility_burst`` events
  (volatility x4 for 5 minutes, 12 a day, one per 2-hour slot), each announced by activity
  x5 for exactly ``lead_s`` seconds before it: a precursor with a known lead. Their placement
  has its own random stream, so the calibration tape is unchanged by their existence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from engine import config
from recorder.store.schema import PARQUET_SCHEMA

__all__ = ["PRECURSOR_LEAD_S", "SCENARIOS", "simulate", "truth_path", "write_simulation"]

DAY_S = 86_400
BASE_RATE = 3_000_000 / DAY_S  # trades per second at activity 1 (regimes average ~1.4: ~4 M a day)
SIGMA = 8e-5  # per-second log-return sd at volatility level 1 (about 50 % a year)
ACTIVITY = (0.25, 1.0, 3.0)
VOLATILITY = (0.5, 1.0, 2.5)
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
SCENARIOS = config.SCENARIOS
PRECURSOR_LEAD_S = config.LEAD  # seconds of raised activity before each volatility burst
PRECURSOR_ACTIVITY = 5.0  # activity multiplier of a precursor
PRECURSORS_PER_DAY = 12
BURST_VOLATILITY = 4.0  # volatility multiplier of a volatility burst
BURST_S = 300  # seconds a volatility burst lasts


def truth_path(data_dir: Path, symbol: str) -> Path:
    return data_dir / "simulations" / f"{symbol.upper()}.json"


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _precursors(
    n_s: int, days: float, seed: int, start_ms: int, lead_s: int, act: np.ndarray, vol: np.ndarray
) -> list[dict[str, Any]]:
    """Volatility bursts announced by ``lead_s`` seconds of raised activity, one at a random
    second of each of ``PRECURSORS_PER_DAY * days`` equal slots (so they never overlap)."""
    rng = np.random.default_rng([seed, 2])
    n = max(1, round(PRECURSORS_PER_DAY * days))
    slot = n_s // n
    events = []
    for k in range(n):
        lo, hi = k * slot + lead_s + 60, (k + 1) * slot - BURST_S - 60
        if hi <= lo:
            continue
        t = int(rng.integers(lo, hi))
        act[t - lead_s : t] *= PRECURSOR_ACTIVITY
        vol[t : t + BURST_S] *= BURST_VOLATILITY
        events.append(
            {
                "kind": "volatility_burst",
                "time_ms": start_ms + t * 1000,
                "seconds": BURST_S,
                "volatility_factor": BURST_VOLATILITY,
                "precursor": {
                    "start_ms": start_ms + (t - lead_s) * 1000,
                    "lead_s": lead_s,
                    "activity_factor": PRECURSOR_ACTIVITY,
                },
            }
        )
    return events


def _seconds(
    days: float, seed: int, start_ms: int, scenario: str = "calibration", lead_s: int = 0
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The per-second process: regimes, events, trade counts and mid price."""
    rng = np.random.default_rng(seed)
    n_s = int(days * DAY_S)
    act = np.empty(n_s)
    vol = np.empty(n_s)
    events: list[dict[str, Any]] = []
    t, a, v = 0, 1, 1
    while t < n_s:  # segments of 30 min .. 8 h; each shift changes activity, volatility or both
        length = int(np.clip(rng.exponential(3 * 3600), 1800, 8 * 3600))
        act[t : t + length] = ACTIVITY[a]
        vol[t : t + length] = VOLATILITY[v]
        t += length
        if t >= n_s:
            break
        kind = str(rng.choice(["activity", "volatility", "both"]))
        na = int(rng.choice([i for i in range(3) if i != a])) if kind != "volatility" else a
        nv = int(rng.choice([i for i in range(3) if i != v])) if kind != "activity" else v
        events.append(
            {
                "kind": "regime_shift",
                "change": kind,
                "time_ms": start_ms + t * 1000,
                "activity": [ACTIVITY[a], ACTIVITY[na]],
                "volatility": [VOLATILITY[v], VOLATILITY[nv]],
            }
        )
        a, v = na, nv
    jump = np.zeros(n_s)
    for _ in range(max(1, round(6 * days))):  # activity bursts that leave the price alone
        s0, dur = int(rng.integers(0, n_s - 200)), int(rng.integers(30, 120))
        act[s0 : s0 + dur] *= 6.0
        events.append({"kind": "activity_burst", "time_ms": start_ms + s0 * 1000, "seconds": dur})
    for _ in range(max(1, round(4 * days))):  # price jumps while activity is quiet
        s0 = int(rng.integers(0, n_s - 200))
        size = float(rng.choice([-1, 1]) * rng.uniform(0.003, 0.008))
        jump[s0 : s0 + 5] = size / 5
        act[s0 : s0 + 60] *= 0.5
        events.append({"kind": "price_jump", "time_ms": start_ms + s0 * 1000, "return": size})
    if scenario == "precursor":
        events += _precursors(n_s, days, seed, start_ms, lead_s, act, vol)
    events.sort(key=lambda e: e["time_ms"])
    for e in events:
        e["time"] = _iso(e["time_ms"])
    sec = np.arange(n_s)
    cycle = 1 + 0.35 * np.sin(2 * np.pi * ((start_ms // 1000 + sec) % DAY_S) / DAY_S - 2.0)
    mu = BASE_RATE * cycle * act
    eta, decay = 0.6, np.exp(-1 / 5)  # discrete Hawkes: branching ratio, 5 s memory
    counts = np.empty(n_s, dtype=np.int64)
    excite = eta * mu[0]
    pois = rng.poisson
    for i in range(n_s):
        c = pois(mu[i] * (1 - eta) + excite)
        counts[i] = c
        excite = decay * excite + (1 - decay) * eta * c
    mid = 60_000.0 * np.exp(np.cumsum(rng.normal(0, SIGMA, n_s) * vol + jump))
    return {"counts": counts, "mid": mid, "vol": vol}, events


def _trades(
    p: dict[str, np.ndarray], lo: int, hi: int, first_id: int, start_ms: int, rng
) -> pl.DataFrame:
    """Trades of seconds [lo, hi): arrival order is id order; prices on the tick grid."""
    counts = p["counts"][lo:hi]
    owner = np.repeat(np.arange(lo, hi), counts)
    n = len(owner)
    ms = start_ms + owner * 1000 + rng.integers(0, 1000, n)
    ms.sort()
    owner = (ms - start_ms) // 1000
    maker = rng.random(n) < 0.5
    price = np.round(p["mid"][owner] + np.where(maker, -0.005, 0.005), 2)
    size = np.exp(rng.normal(-7.2, 1.5, n))
    tail = rng.random(n) < 0.02
    size[tail] = 0.05 * (1 + rng.pareto(1.5, int(tail.sum())))
    qty = np.clip(np.round(size, 5), 0.00001, 60.0)
    t_us = ms * 1000
    return pl.DataFrame(
        {
            "trade_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "price": price,
            "qty": qty,
            "quote_qty": None,
            "trade_time": t_us,
            "event_time": t_us + 1000,
            "is_buyer_maker": maker,
            "is_best_match": True,
            "buyer_order_id": None,
            "seller_order_id": None,
            "recv_time": t_us + 3000,
            "source": "simulated",
            "event_type": "trade",
            "extra": None,
        }
    ).cast(PARQUET_SCHEMA)  # type: ignore[arg-type]


def simulate(
    days: float,
    seed: int,
    start_ms: int = START_MS,
    scenario: str = "calibration",
    lead_s: int = PRECURSOR_LEAD_S,
):
    """Yield the tape a day at a time (store schema), then return the ground truth.
    ``scenario`` is one of ``SCENARIOS``; ``lead_s`` is the precursors' lead (seconds)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    per_s, events = _seconds(days, seed, start_ms, scenario, lead_s)
    rng = np.random.default_rng([seed, 1])
    n_s = len(per_s["counts"])
    first = 1
    for lo in range(0, n_s, DAY_S):
        day = _trades(per_s, lo, min(n_s, lo + DAY_S), first, start_ms, rng)
        first += day.height
        yield day
    return {
        "seed": seed,
        "days": days,
        "start": _iso(start_ms),
        "end": _iso(start_ms + n_s * 1000),
        "trades": first - 1,
        "scenario": scenario,
        **({"precursor_lead_s": lead_s} if scenario == "precursor" else {}),
        "events": events,
        "model": {
            "base_rate_per_s": BASE_RATE,
            "sigma_per_s": SIGMA,
            "hawkes_branching": 0.6,
            "hawkes_decay_s": 5,
            "tick": 0.01,
            "lot": 0.00001,
        },
    }


def write_simulation(
    data_dir: Path,
    symbol: str,
    days: float,
    seed: int,
    scenario: str = "calibration",
    lead_s: int = PRECURSOR_LEAD_S,
) -> dict[str, Any]:
    """Simulate and write the tape into the store with the importer's all-or-nothing hour
    writer, a day at a time (bounded memory), and the ground truth beside it."""
    from recorder.store import HourSpool, init_store
    from recorder.store.durable import atomic_write
    from recorder.store.layout import HOUR_MS
    from recorder.store.lock import StoreLock

    sym = symbol.upper()
    init_store(data_dir)
    with StoreLock(data_dir):
        stager = HourSpool(data_dir)
        try:
            gen = simulate(days, seed, scenario=scenario, lead_s=lead_s)
            while True:
                try:
                    day = next(gen)
                except StopIteration as done:
                    truth = done.value
                    break
                hours = day.with_columns(_h=pl.col("trade_time").dt.epoch("ms") // HOUR_MS)
                for (h,), part in hours.group_by("_h"):
                    stager.add(sym, int(h), part.drop("_h"))
        except BaseException:
            stager.abort()
            raise
        stager.commit()
    truth = {"symbol": sym, **truth}
    atomic_write(truth_path(data_dir, sym), orjson.dumps(truth, option=orjson.OPT_INDENT_2))
    return truth
