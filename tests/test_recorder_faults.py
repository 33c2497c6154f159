"""The recorder through the faults of issue 9, against a fake Binance on loopback: REST down
at start, SIGTERM in every REST state, many drops, a poisoned REST reply, a failing disk, a
removed store, far-off trade times, oversize frames, nonsense settings, and its metrics."""

from __future__ import annotations

import asyncio
import calendar
import errno
import shutil
import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import UNIT, fast_config, wait_for
from fakebinance import FakeBinance
from prometheus_client.parser import text_string_to_metric_families
from test_process import start, wait_until
from test_recorder_net import exactly_once, record

from recorder.config import RecorderConfig
from recorder.errors import ConfigError, StoreError, StoreLockedError
from recorder.exchange import retry_after_seconds
from recorder.frames import decode_frame
from recorder.service import Recorder
from recorder.sink import DiskError
from recorder.status import store_status
from recorder.store import layout
from recorder.store.lock import StoreLock
from recorder.writer import StoreWriter


def seed_store(root: Path, frames: list[bytes], n: int = 1) -> None:
    """The store holds the first ``n`` trades, as if an earlier recorder had stopped."""
    w = StoreWriter(root)
    for raw in frames[:n]:
        f = decode_frame(raw, 1, frozenset({"BTCUSDT"}))
        w.append([("BTCUSDT", layout.hour_of(f.trade_time), f.line)])
    w.close()


def test_rest_down_at_start_records_the_stream_and_fills_in_later(tmp_path, frames_2024):
    frames = frames_2024[:4000]
    seed_store(tmp_path, frames)
    with FakeBinance(frames, rate=4000) as fake:
        fake.rest_mode = "fail"
        seen: dict[str, object] = {}

        async def while_down(rec):
            fake.threadsafe(fake.start_market)
            await wait_for(lambda: rec.stats["trades"] > 500, 20, "the stream to be recorded")
            await wait_for(lambda: (tmp_path / "state/recorder.json").exists(), 5, "status")
            await asyncio.sleep(0.5 * UNIT)
            state = orjson.loads((tmp_path / "state/recorder.json").read_bytes())
            seen["since"] = state["rest_unavailable_since"]
            seen["status"] = store_status(tmp_path)["rest_unavailable_since"]
            fake.rest_mode = "ok"

        started = int(time.time())
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake, before=while_down))
    assert seen["since"] is not None and seen["since"] == seen["status"]
    # Stamped in this run, to the second, in UTC (a run may span midnight: no date compare).
    since = calendar.timegm(time.strptime(str(seen["since"]), "%Y-%m-%dT%H:%M:%SZ"))
    assert started <= since <= time.time()
    assert rec.stats["rest_failures"] >= 1 and rec.stats["gaps_recorded"] == 0
    assert rec.ingest.rest_down_since is None  # REST answered again
    exactly_once(tmp_path, frames)


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("fail", ["--backoff-initial", "20", "--backoff-max", "60"]),
        ("429", []),
        ("hang", ["--rest-timeout", "120"]),
        ("trickle", ["--rest-timeout", "120"]),
    ],
)
def test_sigterm_with_rest_in_trouble_exits_within_5_s(tmp_path, frames_2024, mode, extra):
    """REST failing (mid back-off), rate-limited with Retry-After: 3600, never answering, or
    trickling a byte every 2 s: SIGTERM still ends the recorder at once, exit 0."""
    frames = frames_2024[:3000]
    seed_store(tmp_path, frames)
    with FakeBinance(frames, rate=3000) as fake:
        fake.retry_after = 3600
        fake.rest_mode = mode
        p = start(tmp_path, fake, None, *extra)
        wait_until(lambda: fake.connections == 1, 20, "the recorder to connect")
        fake.threadsafe(fake.start_market)
        # Catch-up and a serverShutdown switch both send backfill to REST.
        fake.threadsafe(lambda: fake.shutdown_all(close_after=0.5))
        time.sleep(2.5 * UNIT)
        assert p.poll() is None, Path(p.log_path).read_text()
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(15)
        took = time.monotonic() - t0
    err = Path(p.log_path).read_text()
    assert rc == 0, err
    assert took < 5 * UNIT, f"{took:.1f} s"
    assert "stopped:" in err and "Traceback" not in err


