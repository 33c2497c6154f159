"""A seeded chaos run: the recorder against the fake exchange while faults rain on it.

``run_chaos(root, frames, seed, seconds)`` replays ``frames`` over ``seconds`` of market time
and injects a random schedule (fixed by ``seed``) of faults, then lets everything recover,
stops the recorder and checks the store:

- stream: connection drops, stalls (no data, no pongs), ``serverShutdown`` switches, and stops
  (``Recorder.stop()``, what SIGTERM calls) followed by a restart after some downtime;
- REST (each outage bounded, then REST recovers): HTTP 500, 429 with ``Retry-After``, requests
  that never answer, HTML garbage, replies that trickle in a byte at a time;
- disk: a writer that sleeps before every append for a while.

Besides, every minute of tape holds two id holes on the exchange's side: one that neither the
stream nor REST ever serves (the only ids that may be, and must be, recorded as a gap) and one
that only REST lacks (the stream delivers it, so it must be stored). Stream faults and REST
outages are held back while the market passes the second kind, as losing those ids from the
stream would make them truly unservable.

The result is a dict of figures; ``check_store`` gives the invariant: every source id stored
exactly once, field for field, the DuckDB views agreeing, and gaps recorded only for ids REST
could not serve. ``tests/test_chaos.py`` runs a small size, ``bench/chaos.py`` a long one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from conftest import assert_rows_match_frames, fast_config, stored_rows, view_query
from fakebinance import FakeBinance

from recorder.compact import closed_hours, compact_hour
from recorder.service import Recorder
from recorder.store import read_gaps
from recorder.writer import StoreWriter

__all__ = [
    "KINDS",
    "Fault",
    "Hole",
    "check_store",
    "extend_tape",
    "plan_faults",
    "plan_holes",
    "run_chaos",
]

STREAM_KINDS = ("drop", "stall", "server_shutdown", "restart")
REST_KINDS = ("rest_500", "rest_429", "rest_hang", "rest_garbage", "rest_trickle")
KINDS = (*STREAM_KINDS, *REST_KINDS, "slow_disk")
_REST_MODE = {
    "rest_500": "fail",
    "rest_429": "429",
    "rest_hang": "hang",
    "rest_garbage": "garbage",
    "rest_trickle": "trickle",
}
SYMBOL = "BTCUSDT"
# Seconds: one REST request may take (hang, trickle); REST may fail before the missing ids
# are given up, far beyond any outage of the schedule (whose REST faults last at most 2 s,
# each followed by at least 1.5 s of working REST).
REST_TIMEOUT = 1.0
log = logging.getLogger("chaos")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the market opened
    kind: str  # one of KINDS
    seconds: float  # how long it lasts: outage, slowness, downtime (0: instant)
    arg: float = 0.0  # slow_disk: seconds of sleep per append; rest_429: Retry-After


@dataclass(frozen=True)
class Hole:
    """Trade ids ``first_id..last_id`` that REST never serves; ``streamed``: the stream does
    carry them (so they must be stored), otherwise they are lost for good (a gap)."""

    first_id: int
    last_id: int
    streamed: bool

    @property
    def size(self) -> int:
        return self.last_id - self.first_id + 1


def extend_tape(frames: list[bytes], n: int) -> list[bytes]:
    """``n`` frames: ``frames`` repeated, each repetition's ids shifted to follow the last and
    its times (trade and event, UTC ms) shifted to start 1 s after the last trade."""
    if n <= len(frames):
        return frames[:n]
    first = orjson.loads(frames[0])["data"]
    last = orjson.loads(frames[-1])["data"]
    id_step, ms_step = last["t"] - first["t"] + 1, last["T"] - first["T"] + 1000
    parsed = [orjson.loads(f) for f in frames]
    out = list(frames)
    rep = 1
    while len(out) < n:
        for obj in parsed[: n - len(out)]:
            d = obj["data"]
            shifted = {
                **d,
                "E": d["E"] + rep * ms_step,
                "t": d["t"] + rep * id_step,
                "T": d["T"] + rep * ms_step,
            }
            out.append(orjson.dumps({**obj, "data": shifted}))
        rep += 1
    return out


def plan_holes(
    frames: list[bytes], seed: int, per: int = 60_000, max_lost: int = 2_500
) -> list[Hole]:
    """One pair of holes (lost for good, REST-only) per ``per`` frames, at least one pair,
    placed at about a quarter and two thirds into each stretch. A hole lost for good holds up
    to ``max_lost`` ids, more than a REST page (1,000), so REST's answer to ``fromId`` starts
    past the page asked for."""
    rng = random.Random(f"holes-{seed}")
    first_id = orjson.loads(frames[0])["data"]["t"]
    pairs = max(1, round(len(frames) / per))
    stretch = len(frames) // pairs
    holes = []
    for i in range(pairs):
        lost = i * stretch + int(stretch * rng.uniform(0.2, 0.3))
        holes.append(Hole(first_id + lost, first_id + lost + rng.randint(1, max_lost) - 1, False))
        kept = i * stretch + int(stretch * rng.uniform(0.6, 0.7))
        holes.append(Hole(first_id + kept, first_id + kept + rng.randint(1, 300) - 1, True))
    return holes


def plan_faults(seed: int, seconds: float) -> list[Fault]:
    """A random schedule over ``seconds``: every kind in turn (shuffled rounds), about one
    fault every 0.6 s. Faults of one lane never overlap: the stream (one fault at a time,
    spaced so the recorder reconnects in between), REST (each outage followed by at least
    1.5 s of working REST, so a retry succeeds between outages) and the disk."""
    rng = random.Random(f"faults-{seed}")
    free = {"stream": 0.5, "rest": 0.5, "disk": 0.5}
    faults: list[Fault] = []
    bag: list[str] = []
    t = 0.0
    while True:
        t += rng.expovariate(1 / 0.6)
        if t > seconds - 2:
            return faults
        if not bag:
            bag = list(KINDS)
            rng.shuffle(bag)
        kind = bag.pop()
        lane = "stream" if kind in STREAM_KINDS else "rest" if kind in REST_KINDS else "disk"
        at = max(t, free[lane])
        if at > seconds - 2:
            continue
        arg = 0.0
        if kind == "drop":
            dur, rest_after = 0.0, 0.6
        elif kind == "stall":  # detected after ping_interval + ping_timeout
            dur, rest_after = 0.0, 1.5
        elif kind == "server_shutdown":  # the old connection closes this much later
            dur, rest_after = rng.uniform(0.2, 1.0), 0.6
        elif kind == "restart":  # downtime
            dur, rest_after = rng.uniform(0.2, 1.5), 0.8
        elif kind == "rest_429":
            arg = float(rng.randint(1, 2))
            dur, rest_after = arg, 1.5
        elif kind in REST_KINDS:
            dur, rest_after = rng.uniform(0.3, 2.0), 1.5
        else:
            arg = rng.uniform(0.01, 0.08)
            dur, rest_after = rng.uniform(1.0, 4.0), 0.5
        faults.append(Fault(round(at, 3), kind, round(dur, 3), round(arg, 3)))
        free[lane] = at + dur + rest_after


class _Disk:
    """The 'hardware' under every recorder of the run: how slow appends are right now."""

    delay = 0.0


class ChaosWriter(StoreWriter):
    """A StoreWriter on a disk that is sometimes slow: each append sleeps ``disk.delay`` s."""

    def __init__(self, root: Path, disk: _Disk):
        super().__init__(root)
        self.disk = disk

    def append(self, batch):
        if self.disk.delay:
            time.sleep(self.disk.delay)
        super().append(batch)


class _Chaos:
    """One chaos run: the fake exchange, the current recorder, and the fault lanes."""

    def __init__(self, root: Path, fake: FakeBinance, cfg, holes: list[Hole], rate: float):
        self.root, self.fake, self.cfg, self.holes, self.rate = root, fake, cfg, holes, rate
        self.disk = _Disk()
        self.rec: Recorder | None = None
        self.task: asyncio.Task | None = None
        self.started = 0
        self.stats: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.shutdowns: list[float] = []
        self.postponed = 0
        self.t0 = 0.0
        self.restarting = False

    async def start(self) -> None:
        self.started += 1
        rec = Recorder(self.cfg, seed=self.started)
        rec.sink.writer = ChaosWriter(self.root, self.disk)
        task = asyncio.create_task(rec.run())
        deadline = time.monotonic() + 10
        while not rec.conns.open and not task.done():
            if time.monotonic() > deadline:
                raise AssertionError("the recorder did not connect in 10 s")
            await asyncio.sleep(0.01)
        if task.done():
            await task
        self.rec, self.task = rec, task

    async def stop(self) -> None:
        """``stop()`` as SIGTERM does; the time until ``run`` returns is a shutdown time."""
        assert self.rec is not None and self.task is not None
        t = time.monotonic()
        self.rec.stop()
        await asyncio.wait_for(asyncio.shield(self.task), 60)
        self.shutdowns.append(time.monotonic() - t)
        self.stats.update(self.rec.stats)

    def alive(self) -> None:
        """Raise what the recorder died of, if it stopped by itself."""
        if self.task is not None and self.task.done() and not self.restarting:
            self.task.result()
            raise AssertionError("the recorder stopped by itself")

    def _stored_through(self, h: Hole) -> bool:
        tracker = self.rec.trackers.get(SYMBOL) if self.rec else None
        if tracker is None or tracker.high is None or tracker.high < h.last_id:
            return False
        return not any(m.first <= h.last_id and h.first_id <= m.last for m in tracker.missing)

    def _clear(self, seconds: float) -> bool:
        """Whether a fault lasting ``seconds`` (plus recovery) cannot make the recorder miss a
        streamed hole from the stream: the market will not reach one by then, or the recorder
        has stored it already."""
        ahead = self.fake.executed + self.rate * (seconds + 2.0)
        return not any(
            h.streamed and ahead >= h.first_id - self.fake.first_id and not self._stored_through(h)
            for h in self.holes
        )

    async def _at(self, f: Fault, shift: float) -> float:
        """Wait until the fault is due (``shift`` seconds late: its lane was held back) and
        clear of streamed holes (at most 60 s more); returns the lane's new shift."""
        delay = self.t0 + f.at + shift - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        held = time.monotonic()
        while not self._clear(f.seconds + (REST_TIMEOUT if f.kind in REST_KINDS else 0)):
            self.alive()
            if time.monotonic() - held > 60:
                raise AssertionError(f"held back {f} for 60 s: a streamed hole is not stored")
            await asyncio.sleep(0.02)
        if time.monotonic() - held > 0.05:
            self.postponed += 1
        self.alive()
        self.injected[f.kind] += 1
        log.info("%.1f s: %s (%g s, %g)", time.monotonic() - self.t0, f.kind, f.seconds, f.arg)
        return max(shift, time.monotonic() - self.t0 - f.at)

    async def stream_lane(self, faults: list[Fault]) -> None:
        fake = self.fake
        shift = 0.0
        for f in faults:
            shift = await self._at(f, shift)
            if f.kind == "drop":
                fake.threadsafe(fake.drop_all)
            elif f.kind == "stall":
                fake.threadsafe(fake.stall_all)
            elif f.kind == "server_shutdown":
                fake.threadsafe(lambda d=f.seconds: fake.shutdown_all(close_after=d))
            else:
                self.restarting = True
                await self.stop()
                await asyncio.sleep(f.seconds)
                await self.start()
                self.restarting = False

    async def rest_lane(self, faults: list[Fault]) -> None:
        fake = self.fake
        shift = 0.0
        for f in faults:
            shift = await self._at(f, shift)
            fake.threadsafe(fake.set_rest_mode, _REST_MODE[f.kind], int(f.arg) or None)
            await asyncio.sleep(f.seconds)
            fake.threadsafe(fake.set_rest_mode, "ok")

    async def disk_lane(self, faults: list[Fault]) -> None:
        shift = 0.0
        for f in faults:
            shift = await self._at(f, shift)
            self.disk.delay = f.arg
            await asyncio.sleep(f.seconds)
            self.disk.delay = 0.0

    def caught_up(self, last_id: int) -> bool:
        tracker = self.rec.trackers.get(SYMBOL) if self.rec else None
        return tracker is not None and tracker.high == last_id and not tracker.missing


