"""Recorder throughput and memory against a loopback WebSocket server that floods trades.

Runs ``recorder run`` as a separate process (as in production) against a server in this
process that sends ``--trades`` synthetic BTCUSDT trade frames (the real capture's shape, ids
consecutive) as fast as the socket takes them. Prints sustained trades/s into the store (first
to last trade written, read from the recorder's own counters) and the recorder's peak RSS.

    python bench/recorder_flood.py --trades 500000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from websockets.asyncio.server import serve

RATE = [0.0]  # trades a second for the server; 0 = flood
TEMPLATE = (
    '{{"stream":"btcusdt@trade","data":{{"e":"trade","E":{E},"s":"BTCUSDT","t":{t},'
    '"p":"{p:.2f}000000","q":"0.00{q:03d}000","T":{T},"m":{m},"M":true}}}}'
)


def frames(n: int, start_ms: int) -> list[str]:
    return [
        TEMPLATE.format(
            E=start_ms + i // 50 + 1,
            t=1_000_000 + i,
            p=61000 + (i % 500) / 100,
            q=i % 997,
            T=start_ms + i // 50,
            m="true" if i % 3 else "false",
        )
        for i in range(n)
    ]


def serve_in_thread(payload: list[str]) -> tuple[int, threading.Event]:
    ready, port_box, sent = threading.Event(), [], threading.Event()

    async def handler(ws):
        if RATE[0] <= 0:  # as fast as the socket takes them
            for f in payload:
                await ws.send(f)
        else:  # paced: RATE trades a second, sent every 10 ms
            t0, i = time.monotonic(), 0
            while i < len(payload):
                due = int((time.monotonic() - t0) * RATE[0])
                while i < min(due, len(payload)):
                    await ws.send(payload[i])
                    i += 1
                await asyncio.sleep(0.01)
        sent.set()
        await ws.wait_closed()

    def http(conn, req):
        if req.path.startswith("/api/v3/"):
            return conn.respond(200, "[]")
        return None

    async def main():
        async with serve(handler, "127.0.0.1", 0, process_request=http, max_queue=None) as srv:
            port_box.append(srv.sockets[0].getsockname()[1])
            ready.set()
            await asyncio.Future()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    ready.wait(10)
    return port_box[0], sent


def rss_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trades", type=int, default=500_000)
    ap.add_argument("--rate", type=float, default=0, help="paced trades/s (0: flood)")
    args = ap.parse_args()
    RATE[0] = args.rate
    start_ms = int(time.time() * 1000) - 10_000
    payload = frames(args.trades, start_ms)
    port, _sent = serve_in_thread(payload)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        state = data / "state" / "recorder.json"
        exe = [
            sys.executable,
            "-m",
            "recorder.cli",
            "run",
            "--symbols",
            "btcusdt",
            "--data-dir",
            str(data),
            "--ws-url",
            f"ws://127.0.0.1:{port}",
            "--rest-url",
            f"http://127.0.0.1:{port}",
            "--status-interval",
            "0.1",
            "--log-level",
            "warning",
        ]
        launched = time.monotonic()
        p = subprocess.Popen(exe, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        first = last = None
        n = 0
        rss_max = 0
        timeline: list[tuple[float, float]] = []
        latency: dict = {}
        deadline = time.monotonic() + max(600, 1.5 * args.trades / args.rate if args.rate else 0)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            rss = rss_kb(p.pid, "VmRSS:")
            rss_max = max(rss_max, rss)
            if not timeline or time.monotonic() - launched - timeline[-1][0] >= 30:
                timeline.append((time.monotonic() - launched, rss / 1024))
            try:
                st = orjson.loads(state.read_bytes())
                n = st["stats"].get("written", 0)
                latency = st.get("fsync_latency_ms", latency)
            except (FileNotFoundError, orjson.JSONDecodeError, KeyError):
                continue
            now = time.monotonic()
            if n and first is None:
                first = (now, n)
            if n >= args.trades:
                last = (now, n)
                # Latencies are known after the next fsync (0.5 s) and the status write after
                # it: wait for them, up to 3 s.
                give_up = time.monotonic() + 3
                while time.monotonic() < give_up:
                    time.sleep(0.1)
                    with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
                        latency = orjson.loads(state.read_bytes()).get("fsync_latency_ms") or {}
                    if latency.get("n", 0) >= min(args.trades, 100_000):
                        break
                break
        hwm = rss_kb(p.pid, "VmHWM:")
        p.terminate()
        p.wait(30)
        if first is None or last is None:
            sys.exit(f"recorder stored only {n} of {args.trades} trades")
        if last[0] == first[0]:  # a tiny run finished between two samples: count from launch
            first = (launched, 0)
        rate = (last[1] - first[1]) / (last[0] - first[0])
        size = sum(f.stat().st_size for f in data.glob("trades/**/*.ndjson"))
        mode = f"paced at {args.rate:,.0f} trades/s" if args.rate else "flood"
        print(f"recorder {mode}: {args.trades} trades over loopback, one symbol")
        print(f"  sustained into the store: {rate:,.0f} trades/s")
        print(f"  peak RSS (VmHWM): {hwm / 1024:.1f} MB; max sampled RSS {rss_max / 1024:.1f} MB")
        print(f"  NDJSON written: {size / args.trades:.1f} bytes/trade")
        if latency:
            print(
                f"  receive-to-fsync latency: p50 {latency['p50']} ms, p99 {latency['p99']} ms "
                f"(last {latency['n']:,} trades; fsync every 0.5 s)"
            )
        if len(timeline) > 2:
            print("  RSS over time: " + ", ".join(f"{t:.0f}s {m:.0f} MB" for t, m in timeline))


if __name__ == "__main__":
    main()
