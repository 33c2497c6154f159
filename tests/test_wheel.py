"""The wheel, installed: built from this checkout, installed into a fresh virtual environment,
run through its console scripts from a directory outside the repository.

The fresh environment borrows the dependencies already installed in the test's own environment
(a ``.pth`` line naming its site-packages, which installs nothing and needs no network) but not
the editable install of tapewatch there: ``.pth`` files inside a directory a ``.pth`` line adds
are not processed, so the editable finder never runs. Every command below must find the SQL
views, the units and the real sample inside the installed package."""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, UNIT

SAMPLE = "btcusdt-trade-2024-08-08T2354Z.combined.jsonl.gz"
# What the wheel is built from: the metadata, the packages and the SQL they link to.
SOURCES = ("pyproject.toml", "README.md", "engine", "recorder", "sql")
SIM_START_MS = 1_767_225_600_000  # engine simulate's first trade: 2026-01-01 00:00 UTC


@dataclass(frozen=True)
class Installed:
    wheel: Path
    source: Path  # the copy of the checkout the wheel was built from
    bin: Path  # the fresh environment's scripts
    site: Path  # the fresh environment's site-packages
    work: Path  # the working directory for every command: outside the repository
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a console script (or ``python``) of the fresh environment; assert exit 0."""
        r = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout * UNIT,
        )
        assert r.returncode == 0, f"{args}: {r.stderr}"
        return r

    def sql(self, store: Path, query: str) -> str:
        return self.run("engine", "sql", "--data-dir", str(store), "--format", "csv", query).stdout


def _pip(*args: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "pip", "-q", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120 * UNIT,
    )
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build would write build/ into the shared checkout.
    source = base / "source"
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, source / name, symlinks=True, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(src, source / name)
    # No build isolation, no index: the build uses this environment's setuptools, offline.
    have = importlib.metadata.version("setuptools")
    assert int(have.split(".")[0]) >= 77, (
        f"setuptools {have} cannot build the wheel (PEP 639 license); "
        "`make test` installs the dev extras, or: pip install -e '.[dev]'"
    )
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(base), str(source))
    (wheel,) = base.glob("tapewatch-*.whl")

    venv = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60 * UNIT
    )
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_tapewatch_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))

    work = base / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("TAPEWATCH_")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Installed(wheel, source, venv / "bin", site, work, env)


def test_the_wheel_holds_every_file_of_the_packages_and_the_sql(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    shipped = {n for n in names if not n.startswith("tapewatch-0.1.0.dist-info/")}
    # engine/sql links to the top-level sql/: its files ship, not the link.
    want = {
        (Path(d) / f).relative_to(installed.source).as_posix()
        for pkg in ("engine", "recorder")
        for d, _, files in os.walk(installed.source / pkg, followlinks=True)
        for f in files
        if "__pycache__" not in Path(d).parts
    }
    assert shipped == want
    sql = {f"engine/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql")}
    assert sql == {"engine/sql/views.sql", "engine/sql/windows.sql"} and sql <= shipped
    assert {
        "engine/systemd/tapewatch-watch.service",
        "recorder/systemd/tapewatch-recorder.service",
        f"recorder/samples/{SAMPLE}",
        "recorder/samples/README.md",
    } <= shipped
    meta = zipfile.ZipFile(installed.wheel).read("tapewatch-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: isotree>=0.6" in meta.splitlines()


def test_the_fresh_environment_imports_the_wheel_not_the_checkout(installed):
    code = f"""
import importlib.metadata, importlib.resources, sys, engine, recorder
from engine.sqlviews import VIEW_FILES, sql_file
print(engine.__file__)
print(recorder.__file__)
print(importlib.metadata.distribution("tapewatch")._path)
for name in VIEW_FILES:
    print(sql_file(name))
