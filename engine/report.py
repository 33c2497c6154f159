"""One self-contained HTML file per results folder: parameters, coverage and gaps, the flag
rate and where it falls, the comparison table with intervals and the adjusted ratio,
the plots (embedded), and against simulated data, the detection scores. No network needed."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from engine.errors import DataError
from engine.results import HorizonTable

__all__ = ["write_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.note{color:#555}.warn{color:#a40}img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
tr.sig td{background:#fff6e0}.scroll{overflow-x:auto}
"""


# Records on <body> how many embedded images decoded (a browser test reads it; harmless).
_LOADED = (
    "<script>addEventListener('load',()=>{document.body.dataset.imagesLoaded="
    "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length});</script>"
)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], cols: list[str], left: set[str], cls=None) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{html.escape(c)}</th>' for c in cols)
    body = []
    for r in rows:
        k = cls(r) if cls else ""
        cells = "".join(
            f'<td class="{"l" if c in left else ""}">{_fmt(r.get(c))}</td>' for c in cols
        )
        body.append(f'<tr class="{k}">{cells}</tr>')
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _verdict_section(ev: dict[str, Any]) -> str:
    """The answer first: the sentence, the per-horizon table, and how many tests were run."""
    from engine.verdict import by_horizon, headline

    rows = by_horizon(ev)
    cols = [
        "horizon", "effect", "ci_low", "ci_high", "p_value", "p_bh", "oos_r2_gain",
        "verdict", "best_competitor", "competitor_effect", "dm_p_model_better",
    ]  # fmt: skip
    ledger = ev.get("ledger_comparisons")
    count = (
        f"{ev['comparisons']} comparisons in this run"
        + ("" if ledger is None else f", {ledger} on this store so far")
        + ": the more comparisons are run on one store, the more will look significant by chance."
    )
    return (
        f'<h2>Verdict</h2><p id="verdict"><b>{html.escape(headline(ev))}</b></p>'
        + _table(rows, cols, {"horizon", "verdict", "best_competitor"},
                 lambda r: "sig" if r["verdict"] == "adds information" else "")
        + '<p class="note">effect: how many times the realized variance over the horizon after a '
        "flagged window exceeds what a walk-forward volatility forecast (HAR-RV with activity "
        "and time of day, from the same information the detector sees) expects; interval: "
        "Newey-West; p_value: rotation test (flags shifted by a day or more, keeping their "
        "clustering), one-sided; p_bh: Benjamini-Hochberg over this run; oos_r2_gain: out-of-"
        "sample gain of the forecast with the flag; best_competitor: the z-score flag at the "
        "same rate with the largest effect; dm_p_model_better: Diebold-Mariano (HLN) p that "
        f"the model forecasts better than it. {html.escape(count)} All rows: evaluate.csv.</p>"
    )  # fmt: skip


