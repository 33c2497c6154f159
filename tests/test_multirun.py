"""engine run and engine sweep over several symbols: each symbol is its own run, judged again
over all symbols, the pooled verdict is the pooled test of those runs' windows, and the
command line refuses a muddled symbol list in one line."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from synth import tape, write_store

from engine.cli import main
from engine.econometrics import bh_adjust
from engine.evaluate import evaluate
from engine.horizons import horizons_for
from engine.pooled import pooled_rows

T0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC
SMALL = ["--buffer", "100", "--retrain-every", "50", "--trees", "20", "--reps", "50", "--jobs", "1"]
SYMBOLS = ("AAAUSDT", "BBBUSDT")
HORIZONS = [("1m", 60_000), ("5m", 300_000)]
# Rows of the evaluation that a second judgement (over all symbols) may change.
JUDGED = ("p_bh", "verdict")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two symbols over the same 20 hours (12 of them the evaluation's warm-up)."""
    root = tmp_path_factory.mktemp("multirun")
    for seed, symbol in enumerate(SYMBOLS):
        write_store(root, symbol, tape(T0, 20 * 3600, 0.5, seed=seed))
    return root


def engine(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_args(store: Path, results: Path, *more: str) -> list[str]:
    return [
        "run", "--data-dir", str(store), "--every", "20s", "--horizons", "1m,5m",
        "--results", str(results), "--no-plots", *SMALL, *more,
    ]  # fmt: skip


def unjudged(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in JUDGED and k != "symbol"}


def test_run_over_symbols_is_each_run_and_their_pooled_test(store, tmp_path):
    multi = engine(
        *run_args(store, tmp_path / "many", "--symbols", "aaausdt,bbbusdt"), "--format", "json"
    )
    assert multi.exit_code == 0, multi.stderr
    body = orjson.loads(multi.stdout)
    assert body["symbols"] == list(SYMBOLS)
    per_symbol, pooled = body["rows"], body["pooled"]["rows"]
    # Each symbol's rows are its own single run's, judged again over all symbols' rows.
    for symbol in SYMBOLS:
        one = engine(*run_args(store, tmp_path / symbol, "--symbol", symbol), "--format", "json")
        assert one.exit_code == 0, one.stderr
        own = orjson.loads(one.stdout)["evaluate"]["rows"]
        mine = [r for r in per_symbol if r["symbol"] == symbol]
        assert [unjudged(r) for r in mine] == [unjudged(r) for r in own]
        written = orjson.loads((tmp_path / "many" / f"{symbol}-20s" / "evaluate.json").read_bytes())
        assert [unjudged(r) for r in written["rows"]] == [unjudged(r) for r in own]
    family = [r for r in per_symbol if r["p_value"] is not None]
    assert len(family) == 2 * 2 * 4 * 2  # symbols x horizons x flags x metrics
    assert [r["p_bh"] for r in family] == pytest.approx(bh_adjust([r["p_value"] for r in family]))
    # The pooled rows are the pooled test of the windows each symbol's run scored.
    inputs: dict = {}
    for symbol in SYMBOLS:
        scored = pl.read_parquet(tmp_path / "many" / f"{symbol}-20s" / "scores.parquet")
        inputs[symbol] = {}
        evaluate(scored, horizons_for(HORIZONS, 20_000), 20_000, pool=inputs[symbol])
    expected = pooled_rows(inputs, ["1m", "5m"], 20_000)
    assert pooled == expected
    assert {r["symbols"] for r in pooled} == {2} and all(r["windows"] > 1000 for r in pooled)
    # The pooled folder: what `engine verdict` reads, and the tables.
    out = tmp_path / "many" / "pooled-20s"
    assert orjson.loads((out / "evaluate.json").read_bytes())["rows"] == expected
    assert pl.read_csv(out / "per_symbol.csv").height == len(per_symbol)
    said = engine("verdict", "--results", str(out))
    assert said.exit_code == 0
    assert said.stdout.startswith("VERDICT, pooled over 2 symbols (AAAUSDT, BBBUSDT): ")
    assert "p_driscoll_kraay" in said.stdout
    no_report = engine("report", "--results", str(out))
    assert no_report.exit_code == 1
    assert "holds the pooled verdict of `engine run --symbols`" in no_report.stderr
    # In words: the pooled verdict first, then every symbol's.
    table = engine(*run_args(store, tmp_path / "words", "--symbols", "all"))
    assert table.exit_code == 0, table.stderr
    assert table.stdout.startswith("VERDICT, pooled over 2 symbols (AAAUSDT, BBBUSDT): ")
    assert "Per symbol" in table.stdout and table.stdout.count("BBBUSDT  ") == 2
    flat = engine(*run_args(store, tmp_path / "csv", "--symbols", "all"), "--format", "csv")
    assert flat.exit_code == 0, flat.stderr
    got = pl.read_csv(flat.stdout.encode())
    assert got["symbol"].to_list() == ["pooled"] * 4 + [r["symbol"] for r in per_symbol]


def test_symbols_all_is_every_symbol_in_the_store(store, tmp_path):
    listed = engine(
        "sweep", "--data-dir", str(store), "--symbols", "AAAUSDT,bbbusdt", "--every", "20s,30s",
        "--horizons", "1m", *SMALL, "--format", "json",
    )  # fmt: skip
    every = engine(
        "sweep", "--data-dir", str(store), "--symbols", "all", "--every", "20s,30s",
        "--horizons", "1m", *SMALL, "--format", "json",
    )  # fmt: skip
    assert listed.exit_code == 0 and every.exit_code == 0, listed.stderr + every.stderr
    assert listed.stdout == every.stdout
    body = orjson.loads(every.stdout)
    assert body["parameters"]["symbols"] == list(SYMBOLS)
    assert sorted({(r["symbol"], r["every"]) for r in body["rows"]}) == [
        ("AAAUSDT", "20s"), ("AAAUSDT", "30s"), ("BBBUSDT", "20s"), ("BBBUSDT", "30s")
    ]  # fmt: skip
    assert set(body["flag_rate"]) == {"AAAUSDT 20s", "AAAUSDT 30s", "BBBUSDT 20s", "BBBUSDT 30s"}
    ps = [r["p_naive"] for r in body["rows"] if r["p_naive"] is not None]
    assert [r["p_naive_bh"] for r in body["rows"] if r["p_naive"] is not None] == pytest.approx(
        bh_adjust(ps)
    )
    # One symbol's rows are its own sweep's, but for the adjustment over the larger grid.
    alone = engine(
        "sweep", "--data-dir", str(store), "--symbol", "bbbusdt", "--every", "20s,30s",
        "--horizons", "1m", *SMALL, "--format", "json",
    )  # fmt: skip
    own = orjson.loads(alone.stdout)["rows"]
    mine = [r for r in body["rows"] if r["symbol"] == "BBBUSDT"]
    drop = ("symbol", "p_naive_bh")
    assert [{k: v for k, v in r.items() if k not in drop} for r in mine] == [
        {k: v for k, v in r.items() if k not in drop} for r in own
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--symbol", "aaausdt", "--symbols", "aaausdt,bbbusdt"],
            "give --symbol or --symbols, not both",
        ),
        (["--symbols", "aaausdt,AAAUSDT"], "names AAAUSDT twice"),
        (["--symbols", "all,aaausdt"], "mixes all with symbols"),
        (["--symbols", "aaausdt,zzzusdt"], "unknown symbol ZZZUSDT"),
        (["--symbols", "aaausdt,"], "lists no value or an empty one"),
        (["--symbols", "aaa-usdt"], "is not ASCII letters and digits"),
        (["--executor", "ray"], "one --symbol runs here"),
        (["--symbols", "all,ALL"], "mixes all with symbols"),
        (
            ["--symbols", "aaausdt,bbbusdt", "--buffer", "3600"],
            "AAAUSDT spans 3,600 windows of 20s in this range, no more than --buffer 3600",
        ),
    ],
)
def test_a_muddled_symbol_list_is_one_error_line(store, tmp_path, args, message):
    got = engine(*run_args(store, tmp_path / "r", *args))
    assert got.exit_code == 1
    assert got.stderr.startswith("Error: ") and message in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work