print(importlib.resources.files("engine") / "systemd" / "tapewatch-watch.service")
print(importlib.resources.files("recorder") / "systemd" / "tapewatch-recorder.service")
print(importlib.resources.files("recorder") / "samples" / "{SAMPLE}")
print(any("editable" in type(f).__name__.lower() for f in sys.meta_path))
"""
    lines = installed.run("python", "-c", code).stdout.splitlines()
    site = installed.site
    assert lines == [
        f"{site}/engine/__init__.py",
        f"{site}/recorder/__init__.py",
        f"{site}/tapewatch-0.1.0.dist-info",
        f"{site}/engine/sql/views.sql",
        f"{site}/engine/sql/windows.sql",
        f"{site}/engine/systemd/tapewatch-watch.service",
        f"{site}/recorder/systemd/tapewatch-recorder.service",
        f"{site}/recorder/samples/{SAMPLE}",
        "False",
    ]
    for installed_file, repo_file in zip(
        lines[3:8],
        [
            "sql/views.sql",
            "sql/windows.sql",
            "engine/systemd/tapewatch-watch.service",
            "recorder/systemd/tapewatch-recorder.service",
            f"recorder/samples/{SAMPLE}",
        ],
        strict=True,
    ):
        assert Path(installed_file).read_bytes() == (ROOT / repo_file).read_bytes()


def test_help_runs_from_outside_the_repository(installed):
    assert not installed.work.is_relative_to(ROOT)
    for command in ("engine", "recorder"):
        out = installed.run(command, "--help").stdout
        assert out.startswith(f"Usage: {command} [OPTIONS] COMMAND [ARGS]...\n")


def test_replay_simulate_run_and_query_the_views(installed):
    store = installed.work / "store"
    sample = installed.site / "recorder" / "samples" / SAMPLE
    r = installed.run("recorder", "replay", "--data-dir", str(store), str(sample))
    assert r.stdout == "replayed 19904 trades from 1 files; 2 hours compacted\n"

    r = installed.run("engine", "simulate", "--data-dir", str(store), "--days", "0.25")
    m = re.match(r"simulated SIMUSDT: ([\d,]+) trades, 2026-01-01T00:00:00Z \.\. ", r.stdout)
    assert m, r.stdout
    simulated = int(m[1].replace(",", ""))

    run = [*("engine", "run", "--data-dir", str(store), "--symbol", "simusdt", "--report")]
    r = installed.run(*run, "--horizons", "1m,5m", "--trees", "25", "--reps", "100", "--jobs", "1")
    results = store / "results" / "SIMUSDT-20s"
    assert f"report: {results / 'report.html'}" in r.stderr.splitlines()
    assert (results / "report.html").stat().st_size > 0

    assert installed.sql(store, "SELECT count(*) AS n FROM trades") == f"n\n{19904 + simulated}\n"
    assert installed.sql(
        store, "SELECT symbol, count(*) AS n FROM trades GROUP BY 1 ORDER BY 1"
    ) == (f"symbol,n\nBTCUSDT,19904\nSIMUSDT,{simulated}\n")
    # 6 hours of 20 s windows, built by `engine run` (windows view) and by SQL (tw_windows).
    end = SIM_START_MS + 6 * 3_600_000
    assert installed.sql(
        store,
        "SELECT count(*) AS n, sum(w.trade_count) AS trades, "
        "count(*) FILTER (WHERE w.trade_count = t.trade_count) AS same "
        f"FROM windows w JOIN tw_windows('simusdt', 20000, {SIM_START_MS}, {end}) t "
        "USING (window_start) WHERE w.run = 'SIMUSDT-20s'",
    ) == (f"n,trades,same\n1080,{simulated},1080\n")
    assert installed.sql(store, "SELECT count(*) AS n FROM scores") == "n\n1080\n"
    assert installed.sql(store, "SELECT count(*) AS n FROM gaps") == "n\n0\n"


def _wait(done, proc: subprocess.Popen, log: Path, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout * UNIT
    while not done():
        assert proc.poll() is None, f"engine watch exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()}"
        time.sleep(0.05)


def test_watch_scores_windows_as_the_recorder_writes_them(installed):
    """History of 10,000 real trades, then `engine watch` while the other 9,904 are replayed:
    it scores every window that closed, and SQL rebuilds each one from the stored trades."""
    store, work = installed.work / "watched", installed.work
    sample = installed.site / "recorder" / "samples" / SAMPLE
    frames = gzip.decompress(sample.read_bytes()).splitlines(keepends=True)
    (work / "first.jsonl.gz").write_bytes(gzip.compress(b"".join(frames[:10_000])))
    (work / "rest.jsonl.gz").write_bytes(gzip.compress(b"".join(frames[10_000:])))
    times = [orjson.loads(f)["data"]["T"] for f in frames]
    # Once the replay has compacted the hour the exchange clock stands at the last trade:
    # windows close through the one ending --grace (2 s) before it.
    first, last = 1_723_161_603_000, (times[-1] - 3000) // 1000 * 1000

    installed.run("recorder", "replay", "--data-dir", str(store), str(work / "first.jsonl.gz"))
    scores = store / "results" / "BTCUSDT-1s-watch" / "scores.ndjson"
    log, out = work / "watch.log", work / "watch.out"
    with log.open("w") as err, out.open("w") as stdout:
        watch = subprocess.Popen(
            [
                *(str(installed.bin / "engine"), "watch", "--data-dir", str(store)),
                *("--symbol", "btcusdt", "--every", "1s", "--buffer", "100", "--trees", "10"),
                *("--retrain-every", "20", "--jobs", "1", "--format", "ndjson"),
            ],
            cwd=work,
            env=installed.env,
            stdout=stdout,
            stderr=err,
        )
    try:
        _wait(lambda: "watching BTCUSDT" in log.read_text(), watch, log, "engine watch to start")
        installed.run("recorder", "replay", "--data-dir", str(store), str(work / "rest.jsonl.gz"))
        _wait(
            lambda: scores.exists() and f'"window_start_ms":{last},' in scores.read_text(),
            watch,
            log,
            "the last window",
        )
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=15 * UNIT)
    assert watch.returncode == 0, log.read_text()
    assert (
        "watching BTCUSDT 1s windows; 346 scoreable windows of history; "
        "first window 2024-08-09T00:00:03.000Z"
    ) in log.read_text()
    assert "Traceback" not in log.read_text()
    assert out.read_text() == scores.read_text()
    rows = [orjson.loads(x) for x in scores.read_text().splitlines()]
    # Until that compaction the clock runs on with the wall clock, so a slow one may let a
    # window or two past `last` close: the count is what was written, every window in order.
    n, end = len(rows), first + 1000 * len(rows)
    assert [r["window_start_ms"] for r in rows] == list(range(first, end, 1000))
    assert n >= (last - first) // 1000 + 1
    trades = sum(first <= t < end for t in times)
    assert sum(r["trade_count"] for r in rows) == trades

    same = " AND ".join(
        f"s.{c} IS NOT DISTINCT FROM t.{c}" for c in ("trade_count", "open", "high", "low", "close")
    )
    assert (
        installed.sql(
            store,
            f"SELECT count(*) AS n, sum(s.trade_count) AS trades, count(*) FILTER ({same}) AS same, "
            f"(SELECT count(*) FROM trades WHERE epoch_ms(trade_time) >= {first} "
            f"AND epoch_ms(trade_time) < {end}) AS stored "
            f"FROM scores s JOIN tw_windows('btcusdt', 1000, {first}, {end}) t "
            "USING (window_start) WHERE s.run = 'BTCUSDT-1s-watch'",
        )
        == f"n,trades,same,stored\n{n},{trades},{n},{trades}\n"
    )
    assert installed.sql(store, "SELECT count(*) AS n FROM trades") == "n\n19904\n"
