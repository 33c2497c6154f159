"""The answer in words: one plain sentence and a small table per horizon, from an evaluation
(``Evaluation.as_dict()``, as ``engine run`` writes it to ``evaluate.json``). Pure.

    No evidence that the flag says more about the next moves than a volatility forecast built
    from the same information (closest: 5m, 1.03x [0.95, 1.10], p 0.29).
"""

from __future__ import annotations

from typing import Any

__all__ = ["by_horizon", "headline"]

ADDS = "adds information"
TOO_LITTLE = "too little data"


def _primary(ev: dict[str, Any]) -> list[dict[str, Any]]:
    metric = ev["rows"][0]["metric"] if ev["rows"] else None
    return [r for r in ev["rows"] if r["metric"] == metric]


def _effect(r: dict[str, Any], p_key: str = "p_value") -> str:
    if r.get("effect") is None:
        return "n/a"
    lo, hi = r.get("effect_ci_low"), r.get("effect_ci_high")
    ci = "" if lo is None or hi is None else f" [{lo:.2f}, {hi:.2f}]"
    name = "adjusted p" if p_key == "p_bh" else "p"
    p = "" if r.get(p_key) is None else f", {name} {r[p_key]:.2g}"
    return f"{r['effect']:.2f}x{ci}{p}"


def headline(ev: dict[str, Any]) -> str:
    """One sentence: does the model's flag tell anything a volatility forecast does not?"""
    rows = _primary(ev)
    model = [r for r in rows if r["flag"] == "model"]
    if not model or all(r["verdict"] == TOO_LITTLE for r in model):
        return (
            "Too little data to tell: the flag needs more flagged windows and more history "
            "than this run has."
        )
    found = [r for r in model if r["verdict"] == ADDS]
    rivals = [r for r in rows if r["flag"] != "model" and r["verdict"] == ADDS]
    rival = ""
    if rivals:
        best = max(rivals, key=lambda r: r["effect"] or 0)
        rival = (
            f" A one-line {best['flag']} flag at the same rate does ({best['horizon']}: "
            f"{_effect(best, 'p_bh')})."
        )
    if found:
        best = max(found, key=lambda r: r["effect"] or 0)
        where = ", ".join(r["horizon"] for r in found)
        return (
            f"Yes: after a flagged window the next {where} move more than a volatility "
            f"forecast built from the same information accounts for (strongest: "
            f"{best['horizon']}, {_effect(best, 'p_bh')}, Benjamini-Hochberg over this "
            f"run).{rival}"
        )
    close = min(
        (r for r in model if r.get("p_value") is not None),
        key=lambda r: r["p_value"],
        default=model[0],
    )
    return (
        "No evidence that the flag says more about the next moves than a volatility "
        f"forecast built from the same information (closest: {close['horizon']}, "
        f"{_effect(close)}, before adjusting for the run's {ev.get('comparisons', '?')} "
        f"comparisons).{rival}"
    )


def by_horizon(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """Per horizon: the model's effect, interval, p-values, out-of-sample gain and verdict,
    and how it compares with the competitor flags (best competitor, Diebold-Mariano p)."""
    rows = _primary(ev)
    out = []
    for r in (r for r in rows if r["flag"] == "model"):
        rivals = [c for c in rows if c["horizon"] == r["horizon"] and c["flag"] != "model"]
        best = max(rivals, key=lambda c: c.get("effect") or 0, default=None)
        out.append(
            {
                "horizon": r["horizon"],
                "effect": r.get("effect"),
                "ci_low": r.get("effect_ci_low"),
                "ci_high": r.get("effect_ci_high"),
                "p_value": r.get("p_value"),
                "p_bh": r.get("p_bh"),
                "oos_r2_gain": r.get("oos_r2_gain"),
                "verdict": r["verdict"],
                "best_competitor": None if best is None else best["flag"],
                "competitor_effect": None if best is None else best.get("effect"),
                "dm_p_model_better": None if best is None else best.get("dm_p"),
            }
        )
    return out
