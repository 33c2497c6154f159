"""Walk-forward Isolation Forest: each window scored only by a model trained on its past.

Scoreable windows are those with trades and no gap; they are numbered 0, 1, 2, ... in time.
Refit ``k`` trains on scoreable windows ``[s_k - buffer, s_k)`` with ``s_k = buffer + k *
retrain_every`` and scores windows ``[s_k, s_k + retrain_every)``. Every training window ended
before any window it scores began, so nothing from the future reaches a score. Features are
standardized on the training windows only. Refits are independent, so they run in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from engine.errors import InputError

__all__ = [
    "DEFAULT_FEATURES",
    "Fitted",
    "ModelParams",
    "fit",
    "fit_score",
    "scoreable",
    "walk_forward",
]

from engine import config

DEFAULT_FEATURES = config.FEATURES
BACKENDS = ("sklearn", "numpy")
ALL_FEATURES = (
    "trade_count",
    "volume",
    "quote_volume",
    "avg_trade_size",
    "return",
    "volatility",
    "vwap",
    "buy_volume",
)


@dataclass(frozen=True)
class ModelParams:
    buffer: int = config.BUFFER
    retrain_every: int = config.RETRAIN_EVERY
    contamination: float = config.CONTAMINATION
    trees: int = config.TREES
    seed: int = config.SEED
    features: tuple[str, ...] = DEFAULT_FEATURES
    backend: str = config.BACKEND

    def __post_init__(self) -> None:
        bad = [f for f in self.features if f not in ALL_FEATURES]
        if bad:
            raise InputError(f"unknown feature {bad[0]!r}; choose from {', '.join(ALL_FEATURES)}")
        if self.buffer < 2 or self.retrain_every < 1 or self.trees < 1:
            raise InputError("--buffer must be at least 2, --retrain-every and --trees at least 1")
        if not 0 < self.contamination <= 0.5:
            raise InputError("--contamination must be in (0, 0.5]")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; choose {' or '.join(BACKENDS)}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d


def scoreable() -> pl.Expr:
    """Windows the model trains on and scores: with trades, not touched by a gap."""
    return (pl.col("trade_count") > 0) & ~pl.col("gap")


@dataclass(frozen=True)
class Fitted:
    """One refit: the training set's scaling and the forest trained on it."""

    mean: np.ndarray
    sd: np.ndarray
    forest: Any

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(decision function, prediction -1/1) for rows of ``x``; each row's score does not
        depend on the others, so one window at a time (live) equals a block (batch)."""
        decision = self.forest.decision_function((x - self.mean) / self.sd)
        return decision, np.where(decision < 0, -1, 1)


def fit(train: np.ndarray, p: ModelParams) -> Fitted:
    """Standardize on ``train`` and fit the forest; deterministic for a given seed.

    ``sklearn`` is the reference; ``numpy`` (``engine/iforest.py``) is the same algorithm with
    all trees built at once, several times faster, and not bit-identical."""
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    sd[sd == 0] = 1.0
    z = (train - mean) / sd
    if p.backend == "numpy":
        from engine.iforest import ArrayForest

        return Fitted(mean, sd, ArrayForest(p.trees, p.contamination, p.seed).fit(z))
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(
        n_estimators=p.trees, contamination=p.contamination, random_state=p.seed
    )
    return Fitted(mean, sd, forest.fit(z))


def fit_score(
    train: np.ndarray, score: np.ndarray, p: ModelParams
) -> tuple[np.ndarray, np.ndarray]:
    """One refit: fit on ``train`` (batch path), return (decision, prediction) for ``score``."""
    return fit(train, p).score(score)


def _batch(x: np.ndarray, offset: int, refits: Sequence[tuple[int, int, int, int]], p: ModelParams):
    """Run refits over ``x``, a slice of the feature matrix starting at window ``offset``."""
    out = []
    for k, t0, s0, s1 in refits:
        d, pred = fit_score(x[t0 - offset : s0 - offset], x[s0 - offset : s1 - offset], p)
        out.append((k, s0, d, pred))
    return out


def refit_plan(n: int, p: ModelParams) -> list[tuple[int, int, int, int]]:
    """(refit index, train start, score start, score end) in scoreable-window numbers."""
    return [
        (k, s - p.buffer, s, min(n, s + p.retrain_every))
        for k, s in enumerate(range(p.buffer, n, p.retrain_every))
    ]


def walk_forward(
    windows: pl.DataFrame,
    p: ModelParams,
    jobs: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """``windows`` plus ``score``, ``prediction`` (-1 anomalous, 1 normal) and ``refit``
    (the refit that scored it); null where a window was not scored."""
    ok = windows.select(scoreable()).to_series()
    x = windows.filter(ok).select(p.features).to_numpy().astype(np.float64)
    n = len(x)
    if n <= p.buffer:
        raise InputError(
            f"fewer windows than the buffer: {n} scoreable windows, --buffer {p.buffer} needs "
            "more; give a longer time range or a smaller --buffer"
        )
    plan = refit_plan(n, p)
    score = np.full(n, np.nan)
    pred = np.zeros(n, dtype=np.int8)
    refit = np.full(n, -1, dtype=np.int64)
    size = max(1, min(200, len(plan) // (jobs * 4)))
    batches = [plan[i : i + size] for i in range(0, len(plan), size)]
    # Each batch gets only the rows its refits read, not the whole matrix.
    calls = [(x[b[0][1] : b[-1][3]], b[0][1], b, p) for b in batches]
    if jobs > 1 and len(batches) > 1:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=jobs, return_as="generator")(delayed(_batch)(*c) for c in calls)
    else:
        results = (_batch(*c) for c in calls)
    done = 0
    for res in results:
        for k, s0, d, pr in res:
            score[s0 : s0 + len(d)] = d
            pred[s0 : s0 + len(d)] = pr
            refit[s0 : s0 + len(d)] = k
        done += len(res)
        if progress:
            progress(done, len(plan))
    scored = refit >= 0
    cols = pl.DataFrame(
        {
            "_i": np.flatnonzero(ok.to_numpy()).astype(np.uint32),
            "score": pl.Series(np.where(scored, score, np.nan)).fill_nan(None),
            "prediction": pl.Series(pred, dtype=pl.Int8),
            "refit": pl.Series(refit, dtype=pl.Int64),
        }
    ).filter(pl.col("refit") >= 0)
    return windows.with_row_index("_i").join(cols, on="_i", how="left").drop("_i")