async def _chaos(
    root: Path, fake: FakeBinance, cfg, holes: list[Hole], faults: list[Fault], rate: float
) -> _Chaos:
    run = _Chaos(root, fake, cfg, holes, rate)
    await run.start()
    run.t0 = time.monotonic()
    fake.threadsafe(fake.start_market)
    lanes = {
        "stream": [f for f in faults if f.kind in STREAM_KINDS],
        "rest": [f for f in faults if f.kind in REST_KINDS],
        "disk": [f for f in faults if f.kind == "slow_disk"],
    }
    await asyncio.gather(
        run.stream_lane(lanes["stream"]),
        run.rest_lane(lanes["rest"]),
        run.disk_lane(lanes["disk"]),
    )
    # Everything recovers; the recorder must then hold every servable id.
    fake.threadsafe(fake.set_rest_mode, "ok")
    run.disk.delay = 0.0
    last_id = orjson.loads(fake.frames[-1])["data"]["t"]
    deadline = time.monotonic() + 120
    while not (fake.executed == len(fake.frames) and run.caught_up(last_id)):
        run.alive()
        if time.monotonic() > deadline:
            high = run.rec.trackers[SYMBOL].high if run.rec else None
            raise AssertionError(
                f"not caught up 120 s after the faults: market {fake.executed}/"
                f"{len(fake.frames)}, high {high}, last {last_id}"
            )
        await asyncio.sleep(0.05)
    await run.stop()
    return run


