"""Every bad input is one line: checked before any work starts, ``Error: ...`` on stderr, exit 1.

Each case below was reproduced as a traceback, a hang or silent nonsense before (issue 12).
Also: the settings tables (defaults read back, environment variables, unknown ones refused),
the one symbol rule, the webhook that answers with a redirect, and `engine sql --help`.
"""

from __future__ import annotations

import http.server
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import UNIT
from synth import tape, write_store

from engine import config
from engine.cli import main as engine_main
from engine.live.alerts import Alert, Alerter
from engine.watch import WatchOptions
from recorder import cliutil
from recorder.cli import main as recorder_main

T0 = 1_723_075_200_000
ENGINE = [sys.executable, "-m", "engine.cli"]
SMALL = ["--buffer", "100", "--retrain-every", "50", "--trees", "20", "--reps", "50", "--jobs", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    write_store(root, "SIMUSDT", tape(T0, 3 * 3600, 2, seed=11))
    return root


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    """A plain file: nothing can be created under it, whoever runs the tests (root too)."""
    path = tmp_path_factory.mktemp("blocker") / "file"
    path.write_text("")
    return path


def one_line(main, args: list[str], env: dict[str, str] | None = None) -> str:
    r = CliRunner().invoke(main, args, env=env)
    assert r.exit_code == 1, (r.output, r.exception)
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.rstrip("\n")


def engine_error(*args: str, env: dict[str, str] | None = None) -> str:
    return one_line(engine_main, list(args), env)


# -- absurd sizes: refused up front, in a second, instead of GBs and minutes -----------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--every", "100000000d"],
            "Error: --every 100000000d is out of range: give a value between 1ms and 1d",
        ),
        (
            ["--every", "999999999999d"],
            "Error: --every 999999999999d is out of range: give a value between 1ms and 1d",
        ),
        (
            ["--start", "0001-01-01", "--end", "9999-12-31"],
            "Error: the range from --start to --end is 3,652,058 days; one run reads at most "
            "7,305 days (20 years): give a shorter --start/--end range",
        ),
        (
            ["--every", "1s", "--start", "2000-01-01", "--end", "2010-01-01"],
            "Error: --every 1s from --start to --end makes 315,619,200 windows, more than "
            "--max-windows 10,000,000; give a shorter --start/--end range or a larger --every "
            "(or raise --max-windows if the memory is there: ~130 bytes a window)",
        ),
    ],
)
def test_absurd_window_grids_are_refused_at_once(store, args, line):
    t0 = time.monotonic()
    r = subprocess.run(
        [*ENGINE, "windows", "--data-dir", str(store), "--symbol", "simusdt", *args],
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert (r.returncode, r.stdout, r.stderr) == (1, "", line + "\n")
    assert time.monotonic() - t0 < 30 * UNIT


def test_the_window_limit_counts_the_stored_range_and_can_be_raised(store):
    d = str(store)
    assert engine_error("windows", "--data-dir", d, "--symbol", "simusdt", "--every", "1ms") == (
        "Error: --every 1ms in the store makes 10,800,000 windows, more than --max-windows "
        "10,000,000; give a shorter --start/--end range or a larger --every "
        "(or raise --max-windows if the memory is there: ~130 bytes a window)"
    )
    args = ["windows", "--data-dir", d, "--symbol", "simusdt", "--every", "1h"]
    r = CliRunner().invoke(engine_main, [*args, "--max-windows", "3", "--format", "csv"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1 + 3
    assert engine_error(*args, "--max-windows", "2") == (
        "Error: --every 1h in the store makes 3 windows, more than --max-windows 2; give a "
        "shorter --start/--end range or a larger --every "
        "(or raise --max-windows if the memory is there: ~130 bytes a window)"
    )


# -- settings out of range, empty or repeated: one line, before any work --------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["score", "--jobs", "0"], "Error: --jobs 0 is out of range: give a value between 1 and 256"),
        (["horizons", "--reps", "-5"], "Error: --reps -5 is out of range: give a value between 10 and 100000"),
        (["score", "--seed", "-1"], "Error: --seed -1 is out of range: give a value between 0 and 4294967295"),
        (["score", "--buffer", "2"], "Error: --buffer 2 is out of range: give a value between 3 and 1000000"),
        (["score", "--contamination", "0"], "Error: --contamination 0 is out of range: give a value between 0.0001 and 0.5"),
        (["score", "--contamination", "nan"], "Error: --contamination 'nan' is not a finite number"),
        (["score", "--jobs", "two"], "Error: --jobs 'two' is not a whole number"),
        (
            ["score", "--features", ""],
            "Error: --features '' lists no value or an empty one; give a comma-separated list like "
            "--features trade_count,volume,avg_trade_size,return,volatility",
        ),
        (
            ["score", "--features", "volume,,return"],
            "Error: --features 'volume,,return' lists no value or an empty one; give a "
            "comma-separated list like --features trade_count,volume,avg_trade_size,return,volatility",
        ),
        (
            ["score", "--features", "volume,volume"],
            "Error: --features lists volume twice, the same value; give each value once",
        ),
        (
            ["horizons", "--horizons", ""],
            "Error: --horizons '' lists no value or an empty one; give a comma-separated list like "
            "--horizons 1m,5m,15m,30m",
        ),
        (
            ["horizons", "--horizons", "1m,1m"],
            "Error: --horizons lists 1m twice, the same value; give each value once",
        ),
        (
            ["horizons", "--horizons", "999999999d"],
            "Error: --horizons 999999999d is out of range: give a value between 1ms and 1d",
        ),
        (
            ["horizons", "--every", "250ms", "--horizons", "1h"],
            "Error: horizon 1h is 14,400 windows of 250ms; at most 10,000 windows per horizon: "
            "give a shorter horizon or a larger --every",
        ),
        (
            ["sweep", "--every", "60s,60s"],
            "Error: --every lists 60s twice, the same value; give each value once",
        ),
        (
            ["sweep", "--every", "1m,60s"],
            "Error: --every lists 1m and 60s, the same value; give each value once",
        ),
        (
            ["sweep", "--every", "20s,2d"],
            "Error: --every 2d is out of range: give a value between 1ms and 1d",
        ),
        (
            ["windows", "--start", "yesterday"],
            "Error: cannot read time 'yesterday'; write ISO 8601 like 2024-08-08T23:00:00Z",
        ),
        (["watch", "--poll", "-1"], "Error: --poll -1 s is out of range: give a value between 0.01 and 60 s"),
        (
            ["watch", "--grace", "2h"],
            "Error: --grace 2h is out of range: give a value between 1ms and 1h",
        ),
        (
            ["watch", "--webhook", "notaurl"],
            "Error: --webhook 'notaurl' is not an http(s) URL; give for example http://localhost:9000/hook",
        ),
        (
            ["watch", "--webhook", "http://localhost:99999/hook"],
            "Error: --webhook 'http://localhost:99999/hook' is not an http(s) URL; give for example http://localhost:9000/hook",
        ),
        (
            ["simulate", "--days", "0"],
            "Error: --days 0 is out of range: give a value between 0.001 and 400",
        ),
        (
            ["simulate", "--seed", "-1"],
            "Error: --seed -1 is out of range: give a value between 0 and 4294967295",
        ),
        (
            ["windows", "--symbol", "BTCÜSDT"],
            "Error: symbol 'BTCÜSDT' is not ASCII letters and digits; give one like --symbol btcusdt",
        ),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line(store, args, line):
    command, *rest = args
    assert engine_error(command, "--data-dir", str(store), "--symbol", "simusdt", *rest) == line


def test_settings_are_checked_before_the_store_is_touched(tmp_path):
    # No store at all: the setting is refused first, and nothing is created.
    assert engine_error("run", "--data-dir", str(tmp_path / "none"), "--jobs", "0") == (
        "Error: --jobs 0 is out of range: give a value between 1 and 256"
    )
    assert not (tmp_path / "none").exists()


# -- outputs that cannot be written: refused before the computing, not after ---------------


def test_unwritable_outputs_are_refused_before_any_work(store, blocker, tmp_path):
    d = ["--data-dir", str(store), "--symbol", "simusdt"]
    assert engine_error("windows", *d, "--output", f"{blocker}/w.csv") == (
        f"Error: cannot write --output {blocker}/w.csv: {blocker} is a file, not a folder"
    )
    assert engine_error("windows", *d, "--output", str(tmp_path / "w.txt")) == (
        f"Error: cannot tell the format of {tmp_path / 'w.txt'}; "
        "end it in .parquet, .csv, .json or .ndjson"
    )
    assert engine_error("windows", *d, "--output", "/proc/w.csv").startswith(
        "Error: cannot write --output /proc/w.csv ("
    )
    assert engine_error("horizons", *d, *SMALL, "--output", f"{blocker}/h.json") == (
        f"Error: cannot write --output {blocker}/h.json: {blocker} is a file, not a folder"
    )
    assert engine_error("run", *d, *SMALL, "--results", f"{blocker}/run") == (
        f"Error: cannot write --results {blocker}/run: {blocker} is a file, not a folder"
    )
    assert not (store / "results").exists()  # nothing was computed, no ledger written
    assert engine_error("report", "--results", str(tmp_path), "--output", f"{blocker}/r.html") == (
        f"Error: cannot write --output {blocker}/r.html: {blocker} is a file, not a folder"
    )
    assert engine_error("watch", *d, "--results", f"{blocker}/s.ndjson") == (
        f"Error: cannot write --results {blocker}/s.ndjson: {blocker} is a file, not a folder"
    )
    assert engine_error("sql", "SELECT 1 AS x", "--data-dir", str(store), "--output", f"{blocker}/q.csv") == (
        f"Error: cannot write --output {blocker}/q.csv: {blocker} is a file, not a folder"
    )  # fmt: skip


def test_engine_watch_refuses_an_unwritable_default_results_file(store, tmp_path):
    # The default results file lies in the store: a file where its folder should be.
    results = store / "results"
    results.mkdir()
    try:
        (results / "SIMUSDT-20s-watch").write_text("")
        assert engine_error("watch", "--data-dir", str(store), "--symbol", "simusdt") == (
            f"Error: cannot write --results {results}/SIMUSDT-20s-watch/scores.ndjson: "
            f"{results}/SIMUSDT-20s-watch is a file, not a folder"
        )
    finally:
        (results / "SIMUSDT-20s-watch").unlink()
        results.rmdir()


# -- engine sql: a missing store is an error, and --help says what kind of shell it is -------


def test_engine_sql_refuses_a_missing_store(tmp_path):
    missing = tmp_path / "nonexist"
    line = f"Error: no store at {missing}; pass --data-dir where `recorder run` writes"
    assert engine_error("sql", "SELECT count(*) FROM trades", "--data-dir", str(missing)) == line
    assert engine_error("sql", "--data-dir", str(missing)) == line


def test_engine_sql_help_says_it_is_a_trusted_local_shell():
    r = CliRunner().invoke(engine_main, ["sql", "--help"])
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0
    assert (
        "A trusted local shell, like the DuckDB CLI: the SQL runs with your rights and can read "
        "and write any file you can (COPY ... TO, read_text('/etc/hostname'), ATTACH)."
    ) in text


# -- the environment: each setting has a variable; unknown ones are refused, with a hint ----


def test_engine_settings_come_from_the_environment(store):
    args = ["windows", "--data-dir", str(store), "--symbol", "simusdt", "--format", "csv"]
    r = CliRunner().invoke(engine_main, args, env={"TAPEWATCH_ENGINE_EVERY": "1h"})
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1 + 3
    r = CliRunner().invoke(  # the store too
        engine_main,
        [args[0], *args[3:]],
        env={"TAPEWATCH_DATA_DIR": str(store), "TAPEWATCH_ENGINE_EVERY": "1h"},
    )
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1 + 3
    assert engine_error("score", "--data-dir", str(store), env={"TAPEWATCH_ENGINE_JOBS": "0"}) == (
        "Error: TAPEWATCH_ENGINE_JOBS 0 is out of range: give a value between 1 and 256"
    )


@pytest.mark.parametrize(
    ("main", "variable", "line"),
    [
        (recorder_main, "TAPEWATCH_FSYNC_INTERVL", "did you mean TAPEWATCH_FSYNC_INTERVAL?"),
        (engine_main, "TAPEWATCH_FSYNC_INTERVL", "did you mean TAPEWATCH_FSYNC_INTERVAL?"),
        (engine_main, "TAPEWATCH_ENGINE_BUFER", "did you mean TAPEWATCH_ENGINE_BUFFER?"),
        (engine_main, "TAPEWATCH_BUFFER", "did you mean TAPEWATCH_ENGINE_BUFFER?"),
        (engine_main, "TAPEWATCH_DATADIR", "did you mean TAPEWATCH_DATA_DIR?"),
        (
            recorder_main,
            "TAPEWATCH_BUFFER",
            "unset it (the engine's variables start with TAPEWATCH_ENGINE_); "
            "each command's --help shows the variables it reads",
        ),
    ],
)
def test_an_unknown_tapewatch_variable_is_refused(tmp_path, main, variable, line):
    assert one_line(main, ["status" if main is recorder_main else "windows",
                           "--data-dir", str(tmp_path)], env={variable: "1"}) == (
        f"Error: unknown environment variable {variable}; {line}"
    )  # fmt: skip


def test_each_cli_accepts_the_others_variables(store):
    # One environment for both: the recorder's settings do not trouble the engine, and the
    # engine's (TAPEWATCH_ENGINE_*) do not trouble the recorder.
    both = {
        "TAPEWATCH_SYMBOLS": "btcusdt",
        "TAPEWATCH_FSYNC_INTERVAL": "0.5",
        "TAPEWATCH_ENGINE_EVERY": "1h",
        "TAPEWATCH_WATCH_ARGS": "--symbol btcusdt",
    }
    r = CliRunner().invoke(recorder_main, ["status", "--data-dir", str(store)], env=both)
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(
        engine_main, ["windows", "--data-dir", str(store), "--symbol", "simusdt"], env=both
    )
    assert r.exit_code == 0, r.stderr


def test_every_setting_is_defined_once_and_its_default_reads_back():
    names = [s.name for s in config.SETTINGS]
    assert len(names) == len(set(names))
    for s in config.SETTINGS:
        s.parse(s.default)  # no default is out of its own range
    assert config.SETTING["every"].parse(config.EVERY) == 20_000
    assert config.SETTING["horizons"].parse(config.HORIZONS) == (
        ("1m", 60_000), ("5m", 300_000), ("15m", 900_000), ("30m", 1_800_000)
    )  # fmt: skip
    assert config.SETTING["features"].parse(",".join(config.FEATURES)) == config.FEATURES
    r = CliRunner().invoke(engine_main, ["score", "--help"])
    text = " ".join(r.stdout.split())
    for option, env, default in [
        ("--buffer", "TAPEWATCH_ENGINE_BUFFER", config.BUFFER),
        ("--jobs", "TAPEWATCH_ENGINE_JOBS", config.JOBS),
        ("--backend", "TAPEWATCH_ENGINE_BACKEND", config.BACKEND),
    ]:
        assert option in text and f"env var: {env}; default: {default}]" in text


# -- the recorder --------------------------------------------------------------------------


def test_recorder_status_of_a_store_with_no_symbols_yet(tmp_path):
    from recorder.store import init_store

    init_store(tmp_path)
    r = CliRunner().invoke(recorder_main, ["status", "--data-dir", str(tmp_path)])
    assert (r.exit_code, r.stderr) == (0, "")
    assert r.stdout == (
        f"store {tmp_path}: recorder not running; 0 rejected frames\nno symbols recorded yet\n"
    )
    not_a_store = tmp_path / "trades" / "x"
    not_a_store.mkdir()
    assert one_line(recorder_main, ["status", "--data-dir", str(not_a_store)]) == (
        f"Error: no store at {not_a_store}; pass --data-dir where `recorder run` writes"
    )


def test_recorder_refuses_a_non_ascii_symbol(tmp_path):
    assert one_line(recorder_main, ["run", "--symbols", "btcusdt,BTCÜSDT"]) == (
        "Error: symbol 'BTCÜSDT' is not alphanumeric; give symbols like --symbols btcusdt,ethusdt"
    )
    args = ["fetch-archive", "--data-dir", str(tmp_path), "--start", "2024-08-08"]
    assert one_line(recorder_main, [*args, "--end", "2024-08-08", "--symbol", "ｅｔｈ"]) == (
        "Error: symbol 'ｅｔｈ' is not ASCII letters and digits; give one like --symbol btcusdt"
    )


class _Checksum(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (b"<html>Not Found</html>", "it starts '<html>Not Found</html>'"),
    ],
)
def test_fetch_archive_with_a_bad_checksum_file_is_one_line(tmp_path, body, why):
    handler = type("H", (_Checksum,), {"body": body})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}"
    try:
        line = one_line(recorder_main, ["fetch-archive", "--data-dir", str(tmp_path),
                                        "--symbol", "btcusdt", "--start", "2024-08-08",
                                        "--end", "2024-08-08", "--base-url", url])  # fmt: skip
    finally:
        srv.shutdown()
        srv.server_close()
    assert line == (
        f"Error: {url}/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-08-08.zip.CHECKSUM "
        f"is not a sha256 checksum ({why}); nothing was imported: check --base-url, or run "
        "again later"
    )
    assert not list(tmp_path.glob("trades/symbol=*"))


# -- the webhook never follows a redirect ---------------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, bytes]]
    location = ""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.requests.append((self.command, self.rfile.read(length)))
        if self.location:
            self.send_response(302)
            self.send_header("Location", self.location)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def _serve(location: str = ""):
    handler = type("H", (_Hook,), {"requests": [], "location": location})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, handler


def test_a_webhook_redirect_is_a_failed_delivery_never_followed(caplog):
    elsewhere, elsewhere_h = _serve()
    target = f"http://127.0.0.1:{elsewhere.server_port}/elsewhere"
    hook, hook_h = _serve(location=target)
    caplog.set_level(logging.WARNING, logger="engine.watch")
    a = Alerter(WatchOptions(webhook=f"http://127.0.0.1:{hook.server_port}/hook", retry_delay=0))
    try:
        assert a.submit(Alert(0, b'{"flagged": true}\n'))
        deadline = time.monotonic() + 10 * UNIT
        while a.sent + a.failed < 1:
            assert time.monotonic() < deadline, "the alert was never delivered"
            time.sleep(0.02)
    finally:
        a.close()
        for srv in (hook, elsewhere):
            srv.shutdown()
            srv.server_close()
    assert (a.sent, a.failed) == (0, 1)
    assert hook_h.requests == [("POST", b'{"flagged": true}\n')]  # one try: 3xx is not retried
    assert elsewhere_h.requests == []  # never followed, with or without the body
    assert (
        f"webhook attempt 1/3 failed: HTTP 302, a redirect to {target}: not followed (the "
        "alert would arrive without its body); give --webhook the final URL"
    ) in caplog.text


# -- the shared plumbing ---------------------------------------------------------------------


def test_one_symbol_rule():
    assert cliutil.parse_symbol(" btcUSDT ") == "BTCUSDT"
    for bad in ("BTCÜSDT", "ｅｔｈ", "btc-usdt", "btc usdt", "", "ß"):
        assert cliutil.parse_symbol(bad) is None, bad


def test_tables_align_numbers_right_and_text_left():
    import io

    out = io.StringIO()
    cliutil.write_table(["symbol", "trades", "last"], [["BTCUSDT", "12", "2024-08-08"],
                                                       ["ETH", "1234", ""]], out)  # fmt: skip
    assert out.getvalue() == (
        "symbol   trades  last\nBTCUSDT      12  2024-08-08\nETH        1234\n"
    )
