"""The plots of a run: a year of windows is thinned to what the picture can show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from engine.plots import _thinned


def windows(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    close = 60_000 + np.cumsum(rng.normal(0, 5, n))
    close[rng.random(n) < 0.1] = np.nan  # empty windows: no close
    pred = np.where(rng.random(n) < 0.05, -1, 1)
    return pl.DataFrame(
        {
            "window_start": pl.datetime_range(
                datetime(2025, 1, 1, tzinfo=UTC),
                datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=20 * (n - 1)),
                "20s",
                eager=True,
            ).cast(pl.Datetime("us", "UTC")),
            "close": pl.Series(close).fill_nan(None),
            "prediction": pl.Series(pred, dtype=pl.Int8),
        }
    )


def test_a_year_of_windows_is_thinned_to_its_envelope():
    w = windows(1_576_800)
    line, flags = _thinned(w, 2400)
    closes = w["close"].forward_fill().drop_nulls()
    assert line.height <= 2 * 2400 + 2 and flags.height <= 2400 + 1
    assert line["close"].min() == closes.min() and line["close"].max() == closes.max()
    assert line["t"].is_sorted()
    assert flags["t"].is_in(w.filter(pl.col("prediction") == -1)["window_start"].implode()).all()
    assert flags.height > 2000  # 5 % flagged: nearly every bucket has one


def test_a_short_run_keeps_every_window():
    w = windows(300, seed=1)
    line, flags = _thinned(w, 2400)
    kept = w.with_columns(pl.col("close").forward_fill()).drop_nulls("close")
    assert sorted(set(line["t"].to_list())) == kept["window_start"].to_list()
    assert flags["t"].to_list() == kept.filter(pl.col("prediction") == -1)["window_start"].to_list()
