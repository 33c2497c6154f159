"""engine watch against a store being written: live equals batch, hooks, resume, service.
(Alert queue, stop with stuck webhooks and metrics: test_watch_alerts.py.)"""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import numpy as np
import orjson
import polars as pl
from conftest import UNIT

from engine.live.alerts import Alert, Alerter
from engine.live.follower import StoreFollower
from engine.model import ModelParams, walk_forward
from engine.pipeline import Settings
from engine.scan import TailCache, open_store
from engine.watch import Watcher, WatchOptions
from engine.windows import build_windows
from recorder.compact import compact_hour
from recorder.frames import decode_frame
from recorder.store import init_store, layout
from recorder.writer import StoreWriter

P = ModelParams(buffer=100, retrain_every=20, trees=25)
SYMS = frozenset({"BTCUSDT"})
MIDNIGHT = 1_723_161_600_000


def settings(root: Path) -> Settings:
    return Settings(data_dir=root, symbol="BTCUSDT", every_ms=1000, model=P, jobs=1)


class Replay(threading.Thread):
    """Writes frames into the store's open-hour files as a recorder would, on a clock:
    real time for the first ``realtime_s`` seconds of trade time, then ``speed`` times faster.
    Mid-way it compacts the closed hour under the reader and leaves a torn line for a moment."""

    def __init__(self, root: Path, frames: list[bytes], realtime_s: float, speed: float):
        super().__init__(daemon=True)
        self.root, self.frames, self.realtime_s, self.speed = root, frames, realtime_s, speed
        self.compacted = self.torn = False

    def run(self) -> None:
        w = StoreWriter(self.root)
        t0 = orjson.loads(self.frames[0])["data"]["T"]
        wall0 = time.monotonic()
        for i, raw in enumerate(self.frames):
            T = orjson.loads(raw)["data"]["T"]
            el = (T - t0) / 1000
            due = (
                el
                if el <= self.realtime_s
                else self.realtime_s + (el - self.realtime_s) / self.speed
            )
            time.sleep(max(0.0, wall0 + due * UNIT - time.monotonic()))
            f = decode_frame(raw, time.time_ns() // 1000, SYMS)
            line = f.line
            if i == 2500 and not self.torn:  # half a line on disk for a moment
                w.append([(f.symbol, layout.hour_of(f.trade_time), line[:40])])
                w.sync()
                time.sleep(0.3 * UNIT)
                line = line[40:]
                self.torn = True
            w.append([(f.symbol, layout.hour_of(f.trade_time), line)])
            w.sync()
            if T >= MIDNIGHT + 20_000 and not self.compacted:  # hour 23 closed: compact it
                w.seal("BTCUSDT", MIDNIGHT // 3_600_000 - 1)
                compact_hour(
                    self.root,
                    layout.hour_dir(self.root, "BTCUSDT", MIDNIGHT // 3_600_000 - 1),
                    include_active=False,
                )
                self.compacted = True
        w.close()


def store_frames(w: StoreWriter, raws: list[bytes], recv_us: int) -> None:
    """Append frames to their open-hour files as the recorder does, then fsync them."""
    for raw in raws:
        f = decode_frame(raw, recv_us, SYMS)
        w.append([(f.symbol, layout.hour_of(f.trade_time), f.line)])
    w.sync()


def history(root: Path, frames: list[bytes]) -> None:
    from test_store import compact_all, write_frames

    write_frames(root, frames)
    compact_all(root)


def batch(root: Path) -> pl.DataFrame:
    w = build_windows(open_store(root, "BTCUSDT"), [1000])[1000]
    return walk_forward(w, P, jobs=1)


def results(path: Path) -> pl.DataFrame:
    return pl.DataFrame([orjson.loads(x) for x in path.read_bytes().splitlines()])


def run_watcher(w: Watcher) -> threading.Thread:
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    return t


def wait_past(w: Watcher, frames: list[bytes], timeout: float = 30) -> None:
    """Wait until the watcher has scored the window of the last replayed trade. (It never goes
    quiet: once trading stops, the exchange clock runs on and empty windows keep closing.)"""
    last_ms = orjson.loads(frames[-1])["data"]["T"]
    deadline = time.monotonic() + timeout * UNIT
    while w.next_start <= last_ms // 1000 * 1000:
        assert time.monotonic() < deadline, "the watcher fell behind"
        time.sleep(0.05)


def test_live_scores_equal_batch_through_rollover_compaction_and_torn_line(
    tmp_path, frames_2024, capsys
):
    # History: the first 7,000 trades (about 4 minutes) are already compacted.
    history(tmp_path, frames_2024[:7000])
    flagged_file = tmp_path / "flagged.ndjson"
    # 2 s of grace: a recorder held up longer than the grace is the follower's known limit,
    # and a busy test machine can hold this one's writer thread up for a second.
    opts = WatchOptions(grace_ms=2000, poll=0.05, on_anomaly=f"cat >> {flagged_file}")
    import io

    out = io.StringIO()
    w = Watcher(settings(tmp_path), opts, out=out)
    t = run_watcher(w)
    time.sleep(0.5 * UNIT)
    # Ids 3735692259.. 3735692278 never reach the store: a gap the watcher must flag, as batch does.
    replay = Replay(tmp_path, frames_2024[7000:9000] + frames_2024[9020:], realtime_s=8, speed=40)
    replay.start()
    replay.join(120 * UNIT)
    assert replay.compacted and replay.torn
    wait_past(w, frames_2024)
    w.stop_event.set()
    t.join(10 * UNIT)
    live = results(w.results)
    ref = batch(tmp_path)
    assert live.height > 300
    # Window for window, everything the watcher emitted equals the batch rerun.
    ref_ms = ref.with_columns(window_start_ms=pl.col("window_start").dt.epoch("ms"))
    joined = live.join(ref_ms, on="window_start_ms", how="left", suffix="_batch")
    assert joined["trade_count_batch"].null_count() == 0
    for col in ("trade_count", "gap", "prediction", "refit", "score", "volume", "volatility"):
        a, b = joined[col].to_list(), joined[f"{col}_batch"].to_list()
        assert a == b, col
    assert (live["window_start_ms"].diff().drop_nulls() == 1000).all()  # no holes, no duplicates
    assert live["prediction"].drop_nulls().len() > 200
    gaps = live.filter("gap")
    assert gaps.height >= 1 and gaps["score"].null_count() == gaps.height  # flagged, not scored
    assert w.n - P.buffer > 0
    # The hooks saw every flagged window (the command got the window JSON on stdin): nothing
    # was pending long enough at stop to be given up.
    assert w.alerts is not None and (w.alerts.given_up, w.alerts.failed) == (0, 0)
    n_flagged = int((live["prediction"] == -1).sum())
    assert n_flagged > 0
    got = [orjson.loads(x)["window_start_ms"] for x in flagged_file.read_bytes().splitlines()]
    assert sorted(got) == live.filter(pl.col("prediction") == -1)["window_start_ms"].to_list()
    # Close-to-line lag in the real-time phase (reported, not asserted: timing is a benchmark).
    real = live.filter(
        pl.col("window_start_ms") < orjson.loads(frames_2024[7000])["data"]["T"] + 6000
    )
    lags = real["lag_ms"].drop_nulls().to_numpy()
    with capsys.disabled():
        print(
            f"\n[watch] window close to printed line, real-time phase: n={len(lags)} "
            f"median {np.median(lags):.0f} ms, max {lags.max():.0f} ms beyond the 1 s grace"
        )
        print(
            f"[watch] {live.height} windows emitted, equal to batch; {gaps.height} gap windows; {n_flagged} flagged"
        )
        print("[watch] excerpt:\n" + "\n".join(out.getvalue().splitlines()[:3]))


def test_a_trade_written_while_the_store_is_read_is_in_its_window(tmp_path, frames_2024):
    """The follower reads the exchange's clock before the store. Here the recorder writes the
    last trade at the moment the clock is read, and the clock is far enough on to close that
    trade's window (a read that took seconds on a busy machine): the window holds it all the
    same, as the batch rerun's does."""
    frames, lag_ms = frames_2024[:200], 100
    times = [orjson.loads(raw)["data"]["T"] for raw in frames]
    init_store(tmp_path)
    w = StoreWriter(tmp_path)

    def put(raw: bytes, t: int) -> None:
        store_frames(w, [raw], (t + lag_ms) * 1000)  # received 100 ms after the trade

    for raw, t in zip(frames[:-1], times[:-1], strict=True):
        put(raw, t)
    reads: list[float] = []

    def clock() -> float:
        if not reads:
            put(frames[-1], times[-1])
        reads.append((times[-1] + lag_ms + 2000) / 1000)  # closes the last trade's window
        return reads[-1]

    follower = StoreFollower(tmp_path, "BTCUSDT", 1000, 1000, clock=clock)
    start = times[0] // 1000 * 1000
    follower.start(start)
    live = pl.concat([row.with_columns(start=s0) for s0, row in follower.closed()])
    w.close()
    assert follower.next_start == times[-1] // 1000 * 1000 + 1000  # up to the last trade's window
    ref = build_windows(open_store(tmp_path, "BTCUSDT"), [1000])[1000]
    ref = ref.filter(
        pl.col("window_start").dt.epoch("ms").is_between(start, follower.next_start - 1)
    )
    assert live["trade_count"].to_list() == ref["trade_count"].to_list()
    assert live["trade_count"].sum() == len(frames)


def test_a_read_across_midnight_is_a_prefix_of_what_was_written(tmp_path, frames_2024):
    """The recorder writes the last trade of 23:00 and the first of 00:00 while the follower
    reads the store: what it reads is all the trades up to one, never the later one without
    the earlier (which would move its clock past a window still missing a trade)."""
    n = next(i for i, f in enumerate(frames_2024) if orjson.loads(f)["data"]["T"] >= MIDNIGHT)
    frames = frames_2024[n - 100 : n + 1]  # 100 trades of hour 23, then one of hour 0
    ids = [orjson.loads(f)["data"]["t"] for f in frames]
    init_store(tmp_path)
    w = StoreWriter(tmp_path)

    def put(raws: list[bytes]) -> None:
        store_frames(w, raws, MIDNIGHT * 1000)

    put(frames[:-2])

    class WritesDuringTheRead(TailCache):
        def read(self, path: Path) -> pl.DataFrame:
            table = super().read(path)
            if not hasattr(self, "done"):
                self.done = True
                put(frames[-2:])  # the last of hour 23, then the first of hour 0
            return table

    index = open_store(tmp_path, "BTCUSDT")
    index.tail = WritesDuringTheRead()
    span = (MIDNIGHT - 3_600_000, MIDNIGHT + 3_600_000)
    seen = index.load(*span)["trade_id"].to_list()
    assert seen == ids[: len(seen)] and len(seen) >= len(frames) - 2
    assert index.load(*span)["trade_id"].to_list() == ids  # the next look has both
    w.close()


def test_a_read_beside_a_day_file_is_a_prefix_of_what_was_written(tmp_path, frames_2024):
    """Late trades for hours 22 and 23 beside a merged day file (the day was merged, then REST
    filled it in) are read newest first too: never the later one without the earlier."""
    from test_store import compact_all, write_frames

    from recorder.store.days import merge_day

    n = next(i for i, f in enumerate(frames_2024) if orjson.loads(f)["data"]["T"] >= MIDNIGHT)
    write_frames(tmp_path, frames_2024[:n])  # hour 23 of 2024-08-08
    compact_all(tmp_path)
    merge_day(tmp_path, "BTCUSDT", MIDNIGHT // 86_400_000 - 1)

    def late(trade_id: int, hour: int) -> bytes:  # a trade of that hour of the 8th
        frame = orjson.loads(frames_2024[0])
        t = MIDNIGHT - (24 - hour) * 3_600_000 + trade_id
        frame["data"].update(t=trade_id, T=t, E=t)
        return orjson.dumps(frame)

    w = StoreWriter(tmp_path)

    def put(raw: bytes) -> None:
        store_frames(w, [raw], MIDNIGHT * 1000)

    put(late(1, 22))
    put(late(2, 23))

    class WritesDuringTheRead(TailCache):
        def read(self, path: Path) -> pl.DataFrame:
            table = super().read(path)
            if not hasattr(self, "done"):
                self.done = True
                put(late(3, 22))  # arrives first
                put(late(4, 23))
            return table

    index = open_store(tmp_path, "BTCUSDT")
    index.tail = WritesDuringTheRead()
    span = (MIDNIGHT - 3 * 3_600_000, MIDNIGHT)
    seen = [i for i in index.load(*span)["trade_id"].to_list() if i < 10]
    assert sorted(seen) == [1, 2, 3, 4][: len(seen)] and len(seen) >= 2
    assert sorted(i for i in index.load(*span)["trade_id"].to_list() if i < 10) == [1, 2, 3, 4]
    w.close()


def test_restart_resumes_after_the_last_window(tmp_path, frames_2024):
    history(tmp_path, frames_2024[:4000])
    replay = Replay(tmp_path, frames_2024[4000:9000], realtime_s=0, speed=40)
    opts = WatchOptions(grace_ms=1000, poll=0.05)
    w1 = Watcher(settings(tmp_path), opts)
    t1 = run_watcher(w1)
    replay.start()
    while w1.emitted < 40:
        time.sleep(0.02)
    w1.stop_event.set()
    t1.join(10)
    # A kill can leave a torn last line: that window is scored again, once.
    with open(w1.results, "ab") as f:
        f.write(b'{"symbol":"BTCUSDT","window_st')
    lines = w1.results.read_bytes().splitlines()
    w1.results.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    w2 = Watcher(settings(tmp_path), opts)
    t2 = run_watcher(w2)
    replay.join(60)
    wait_past(w2, frames_2024[:9000])
    w2.stop_event.set()
    t2.join(10)
    live = results(w1.results)
    assert (live["window_start_ms"].diff().drop_nulls() == 1000).all()
    ref = batch(tmp_path).with_columns(window_start_ms=pl.col("window_start").dt.epoch("ms"))
    j = live.join(ref, on="window_start_ms", suffix="_batch")
    assert j.height == live.height and j["score"].to_list() == j["score_batch"].to_list()


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: typing.ClassVar[list[bytes]] = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(status: int):
    handler = type("H", (_Hook,), {"bodies": [], "status": status})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, handler


def deliver(opts: WatchOptions, body: bytes) -> Alerter:
    """Deliver one alert through a real Alerter and close it once it is done."""
    a = Alerter(opts)
    try:
        assert a.submit(Alert(MIDNIGHT, body))
        deadline = time.monotonic() + 10 * UNIT
        while a.sent + a.failed < 1:
            assert time.monotonic() < deadline, "the alert was never delivered"
            time.sleep(0.02)
    finally:
        a.close()
    return a


def test_webhook_and_command_hooks_with_failures(tmp_path, caplog):
    ok, ok_h = serve(200)
    bad, bad_h = serve(500)
    gone, gone_h = serve(404)
    body = orjson.dumps(
        {"window_start": "2024-08-08T23:58:00.000Z", "score": -0.1, "flagged": True}
    )
    out = tmp_path / "cmd.json"
    try:
        a = deliver(
            WatchOptions(
                webhook=f"http://127.0.0.1:{ok.server_port}/hook", on_anomaly=f"cat > {out}"
            ),
            body,
        )
        assert ok_h.bodies == [body] and out.read_bytes() == body
        assert (a.sent, a.failed, a.given_up) == (1, 0, 0)
        a = deliver(
            WatchOptions(
                webhook=f"http://127.0.0.1:{bad.server_port}/hook",
                on_anomaly="exit 3",
                webhook_tries=3,
                retry_delay=0.01,
            ),
            body,
        )
        assert bad_h.bodies == [body] * 3  # 5xx: tried again
        assert (a.sent, a.failed) == (0, 1)
        assert "webhook attempt 3/3 failed: HTTP 500" in caplog.text
        assert "--on-anomaly exited 3" in caplog.text
        a = deliver(WatchOptions(webhook=f"http://127.0.0.1:{gone.server_port}/hook"), body)
        assert gone_h.bodies == [body]  # 4xx: trying again would not help
        assert "webhook attempt 1/3 failed: HTTP 404" in caplog.text
    finally:
        for srv in (ok, bad, gone):
            srv.shutdown()
            srv.server_close()


def test_engine_watch_process_stops_cleanly_on_sigterm(tmp_path, frames_2024):
    history(tmp_path, frames_2024[:3000])
    init_store(tmp_path)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "watch",
            "--data-dir",
            str(tmp_path),
            "--every",
            "1s",
            "--buffer",
            "100",
            "--retrain-every",
            "20",
            "--trees",
            "10",
            "--format",
            "ndjson",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3 * UNIT)
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=15 * UNIT)
    assert p.returncode == 0, err
    assert "watching BTCUSDT 1s windows" in err and "Traceback" not in err


UNIT_FILE = Path(__file__).parent.parent / "engine" / "systemd" / "tapewatch-watch.service"


def test_watch_unit_file_verifies_and_is_hardened(tmp_path):
    import shutil

    exe = shutil.which("engine", path=str(Path(sys.executable).parent))
    unit = tmp_path / "tapewatch-watch.service"
    unit.write_text(UNIT_FILE.read_text().replace("/opt/tapewatch/.venv/bin/engine", exe))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (r.returncode, r.stderr.strip()) == (0, "")
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    line = next(x for x in r.stdout.splitlines() if "Overall exposure level" in x)
    assert float(line.split(":")[1].split()[0]) <= 1.5, line
    assert "Type=notify" in UNIT_FILE.read_text() and "WatchdogSec=" in UNIT_FILE.read_text()
