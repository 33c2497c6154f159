"""Writer -> NDJSON -> compaction -> Parquet, read back by Polars and by DuckDB's views."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import assert_rows_match_frames, stored_rows, view_query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.compact import closed_hours, compact_hour
from recorder.frames import Kind, decode_frame
from recorder.store import init_store, last_trade, layout
from recorder.writer import StoreWriter

SYMS = frozenset({"BTCUSDT"})


def write_frames(root: Path, frames: list[bytes]) -> None:
    init_store(root)
    w = StoreWriter(root)
    batch = []
    for i, raw in enumerate(frames):
        f = decode_frame(raw, 1_700_000_000_000_000 + i, SYMS)
        assert f.kind is Kind.TRADE
        batch.append((f.symbol, layout.hour_of(f.trade_time), f.line))
    w.append(batch)
    w.close()


def compact_all(root: Path) -> list:
    return [compact_hour(root, d) for d in closed_hours(root, 2**62, 0)]


def test_capture_crosses_hour_and_midnight_then_compacts(tmp_path, frames_2024):
    write_frames(tmp_path, frames_2024)
    dirs = [d.relative_to(tmp_path).as_posix() for d in layout.hour_dirs(tmp_path)]
    assert dirs == [
        "trades/symbol=BTCUSDT/date=2024-08-08/hour=23",
        "trades/symbol=BTCUSDT/date=2024-08-09/hour=00",
    ]
    # Open hours: the views already see every trade.
    assert view_query(tmp_path, "SELECT count(*), count(DISTINCT trade_id) FROM trades") == [
        (19904, 19904)
    ]
    results = compact_all(tmp_path)
    assert [r.rows for r in results] == [9738, 10166]
    assert not list(tmp_path.glob("trades/**/trades*.ndjson"))
    rows = stored_rows(tmp_path)
    assert_rows_match_frames(rows, frames_2024)
    assert rows["trade_time"].dt.hour().unique().sort().to_list() == [0, 23]
    assert view_query(
        tmp_path,
        "SELECT count(*), min(trade_id), max(trade_id), sum(qty)::DECIMAL(18,8), "
        "count(*) FILTER (WHERE trade_time >= TIMESTAMPTZ '2024-08-09 00:00:00+00') FROM trades",
    ) == [
        (
            19904,
            3735683259,
            3735703162,
            pl.Series([orjson.loads(f)["data"]["q"] for f in frames_2024])
            .cast(pl.Decimal(18, 8))
            .sum(),
            10166,
        )
    ]
    assert last_trade(tmp_path, "BTCUSDT") == (3735703162, 1723161905800)


def test_2023_capture_keeps_buyer_and_seller_order_ids(tmp_path, frames_2023):
    write_frames(tmp_path, frames_2023)
    compact_all(tmp_path)
    rows = stored_rows(tmp_path)
    assert_rows_match_frames(rows, frames_2023)
    assert rows["buyer_order_id"][0] == 20720542158 and rows["seller_order_id"][0] == 20720542592
    assert view_query(tmp_path, "SELECT count(*) FROM trades WHERE buyer_order_id IS NULL") == [
        (0,)
    ]


def test_compaction_is_idempotent_and_repairs_a_crash(tmp_path, frames_2024):
    frames = frames_2024[:500]
    write_frames(tmp_path, frames)
    d = layout.hour_dirs(tmp_path)[0]
    compact_all(tmp_path)
    first = (d / layout.PARQUET).read_bytes()
    # A crash after the rename but before the NDJSON was deleted leaves both; a torn line too.
    write_frames(tmp_path, frames[400:])
    with open(d / layout.ACTIVE_NDJSON, "ab") as f:
        f.write(b'{"recv_time":1,"frame":{"stream":"btcu')
    assert view_query(tmp_path, "SELECT count(*) FROM trades") == [(500,)]
    (r,) = compact_all(tmp_path)
    assert (r.rows, r.ndjson_files, r.rejected_lines) == (500, 1, 1)
    assert pl.read_parquet(d / layout.PARQUET).equals(
        pl.read_parquet(__import__("io").BytesIO(first))
    )
    assert compact_all(tmp_path) == []
    rejects = list((tmp_path / "rejects").glob("*.ndjson"))
    rec = orjson.loads(rejects[0].read_bytes().splitlines()[0])
    assert rec["frame"] == '{"recv_time":1,"frame":{"stream":"btcu'
    assert rec["reason"].startswith("unparseable line 101 of trades/symbol=BTCUSDT/")


def test_append_after_a_torn_line_starts_a_new_line(tmp_path, frames_2024):
    write_frames(tmp_path, frames_2024[:3])
    d = layout.hour_dirs(tmp_path)[0]
    with open(d / layout.ACTIVE_NDJSON, "ab") as f:
        f.write(b'{"recv_time":1,"fra')
    write_frames(tmp_path, frames_2024[3:6])
    lines = (d / layout.ACTIVE_NDJSON).read_bytes().split(b"\n")
    assert lines[3] == b'{"recv_time":1,"fra' and lines[4].startswith(b'{"recv_time":')
    (r,) = compact_all(tmp_path)
    assert (r.rows, r.rejected_lines) == (6, 1)


def test_corrupt_parquet_is_named_and_ndjson_kept(tmp_path, frames_2024):
    write_frames(tmp_path, frames_2024[:10])
    d = layout.hour_dirs(tmp_path)[0]
    (d / layout.PARQUET).write_bytes(b"PAR1garbage")
    from recorder.errors import StoreError

    with pytest.raises(StoreError, match=r"trades\.parquet is not a readable Parquet file"):
        compact_hour(tmp_path, d)
    assert (d / layout.ACTIVE_NDJSON).exists()


def test_empty_store_views_are_empty(tmp_path):
    assert view_query(tmp_path / "nothing-here", "SELECT count(*) FROM trades") == [(0,)]
    init_store(tmp_path)
    assert view_query(tmp_path, "SELECT count(*) FROM trades") == [(0,)]
    assert view_query(tmp_path, "SELECT count(*) FROM gaps") == [(0,)]


_trade = st.fixed_dictionaries(
    {
        "t": st.integers(0, 2**40),
        "p": st.decimals("0.00000001", "99999999", places=8).map(lambda d: f"{d:.8f}"),
        "q": st.decimals("0", "999999999", places=8).map(lambda d: f"{d:.8f}"),
        "T": st.integers(1_500_000_000_000, 1_500_000_000_000 + 5 * 3_600_000),
        "m": st.booleans(),
        "M": st.booleans(),
    },
    optional={"b": st.integers(0, 2**50), "a": st.integers(0, 2**50), "Z": st.text(max_size=5)},
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_trade, min_size=1, max_size=40, unique_by=lambda d: d["t"]))
def test_any_frames_written_then_read_back_lose_nothing(tmp_path_factory, trades):
    root = tmp_path_factory.mktemp("prop")
    frames = [
        orjson.dumps(
            {
                "stream": "btcusdt@trade",
                "data": {"e": "trade", "E": d["T"] + 1, "s": "BTCUSDT", **d},
            }
        )
        for d in trades
    ]
    write_frames(root, frames)
    compact_all(root)
    rows = stored_rows(root)
    by_id = sorted(frames, key=lambda f: orjson.loads(f)["data"]["t"])
    assert_rows_match_frames(rows, by_id)
    # Exact decimal values: from the float column, or from extra when a float cannot hold them.
    for row, d in zip(
        rows.iter_rows(named=True), sorted(trades, key=lambda d: d["t"]), strict=True
    ):
        extra = orjson.loads(row["extra"]) if row["extra"] else {}
        assert Decimal(extra.pop("p", repr(row["price"]))) == Decimal(d["p"])
        assert Decimal(extra.pop("q", repr(row["qty"]))) == Decimal(d["q"])
        assert extra == ({"Z": d["Z"]} if "Z" in d else {})


def test_the_sql_view_maps_lines_onto_columns_as_the_schema_does(tmp_path, frames_2024):
    """sql/views.sql reads the open hour's lines itself; its mapping must be schema.FIELDS,
    field for field, and the trades view must have PARQUET_SCHEMA's columns and types."""
    import re

    from engine.sqlviews import sql_file
    from recorder.store.schema import FIELDS, PARQUET_SCHEMA

    sql = sql_file("views.sql").read_text()
    view = sql[sql.index("CREATE OR REPLACE TEMP VIEW _tw_open AS") :]
    view = view[: view.index("FROM l")]
    for column, (ws, rest) in FIELDS.items():
        (line,) = [ln for ln in view.splitlines() if ln.rstrip(",").endswith(f" AS {column}")]
        assert re.findall(r"d->>'\$\.(\w+)'", line) == ([ws] if ws else []), column
        assert re.findall(r"r->>'\$\.(\w+)'", line) == ([rest] if rest else []), column
    write_frames(tmp_path, frames_2024[:50])
    duck = {
        "BIGINT": pl.Int64(),
        "DOUBLE": pl.Float64(),
        "TIMESTAMP WITH TIME ZONE": pl.Datetime("us", "UTC"),
        "BOOLEAN": pl.Boolean(),
        "VARCHAR": pl.String(),
    }
    described = view_query(tmp_path, "SELECT column_name, column_type FROM (DESCRIBE trades)")
    assert {name: duck[kind] for name, kind in described} == {
        "symbol": pl.String(),
        **PARQUET_SCHEMA,
    }