def check_store(root: Path, frames: list[bytes], holes: list[Hole]) -> dict[str, Any]:
    """Compact every hour, then compare the store with the source: ids stored (once?),
    field for field, the views, and each recorded gap against the holes."""
    for d in closed_hours(root, 2**62, 0):
        compact_hour(root, d)
    lost = [h for h in holes if not h.streamed]

    def in_hole(tid: int, which: list[Hole]) -> bool:
        return any(h.first_id <= tid <= h.last_id for h in which)

    expected = [f for f in frames if not in_hole(orjson.loads(f)["data"]["t"], lost)]
    want = {orjson.loads(f)["data"]["t"] for f in expected}
    rows = stored_rows(root, SYMBOL)
    ids = rows["trade_id"].to_list() if len(rows) else []
    got = set(ids)
    try:
        assert_rows_match_frames(rows.drop("recv_time"), expected)
        fields_match = True
    except AssertionError:
        fields_match = False
    ((view_rows, view_distinct),) = view_query(
        root, "SELECT count(*), count(DISTINCT trade_id) FROM trades"
    )
    times = {}
    for f in frames:
        d = orjson.loads(f)["data"]
        times[d["t"]] = d["T"]
    gaps = []
    for g in read_gaps(root, SYMBOL):
        first, last = g["first_id"], g["last_id"]
        unservable = all(in_hole(i, holes) for i in range(first, last + 1))
        exact = (g["after_time"], g["before_time"]) == (times.get(first - 1), times.get(last + 1))
        bracket = g["after_time"] <= times.get(first - 1, 0) and g["before_time"] >= times.get(
            last + 1, 2**62
        )
        gaps.append(
            {
                "first_id": first,
                "last_id": last,
                "trades": last - first + 1,
                "reason": g["reason"],
                "unservable": unservable,
                "lost_hole": any((h.first_id, h.last_id) == (first, last) for h in lost),
                "times_exact": exact,
                "times_bracket": bracket,
            }
        )
    return {
        "trades_expected": len(want),
        "trades_stored": len(got),
        "rows_stored": len(ids),
        "stored_twice": len(ids) - len(got),
        "missing_ids": len(want - got),
        "unexpected_ids": len(got - want),
        "fields_match": fields_match,
        "view_rows": view_rows,
        "view_distinct": view_distinct,
        "gaps": gaps,
    }


