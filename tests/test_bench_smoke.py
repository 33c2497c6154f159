"""Tiny runs of the benchmark scripts, so they cannot rot (figures are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_recorder_flood_smoke():
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "recorder_flood.py"), "--trades", "3000"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "recorder flood: 3000 trades over loopback, one symbol"
    assert re.fullmatch(
        r"  receive-to-fsync latency: p50 [\d.]+ ms, p99 [\d.]+ ms \(last [\d,]+ trades; fsync every 0.5 s\)",
        lines[4],
    )
    assert re.fullmatch(r"  sustained into the store: [\d,]+ trades/s", lines[1])
    assert re.fullmatch(r"  peak RSS \(VmHWM\): [\d.]+ MB; max sampled RSS [\d.]+ MB", lines[2])


def run_bench(*args: str) -> list[str]:
    r = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_engine_bench_smoke(tmp_path):
    lines = run_bench(
        "bench/engine_bench.py",
        "--days",
        "2",
        "--rate",
        "20000",
        "--model-windows",
        "1200",
        "--work",
        str(tmp_path),
        "--jobs",
        "1",
    )
    assert lines[0].startswith("store: 2 days x 20,000 trades/day ready in ")
    assert re.match(r"windows 20s,   1 days \(0 M trades\): +[\d.]+ s whole process", lines[1])
    assert lines[-1].startswith("walk-forward (isotree, 1 jobs): 7 refits in ")


def test_model_bench_smoke():
    lines = run_bench("bench/model_bench.py", "--days", "0.02", "--windows", "900")
    assert (
        lines[0] == "walk-forward, 900 windows of 20 s (4 refits, buffer 500, every 100, 100 trees)"
    )
    assert [" ".join(ln.split()[:2]) for ln in lines[2:]] == [
        "scikit-learn serial",
        "scikit-learn, 2",
        "isotree, 1",
        "isotree, 2",
        "scikit-learn serial,",
    ]
    assert lines[2].split()[-3:] == ["1.00x", "1.0000", "1.0000"]  # the reference vs itself
    (line,) = run_bench(
        "bench/model_bench.py",
        "--days",
        "0.02",
        "--windows",
        "900",
        "--whole",
        "--backend",
        "isotree",
    )
    assert re.fullmatch(
        r"walk_forward \(isotree, \d+ jobs\), 900 windows of 20 s \(4 refits\): [\d.]+ s whole "
        r"process, [\d.]+ s walk-forward, peak RSS \d+ MB",
        line,
    )


def test_import_bench_smoke():
    (line,) = run_bench("bench/import_bench.py", "--trades", "20000")
    assert re.match(
        r"import-archive: 20,000 trades \(\d+ MB zip\) in [\d.]+ s = [\d,]+ trades/s, peak RSS \d+ MB, Parquet [\d.]+ bytes/trade",
        line,
    )


def test_windows_bench_smoke(tmp_path):
    lines = run_bench(
        "bench/windows_bench.py",
        "--days",
        "1",
        "--rate",
        "20000",
        "--repeats",
        "1",
        "--prototype-trades",
        "3000",
        "--work",
        str(tmp_path),
    )
    assert [ln.split()[1] for ln in lines[2:]] == [
        "tapewatch",
        "duckdb",
        "pandas",
        "prototype",
        "floor",
    ]
    assert lines[2].split()[-1] == "1.00x"
    assert lines[5].endswith("(its loop over 3,000 frames, scaled)")


def test_analysis_bench_smoke(tmp_path):
    lines = run_bench(
        "bench/analysis_bench.py",
        "--windows",
        "4000",
        "--reps",
        "20",
        "--days",
        "1",
        "--rate",
        "20000",
        "--hour-trades",
        "3000",
        "--work",
        str(tmp_path),
    )
    assert lines[0].startswith(
        "horizons: 4,000 windows x 4 horizons x 2 metrics, 20 bootstrap reps: "
    )
    assert lines[1].startswith("sweep 10s/20s/30s/60s over 1 days: one scan ")
    assert lines[2].startswith("storage, real capture (19,904 trades, 2 hour files): NDJSON ")
    assert lines[3].startswith("storage, synthetic hour (3,000 trades, 1 hour files): NDJSON ")


def test_chaos_bench_smoke():
    lines = run_bench("bench/chaos.py", "--minutes", "0.05", "--seed", "3")
    assert lines[0].startswith(
        "chaos run: seed 3, 0.05 min of market at 500 trades/s (1,500 trades)"
    )
    assert lines[-1].endswith("every shutdown < 5 s): HOLDS")


def test_evaluate_bench_smoke():
    lines = run_bench("bench/evaluate_bench.py", "--windows", "30000")
    assert lines[-1].startswith(
        "engine evaluate: 30,000 windows of 20 s, 4 horizons, model + 3 competitors, 2 metrics: "
    )
    assert "peak RSS" in lines[-1]


def test_year_bench_smoke(tmp_path):
    lines = run_bench(
        "bench/year_bench.py",
        *("--days", "1", "--rate", "20000", "--runs", "2", "--work", str(tmp_path)),
    )
    assert re.fullmatch(r"store: 1 days x 20,000 trades/day ready in \d+ s", lines[0])
    assert re.fullmatch(r"floor: bare DuckDB scan [\d.]+ s", lines[1])
    for i in (1, 2):
        assert re.fullmatch(
            rf"engine run {i}: [\d.]+ s, peak RSS [\d,]+ MB \(process tree\)", lines[1 + i]
        )
    walls = sorted(float(ln.split()[3]) for ln in lines[2:4])
    assert lines[4] == (
        f"engine run: median {walls[1]:.1f} s of 2 (from {walls[0]:.1f} to {walls[1]:.1f} s)"
    )
    assert lines[5].startswith("step windows ") and lines[5].endswith(" s (4,320 windows)")
    steps = [ln.split()[1] for ln in lines[5:9]]
    assert steps == ["windows", "walk-forward", "horizons", "evaluate"]
    assert re.fullmatch(
        r"steps alone: [\d.]+ s in all, peak RSS [\d,]+ MB \(process tree\)", lines[10]
    )


def test_dayfiles_bench_smoke(tmp_path):
    lines = run_bench(
        "bench/dayfiles_bench.py", "--days", "2", "--rate", "20000", "--work", str(tmp_path)
    )
    assert re.fullmatch(r"store: 2 days x 20,000 trades/day ready in \d+ s", lines[0])
    assert lines[2].split() == ["Parquet", "files", "48", "2", "24.0x", "fewer"]
    assert lines[-4].startswith("trades before and after: SAME ")
    assert lines[-3].startswith("recorder says: merged 2 days into day files (")
    assert re.match(
        r"recorder compact --days: [\d.]+ s wall, [\d.]+ s CPU, peak RSS [\d,]+ MB; [\d.]+ s per day",
        lines[-2],
    )
    assert lines[-1].startswith("recorder compact with nothing to do: ")
    assert lines[-1].endswith(" s CPU over 2 files")