def write_report(results: Path, out: Path | None = None) -> Path:
    """Write ``results/report.html`` (or ``out``) from a folder ``engine run`` wrote."""
    if (results / "summary.json").exists() and not (results / "horizons.json").exists():
        raise DataError(
            f"{results} holds the pooled verdict of `engine run --symbols`, which "
            "`engine verdict --results` prints; a report is per symbol: "
            f"give --results {results.parent}/SYMBOL-EVERY"
        )
    try:
        report = HorizonTable.from_dict(orjson.loads((results / "horizons.json").read_bytes()))
        scores = pl.read_parquet(results / "scores.parquet")
    except (FileNotFoundError, orjson.JSONDecodeError) as e:
        raise DataError(f"{results} is not a results folder of `engine run` ({e})") from None
    p = report.parameters
    scored = scores.filter(pl.col("prediction").is_not_null())
    first, last = scores["window_start"].min(), scores["window_start"].max()
    parts = [f"<h1>tapewatch: {html.escape(p['symbol'])}, {html.escape(p['every'])} windows</h1>"]
    sim = report.detection
    if sim is not None:
        parts.append(
            '<p class="warn"><b>Simulated data.</b> These trades come from <code>engine simulate</code>, not from an exchange.</p>'
        )
    ev = report.evaluate
    if ev is not None:
        parts.append(_verdict_section(ev))
    parts.append("<h2>Parameters</h2>")
    params = [
        {"parameter": k, "value": orjson.dumps(v).decode() if isinstance(v, dict | list) else v}
        for k, v in p.items()
    ]
    parts.append(_table(params, ["parameter", "value"], {"parameter", "value"}))
    parts.append("<h2>Data coverage and gaps</h2>")
    cov: list[dict[str, Any]] = [
        {"item": "first window", "value": str(first)},
        {"item": "last window", "value": str(last)},
        {"item": "windows", "value": scores.height},
        {"item": "windows with trades", "value": int((scores["trade_count"] > 0).sum())},
        {"item": "gap windows (not scored)", "value": int(scores["gap"].sum())},
        {"item": "trades", "value": int(scores["trade_count"].sum())},
        {"item": "scored windows", "value": scored.height},
    ]
    parts.append(_table(cov, ["item", "value"], {"item"}))
    parts.append("<h2>Flag rate</h2>")
    by_hour = (
        scored.group_by(pl.col("window_start").dt.hour().alias("hour_utc"))
        .agg(pl.len().alias("scored"), (pl.col("prediction") == -1).mean().alias("flag_rate"))
        .sort("hour_utc")
    )
    parts.append(
        f"<p>Realized flag rate: <b>{report.flag_rate:.2%}</b> of {scored.height} scored windows "
        f"(contamination {p['model']['contamination']} is the training-set share, not a promise about new windows).</p>"
    )
    parts.append(_table(by_hour.to_dicts(), ["hour_utc", "scored", "flag_rate"], set()))
    parts.append("<h2>Do flagged windows precede larger moves?</h2>")
    if p.get("baseline_lookahead"):
        parts.append(
            '<p class="warn">Volatility baseline over the full sample: look-ahead, kept only to reproduce the prototype.</p>'
        )
    parts.append(
        f"<p class='note'>{report.comparisons} comparisons. p_naive is a Mann-Whitney p-value that "
        "takes the windows as independent samples; overlapping horizons and clustered volatility make "
        "it overstate confidence, so it is shown, not trusted (p_naive_bh: Benjamini-Hochberg over the table). "
        "ci_low..ci_high: 95 % circular block bootstrap for ratio_mean, blocks of `block` windows "
        "(Politis-White, at least twice the horizon). ratio_adjusted compares if_only windows with normal "
        "windows alike in trailing volatility and activity (5 min, 30 min, 6 h), their own volatility and "
        "trade count, and time of day (propensity quintiles, odds-weighted); overlap is the share of the "
        "group it covers. Near 1 means the flag adds nothing beyond those. vol_only and both have none: "
        "they are defined by the window's own volatility. Highlighted: adj_ci_low above 1.</p>"
    )
    cols = [
        "horizon",
        "metric",
        "group",
        "n",
        "mean",
        "median",
        "ratio_mean",
        "ci_low",
        "ci_high",
        "ratio_median",
        "block",
        "p_naive",
        "p_naive_bh",
        "ratio_adjusted",
        "adj_ci_low",
        "adj_ci_high",
        "overlap",
    ]
    parts.append(
        _table(
            report.rows,
            cols,
            {"horizon", "metric", "group"},
            cls=lambda r: "sig" if (r.get("adj_ci_low") or 0) > 1 else "",
        )
    )
    if sim is not None:
        parts.append("<h2>Detection against the simulation's ground truth</h2>")
        parts.append(
            f"<p>Anticipation: an alarm (a detection episode's first window end plus {_fmt(sim.get('grace_s'))} s) "
            f"at most {sim['tolerance_s']:.0f} s before the event. Precision {_fmt(sim.get('precision'))} "
            f"(chance {_fmt(sim.get('precision_chance'))}, p {_fmt(sim.get('p_precision'))}), "
            f"recall {_fmt(sim.get('recall'))} (chance {_fmt(sim.get('recall_chance'))}, p {_fmt(sim.get('p_recall'))}), "
            f"median lead {_fmt(sim.get('median_lead_s'))} s (chance {_fmt(sim.get('median_lead_chance_s'))} s, p {_fmt(sim.get('p_lead'))}); "
            f"{sim['episodes']} detection episodes, {sim['events']} events, {sim.get('late', 0)} flagged only after they happened. "
            f"Chance and p: the flags rotated against the events {sim.get('shifts', 0)} times.</p>"
        )
        kinds = [{"kind": k, **v} for k, v in sim.get("by_kind", {}).items()]
        parts.append(
            _table(
                kinds,
                [
                    "kind",
                    "events",
                    "found",
                    "recall",
                    "recall_chance",
                    "p_recall",
                    "median_lead_s",
                    "late",
                ],
                {"kind"},
            )
        )
    parts.append("<h2>Plots</h2>")
    for png in sorted((results / "plots").glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(
            f'<figure><img alt="{png.stem}" src="data:image/png;base64,{data}"><figcaption>{png.stem}</figcaption></figure>'
        )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>tapewatch {html.escape(p['symbol'])} {html.escape(p['every'])}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(parts)}{_LOADED}</body></html>\n"
    )
    target = out or results / "report.html"
    target.write_text(page)
    return target