def test_hour_files_are_written_delta_and_dictionary_encoded(tmp_path, frames_2024):
    """Ids and times delta-encoded, sizes plain, the rest in dictionaries: smaller than Polars'
    plain encoding; both readers see the same rows."""
    import pyarrow.parquet as pq

    write_frames(tmp_path, frames_2024)
    compact_all(tmp_path)
    files = sorted(tmp_path.glob("trades/**/trades.parquet"))
    assert len(files) == 2
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            chunks = {
                meta.row_group(g).column(c).path_in_schema: meta.row_group(g).column(c)
                for c in range(meta.num_columns)
            }
            for name in ("trade_id", "trade_time", "event_time", "recv_time"):
                assert "DELTA_BINARY_PACKED" in chunks[name].encodings, name
                assert not chunks[name].has_dictionary_page, name
            assert not chunks["qty"].has_dictionary_page
            for name in ("price", "source", "event_type"):  # booleans are bit-packed
                assert chunks[name].has_dictionary_page, name
        plain = tmp_path / "plain.parquet"
        pl.read_parquet(f).write_parquet(plain, compression="zstd", compression_level=10)
        assert f.stat().st_size < plain.stat().st_size
    assert_rows_match_frames(stored_rows(tmp_path), frames_2024)
    assert view_query(tmp_path, "SELECT count(*), sum(trade_id) FROM trades") == [
        (19904, pl.Series([orjson.loads(f)["data"]["t"] for f in frames_2024]).sum())
    ]


