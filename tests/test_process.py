"""The recorder as a process: signals, crash and restart, sd_notify, the CLI, the unit file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, UNIT, stored_rows
from fakebinance import FakeBinance

RECORDER = [sys.executable, "-m", "recorder.cli"]


def start(
    data_dir: Path, fake: FakeBinance, env: dict | None = None, *extra: str
) -> subprocess.Popen:
    args = [
        *RECORDER,
        "run",
        "--symbols",
        "btcusdt",
        "--data-dir",
        str(data_dir),
        "--ws-url",
        fake.ws_url,
        "--rest-url",
        fake.rest_url,
        "--fsync-interval",
        "0.05",
        "--backoff-initial",
        "0.05",
        "--backoff-max",
        "0.2",
        "--ping-interval",
        "0.5",
        "--ping-timeout",
        "1",
        "--status-interval",
        "0.2",
        # The capture is from 2024: replaying it today is years of clock skew.
        "--max-clock-skew",
        str(10 * 365 * 86400),
        *extra,
    ]
    # Logs go to a file, not a pipe, so a chatty recorder can never block on a full pipe.
    log = open(data_dir.parent / f"{data_dir.name}-recorder.log", "a")  # noqa: SIM115
    p = subprocess.Popen(args, env={**os.environ, **(env or {})}, stderr=log)
    log.close()
    p.log_path = log.name  # type: ignore[attr-defined]
    return p


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout * UNIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ndjson_lines(root: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in root.glob("trades/**/*.ndjson"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stop_mid_hour_then_restart_loses_nothing(tmp_path, frames_2024, sig):
    frames = frames_2024[:5000]
    ids = [orjson.loads(f)["data"]["t"] for f in frames]
    with FakeBinance(frames, rate=2500) as fake:
        p = start(tmp_path, fake)
        wait_until(lambda: fake.connections == 1, 20, "the recorder to connect")
        fake.threadsafe(fake.start_market)
        wait_until(lambda: ndjson_lines(tmp_path) > 1500, 20, "trades on disk")
        # recorder status works while the recorder runs.
        st = run_cli("status", "--data-dir", str(tmp_path), "--format", "json")
        report = orjson.loads(st.stdout)
        assert (report["recorder_running"], report["pid"]) == (True, p.pid)
        assert report["symbols"][0]["last_trade_id"] >= ids[1500] and report["stats"]["trades"] > 0
        t0 = time.monotonic()
        p.send_signal(sig)
        rc = p.wait(10 * UNIT)
        stop_seconds = time.monotonic() - t0
        err = Path(p.log_path).read_text()
        if sig == signal.SIGTERM:
            assert rc == 0, err
            assert stop_seconds < 5 * UNIT
            assert "stopped:" in err and "Traceback" not in err
        else:
            assert rc == -signal.SIGKILL
        # The exchange keeps trading while we are away; the restart must backfill it.
        fake.wait_done(20)
        p = start(tmp_path, fake)
        wait_until(
            lambda: set(stored_rows(tmp_path)["trade_id"].unique().to_list()) == set(ids),
            30,
            "backfill",
        )
        p.send_signal(signal.SIGTERM)
        assert p.wait(10 * UNIT) == 0
    rows = stored_rows(tmp_path)
    assert rows["trade_id"].unique().sort().to_list() == ids
    assert (rows.filter(rows["source"] == "rest").height) > 0


def test_sd_notify_ready_status_and_watchdog(tmp_path, frames_2024):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10 * UNIT)
    try:
        with FakeBinance(frames_2024[:3000], rate=3000) as fake:
            p = start(tmp_path / "data", fake, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"})
            got: list[str] = []
            deadline = time.monotonic() + 10 * UNIT
            while time.monotonic() < deadline and not (
                any(m.startswith("READY=1") for m in got) and "WATCHDOG=1" in got
            ):
                got.append(sock.recv(4096).decode())
            fake.threadsafe(fake.start_market)
            p.send_signal(signal.SIGTERM)
            tail = []
            while not any(m.startswith("STOPPING=1") for m in tail):
                tail.append(sock.recv(4096).decode())
            assert p.wait(10 * UNIT) == 0
    finally:
        sock.close()
    ready = next(m for m in got if m.startswith("READY=1"))
    assert ready.splitlines()[1].startswith("STATUS=1 symbols, 0 trades, 1 connections")
    assert "WATCHDOG=1" in got
    assert any(m.startswith("STATUS=") for m in got)


def test_no_watchdog_ping_when_nothing_arrives(frames_2024):
    """WATCHDOG=1 is sent only while frames or pongs arrive: a silent socket stops it."""
    import asyncio

    from recorder.config import RecorderConfig
    from recorder.housekeeping import Housekeeping
    from recorder.sdnotify import Notifier
    from recorder.service import Recorder

    class Recording(Notifier):
        def __init__(self):
            super().__init__({"WATCHDOG_USEC": "300000"})
            self.sent: list[str] = []

        def send(self, *lines: str) -> None:
            self.sent.extend(lines)

    async def scenario() -> tuple[int, int]:
        n = Recording()
        rec = Recorder(
            RecorderConfig(symbols=("BTCUSDT",), data_dir=Path("/nonexistent")), notifier=n
        )
        house = Housekeeping(rec, lock=None)

        async def frames_arrive() -> None:  # activity every 0.05 s, as a busy stream gives
            while True:
                rec.conns.last_activity = time.monotonic()
                await asyncio.sleep(0.05)

        feed = asyncio.create_task(frames_arrive())
        task = asyncio.create_task(house.watchdog_loop())
        await asyncio.sleep(0.5 * UNIT)  # about 4 pings, one every 0.1 s
        alive = n.sent.count("WATCHDOG=1")
        feed.cancel()
        rec.conns.last_activity -= 10  # nothing arrived for 10 s
        n.sent.clear()
        await asyncio.sleep(0.5 * UNIT)
        task.cancel()
        return alive, n.sent.count("WATCHDOG=1")

    alive, silent = asyncio.run(scenario())
    assert alive >= 2 and silent == 0


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RECORDER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_input_gives_one_error_line(tmp_path):
    r = run_cli("run", "--symbols", "btc-usdt", "--data-dir", str(tmp_path))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        "Error: symbol 'btc-usdt' is not alphanumeric; "
        "give symbols like --symbols btcusdt,ethusdt\n"
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_cli("run", "--symbols", "btcusdt", "--data-dir", str(blocker / "sub"))
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: data directory {blocker / 'sub'} cannot be written (")
    assert r.stderr.endswith("choose another with --data-dir or fix its permissions\n")
    r = run_cli(
        "run",
        "--symbols",
        "btcusdt",
        "--data-dir",
        str(tmp_path / "d"),
        "--ws-url",
        "ws://127.0.0.1:9",
        "--open-timeout",
        "1",
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("Error: cannot open the stream at ws://127.0.0.1:9 (")
    r = run_cli("status", "--data-dir", str(tmp_path / "none"))
    assert (r.returncode, r.stderr) == (
        1,
        f"Error: no store at {tmp_path / 'none'}; pass --data-dir where `recorder run` writes\n",
    )
    r = run_cli("run", "--symbols", "btcusdt", "--data-dir", str(tmp_path), "--no-such-option")
    assert r.returncode == 2


def test_cli_env_data_dir_status_and_compact(tmp_path, frames_2024):
    from test_store import write_frames

    write_frames(tmp_path, frames_2024)
    r = run_cli("status", "--format", "json", env={"TAPEWATCH_DATA_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    report = orjson.loads(r.stdout)
    (row,) = report["symbols"]
    assert (row["symbol"], row["last_trade_id"], row["last_trade_time"]) == (
        "BTCUSDT",
        3735703162,
        "2024-08-09T00:05:05.800Z",
    )
    assert (row["hours_parquet"], row["hours_ndjson"], row["gaps"]) == (0, 2, 0)
    assert report["recorder_running"] is False
    r = run_cli("compact", "--data-dir", str(tmp_path))
    assert (r.returncode, r.stdout) == (
        0,
        "compacted 2 hours (19904 trades); 0 unparseable lines quarantined\n",
    )
    r = run_cli("compact", "--data-dir", str(tmp_path))
    assert r.stdout == "compacted 0 hours (0 trades); 0 unparseable lines quarantined\n"
    r = run_cli("status", "--data-dir", str(tmp_path))
    lines = r.stdout.splitlines()
    assert lines[0] == f"store {tmp_path}: recorder not running; 0 rejected frames"
    assert lines[1].split() == [
        "symbol",
        "last_trade_id",
        "last_trade_time",
        "behind_seconds",
        "hours_parquet",
        "hours_ndjson",
        "gaps",
        "gap_trades",
    ]
    assert lines[2].split()[:3] == ["BTCUSDT", "3735703162", "2024-08-09T00:05:05.800Z"]
    assert lines[2].split()[4:] == ["2", "0", "0", "0"]


def test_compact_refuses_while_a_recorder_holds_the_store(tmp_path):
    from recorder.store import StoreLock, init_store

    init_store(tmp_path)
    with StoreLock(tmp_path):
        r = run_cli("compact", "--data-dir", str(tmp_path))
    assert r.returncode == 1
    assert r.stderr == (
        f"Error: {tmp_path} is in use by another recorder (pid {os.getpid()}); "
        "stop it first, or use another --data-dir\n"
    )


UNIT_FILE = ROOT / "recorder" / "systemd" / "tapewatch-recorder.service"


@pytest.fixture
def unit_copy(tmp_path) -> Path:
    """The shipped unit with ExecStart pointed at this environment's recorder."""
    exe = shutil.which("recorder", path=str(Path(sys.executable).parent))
    assert exe, "the recorder console script is not installed"
    text = UNIT_FILE.read_text().replace("/opt/tapewatch/.venv/bin/recorder", exe)
    path = tmp_path / "tapewatch-recorder.service"
    path.write_text(text)
    return path


def test_unit_file_verifies_clean(unit_copy):
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True
    )
    assert (r.returncode, r.stderr.strip(), r.stdout.strip()) == (0, "", "")


def test_unit_file_exposure_at_most_1_5(unit_copy):
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_copy)],
        capture_output=True,
        text=True,
    )
    line = next(x for x in r.stdout.splitlines() if "Overall exposure level" in x)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 1.5, line
    unit = UNIT_FILE.read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NotifyAccess=main"):
        assert key in unit
