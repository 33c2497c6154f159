"""engine watch's alerts and metrics: a bounded alert queue, stop within seconds whatever the
webhook does (a real server that never answers, or trickles its reply), and the Prometheus
endpoint scraped over HTTP.

The store is the real 2024 capture, stored and compacted as in test_watch.py. A results file
seeded just before its first window makes the watcher score the whole stored history at once
(its clock stands at the last trade), so flags come quickly and their number is fixed."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import UNIT
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from test_watch import history, run_watcher, settings

from engine.cli import main
from engine.live.alerts import Alert, Alerter
from engine.metrics import MetricsServer, WatchCollector, WatchCounts
from engine.watch import Watcher, WatchOptions

GRACE_MS = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory, frames_2024) -> Path:
    root = tmp_path_factory.mktemp("alerts")
    history(root, frames_2024)
    return root


def seed(path: Path, frames: list[bytes]) -> int:
    """A results file whose last window lies just before the first trade: the watcher resumes
    there and scores the whole store. Returns the last trade's time (UTC ms)."""
    first = orjson.loads(frames[0])["data"]["T"] // 1000 * 1000
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"window_start_ms": first - 1000}) + b"\n")
    return orjson.loads(frames[-1])["data"]["T"]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout * UNIT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class StuckWebhook(socketserver.ThreadingTCPServer):
    """A webhook on 127.0.0.1 that reads each request in full, then never answers ("silent")
    or answers 200 with a 1,000-byte body sent one byte every 2 s ("trickle")."""

    daemon_threads = True

    def __init__(self, mode: str):
        self.mode = mode
        self.requests = 0
        self.done = threading.Event()
        super().__init__(("127.0.0.1", 0), _StuckHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def stop(self) -> None:
        self.done.set()
        self.shutdown()
        self.server_close()


class _StuckHandler(socketserver.StreamRequestHandler):
    server: StuckWebhook

    def handle(self) -> None:
        srv = self.server
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.rfile.read(length)
        srv.requests += 1
        try:
            if srv.mode == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                while not srv.done.wait(2):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            else:
                srv.done.wait()
        except OSError:  # the client gave up and closed the connection
            pass


@pytest.fixture(params=["silent", "trickle"])
def stuck(request):
    srv = StuckWebhook(request.param)
    yield srv
    srv.stop()


def scrape(url: str) -> dict[str, float]:
    """GET the metrics page over HTTP: {name or name{label=value}: value}."""
    r = httpx.get(url, timeout=5 * UNIT)
    assert r.status_code == 200
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_queue_bound_and_metrics_scraped_over_http(store, frames_2024, tmp_path, caplog):
    caplog.set_level(logging.INFO, "engine.watch")
    hook = StuckWebhook("silent")
    out = tmp_path / "scores.ndjson"
    last_ms = seed(out, frames_2024)
    opts = WatchOptions(
        grace_ms=GRACE_MS,
        poll=0.05,
        results=out,
        webhook=hook.url,
        hook_timeout=60,  # the first alert stays in flight for the whole test
        alert_queue_max=5,
        metrics_addr="127.0.0.1:0",
    )
    w = Watcher(settings(store), opts, out=io.StringIO())
    t = run_watcher(w)
    try:
        wait_until(lambda: w.next_start + 1000 + GRACE_MS > last_ms, 60, "the backlog")
        wait_until(lambda: hook.requests == 1, 10, "the first alert's request")
        assert w.metrics_url is not None and ":0/" not in w.metrics_url
        assert f"serving metrics at {w.metrics_url}" in caplog.text
        m = scrape(w.metrics_url)
        lines = pl.DataFrame(  # what the watcher wrote, without the seeded line
            [orjson.loads(x) for x in out.read_bytes().splitlines()[1:]], infer_schema_length=None
        )
        flagged = int(lines["flagged"].sum())
        assert flagged > 5
        # The endpoint serves exactly the watcher's own counters, and they match the file.
        assert m["tapewatch_watch_windows_total"] == w.emitted == lines.height
        assert m["tapewatch_watch_windows_scored_total"] == w.scored
        assert w.scored == lines["score"].drop_nulls().len() > 0
        assert m["tapewatch_watch_flags_total"] == w.flags == flagged
        # One alert in flight plus four waiting fill the queue of 5; every later one is dropped.
        assert m["tapewatch_watch_alert_queue_depth"] == 5
        assert m["tapewatch_watch_alerts_dropped_total{reason=queue_full}"] == flagged - 5
        assert m["tapewatch_watch_alerts_dropped_total{reason=stop}"] == 0
        assert m["tapewatch_watch_alerts_sent_total"] == 0
        assert m["tapewatch_watch_alert_failures_total"] == 0
        end = (lines["window_start_ms"][-1] + 1000) / 1000
        assert m["tapewatch_watch_last_window_end_timestamp_seconds"] == end
        assert caplog.text.count("alert queue full (5 pending") == 1  # one warning per run of drops
    finally:
        w.stop_event.set()
        t.join(5 * UNIT)
        hook.stop()
    assert not t.is_alive(), "the watcher did not stop"
    assert w.alerts is not None and (w.alerts.given_up, w.alerts.dropped_full) == (5, flagged - 5)
    assert w.counts().dropped_stop == 5
    assert caplog.text.count("gave up 5 pending alert(s)") == 1
    assert hook.requests == 1  # the in-flight request was not tried again at stop
    with pytest.raises(httpx.ConnectError):  # the endpoint went away with the watcher
        httpx.get(w.metrics_url, timeout=2 * UNIT)


def test_each_metrics_server_has_its_own_registry():
    a = MetricsServer("127.0.0.1:0", WatchCollector(lambda: WatchCounts(windows=7, flags=1)))
    b = MetricsServer("127.0.0.1:0", WatchCollector(lambda: WatchCounts(windows=9)))
    try:
        assert a.port != b.port
        ma, mb = scrape(a.url), scrape(b.url)
        assert (ma["tapewatch_watch_windows_total"], ma["tapewatch_watch_flags_total"]) == (7, 1)
        assert (mb["tapewatch_watch_windows_total"], mb["tapewatch_watch_flags_total"]) == (9, 0)
        assert "tapewatch_watch_last_window_end_timestamp_seconds" not in ma  # none written yet
        assert REGISTRY.get_sample_value("tapewatch_watch_windows_total") is None
    finally:
        a.close()
        b.close()


def test_webhook_request_has_an_overall_deadline(stuck, caplog):
    a = Alerter(WatchOptions(webhook=stuck.url, hook_timeout=0.5, webhook_tries=2, retry_delay=0))
    try:
        assert a.submit(Alert(0, b"{}\n"))
        wait_until(lambda: a.failed == 1, 5, "the webhook to be given up")
        assert stuck.requests == 2
        assert "webhook attempt 2/2 failed: no complete reply within 0.5 s" in caplog.text
    finally:
        assert a.close() == 0


def test_command_hook_is_killed_with_its_children(tmp_path, caplog):
    """A command over its deadline is killed with what it started; so is one still running
    at stop (its alert is given up)."""
    for timeout, pid_file in [(0.5, tmp_path / "timeout.pid"), (60, tmp_path / "stop.pid")]:
        # The shell writes the pid of its child once it is running, then waits for it.
        cmd = f"sleep 60 & echo $! > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; wait"
        a = Alerter(WatchOptions(on_anomaly=cmd, hook_timeout=timeout))
        try:
            assert a.submit(Alert(0, b"{}\n"))
            wait_until(pid_file.exists, 5, "the command to start")
            if timeout < 1:
                wait_until(lambda: a.failed == 1, 5, "the command to time out")  # noqa: B023
                assert "--on-anomaly took longer than 0.5 s: killed" in caplog.text
                assert gone(int(pid_file.read_text()))
        finally:
            given_up = a.close()
        assert (given_up, a.failed) == ((0, 1) if timeout < 1 else (1, 0))
        assert gone(int(pid_file.read_text()))


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for init to reap it counts as ended)."""
    deadline = time.monotonic() + 5 * UNIT
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


class Stderr(threading.Thread):
    """Collects a subprocess's stderr lines as they come."""

    def __init__(self, p: subprocess.Popen):
        super().__init__(daemon=True)
        self.p, self.lines = p, []
        self.start()

    def run(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def watch_cmd(store: Path, results_file: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engine.cli",
        "watch",
        "--data-dir",
        str(store),
        "--results",
        str(results_file),
        "--every",
        "1s",
        "--grace",
        "1s",
        "--poll",
        "0.05",
        "--buffer",
        "100",
        "--retrain-every",
        "20",
        "--trees",
        "25",
        "--jobs",
        "1",
        "--format",
        "ndjson",
        *args,
    ]


def test_sigterm_with_a_stuck_webhook_exits_within_seconds(store, frames_2024, tmp_path, stuck):
    out = tmp_path / "scores.ndjson"
    seed(out, frames_2024)
    cmd = watch_cmd(store, out, "--webhook", stuck.url, "--hook-timeout", "60")
    cmd += ["--alert-queue-max", "10", "--metrics-addr", "127.0.0.1:0"]
    with open(tmp_path / "stdout", "w") as stdout:  # a file: a full pipe would block the watcher
        p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    err = Stderr(p)
    try:
        wait_until(lambda: "alert queue full" in err.text or p.poll() is not None, 60, "flags")
        assert p.poll() is None, err.text
        assert "serving metrics at http://127.0.0.1:" in err.text
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(10 * UNIT)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err.join(5 * UNIT)
    p.stderr.close()  # type: ignore[union-attr]
    assert p.returncode == 0, err.text
    assert took < 5 * UNIT, f"stopped after {took:.1f} s"
    assert "gave up 10 pending alert(s)" in err.text and "Traceback" not in err.text
    assert stuck.requests == 1


def test_bad_metrics_address_is_one_error_line(store, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        for addr, message in [
            ("127.0.0.1:70000", "Error: --metrics-addr '127.0.0.1:70000' is not HOST:PORT"),
            (
                f"127.0.0.1:{port}",
                f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use; "
                "give a free local address to --metrics-addr",
            ),
            ("no-such-host.invalid:9109", "Error: cannot serve metrics on no-such-host.invalid"),
        ]:
            r = subprocess.run(
                watch_cmd(store, tmp_path / "s.ndjson", "--metrics-addr", addr),
                capture_output=True,
                text=True,
                timeout=30 * UNIT,
                env={**os.environ, "NOTIFY_SOCKET": ""},
            )
            assert r.returncode == 1, r.stderr
            assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr
    finally:
        busy.close()


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["--alert-queue-max", "0"],
            "Error: --alert-queue-max 0 is out of range: give a value between 1 and 100000",
        ),
        (
            ["--hook-timeout", "0"],
            "Error: --hook-timeout 0 s is out of range: give a value between 0.1 and 300 s",
        ),
        (
            ["--webhook-tries", "11"],
            "Error: --webhook-tries 11 is out of range: give a value between 1 and 10",
        ),
        (["--poll", "0"], "Error: --poll 0 s is out of range: give a value between 0.01 and 60 s"),
        (
            ["--webhook", "localhost:9000/hook"],
            "Error: --webhook 'localhost:9000/hook' is not an http(s) URL; "
            "give for example http://localhost:9000/hook",
        ),
        (
            ["--metrics-addr", "9109"],
            "Error: --metrics-addr '9109' is not HOST:PORT; give for example 127.0.0.1:9109",
        ),
    ],
)
def test_out_of_range_alert_settings_are_refused(tmp_path, args, line):
    # Refused before anything starts (no store is even needed).
    r = CliRunner().invoke(main, ["watch", "--data-dir", str(tmp_path), *args])
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", line + "\n")