def test_twenty_drops_in_a_row_keep_reconnect_delays_short(tmp_path, frames_2024):
    """After each healthy period the back-off starts over: twenty drops never climb towards
    --backoff-max (10 s here), they each wait a first delay (at most 0.05 s)."""
    frames = frames_2024[:17000]
    with FakeBinance(frames, rate=2000) as fake:
        cfg = fast_config(tmp_path, fake, backoff_max=10.0, ping_interval=0.1 * UNIT)
        # About every 0.4 s, and never before the connection has lived two keepalive
        # intervals, however slow its opening was: each one was healthy when dropped.
        for k in range(20):
            fake.at(800 * (k + 1), FakeBinance.drop_when_connected(2 * cfg.ping_interval))
        rec = asyncio.run(record(cfg, fake))
        assert fake.connections == 21
    assert rec.stats["disconnects"] == 20
    assert len(rec.conns.delays_used) == 20
    assert max(rec.conns.delays_used) <= 0.05
    exactly_once(tmp_path, frames)


def test_another_symbols_rest_reply_is_quarantined_not_stored(tmp_path, frames_2024):
    frames = frames_2024[:4000]
    with FakeBinance(frames, rate=4000) as fake:

        def drop_and_poison(f):
            f.rest_mode = "other"
            f.drop_all()

        fake.at(1000, drop_and_poison)
        fake.at(2500, lambda f: setattr(f, "rest_mode", "ok"))
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake))
    assert rec.stats["rejects"] >= 50 and rec.stats["rejects"] % 50 == 0
    assert rec.stats["gaps_recorded"] == 0
    rejects = b"".join(p.read_bytes() for p in (tmp_path / "rejects").glob("*.ndjson"))
    assert b"outside the requested" in rejects and b"3000000000" in rejects
    exactly_once(tmp_path, frames)  # every trade once, none of the poisoned rows


def test_a_failing_disk_stops_the_recorder_and_a_restart_loses_nothing(tmp_path, frames_2024):
    frames = frames_2024[:4000]

    class FullDisk(StoreWriter):
        calls = 0

        def append(self, batch):
            FullDisk.calls += 1
            if FullDisk.calls > 20:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.root))
            super().append(batch)

    async def until_failure(cfg, fake):
        rec = Recorder(cfg, seed=1)
        rec.sink.writer = FullDisk(tmp_path)
        task = asyncio.create_task(rec.run())
        await wait_for(lambda: rec.conns.open or task.done(), 5, "first connection")
        fake.threadsafe(fake.start_market)
        t0 = time.monotonic()
        with pytest.raises(DiskError, match=r"No space left on device .*restart"):
            await asyncio.wait_for(task, 30)
        return time.monotonic() - t0, rec

    with FakeBinance(frames, rate=4000) as fake:
        cfg = fast_config(tmp_path, fake)
        took, rec = asyncio.run(until_failure(cfg, fake))
        assert rec.sink.failed and rec.stats["trades"] < 4000
        # Space is back: a restart catches up from REST.
        fake.wait_done(20)
        asyncio.run(record(cfg, fake, until_done=True))
    assert took < 10
    exactly_once(tmp_path, frames)


@pytest.mark.parametrize(
    ("removed", "message"),
    [("", "was removed or replaced while in use"), ("trades", "was deleted while being written")],
)
def test_a_removed_store_stops_the_recorder(tmp_path, frames_2024, removed, message):
    root = tmp_path / "store"
    with FakeBinance(frames_2024[:4000], rate=2000) as fake:

        async def scenario():
            rec = Recorder(fast_config(root, fake), seed=1)
            task = asyncio.create_task(rec.run())
            await wait_for(lambda: rec.conns.open or task.done(), 5, "first connection")
            fake.threadsafe(fake.start_market)
            await wait_for(lambda: rec.stats["trades"] > 200, 10, "trades")
            shutil.rmtree(root / removed)
            with pytest.raises(StoreError, match=message):
                await asyncio.wait_for(task, 10)

        asyncio.run(scenario())


def test_a_state_record_is_written_only_after_the_trades_before_it_are_durable(
    tmp_path, frames_2024
):
    """The state file says which ids are still missing; if it reached the disk before the
    trades that filled them, a crash in between would lose them silently."""
    frames = frames_2024[:3000]
    calls: list[str] = []

    class Journal(StoreWriter):
        def append(self, batch):
            calls.append("append")
            super().append(batch)

        def sync(self):
            calls.append("sync")
            super().sync()

        def write_state(self, name, state):
            calls.append("state")
            super().write_state(name, state)

    async def journal(rec):
        rec.sink.writer = Journal(tmp_path)

    with FakeBinance(frames, rate=3000) as fake:
        for i in (800, 1600, 2400):
            fake.at(i, FakeBinance.drop_when_connected())
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake, before=journal))
    assert rec.stats["backfilled"] > 0 and calls.count("state") >= 3
    for i, c in enumerate(calls):
        if c == "state":
            last_append = max((j for j in range(i) if calls[j] == "append"), default=-1)
            assert "sync" in calls[last_append + 1 : i], f"state write {i} before an fsync"
    exactly_once(tmp_path, frames)


