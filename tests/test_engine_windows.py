"""Windows: hand-computed values from the real capture, Polars against DuckDB, invariants."""

from __future__ import annotations

import itertools
import math
import statistics
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from conftest import stored_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import tape, write_recorded_gap, write_store

from engine.scan import open_store
from engine.sqlviews import connect
from engine.windows import build_windows, id_gaps, window_features
from recorder.store import layout

DAY = 86_400_000
T0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC


@pytest.fixture(scope="module")
def capture_store(tmp_path_factory, frames_2024) -> Path:
    from test_store import compact_all, write_frames

    root = tmp_path_factory.mktemp("capture")
    write_frames(root, frames_2024)
    compact_all(root)
    return root


def test_windows_equal_hand_computed_values(capture_store, frames_2024):
    w = build_windows(open_store(capture_store, "btcusdt"), [20_000])[20_000]
    src = [orjson.loads(f)["data"] for f in frames_2024]
    by_window: dict[int, list[dict]] = {}
    for d in src:
        by_window.setdefault(d["T"] // 20_000 * 20_000, []).append(d)
    assert w.height == len(by_window) == 34  # 23:54:00..23:59:40 and 00:00:00..00:05:00
    for row in w.iter_rows(named=True):
        trades = sorted(
            by_window[int(row["window_start"].timestamp() * 1000)], key=lambda d: d["t"]
        )
        prices = [float(d["p"]) for d in trades]
        vol = sum(Decimal(d["q"]) for d in trades)
        quote = sum(Decimal(d["p"]) * Decimal(d["q"]) for d in trades)
        assert row["trade_count"] == len(trades)
        assert (row["open"], row["close"]) == (prices[0], prices[-1])
        assert (row["high"], row["low"]) == (max(prices), min(prices))
        assert row["volume"] == pytest.approx(float(vol), rel=1e-12)
        assert row["quote_volume"] == pytest.approx(float(quote), rel=1e-12)
        assert row["vwap"] == pytest.approx(float(quote / vol), rel=1e-12)
        assert row["avg_trade_size"] == pytest.approx(float(vol) / len(trades), rel=1e-12)
        assert row["return"] == pytest.approx(prices[-1] / prices[0] - 1, abs=1e-15)
        assert row["volatility"] == pytest.approx(statistics.stdev(prices), rel=1e-9)
        # Within the window only: the change from the previous window's last trade is not in it.
        rv = sum(math.log(b / a) ** 2 for a, b in itertools.pairwise(prices))
        assert row["realized_variance"] == pytest.approx(rv, rel=1e-12, abs=0)
        pk = math.log(max(prices) / min(prices)) ** 2 / (4 * math.log(2))
        assert row["parkinson_variance"] == pytest.approx(pk, rel=1e-12, abs=0)
        buys = sum(Decimal(d["q"]) for d in trades if not d["m"])
        assert row["buy_volume"] == pytest.approx(float(buys), rel=1e-12)
        assert row["gap"] is False
    first = w.row(0, named=True)
    assert (first["window_start"].isoformat(), first["trade_count"]) == (
        "2024-08-08T23:54:00+00:00",
        108,
    )


def test_empty_windows_are_present_and_gaps_flagged(tmp_path):
    t = tape(T0, 600, 5, seed=1)
    # A quiet minute (no trades, ids still consecutive: no gap), then ids 100..119 missing.
    ms = pl.col("trade_time").dt.epoch("ms")
    t = t.filter(~((ms >= T0 + 300_000) & (ms < T0 + 360_000)))
    t = t.with_columns(trade_id=pl.int_range(1, t.height + 1, dtype=pl.Int64))
    t = t.filter(~pl.col("trade_id").is_between(100, 119))
    write_store(tmp_path, "SIMUSDT", t)
    w = build_windows(open_store(tmp_path, "simusdt"), [10_000])[10_000]
    starts = w["window_start"].dt.epoch("ms")
    assert (starts.diff().drop_nulls() == 10_000).all()
    empty = w.filter((starts >= T0 + 300_000) & (starts < T0 + 360_000))
    assert empty["trade_count"].to_list() == [0] * 6
    assert empty["volatility"].to_list() == [0.0] * 6 and empty["open"].null_count() == 6
    assert (
        empty["realized_variance"].to_list() == empty["parkinson_variance"].to_list() == [0.0] * 6
    )
    ids = t.select("trade_id", pl.col("trade_time").dt.epoch("ms").alias("ms"))
    before = ids.filter(pl.col("trade_id") == 99)["ms"][0]
    after = ids.filter(pl.col("trade_id") == 120)["ms"][0]
    flagged = w.filter("gap")["window_start"].dt.epoch("ms").to_list()
    assert flagged == list(range(before // 10_000 * 10_000, after // 10_000 * 10_000 + 1, 10_000))


def test_id_gaps_between_and_within_chunks():
    """Each jump in the ids is a gap from the last trade before it to the first after it,
    including one from the previous chunk's last trade; repeated or consecutive ids are not."""
    ids = [10, 11, 15, 16, 16, 20]
    t = pl.DataFrame(
        {
            "trade_id": ids,
            "trade_time": [T0 + 1000 * i for i in range(len(ids))],
        }
    ).with_columns(pl.col("trade_time").cast(pl.Datetime("ms")).cast(pl.Datetime("us", "UTC")))
    assert id_gaps(t, None) == [(T0 + 1000, T0 + 2000), (T0 + 4000, T0 + 5000)]
    assert id_gaps(t, (9, T0 - 5)) == id_gaps(t, None)
    assert id_gaps(t, (7, T0 - 5)) == [(T0 - 5, T0), *id_gaps(t, None)]
    assert id_gaps(t.head(2), (9, T0 - 5)) == []
    assert id_gaps(t.head(0), (1, T0)) == []


def test_recorded_gaps_flag_windows(tmp_path):
    write_store(tmp_path, "SIMUSDT", tape(T0, 120, 5, seed=2))
    write_recorded_gap(tmp_path, "SIMUSDT", T0 + 45_000, T0 + 61_000)
    w = build_windows(open_store(tmp_path, "SIMUSDT"), [20_000])[20_000]
    assert w.filter("gap")["window_start"].dt.epoch("ms").to_list() == [T0 + 40_000, T0 + 60_000]


EVERIES = [250, 7_000, 20_000, 780_000]  # 7 s and 13 min do not divide a day


@pytest.fixture(scope="module")
def two_day_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twoday")
    write_store(root, "SIMUSDT", tape(T0 + 3_600_000 * 20, 3600 * 30, 2, seed=3))
    return root


@pytest.mark.parametrize("every", EVERIES)
def test_polars_and_duckdb_windows_agree(two_day_store, every):
    start, end = T0 + 3_600_000 * 20 + 1234, T0 + 3_600_000 * 50 - 999
    if every == 250:
        end = start + 3_600_000
    w = build_windows(open_store(two_day_store, "SIMUSDT"), [every], start, end)[every]
    d = (
        connect(two_day_store)
        .sql(f"SELECT * FROM tw_windows('simusdt', {every}, {start}, {end})")
        .pl()
    )
    assert w.height == d.height and w.height > 0
    assert_same_windows(w, d)


@pytest.mark.parametrize("every", [1_000, 20_000])
def test_polars_and_duckdb_windows_agree_on_microsecond_times(tmp_path, every):
    """Archive imports keep microseconds. A trade is in the window its time falls in, to the
    microsecond, in both builds, however the range starts: 1 us before a window's start is the
    window before (DuckDB's epoch_ms rounds to the nearest ms, so the SQL must not use it)."""
    t = tape(T0 + 7_200_000, 120, 20, seed=5)
    offsets = np.random.default_rng(5).choice([0, 1, 499, 500, 501, 999], t.height)
    t = t.with_columns(pl.col("trade_time") + pl.duration(microseconds=pl.Series(offsets)))
    # Trades 1 and 400 us before each window's start: epoch_ms would put the second in it.
    starts = [T0 + 7_200_000 + k * every for k in range(1, 120_000 // every)]
    edge = pl.Series([(s * 1000 - d) for s in starts for d in (1, 400)]).cast(pl.Datetime("us"))
    t = (
        pl.concat([t, t.head(len(edge)).with_columns(trade_time=edge.dt.replace_time_zone("UTC"))])
        .sort("trade_time", maintain_order=True)
        .with_columns(trade_id=pl.int_range(1, pl.len() + 1))  # ids in time order, as Binance's
    )
    write_store(tmp_path, "SIMUSDT", t)
    index, con = open_store(tmp_path, "SIMUSDT"), connect(tmp_path)
    for start in (T0 + 7_200_000, T0 + 7_200_000 + every, T0 + 7_200_000 + 3 * every + 1):
        end = T0 + 7_200_000 + 120_000
        w = build_windows(index, [every], start, end)[every]
        d = con.sql(f"SELECT * FROM tw_windows('simusdt', {every}, {start}, {end})").pl()
        assert (
            w["trade_count"].sum()
            == t.filter(pl.col("trade_time").dt.epoch("ms") >= start // every * every).height
        )
        assert_same_windows(w, d)


def test_sql_windows_take_integer_arguments(tmp_path):
    """DuckDB types small literals INTEGER (a range in January 1970): the macro's bounds in
    microseconds must not overflow them."""
    t = tape(0, 3600, 1, seed=1)
    write_store(tmp_path, "SIMUSDT", t)
    q = "SELECT sum(trade_count), count(*) FROM tw_windows('simusdt', 3600000, 0, 3600000)"
    assert connect(tmp_path).sql(q).fetchall() == [(t.height, 1)]


def assert_same_windows(w: pl.DataFrame, d: pl.DataFrame) -> None:
    """The Polars build ``w`` equals the SQL build ``d``: exactly where no sum is involved."""
    assert w.columns == [*d.columns, "gap"]
    assert w["window_start"].to_list() == d["window_start"].to_list()
    exact = ["trade_count", "open", "high", "low", "close", "parkinson_variance"]
    assert w.select(exact).equals(d.select(exact).cast(w.select(exact).schema))  # type: ignore[arg-type]
    # Sums of positive terms in another order: equal to the last few bits.
    a, b = w["realized_variance"].to_numpy(), d["realized_variance"].to_numpy()
    assert (abs(a - b) <= 1e-12 * b).all()
    for c in [
        "volume",
        "quote_volume",
        "avg_trade_size",
        "return",
        "volatility",
        "vwap",
        "buy_volume",
    ]:
        a, b = w[c].to_numpy(), d[c].cast(pl.Float64).to_numpy()
        both_null = np.isnan(a) & np.isnan(b)
        # Sums in another order differ in the last bits; prices are ~6e4, so scale by them.
        assert (both_null | (abs(a - b) <= 1e-9 * (abs(b) + 1e-3))).all(), c


def test_one_scan_serves_every_size_and_preserves_totals(two_day_store):
    index = open_store(two_day_store, "SIMUSDT")
    built = build_windows(index, EVERIES[1:])
    trades = pl.read_parquet(list(two_day_store.glob("trades/**/trades.parquet")))
    for every, w in built.items():
        assert w["trade_count"].sum() == trades.height, every
        assert w["volume"].sum() == pytest.approx(trades["qty"].sum(), rel=1e-9)
        assert (
            w.filter(pl.col("trade_count") > 0)["window_start"].min() <= trades["trade_time"].min()
        )
    alone = build_windows(index, [7_000])[7_000]
    assert alone.equals(built[7_000])


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seconds=st.integers(1, 5000), every_s=st.integers(1, 900), seed=st.integers(0, 99))
def test_windows_preserve_trade_count_and_volume(tmp_path_factory, seconds, every_s, seed):
    root = tmp_path_factory.mktemp("prop")
    t = tape(T0 + DAY - 1800_000, seconds, 3, seed)
    if t.is_empty():
        return
    write_store(root, "SIMUSDT", t)
    w = build_windows(open_store(root, "SIMUSDT"), [every_s * 1000])[every_s * 1000]
    assert w["trade_count"].sum() == t.height
    assert w["volume"].sum() == pytest.approx(t["qty"].sum(), rel=1e-9)
    assert (w["window_start"].dt.epoch("ms") % (every_s * 1000) == 0).all()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seconds=st.integers(1, 3000), every_s=st.integers(1, 600), seed=st.integers(0, 99))
def test_polars_and_duckdb_agree_on_any_tape(tmp_path_factory, seconds, every_s, seed):
    root = tmp_path_factory.mktemp("propsql")
    start = T0 + DAY - 1_800_000 + 777
    t = tape(start, seconds, 3, seed)
    if t.is_empty():
        return
    write_store(root, "SIMUSDT", t)
    e, end = every_s * 1000, start + seconds * 1000
    w = build_windows(open_store(root, "SIMUSDT"), [e], start, end)[e]
    d = connect(root).sql(f"SELECT * FROM tw_windows('simusdt', {e}, {start}, {end})").pl()
    assert_same_windows(w, d)


@settings(max_examples=25, deadline=None)
@given(
    seconds=st.integers(1, 2000),
    every_s=st.integers(1, 300),
    seed=st.integers(0, 99),
    power=st.integers(-4, 4),
)
def test_log_volatilities_do_not_depend_on_the_price_level(seconds, every_s, seed, power):
    t = tape(T0, seconds, 3, seed)
    e = every_s * 1000
    hi = T0 + -(-seconds * 1000 // e) * e
    w = window_features(t, e, T0, hi)
    # Prices times a power of 2: every ratio (and so every log return) is exactly the same.
    s = window_features(t.with_columns(pl.col("price") * 2.0**power), e, T0, hi)
    for c in ("realized_variance", "parkinson_variance"):
        assert w[c].to_list() == s[c].to_list(), c
    assert s["volatility"].to_numpy() == pytest.approx(w["volatility"].to_numpy() * 2.0**power)
    assert (w["realized_variance"] >= 0).all() and (w["parkinson_variance"] >= 0).all()
    few = w.filter(pl.col("trade_count") < 2)
    assert (few["realized_variance"] == 0).all() and (few["parkinson_variance"] == 0).all()
    flat = w.filter(pl.col("high") == pl.col("low"))
    assert (flat["realized_variance"] == 0).all() and (flat["parkinson_variance"] == 0).all()
    # One window at a time, as `engine watch` closes them: the same rows (windows are
    # independent: no return reaches back into the previous window). Sums may differ in the
    # last bits (Polars sums a one-window frame in another order).
    exact = ["trade_count", "open", "high", "low", "close", "return", "parkinson_variance"]
    for start in range(T0, hi, e)[:12]:
        one = window_features(t, e, start, start + e)
        batch = w.filter(pl.col("window_start") == one["window_start"][0])
        assert one.select(exact).equals(batch.select(exact))
        for c in ("realized_variance", "volatility", "volume", "buy_volume"):
            assert one[c].to_numpy() == pytest.approx(batch[c].to_numpy(), rel=1e-12, abs=0), c


def test_open_hour_ndjson_is_read_and_deduplicated(tmp_path, frames_2024):
    """A store straight from the recorder: NDJSON only, one trade stored twice."""
    from test_store import write_frames

    write_frames(tmp_path, frames_2024[:3000] + frames_2024[2990:3000])
    w = build_windows(open_store(tmp_path, "BTCUSDT"), [20_000])[20_000]
    assert w["trade_count"].sum() == 3000 == stored_rows(tmp_path)["trade_id"].n_unique()
    assert layout.hour_dirs(tmp_path)


@settings(max_examples=20, deadline=None)
@given(
    seconds=st.integers(1, 4000),
    fine_s=st.sampled_from([1, 2, 5, 10, 20]),
    factors=st.lists(st.integers(2, 40), min_size=1, max_size=3),
    seed=st.integers(0, 99),
    offset=st.integers(0, 59_999),
    power=st.integers(-3, 3),
)
def test_rolled_up_windows_equal_windows_built_from_the_trades(
    tmp_path_factory, seconds, fine_s, factors, seed, offset, power
):
    """A sweep builds the finest size from the trades and rolls the sizes it divides up
    from it: the same table as building each size alone, up to the order of sums."""
    root = tmp_path_factory.mktemp("rollup")
    start = T0 + DAY - 1_800_000 + offset
    t = tape(start, seconds, 3, seed).with_columns(pl.col("price") * 2.0**power)
    if t.is_empty():
        return
    write_store(root, "SIMUSDT", t)
    index = open_store(root, "SIMUSDT")
    sizes = [fine_s * 1000] + [fine_s * 1000 * f for f in factors]
    end = start + seconds * 1000
    for lo, hi in ((start, end), (None, None)):
        swept = build_windows(index, sizes, lo, hi)
        for e in sizes:
            alone = build_windows(index, [e], lo, hi)[e]
            assert_rolled_up_equal(swept[e], alone)


def test_rolled_up_flat_windows_stay_exactly_flat(tmp_path):
    """Every trade at one price: a coarse window's volatility and variances are exactly 0,
    as the direct build's are (means taken about the window's open, not about 0)."""
    t = tape(T0 + 3_600_000, 900, 4, 1).with_columns(pl.lit(61_234.57).alias("price"))
    write_store(tmp_path, "SIMUSDT", t)
    swept = build_windows(open_store(tmp_path, "SIMUSDT"), [1_000, 60_000])
    coarse = swept[60_000].filter(pl.col("trade_count") > 1)
    assert coarse.height > 10
    for c in ("volatility", "realized_variance", "parkinson_variance", "return"):
        assert (coarse[c] == 0).all(), c


def assert_rolled_up_equal(rolled: pl.DataFrame, alone: pl.DataFrame) -> None:
    assert rolled.columns == alone.columns
    exact = ["window_start", "trade_count", "open", "high", "low", "close"]
    exact += ["parkinson_variance", "return", "gap"]
    assert rolled.select(exact).equals(alone.select(exact))
    for c in [
        "volume",
        "quote_volume",
        "buy_volume",
        "realized_variance",
        "vwap",
        "avg_trade_size",
    ]:
        a, b = rolled[c].to_numpy(), alone[c].to_numpy()
        assert (np.isnan(a) & np.isnan(b) | (abs(a - b) <= 1e-12 * abs(b))).all(), c
    a, b = rolled["volatility"].to_numpy(), alone["volatility"].to_numpy()
    # The prices' spread is tiny next to their level: combining means costs a few digits.
    scale = alone["close"].fill_null(0.0).to_numpy()
    assert (abs(a - b) <= 1e-9 * b + 1e-13 * scale).all()
    assert ((a == 0) == (b == 0)).all()