def test_a_busy_hour_is_written_in_row_groups_of_262144(tmp_path):
    """A whole-file write cuts row groups as imports and day files do, not pyarrow's million:
    readers can split a busy hour between threads and skip groups by their statistics."""
    import pyarrow.parquet as pq
    from synth import tape

    from recorder.store.durable import write_parquet_atomic

    trades = tape(1_735_689_600_000, 3600, 300_000 / 3600, seed=3).sort("trade_id")
    final = tmp_path / "trades.parquet"
    write_parquet_atomic(trades, final)
    meta = pq.ParquetFile(final).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert sizes == [262_144, trades.height - 262_144]
    assert pl.read_parquet(final).equals(trades)


def test_two_compactions_of_one_hour_in_one_process_take_turns(tmp_path, frames_2024, monkeypatch):
    """A stopped recorder's compactor thread, abandoned mid-compaction, may still be at work
    when the same process compacts the hour again (a restart in process, a final pass): the
    two take turns. Both wrote ``.trades.parquet.tmp-PID``, so the second renamed the first's
    file away and the first failed with FileNotFoundError."""
    import threading
    import time

    from recorder.store import durable

    frames = frames_2024[:300]
    write_frames(tmp_path, frames)
    d = layout.hour_dirs(tmp_path)[0]
    real = durable.write_parquet
    written = threading.Event()

    def slow(table, path):  # the first compaction pauses between its write and its rename
        real(table, path)
        if threading.current_thread().name == "abandoned":
            written.set()
            time.sleep(0.3)

    monkeypatch.setattr(durable, "write_parquet", slow)
    errors: list[BaseException] = []

    def abandoned() -> None:
        try:
            compact_hour(tmp_path, d)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=abandoned, name="abandoned")
    t.start()
    assert written.wait(10)
    r = compact_hour(tmp_path, d)
    t.join(10)
    assert errors == []
    assert (r.rows, r.ndjson_files) == (300, 0)  # the second found the first's Parquet file
    assert [p.name for p in d.iterdir()] == [layout.PARQUET]
    assert_rows_match_frames(stored_rows(tmp_path).drop("recv_time"), frames)