def test_stop_while_the_stream_takes_its_open_timeout_returns_at_once(tmp_path):
    async def scenario():
        accepted = []

        async def silent(reader, writer):  # accepts TCP, never answers the handshake
            accepted.append(writer)
            await asyncio.sleep(60)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = RecorderConfig(
            symbols=("BTCUSDT",),
            data_dir=tmp_path,
            ws_url=f"ws://127.0.0.1:{port}",
            rest_url=f"http://127.0.0.1:{port}",
            open_timeout=60.0,
        )
        rec = Recorder(cfg)
        task = asyncio.create_task(rec.run())
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        rec.stop()
        await asyncio.wait_for(task, 5)  # returns, no error: a stop is not a failure
        took = time.monotonic() - t0
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
        return took

    assert asyncio.run(scenario()) < 1.0


def test_stop_with_an_fsync_taking_8_s_returns_within_5_s(tmp_path, frames_2024):
    import threading

    frames = frames_2024[:3000]
    hang, release = threading.Event(), threading.Event()

    class HungDisk(StoreWriter):
        def sync(self):
            if hang.is_set():
                release.wait(8)  # an fsync that takes 8 s
            super().sync()

    async def scenario(fake):
        rec = Recorder(fast_config(tmp_path, fake), seed=1)
        rec.sink.writer = HungDisk(tmp_path)
        task = asyncio.create_task(rec.run())
        await wait_for(lambda: rec.conns.open or task.done(), 5, "first connection")
        fake.threadsafe(fake.start_market)
        await wait_for(lambda: rec.stats["trades"] > 500, 10, "trades")
        hang.set()
        await asyncio.sleep(0.3)  # the writer is now inside a hung fsync
        t0 = time.monotonic()
        rec.stop()
        await asyncio.wait_for(task, 10)
        return time.monotonic() - t0, rec

    with FakeBinance(frames, rate=3000) as fake:
        took, rec = asyncio.run(scenario(fake))
    assert took < 5
    # The process would exit here; in a test, let the disk finish and close what it holds.
    hang.clear()
    release.set()
    time.sleep(0.2)
    rec.sink.writer.close()


@pytest.mark.parametrize(
    "content",
    [b"garbage", b"[]", b'{"missing": [[1, 2]]}', b'{"missing": [[5, 1, 0, 0]]}'],
)
def test_a_damaged_state_file_is_one_clear_error(tmp_path, content):
    from recorder.store import read_missing

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "BTCUSDT.json").write_bytes(content)
    with pytest.raises(StoreError, match=r"BTCUSDT\.json.*(move it aside|move the file aside)"):
        read_missing(tmp_path, "BTCUSDT")


def test_removing_the_lock_file_does_not_release_the_lock(tmp_path):
    with StoreLock(tmp_path):
        (tmp_path / layout.LOCK).unlink()
        with (
            pytest.raises(StoreLockedError, match="is in use by another recorder"),
            StoreLock(tmp_path),
        ):
            pass
    with StoreLock(tmp_path):  # released on exit
        pass


def test_far_off_trade_times_are_quarantined(tmp_path, frames_2024):
    frames = frames_2024[:3000]
    d = orjson.loads(frames[1000])["data"]

    def dated(year_ms: int) -> bytes:
        bad = {**d, "t": d["t"] + 5000, "T": year_ms}
        return orjson.dumps({"stream": "btcusdt@trade", "data": bad})

    with FakeBinance(frames, rate=3000) as fake:
        fake.at(1000, lambda f: f.inject(dated(3_993_000_000_000)))  # 2096
        fake.at(1001, lambda f: f.inject(dated(1_500_000_000_000)))  # 2017
        # The capture is from 2024: a skew of three years admits it, not 2017 or 2096.
        cfg = fast_config(tmp_path, fake, max_clock_skew=3 * 365 * 86400.0)
        rec = asyncio.run(record(cfg, fake))
    assert rec.stats["rejects"] == 2 and rec.stats["gaps_detected"] == 0
    exactly_once(tmp_path, frames)


def test_an_oversize_frame_is_quarantined_and_the_connection_kept(tmp_path, frames_2024):
    frames = frames_2024[:2000]
    big = b'{"stream":"btcusdt@trade","data":{"e":"trade","pad":"' + b"x" * (2 << 20) + b'"}}'
    with FakeBinance(frames, rate=4000) as fake:
        fake.at(1000, lambda f: f.inject(big))
        rec = asyncio.run(record(fast_config(tmp_path, fake), fake))
        assert fake.connections == 1
    assert rec.stats["rejects"] == 1
    (line,) = b"".join(p.read_bytes() for p in (tmp_path / "rejects").glob("*")).splitlines()
    assert orjson.loads(line)["frame"].encode() == big
    exactly_once(tmp_path, frames)


