"""The recorder against a fake Binance on loopback that replays the real capture."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from conftest import (
    UNIT,
    assert_rows_match_frames,
    fast_config,
    in_a_future_hour,
    stored_rows,
    view_query,
    wait_for,
)
from fakebinance import FakeBinance
from test_frames import MALFORMED

from recorder.backfill import backoff_delays
from recorder.errors import ConfigError
from recorder.service import Recorder
from recorder.status import store_status
from recorder.store import layout, read_gaps


async def record(
    cfg, fake: FakeBinance, *, until_done: bool = True, settle: float = 1.0, before=None
):
    """Run a recorder while the market replays; returns it after a clean stop."""
    rec = Recorder(cfg, seed=1)
    task = asyncio.create_task(rec.run())
    await wait_for(lambda: rec.conns.open or task.done(), 5, "first connection")
    if task.done():
        await task
    if before:
        await before(rec)
    fake.threadsafe(fake.start_market)
    if until_done:
        await wait_for(lambda: fake.executed == len(fake.frames), 60, "the market to finish")
        last = orjson.loads(fake.frames[-1])["data"]["t"]
        await wait_for(
            lambda: rec.trackers["BTCUSDT"].high == last and not rec.trackers["BTCUSDT"].missing,
            20,
            "the recorder to catch up",
        )
        await asyncio.sleep(settle * UNIT)
    rec.stop()
    await task
    return rec


def exactly_once(root, frames) -> None:
    """Every source id stored, once, field for field (after compaction), and the views agree."""
    from recorder.compact import closed_hours, compact_hour

    for d in closed_hours(root, 2**62, 0):
        compact_hour(root, d)
    rows = stored_rows(root)
    assert rows["trade_id"].is_duplicated().sum() == 0
    assert_rows_match_frames(rows.drop("recv_time"), frames)
    n = len(frames)
    assert view_query(root, "SELECT count(*), count(DISTINCT trade_id) FROM trades") == [(n, n)]


def test_clean_replay_stores_exactly_the_source_trades(tmp_path, frames_2024):
    # In an hour still to come: the first compaction pass, which may run after the market
    # starts, finds no closed hour to take the first trades out of the NDJSON.
    frames = in_a_future_hour(frames_2024[:4000])
    with FakeBinance(frames, rate=4000) as fake:
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake))
        assert fake.connections == 1
    assert (rec.stats["trades"], rec.stats["duplicates"], rec.stats["rejects"]) == (4000, 0, 0)
    # Open hour: the NDJSON holds each frame byte for byte, with its receive time.
    lines = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("trades/**/trades.ndjson")))
    assert [orjson.loads(x)["frame"] for x in lines.splitlines()] == [
        orjson.loads(f) for f in frames
    ]
    assert lines.count(frames[0]) == 1
    exactly_once(tmp_path, frames)


def test_dropped_connections_are_backfilled(tmp_path, frames_2024):
    frames = frames_2024[:6000]
    drops = sorted(random.Random(7).sample(range(300, 5700), 4))
    with FakeBinance(frames, rate=3000) as fake:
        for i in drops:  # two are 0.19 s apart: the second waits for the reconnection
            fake.at(i, FakeBinance.drop_when_connected())
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake))
        assert fake.connections == 5
        assert fake.rest_requests, "backfill never asked REST"
    assert rec.stats["disconnects"] == 4
    assert rec.stats["backfilled"] > 0
    assert rec.stats["gaps_recorded"] == 0
    exactly_once(tmp_path, frames)


@pytest.mark.parametrize("how", ["serverShutdown", "maximum age"])
def test_make_before_break_with_rest_failing(tmp_path, frames_2024, how):
    frames = frames_2024[:5000]
    with FakeBinance(frames, rate=2500) as fake:
        fake.rest_mode = "fail"
        kw = {}
        if how == "serverShutdown":
            fake.at(1500, lambda f: f.shutdown_all(close_after=1.0 * UNIT))
            fake.at(3500, lambda f: f.shutdown_all(close_after=1.0 * UNIT))
        else:
            kw["max_connection_age"] = 0.8 * UNIT
        rec = asyncio.run(record(fast_config(tmp_path, fake, **kw), fake))
        assert fake.connections >= 3
    key = "switch_serverShutdown" if how == "serverShutdown" else "switch_maximum age"
    assert rec.stats[key] >= 2
    assert rec.stats["disconnects"] == 0
    assert rec.stats["gaps_detected"] == 0 and rec.stats["gaps_recorded"] == 0
    assert rec.stats["duplicates"] > 0  # both connections delivered; one copy was kept
    exactly_once(tmp_path, frames)


def test_malformed_frames_are_quarantined_and_neighbours_kept(tmp_path, frames_2024):
    frames = frames_2024[:2000]
    corpus = [raw for raw, _ in MALFORMED if raw] + [b'{"code":2,"msg":"Invalid request","id":1}']
    with FakeBinance(frames, rate=4000) as fake:

        def garbage(f):
            for raw in corpus:
                f.inject(raw)

        fake.at(1000, garbage)
        fake.at(1001, lambda f: f.inject(b'{"result":null,"id":1}'))
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake))
    assert rec.stats["rejects"] == len(corpus) - 1
    assert rec.stats["error_frames"] == 1 and rec.stats["replies"] == 1
    rejects = b"".join(p.read_bytes() for p in (tmp_path / "rejects").glob("*.ndjson")).splitlines()
    assert [orjson.loads(r)["frame"].encode() for r in rejects if "frame" in orjson.loads(r)] == [
        r for r in corpus if r != b"\xff\xfe"
    ]
    assert store_status(tmp_path)["rejects"] == len(corpus)
    exactly_once(tmp_path, frames)


def test_dead_connection_is_detected_but_a_quiet_one_is_kept(tmp_path, frames_2024):
    frames = frames_2024[:3000]
    with FakeBinance(frames, rate=3000) as fake:

        async def scenario(rec):
            # Quiet market, live socket: pings answered, nothing to trade: no reconnect.
            await asyncio.sleep(3 * UNIT)
            assert fake.connections == 1 and rec.stats["dead_connections"] == 0

        fake.at(1200, FakeBinance.stall_all)
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake, before=scenario))
        assert fake.connections == 2
    assert rec.stats["dead_connections"] == 1
    exactly_once(tmp_path, frames)


def test_rest_429_retry_after_is_respected(tmp_path, frames_2024):
    frames = frames_2024[:3000]
    with FakeBinance(frames, rate=3000) as fake:
        fake.retry_after = 1

        def drop_and_limit(f):
            f.rest_mode = "429"
            f.drop_all()

        fake.at(1000, drop_and_limit)
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake))
        assert fake.rest_mode == "ok"
    assert rec.stats["rest_rate_limited"] == 1
    exactly_once(tmp_path, frames)


def test_ids_rest_does_not_have_become_a_visible_gap(tmp_path, frames_2024):
    frames = frames_2024[:3000]
    ids = [orjson.loads(f)["data"]["t"] for f in frames]
    hole = (ids[1000], ids[1099])  # on the exchange's side: neither stream nor REST has them
    with FakeBinance(frames, rate=3000) as fake:
        fake.rest_skip = fake.stream_skip = [hole]
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake))
    gaps = read_gaps(tmp_path, "BTCUSDT")
    assert rec.stats["gaps_recorded"] == len(gaps) == 1
    (gap,) = gaps
    assert (gap["first_id"], gap["last_id"], gap["reason"]) == (*hole, "not served by REST")
    stored = set(stored_rows(tmp_path)["trade_id"].to_list())
    missing = set(range(gap["first_id"], gap["last_id"] + 1))
    # Stored and recorded-missing partition the source ids exactly.
    assert stored.isdisjoint(missing) and stored | missing == set(ids)
    times = {orjson.loads(f)["data"]["t"]: orjson.loads(f)["data"]["T"] for f in frames}
    assert (gap["after_time"], gap["before_time"]) == (
        times[gap["first_id"] - 1],
        times[gap["last_id"] + 1],
    )
    (row,) = store_status(tmp_path)["symbols"]
    assert (row["gaps"], row["gap_trades"]) == (1, len(missing))
    assert view_query(tmp_path, "SELECT first_id, last_id, trades FROM gaps") == [
        (gap["first_id"], gap["last_id"], len(missing))
    ]


def test_ids_missing_while_rest_is_down_stay_missing_never_a_gap(tmp_path, frames_2024):
    """Binance serves its history for years: an outage, however long, only delays a fill.
    The missing ids stay in state/BTCUSDT.json and recorder status until REST answers."""
    frames = frames_2024[:3000]
    ids = [orjson.loads(f)["data"]["t"] for f in frames]
    with FakeBinance(frames, rate=3000) as fake:

        def drop_and_break(f):
            f.rest_mode = "fail"
            f.drop_all()

        fake.at(1000, drop_and_break)

        async def scenario():
            rec = Recorder(fast_config(tmp_path, fake), seed=1)
            task = asyncio.create_task(rec.run())
            await wait_for(lambda: rec.conns.open or task.done(), 5, "first connection")
            fake.threadsafe(fake.start_market)
            await wait_for(lambda: fake.executed == len(frames), 30, "the market")
            await wait_for(lambda: rec.trackers["BTCUSDT"].high == ids[-1], 10, "the stream")
            await asyncio.sleep(2 * UNIT)  # many back-off rounds of failing REST
            status = store_status(tmp_path)
            rec.stop()
            await task
            return rec, status

        rec, status = asyncio.run(scenario())
    assert rec.stats["gaps_recorded"] == 0 and read_gaps(tmp_path) == []
    assert rec.stats["rest_failures"] >= 3
    (missing,) = rec.trackers["BTCUSDT"].missing
    assert missing.first <= ids[1000] <= missing.last
    n = missing.last - missing.first + 1
    assert status["symbols"][0]["missing_being_fetched"] == n
    assert status["rest_unavailable_since"] is not None
    stored = set(stored_rows(tmp_path)["trade_id"].to_list())
    assert stored | set(range(missing.first, missing.last + 1)) == set(ids)
    # A restart with REST back fills them.
    with FakeBinance(frames, rate=100000) as fake:
        fake.start_market()
        fake.wait_done(10)

        async def refill():
            rec = Recorder(fast_config(tmp_path, fake), seed=1)
            task = asyncio.create_task(rec.run())
            await wait_for(
                lambda: (
                    rec.trackers.get("BTCUSDT", True) is not True
                    and not rec.trackers["BTCUSDT"].missing
                ),
                20,
                "the fill",
            )
            await asyncio.sleep(0.3 * UNIT)
            rec.stop()
            await task

        asyncio.run(refill())
    exactly_once(tmp_path, frames)


def test_restart_reads_the_last_id_back_and_catches_up_a_quiet_symbol(tmp_path, frames_2024):
    frames = frames_2024[:3000]
    # The store holds the first trade; the market traded 2999 more while we were away and
    # is now quiet: only the start-up REST catch-up can bring them in.
    with FakeBinance(frames, rate=100000) as fake:
        fake.start_market()
        fake.wait_done(10)
        first = orjson.loads(frames[0])["data"]
        from recorder.frames import decode_frame
        from recorder.writer import StoreWriter

        f = decode_frame(frames[0], 1, frozenset({"BTCUSDT"}))
        w = StoreWriter(tmp_path)
        w.append([("BTCUSDT", layout.hour_of(first["T"]), f.line)])
        w.close()

        async def run_quiet():
            rec = Recorder(fast_config(tmp_path, fake), seed=1)
            task = asyncio.create_task(rec.run())
            await wait_for(
                lambda: (
                    rec.trackers.get("BTCUSDT")
                    and rec.trackers["BTCUSDT"].high == orjson.loads(frames[-1])["data"]["t"]
                ),
                20,
                "catch-up",
            )
            rec.stop()
            await task
            return rec

        rec = asyncio.run(run_quiet())
        assert fake.connections == 1
        assert fake.rest_requests[0] == (first["t"] + 1, 1000)
    assert rec.stats["backfilled"] == 2999
    exactly_once(tmp_path, frames)


def test_a_bad_start_is_a_config_error(tmp_path, frames_2024):
    """A stream that cannot be opened, a malformed URL or a host that does not resolve stops
    the start with one clear error; REST being down does not (see test_recorder_faults)."""
    with FakeBinance(frames_2024[:10]) as fake:
        fake.refuse = True
        with pytest.raises(
            ConfigError, match=r"cannot open the stream at ws://127\.0\.0\.1:\d+ .*check --ws-url"
        ):
            asyncio.run(Recorder(fast_config(tmp_path, fake)).run())
        fake.refuse = False
        for kw, message in [
            (
                {"rest_url": "ftp://example.com"},
                r"--rest-url 'ftp://example.com' is not a http/https URL",
            ),
            (
                {"rest_url": "http://host:99999"},
                r"--rest-url 'http://host:99999' is not a http/https URL",
            ),
            (
                {"ws_url": "http://127.0.0.1:1"},
                r"--ws-url 'http://127.0.0.1:1' is not a ws/wss URL",
            ),
            (
                {"rest_url": "http://api.nonexistent.invalid"},
                r"--rest-url host 'api.nonexistent.invalid' does not exist",
            ),
        ]:
            with pytest.raises(ConfigError, match=message):
                asyncio.run(Recorder(fast_config(tmp_path, fake, **kw)).run())


def test_backoff_is_capped_jittered_and_never_zero():
    rng = random.Random(3)
    gen = backoff_delays(1.0, 60.0, rng)
    delays = [next(gen) for _ in range(1, 30)]
    assert all(0.5 <= d <= 1.0 for d in delays[:1])
    assert all(30.0 <= d <= 60.0 for d in delays[7:])
    # A sustained outage: attempts in 5 minutes stay far below Binance's 300.
    assert sum(1 for t in __import__("itertools").accumulate(delays) if t <= 300) < 15


def test_a_slow_disk_gives_backpressure_not_unbounded_memory(tmp_path, frames_2024):
    """The writer thread stalls 30 ms per batch; the queue between socket and disk never
    grows past its bound, and still every trade is stored once."""
    import time as _time

    from recorder.writer import StoreWriter

    class SlowDisk(StoreWriter):
        def append(self, batch):
            _time.sleep(0.03)
            super().append(batch)

    frames = frames_2024[:4000]
    peak = 0

    async def watch_queue(rec):
        async def sample():
            nonlocal peak
            while True:
                peak = max(peak, rec.sink.queue.qsize())
                await asyncio.sleep(0.005)

        rec.sink.writer = SlowDisk(tmp_path)
        asyncio.get_running_loop().create_task(sample())

    with FakeBinance(frames, rate=8000) as fake:
        asyncio.run(record(fast_config(tmp_path, fake, queue_max=100), fake, before=watch_queue))
    assert 50 < peak <= 100
    exactly_once(tmp_path, frames)
