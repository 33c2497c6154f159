"""The engine's commands: output formats, results, SQL, and one Error line for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from synth import tape, write_store

from engine.cli import main
from recorder.store import layout

T0 = 1_723_075_200_000
SMALL = ["--buffer", "100", "--retrain-every", "50", "--trees", "20", "--reps", "50", "--jobs", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_store(root, "SIMUSDT", tape(T0, 3 * 3600, 2, seed=11))
    return root


def engine(*args: str):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r


def test_windows_formats_and_output_files(store, tmp_path):
    r = engine(
        "windows",
        "--data-dir",
        str(store),
        "--symbol",
        "simusdt",
        "--every",
        "20s",
        "--format",
        "csv",
    )
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert (
        lines[0]
        == "window_start,trade_count,volume,quote_volume,avg_trade_size,open,high,low,close,return,volatility,realized_variance,parkinson_variance,vwap,buy_volume,gap"
    )
    assert lines[1].startswith("2024-08-08T00:00:00.000Z,")
    assert len(lines) == 1 + 3 * 180
    r = engine(
        "windows",
        "--data-dir",
        str(store),
        "--symbol",
        "SIMUSDT",
        "--every",
        "1m",
        "--format",
        "ndjson",
    )
    first = orjson.loads(r.stdout.splitlines()[0])
    assert first["window_start"] == "2024-08-08T00:00:00.000Z" and len(r.stdout.splitlines()) == 180
    out = tmp_path / "w.parquet"
    r = engine(
        "windows",
        "--data-dir",
        str(store),
        "--symbol",
        "simusdt",
        "--every",
        "5m",
        "--output",
        str(out),
    )
    assert (r.exit_code, r.stdout) == (0, "")
    assert pl.read_parquet(out).height == 36


def test_score_prints_flag_rate_and_horizons_json(store):
    r = engine(
        "score",
        "--data-dir",
        str(store),
        "--symbol",
        "simusdt",
        "--every",
        "20s",
        "--buffer",
        "100",
        "--retrain-every",
        "50",
        "--trees",
        "20",
        "--jobs",
        "1",
        "--format",
        "csv",
    )
    assert r.exit_code == 0
    assert r.stderr.startswith("flag rate ") and r.stderr.rstrip().endswith("of 440 scored windows")
    r = engine(
        "horizons",
        "--data-dir",
        str(store),
        "--symbol",
        "simusdt",
        "--every",
        "20s",
        "--horizons",
        "1m,5m",
        *SMALL,
        "--format",
        "json",
    )
    assert r.exit_code == 0
    body = orjson.loads(r.stdout)
    assert set(body) >= {"parameters", "flag_rate", "rows", "comparisons"}
    assert (
        body["parameters"]["baseline"] == "trailing"
        and body["parameters"]["baseline_lookahead"] is False
    )
    assert [(x["horizon"], x["metric"], x["group"]) for x in body["rows"][:5]] == [
        ("1m", "abs_return_sum", "normal"),
        ("1m", "abs_return_sum", "vol_only"),
        ("1m", "abs_return_sum", "if_only"),
        ("1m", "abs_return_sum", "both"),
        ("1m", "abs_return", "normal"),
    ]
    need = {
        "horizon",
        "metric",
        "group",
        "n",
        "mean",
        "median",
        "ratio_mean",
        "ratio_median",
        "p_naive",
        "ci_low",
        "ci_high",
        "block",
        "ratio_adjusted",
        "adj_ci_low",
        "adj_ci_high",
        "overlap",
        "p_naive_bh",
    }
    assert all(need <= set(x) for x in body["rows"])
    assert not any({"p_mannwhitney", "p_bh", "ratio_vol_matched"} & set(x) for x in body["rows"])
    assert body["comparisons"] == sum(x["p_naive"] is not None for x in body["rows"])


def test_run_writes_results_that_sql_sees_and_sweep(store):
    r = engine(
        "run",
        "--data-dir",
        str(store),
        "--symbol",
        "simusdt",
        "--every",
        "30s",
        "--horizons",
        "1m,5m",
        *SMALL,
    )
    assert r.exit_code == 0, r.stderr
    # The answer first, then the prototype's comparison table.
    lines = r.stdout.splitlines()
    assert lines[0].startswith("VERDICT: ")
    assert lines[1].split()[:3] == ["horizon", "effect", "ci_low"]
    assert len(lines[2:4]) == 2 and [x.split()[0] for x in lines[2:4]] == ["1m", "5m"]
    table = lines.index("The prototype's view, for comparison (not a test of the question):")
    assert lines[table + 1].startswith("flag rate ")
    out = store / "results" / "SIMUSDT-30s"
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluate.csv",
        "evaluate.json",
        "horizons.csv",
        "horizons.json",
        "parameters.json",
        "plots",
        "scores.parquet",
        "windows.parquet",
    ]
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "flag_rate_by_hour.png",
        "price_flags.png",
        "ratio_by_horizon.png",
        "score_distribution.png",
    ]
    r = engine(
        "sql",
        "SELECT run, count(*) AS n, count(score) AS scored FROM scores GROUP BY run",
        "--data-dir",
        str(store),
        "--format",
        "csv",
    )
    assert r.stdout == "run,n,scored\nSIMUSDT-30s,360,260\n"
    r = engine(
        "sql", "SELECT count(*) AS n FROM trades", "--data-dir", str(store), "--format", "json"
    )
    assert orjson.loads(r.stdout) == [
        {"n": pl.read_parquet(list(store.glob("trades/**/trades.parquet"))).height}
    ]
    r = engine(
        "sweep",
        "--data-dir",
        str(store),
        "--symbol",
        "simusdt",
        "--every",
        "20s,30s",
        "--horizons",
        "1m",
        *SMALL,
        "--format",
        "json",
    )
    body = orjson.loads(r.stdout)
    assert sorted({x["every"] for x in body["rows"]}) == ["20s", "30s"] and set(
        body["flag_rate"]
    ) == {"20s", "30s"}


def errors(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 1, (r.output, r.exception)
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    return r.stderr.rstrip("\n")


def test_bad_input_gives_one_error_line(store, tmp_path):
    d = str(store)
    assert (
        errors("windows", "--data-dir", d, "--symbol", "ethusdt")
        == f"Error: unknown symbol ETHUSDT: the store at {d} has SIMUSDT"
    )
    assert (
        errors("windows", "--data-dir", str(tmp_path / "none"))
        == f"Error: no store at {tmp_path / 'none'}; pass --data-dir where `recorder run` writes"
    )
    from recorder.store import init_store

    init_store(tmp_path / "empty")
    assert (
        errors("windows", "--data-dir", str(tmp_path / "empty"))
        == f"Error: unknown symbol BTCUSDT: the store at {tmp_path / 'empty'} has no symbols yet"
    )
    assert errors(
        "horizons", "--data-dir", d, "--symbol", "simusdt", "--every", "20s", "--horizons", "50s"
    ) == (
        "Error: horizon 50s is not a multiple of the window (20s); choose horizons that the window size divides"
    )
    assert errors("windows", "--data-dir", d, "--symbol", "simusdt", "--every", "20x") == (
        "Error: cannot read duration '20x'; write a positive whole number with a unit: 250ms, 20s, 5m, 1h or 1d"
    )
    assert errors("score", "--data-dir", d, "--symbol", "simusdt", "--buffer", "5000") == (
        "Error: fewer windows than the buffer: 540 scoreable windows, --buffer 5000 needs more; "
        "give a longer time range or a smaller --buffer"
    )
    csv = tmp_path / "p.csv"
    csv.write_text("timestamp,trade_count\n")
    assert errors("horizons", "--windows-csv", str(csv), "--baseline", "full") == (
        f"Error: {csv} lacks the prototype's columns volume, avg_trade_size, return, volatility, score, prediction; "
        "expected timestamp,trade_count,volume,avg_trade_size,return,volatility,score,prediction"
    )


def test_corrupt_files_are_named_and_never_changed(tmp_path):
    write_store(tmp_path, "SIMUSDT", tape(T0, 7200, 1, seed=12))
    bad = layout.hour_dirs(tmp_path)[1] / layout.PARQUET
    bad.write_bytes(b"PAR1 this is not parquet")
    msg = errors("windows", "--data-dir", str(tmp_path), "--symbol", "simusdt")
    assert msg.startswith(f"Error: {bad} is not a readable Parquet file (")
    assert bad.read_bytes() == b"PAR1 this is not parquet"
    bad.unlink()
    sealed = layout.hour_dirs(tmp_path)[1] / "trades-1.ndjson"
    sealed.write_bytes(
        b'{"recv_time":1,"frame":{"stream":"simusdt@trade","data":{"e":"trade","E":1,"s":"SIMUSDT","t":1,"p":"1","q":"1","T":1723078800000,"m":true,"M":true}}}\n{"recv_time":2,"fra\n'
    )
    assert errors("windows", "--data-dir", str(tmp_path), "--symbol", "simusdt") == (
        f"Error: {sealed}: line 2 is not a complete trade; run `recorder compact` to quarantine it (while no recorder runs)"
    )


def test_help_is_fast_because_heavy_imports_are_lazy():
    code = "import sys, engine.cli; print(sorted(m for m in ('polars','sklearn','scipy','duckdb') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]"
    r = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "Example:" in r.stdout


def test_stock_duckdb_cli_reads_the_views_as_the_readme_says(store, tmp_path):
    from engine.sqlviews import find_cli, sql_file

    cli = find_cli()
    assert cli, "duckdb-cli is a dependency: the DuckDB CLI should be installed"
    for data_dir, want in (
        (store, pl.read_parquet(list(store.glob("trades/symbol=*/**/*.parquet"))).height),
        (tmp_path / "none", 0),
    ):
        r = subprocess.run(
            [
                cli,
                "-csv",
                "-cmd",
                f"SET VARIABLE data_dir='{data_dir}'",
                "-cmd",
                f".read {sql_file('views.sql')}",
                "-c",
                "SELECT count(*) AS n FROM trades",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (r.returncode, r.stdout) == (0, f"n\n{want}\n"), r.stderr


def test_engine_sql_without_a_query_opens_the_shell(store):
    r = subprocess.run(
        [sys.executable, "-m", "engine.cli", "sql", "--data-dir", str(store)],
        input="SELECT count(*) AS n FROM windows;\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "│" in r.stdout and " n " in r.stdout  # the shell's box table from stdin


def test_engine_sql_says_how_to_get_the_shell(store, monkeypatch):
    import engine.sqlviews

    monkeypatch.setattr(engine.sqlviews, "find_cli", lambda: None)
    assert errors("sql", "--data-dir", str(store)) == (
        'Error: the DuckDB CLI is not installed; `pip install duckdb-cli` (or see https://duckdb.org/docs/installation), or run one query: engine sql "SELECT ..."'
    )


def test_engine_keeps_freed_pages_unless_the_user_says_otherwise():
    """Polars' jemalloc reads _RJEM_MALLOC_CONF once, when Polars loads (Polars puts its own
    defaults first; later options win): the engine sets it before (engine/__init__.py), and
    leaves a setting of the user's own alone."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, os; import engine.cli; import polars; "
        "print(os.environ.get('_RJEM_MALLOC_CONF'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().endswith(
        ",background_thread:true,dirty_decay_ms:2000,muzzy_decay_ms:2000"
    )
    env["_RJEM_MALLOC_CONF"] = "dirty_decay_ms:0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().endswith(",dirty_decay_ms:0")
    assert "dirty_decay_ms:2000" not in out.stdout