def test_metrics_scraped_over_http_match_the_recorders_counters(tmp_path, frames_2024):
    frames = frames_2024[:3000]
    scraped: dict = {}
    with FakeBinance(frames, rate=3000) as fake:
        fake.at(1500, FakeBinance.drop_all)

        async def scrape(rec):
            last = orjson.loads(frames[-1])["data"]["t"]
            await wait_for(lambda: fake.executed == len(frames), 30, "the market")
            await wait_for(lambda: rec.trackers["BTCUSDT"].high == last, 20, "catch-up")
            await asyncio.sleep(0.3 * UNIT)
            async with httpx.AsyncClient() as c:
                r = await c.get(f"http://127.0.0.1:{rec.metrics.port}/metrics")
            for fam in text_string_to_metric_families(r.text):
                for s in fam.samples:
                    scraped[(s.name, tuple(sorted(s.labels.items())))] = s.value
            scraped["stats"] = dict(rec.stats)
            scraped["queue"] = rec.sink.queue.qsize()

        async def go():
            cfg = fast_config(tmp_path, fake, metrics_addr="127.0.0.1:0")
            rec = Recorder(cfg, seed=1)
            task = asyncio.create_task(rec.run())
            await wait_for(lambda: rec.metrics.port or task.done(), 5, "metrics server")
            fake.threadsafe(fake.start_market)
            await scrape(rec)
            rec.stop()
            await task

        asyncio.run(go())
    st = scraped["stats"]
    p = "tapewatch_recorder_"
    for key in ("trades", "frames", "rejects", "duplicates", "backfilled", "gaps_recorded"):
        assert scraped[(p + key + "_total", ())] == st.get(key, 0), key
    assert scraped[(p + "trades_total", ())] == 3000
    assert scraped[(p + "reconnects_total", (("cause", "dropped"),))] == 1
    assert scraped[(p + "rest_requests_total", (("status", "200"),))] == st["rest_requests"]
    assert scraped[(p + "queue_depth", ())] == scraped["queue"]
    assert scraped[(p + "rest_down", ())] == 0
    lag = scraped[(p + "lag_seconds", (("symbol", "BTCUSDT"),))]
    last_ms = orjson.loads(frames[-1])["data"]["T"]
    assert abs(lag - (time.time() * 1000 - last_ms) / 1000) < 60
    assert scraped[(p + "fsync_latency_seconds_count", ())] == 3000


NONSENSE = [
    ("fsync_interval", -1, "--fsync-interval -1 is out of range"),
    ("compact_interval", 0, "--compact-interval 0 is out of range"),
    ("ping_interval", 0, "--ping-interval 0 is out of range"),
    ("max_connection_age", 0, "--max-connection-age 0 is out of range"),
    ("queue_max", 0, "--queue-max 0 is out of range"),
    ("rest_weight_per_minute", 20, "--rest-weight-per-minute 20 is out of range: give a value at least 25"),
    ("rest_weight_per_minute", 0, "--rest-weight-per-minute 0 is out of range"),
    ("fsync_interval", float("nan"), "--fsync-interval must be a finite float"),
    ("rest_limit", 2.5, "--rest-limit must be a finite int"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "message"), NONSENSE)
def test_nonsense_settings_are_refused(tmp_path, name, value, message):
    with pytest.raises(ConfigError) as e:
        RecorderConfig(symbols=("BTCUSDT",), data_dir=tmp_path, **{name: value})
    assert str(e.value).startswith(message)


def test_nonsense_settings_on_the_command_line_exit_2(tmp_path):
    from test_process import run_cli

    for option, value, shown in [
        ("--fsync-interval", "-1", "-1.0 is not in the range 0.01<=x<=60.0"),
        ("--queue-max", "0", "0 is not in the range 1<=x<=10000000"),
        ("--rest-weight-per-minute", "20", "20 is not in the range x>=25"),
    ]:
        r = run_cli("run", "--symbols", "btcusdt", "--data-dir", str(tmp_path), option, value)
        assert r.returncode == 2 and f"Invalid value for '{option}': {shown}" in r.stderr
        r = run_cli("run", "--symbols", "btcusdt", "--data-dir", str(tmp_path),
                    env={"TAPEWATCH_" + option[2:].upper().replace("-", "_"): value})  # fmt: skip
        assert r.returncode == 2 and f"Invalid value for '{option}': {shown}" in r.stderr


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("30", 30.0), ("inf", 60.0), ("nan", 60.0), ("-5", 60.0), ("soon", 60.0), (None, 60.0),
     ("1e9", 3 * 86400.0)],
)  # fmt: skip
def test_retry_after_is_bounded(header, seconds):
    assert retry_after_seconds(header) == seconds