def test_symbol_from_the_environment_beside_symbols_is_named(store, tmp_path):
    got = CliRunner().invoke(
        main,
        run_args(store, tmp_path / "r", "--symbols", "aaausdt,bbbusdt"),
        env={"TAPEWATCH_ENGINE_SYMBOL": "aaausdt"},
    )
    assert (got.exit_code, got.stderr) == (
        1,
        "Error: --symbols is given and so is TAPEWATCH_ENGINE_SYMBOL: unset the variable, "
        "or give --symbol instead\n",
    )


def test_a_symbol_that_fails_in_its_task_is_named(tmp_path):
    """Past the up-front check (its span holds more windows than the buffer, but most are
    empty), the error names the symbol."""
    write_store(tmp_path, "AAAUSDT", tape(T0, 3 * 3600, 0.5, seed=1))
    write_store(tmp_path, "QUIETUSDT", tape(T0, 3 * 3600, 0.01, seed=2))  # ~1 in 5 windows
    got = engine(*run_args(tmp_path, tmp_path / "r", "--symbols", "all", "--buffer", "400"))
    assert got.exit_code == 1
    assert got.stderr.startswith("Error: QUIETUSDT: fewer windows than the buffer: "), got.stderr


def test_symbols_all_skips_a_symbol_folder_without_trades(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "trades" / "symbol=GGGUSDT").mkdir()
    got = engine("sweep", "--data-dir", str(copy), "--symbols", "all", "--every", "20s",
                 "--horizons", "1m", *SMALL, "--format", "json")  # fmt: skip
    assert got.exit_code == 0, got.stderr
    assert orjson.loads(got.stdout)["parameters"]["symbols"] == list(SYMBOLS)


def test_symbols_all_on_an_empty_store_says_so(tmp_path):
    (tmp_path / "trades").mkdir()
    got = engine(*run_args(tmp_path, tmp_path / "r", "--symbols", "all"))
    assert got.exit_code == 1 and "has no symbols yet" in got.stderr, got.stderr
