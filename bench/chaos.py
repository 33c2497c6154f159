"""The chaos run of tests/test_chaos.py, for minutes instead of seconds, with its figures.

A seeded random schedule of faults hits the recorder while the fake exchange (loopback) replays
the real BTCUSDT capture, stretched to the run's length (ids shifted per repetition so they
stay consecutive, times so they keep increasing): connection drops, stalls, serverShutdown
switches, stop-then-restart, REST 500 / 429 / hang / garbage / trickle (each transient), a slow
disk, plus id holes that REST cannot serve. Then the store is checked: every id the exchange
published stored exactly once, gaps recorded only where REST could not serve the ids.

    python bench/chaos.py --minutes 10 --seed 1
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from chaos import KINDS, extend_tape, run_chaos  # noqa: E402
from fakebinance import CAPTURE_2024, load_frames  # noqa: E402


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]


def report(fig: dict) -> list[str]:
    out = [
        f"chaos run: seed {fig['seed']}, {fig['seconds'] / 60:g} min of market at "
        f"{fig['rate']:,.0f} trades/s ({fig['trades_source']:,} trades), "
        f"{fig['wall_seconds']:,.1f} s wall",
        "",
        "faults injected",
    ]
    rows = [(k, f"{fig['faults'][k]:,}") for k in KINDS]
    rows.append(("total", f"{sum(fig['faults'].values()):,}"))
    out += table(rows, ("kind", "count"))
    out.append(f"(held back while the market passed a REST-only hole: {fig['postponed']})")
    stats = fig["stats"]
    sh = fig["shutdowns"]
    out += ["", "recorder"]
    out += table(
        [
            ("trades published (source minus lost holes)", f"{fig['trades_expected']:,}"),
            ("trades stored (distinct ids)", f"{fig['trades_stored']:,}"),
            ("rows stored (after compaction)", f"{fig['rows_stored']:,}"),
            ("ids stored twice", f"{fig['stored_twice']:,}"),
            ("published ids missing", f"{fig['missing_ids']:,}"),
            ("ids stored that were never published", f"{fig['unexpected_ids']:,}"),
            ("field for field as sent", "yes" if fig["fields_match"] else "NO"),
            (
                "DuckDB trades view: rows / distinct ids",
                f"{fig['view_rows']:,} / {fig['view_distinct']:,}",
            ),
            ("duplicates dropped on arrival", f"{fig['duplicates_dropped']:,}"),
            ("trades backfilled from REST", f"{fig['backfilled']:,}"),
            ("REST items quarantined as rejects", f"{fig['rejects']:,}"),
            ("REST failures (500, timeout, invalid, 429)", f"{stats['rest_failures']:,}"),
            ("REST 429s obeyed", f"{stats['rest_rate_limited']:,}"),
            ("historicalTrades answered", f"{fig['rest_requests']:,}"),
            ("connections opened", f"{fig['connections']:,}"),
            (
                "disconnects / dead (stalled) connections",
                f"{stats['disconnects']:,} / {stats['dead_connections']:,}",
            ),
            ("serverShutdown switches", f"{stats['switch_serverShutdown']:,}"),
            ("restarts", f"{fig['restarts']:,}"),
            (
                "shutdowns: count / longest / median s",
                f"{len(sh)} / {max(sh):.3f} / {sorted(sh)[len(sh) // 2]:.3f}",
            ),
            ("hours compacted while running", f"{stats['hours_compacted']:,}"),
        ],
        ("figure", "value"),
    )
    out += ["", "id holes on the exchange's side"]
    out += table(
        [
            (
                f"{h.first_id}..{h.last_id}",
                f"{h.size:,}",
                "stream only" if h.streamed else "nowhere (lost)",
            )
            for h in fig["holes"]
        ],
        ("ids", "trades", "served by"),
    )
    out += ["", f"gaps recorded: {len(fig['gaps'])}"]
    if fig["gaps"]:
        out += table(
            [
                (
                    f"{g['first_id']}..{g['last_id']}",
                    f"{g['trades']:,}",
                    g["reason"],
                    "yes" if g["unservable"] else "NO",
                    "yes" if g["lost_hole"] else "no",
                    "exact" if g["times_exact"] else "bracket" if g["times_bracket"] else "WRONG",
                )
                for g in fig["gaps"]
            ],
            ("ids", "trades", "reason", "truly unservable", "= a lost hole", "times"),
        )
    lost = sorted((h.first_id, h.last_id) for h in fig["holes"] if not h.streamed)
    ok = (
        fig["stored_twice"] == fig["missing_ids"] == fig["unexpected_ids"] == 0
        and fig["fields_match"]
        and fig["view_rows"] == fig["view_distinct"] == fig["trades_expected"]
        and sorted((g["first_id"], g["last_id"]) for g in fig["gaps"]) == lost
        and max(sh) < 5
    )
    out += [
        "",
        "invariant (every published id stored once, gaps exactly the lost holes, "
        f"every shutdown < 5 s): {'HOLDS' if ok else 'BROKEN'}",
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=500.0, help="market trades/s")
    ap.add_argument("--work", type=Path, help="data directory (default: a temporary one)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log faults and the recorder")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    seconds = args.minutes * 60
    frames = extend_tape(load_frames(CAPTURE_2024), int(seconds * args.rate))

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        fig = run_chaos(root, frames, args.seed, seconds, progress=progress)
    print("\n".join(report(fig)))


if __name__ == "__main__":
    main()
