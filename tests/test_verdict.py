"""The answer in words: the headline sentence, the per-horizon table, `engine verdict`."""

from __future__ import annotations

import orjson
from click.testing import CliRunner

from engine.cli import main
from engine.verdict import by_horizon, headline


def row(h, flag, verdict, effect=1.0, p=0.5, lo=0.9, hi=1.1, metric="log_rv", dm_p=None):
    return {"horizon": h, "flag": flag, "metric": metric, "effect": effect, "effect_ci_low": lo,
            "effect_ci_high": hi, "p_value": p, "p_bh": p, "oos_r2_gain": 0.01,
            "verdict": verdict, "dm_p": dm_p}  # fmt: skip


NO = "no evidence beyond volatility"
ADDS = "adds information"


def ev(*rows):
    return {"rows": list(rows), "comparisons": len(rows), "ledger_comparisons": 40}


def test_no_names_the_closest_horizon():
    e = ev(row("1m", "model", NO, 0.98, 0.69), row("5m", "model", NO, 1.18, 0.07, 0.97, 1.45))
    assert headline(e) == (
        "No evidence that the flag says more about the next moves than a volatility "
        "forecast built from the same information (closest: 5m, 1.18x [0.97, 1.45], p 0.07, "
        "before adjusting for the run's 2 comparisons)."
    )


def test_yes_names_every_horizon_and_the_strongest():
    e = ev(
        row("1m", "model", ADDS, 1.3, 0.001, 1.1, 1.5),
        row("5m", "model", ADDS, 1.9, 0.002, 1.5, 2.4),
        row("15m", "model", NO, 1.1, 0.2),
        row("5m", "model", NO, 9.9, 0.9, metric="log_abs_return_sum"),  # not the primary metric
    )
    e["rows"][1]["p_bh"] = 0.004
    assert headline(e) == (
        "Yes: after a flagged window the next 1m, 5m move more than a volatility forecast "
        "built from the same information accounts for (strongest: 5m, 1.90x [1.50, 2.40], "
        "adjusted p 0.004, Benjamini-Hochberg over this run)."
    )


def test_a_competitor_that_adds_information_is_said():
    e = ev(
        row("5m", "model", NO, 1.10, 0.11),
        row("5m", "trade_count_z", ADDS, 1.33, 0.003, 1.1, 1.6, dm_p=0.9),
        row("5m", "abs_return_z", NO, 1.05, 0.3, dm_p=0.2),
    )
    assert headline(e).endswith(
        "A one-line trade_count_z flag at the same rate does (5m: 1.33x [1.10, 1.60], "
        "adjusted p 0.003)."
    )
    (h,) = by_horizon(e)
    assert (h["horizon"], h["effect"], h["verdict"]) == ("5m", 1.10, NO)
    assert (h["best_competitor"], h["competitor_effect"], h["dm_p_model_better"]) == (
        "trade_count_z",
        1.33,
        0.9,
    )


def test_too_little_data():
    e = ev(row("5m", "model", "too little data", None, None, None, None))
    assert headline(e).startswith("Too little data to tell:")


def test_engine_verdict_prints_the_answer_of_a_results_folder(tmp_path):
    e = ev(row("5m", "model", NO, 1.02, 0.35))
    (tmp_path / "evaluate.json").write_bytes(orjson.dumps(e))
    r = CliRunner().invoke(main, ["verdict", "--results", str(tmp_path)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("VERDICT: No evidence that the flag says more")
    assert lines[1].split() == [
        "horizon", "effect", "ci_low", "ci_high", "p_value", "p_bh", "oos_r2_gain", "verdict",
        "best_competitor", "competitor_effect", "dm_p_model_better",
    ]  # fmt: skip
    assert lines[-1] == (
        "(1 comparisons in this run, 40 on this store so far: the more are run, the more will "
        "look significant by chance)"
    )
    (tmp_path / "evaluate.json").write_bytes(b"{")
    r = CliRunner().invoke(main, ["verdict", "--results", str(tmp_path)])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "evaluate.json is missing or damaged" in r.stderr
    assert r.stderr.endswith("rerun `engine run`\n") and r.stderr.count("\n") == 1
