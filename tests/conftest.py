"""Shared test helpers. All sleeps and timeouts are multiples of UNIT (seconds), which
TAPEWATCH_TEST_TIME_SCALE scales for slow machines."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakebinance import CAPTURE_2023, CAPTURE_2024, load_frames

from engine.sqlviews import sql_file
from recorder.config import RecorderConfig
from recorder.store import layout, read_hour

UNIT = float(os.environ.get("TAPEWATCH_TEST_TIME_SCALE", "1"))
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def frames_2024() -> list[bytes]:
    return load_frames(CAPTURE_2024)


@pytest.fixture(scope="session")
def frames_2023() -> list[bytes]:
    return load_frames(CAPTURE_2023)


def in_a_future_hour(frames: list[bytes]) -> list[bytes]:
    """``frames`` moved by whole hours to start two hours from now: an hour that no recorder
    counts as closed (and compacts) while they are replayed."""
    t0 = orjson.loads(frames[0])["data"]["T"]
    shift = (int(time.time() * 1000) // layout.HOUR_MS + 2 - t0 // layout.HOUR_MS) * layout.HOUR_MS
    moved = []
    for f in frames:
        frame = orjson.loads(f)
        frame["data"]["T"] += shift
        frame["data"]["E"] += shift
        moved.append(orjson.dumps(frame))
    return moved


def fast_config(data_dir: Path, fake, **kw) -> RecorderConfig:
    """A recorder configuration with every delay shrunk for tests."""
    base = dict(
        symbols=("BTCUSDT",),
        data_dir=data_dir,
        ws_url=fake.ws_url,
        rest_url=fake.rest_url,
        fsync_interval=0.05 * UNIT,
        compact_grace=0.0,
        compact_interval=3600.0,
        ping_interval=0.5 * UNIT,
        ping_timeout=0.5 * UNIT,
        backoff_initial=0.05 * UNIT,
        backoff_max=0.2 * UNIT,
        overlap_max=3 * UNIT,
        rest_weight_per_minute=600_000,
        status_interval=0.2 * UNIT,
        open_timeout=2 * UNIT,
        # The captures are from 2023-2024: replaying them today is years of clock skew.
        max_clock_skew=10 * 365 * 86400.0,
    )
    base.update(kw)
    return RecorderConfig(**base)


async def wait_for(cond, timeout: float, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout * UNIT
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def stored_rows(root: Path, symbol: str = "BTCUSDT") -> pl.DataFrame:
    """Every stored row of a symbol (Parquet and NDJSON), not deduplicated, by trade id."""
    frames = [read_hour(d)[0] for d in layout.hour_dirs(root, symbol)]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames).sort("trade_id")


def view_query(root: Path, sql: str) -> list[tuple]:
    """Run SQL against sql/views.sql over ``root``, as the stock CLI would."""
    con = duckdb.connect()
    con.execute(f"SET VARIABLE data_dir='{root}'")
    con.execute(sql_file("views.sql").read_text())
    return con.execute(sql).fetchall()


def source_trades(frames: list[bytes]) -> list[dict]:
    return [orjson.loads(f)["data"] for f in frames]


def assert_rows_match_frames(rows: pl.DataFrame, frames: list[bytes]) -> None:
    """Field for field: every value Binance sent is recoverable from the stored row. Rows
    backfilled from REST (``source == "rest"``) never had the stream's ``E``, ``e``, ``b``, ``a``;
    for them those must be null and everything else must match."""
    src = source_trades(frames)
    assert rows["trade_id"].to_list() == [d["t"] for d in src]
    if "source" in rows.columns:
        rest = set(rows.filter(pl.col("source") == "rest")["trade_id"].to_list())
        src = [
            {**d, "E": None, "e": None, "b": None, "a": None} if d["t"] in rest else d for d in src
        ]
    got = rows.select(
        "trade_id",
        "price",
        "qty",
        pl.col("trade_time").dt.epoch("ms"),
        pl.col("event_time").dt.epoch("ms"),
        "is_buyer_maker",
        "is_best_match",
        "buyer_order_id",
        "seller_order_id",
        "event_type",
    ).rows()
    want = [
        (
            d["t"],
            float(d["p"]),
            float(d["q"]),
            d["T"],
            d["E"],
            d["m"],
            d["M"],
            d.get("b"),
            d.get("a"),
            d["e"],
        )
        for d in src
    ]
    assert got == want
