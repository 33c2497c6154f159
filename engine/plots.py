"""PNG plots of a run: ratios by horizon, price with flags, score distribution, flags by hour."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.results import HorizonTable

__all__ = ["write_plots"]


def write_plots(scored: pl.DataFrame, report: HorizonTable, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = pl.DataFrame(report.rows)
    horizons = report.parameters["horizons"]
    colors = {"vol_only": "tab:orange", "if_only": "tab:blue", "both": "tab:red"}

    metrics = rows["metric"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (group, color) in enumerate(colors.items()):
            g = rows.filter((pl.col("metric") == metric) & (pl.col("group") == group))
            x = [horizons.index(h) + (i - 1) * 0.12 for h in g["horizon"]]
            y = g["ratio_mean"].to_list()
            lo = [
                (a - b) if a is not None and b is not None else 0
                for a, b in zip(y, g["ci_low"], strict=True)
            ]
            hi = [
                (b - a) if a is not None and b is not None else 0
                for a, b in zip(y, g["ci_high"], strict=True)
            ]
            yv = [v if v is not None else float("nan") for v in y]
            ax.errorbar(x, yv, yerr=[lo, hi], fmt="o", color=color, label=group, capsize=3)
        ax.axhline(1.0, color="grey", lw=1, ls="--")
        ax.set_xticks(range(len(horizons)), horizons)
        ax.set_title(f"{metric}: mean move vs normal (95% block bootstrap)")
        ax.set_xlabel("horizon")
        ax.set_ylabel("ratio to normal")
        ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, out / "ratio_by_horizon.png"))

    fig, ax = plt.subplots(figsize=(12, 4))
    line, flags = _thinned(scored, 2 * 1200)
    ax.plot(line["t"].to_numpy(), line["close"].to_numpy(), lw=0.7, color="black")
    ax.scatter(
        flags["t"].to_numpy(), flags["close"].to_numpy(), s=8, color="tab:red", label="flagged"
    )
    ax.set_title("price (window close) with flagged windows")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, out / "price_flags.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scored["score"].drop_nulls().to_numpy(), bins=60, color="tab:blue")
    ax.axvline(0.0, color="tab:red", lw=1)
    ax.set_title("score distribution (below 0: anomalous)")
    fig.tight_layout()
    paths.append(_save(fig, out / "score_distribution.png"))

    by_hour = (
        scored.filter(pl.col("prediction").is_not_null())
        .group_by(pl.col("window_start").dt.hour().alias("hour"))
        .agg((pl.col("prediction") == -1).mean().alias("rate"))
        .sort("hour")
    )
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(by_hour["hour"].to_list(), by_hour["rate"].to_list(), color="tab:blue")
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("flag rate")
    ax.set_title("flag rate by hour of day")
    fig.tight_layout()
    paths.append(_save(fig, out / "flag_rate_by_hour.png"))
    return paths


def _thinned(scored: pl.DataFrame, points: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The close line and the flagged windows, at most ``points`` buckets of time each (a
    year of 20 s windows is 1.6 M points on a 1,200-pixel plot): per bucket the lowest and
    the highest close, in time order, so the envelope is drawn exactly, and the first
    flagged window per bucket."""
    w = scored.select("window_start", pl.col("close").forward_fill(), "prediction").drop_nulls(
        "close"
    )
    if w.is_empty():
        empty = pl.DataFrame(schema={"t": pl.Datetime("us", "UTC"), "close": pl.Float64})
        return empty, empty
    span_us = (w["window_start"][-1] - w["window_start"][0]).total_seconds() * 1e6
    bucket = max(1, int(span_us // points) + 1)
    w = w.with_columns(b=pl.col("window_start").dt.epoch("us") // bucket)
    ends = w.group_by("b", maintain_order=True).agg(
        pl.col("window_start").get(pl.col("close").arg_min()).alias("t_lo"),
        pl.col("close").min().alias("lo"),
        pl.col("window_start").get(pl.col("close").arg_max()).alias("t_hi"),
        pl.col("close").max().alias("hi"),
    )
    line = pl.concat(
        [
            ends.select(t="t_lo", close="lo"),
            ends.select(t="t_hi", close="hi"),
        ]
    ).sort("t")
    flags = (
        w.filter(pl.col("prediction") == -1)
        .group_by("b", maintain_order=True)
        .agg(pl.col("window_start").first().alias("t"), pl.col("close").first())
        .select("t", "close")
    )
    return line, flags


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