def run_chaos(
    root: Path,
    frames: list[bytes],
    seed: int,
    seconds: float,
    *,
    time_scale: float = 1.0,
    progress: Callable[[str], None] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Replay ``frames`` over ``seconds`` under the faults of ``seed``; the figures of the run
    and of ``check_store``. ``time_scale`` stretches the run (market and fault times and
    durations) for slow machines without changing the schedule; ``config`` overrides
    recorder settings."""
    holes = plan_holes(frames, seed)
    planned = plan_faults(seed, seconds)
    faults = [Fault(f.at * time_scale, f.kind, f.seconds * time_scale, f.arg) for f in planned]
    rate = len(frames) / (seconds * time_scale)
    started = time.monotonic()
    with FakeBinance(frames, rate=rate) as fake:
        fake.rest_skip = [(h.first_id, h.last_id) for h in holes]
        fake.stream_skip = [(h.first_id, h.last_id) for h in holes if not h.streamed]
        cfg = fast_config(
            root,
            fake,
            **{
                "rest_timeout": REST_TIMEOUT * time_scale,
                "queue_max": 5000,
                "compact_interval": 3.0,
                **config,
            },
        )
        if progress:
            progress(f"{len(faults)} faults planned over {seconds:g} s, {len(holes)} holes")
        run = asyncio.run(_chaos(root, fake, cfg, holes, faults, rate))
        connections, rest_requests = fake.connections, len(fake.rest_requests)
    wall = time.monotonic() - started
    if progress:
        progress(f"recorded in {wall:.1f} s; checking the store")
    figures = {
        "seed": seed,
        "seconds": seconds,
        "wall_seconds": round(wall, 1),
        "trades_source": len(frames),
        "rate": round(rate, 1),
        "faults_planned": Counter(f.kind for f in planned),
        "faults": run.injected,
        "postponed": run.postponed,
        "holes": holes,
        "restarts": run.started - 1,
        "shutdowns": run.shutdowns,
        "longest_shutdown": max(run.shutdowns),
        "connections": connections,
        "rest_requests": rest_requests,
        "stats": run.stats,
        "duplicates_dropped": run.stats["duplicates"],
        "backfilled": run.stats["backfilled"],
        "rejects": run.stats["rejects"],
        "gaps_recorded": run.stats["gaps_recorded"],
    }
    figures.update(check_store(root, frames, holes))
    return figures
