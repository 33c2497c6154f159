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

from engine.errors import DataError, InputError

__all__ = [
    "DEFAULT_FEATURES",
    "Fitted",
    "ModelParams",
    "RefitBatch",
    "WalkForward",
    "WalkForwardFeed",
    "fit",
    "fit_score",
    "plan_walk_forward",
    "run_batch",
    "scoreable",
    "scored_windows",
    "walk_forward",
]

from engine import config

DEFAULT_FEATURES = config.FEATURES
BACKENDS = config.BACKENDS
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
        if self.buffer < 3 or self.retrain_every < 1 or self.trees < 1:
            # isotree needs 3 training rows; one floor for both backends.
            raise InputError("--buffer must be at least 3, --retrain-every and --trees at least 1")
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


class _Isotree:
    """isotree's Isolation Forest (C++) set up as scikit-learn's, with its decision function.

    Same algorithm (Liu, Ting and Zhou 2008) and the same settings as scikit-learn's
    ``IsolationForest`` with ``max_samples="auto"``: ``trees`` trees, each on ``min(256, n)``
    rows drawn without replacement, grown to depth ``ceil(log2(subsample))``; a node splits on
    a feature drawn at random among those not constant in it, at a threshold drawn uniformly
    between its minimum and maximum; a row's path is its leaf's depth plus the expected depth
    of the rows left in the leaf. No guided splits, range penalties or other extensions.
    isotree's score is ``2 ** (-mean path / c(subsample))``, higher = more anomalous, so
    scikit-learn's ``score_samples`` is its negative; the offset is the ``contamination``
    quantile of the training rows' scores and ``decision_function = score_samples - offset``
    (negative = anomalous). The random draws differ from scikit-learn's, so scores are not
    bit-identical: ``bench/model_bench.py`` measures the agreement."""

    def __init__(self, p: ModelParams, n: int):
        import isotree

        self.forest = isotree.IsolationForest(
            ntrees=p.trees,
            sample_size=min(256, n),
            max_depth="auto",  # ceil(log2(sample_size)), as scikit-learn
            ndim=1,  # axis-parallel splits (the extended model is ndim > 1)
            ntry=1,
            prob_pick_pooled_gain=0.0,  # no guided splits: column and threshold at random
            prob_pick_avg_gain=0.0,
            prob_pick_full_gain=0.0,
            prob_pick_dens=0.0,
            prob_pick_col_by_range=0.0,  # columns uniformly, not by range, variance, kurtosis
            prob_pick_col_by_var=0.0,
            prob_pick_col_by_kurt=0.0,
            weigh_by_kurtosis=False,
            penalize_range=False,
            scoring_metric="depth",
            sample_with_replacement=False,
            # Rows are finite (checked); "fail" takes isotree's fastest prediction path.
            missing_action="fail",
            random_seed=p.seed,
            nthreads=1,  # refits run in parallel, not the trees of one
        )
        self.contamination = p.contamination

    def fit(self, z: np.ndarray) -> _Isotree:
        _check_finite(z)  # "fail" is undefined behaviour on NaN: check before isotree sees it
        self.forest.fit(np.asfortranarray(z))  # isotree fits on column-major data
        self.offset_ = float(np.percentile(self.score_samples(z), 100.0 * self.contamination))
        return self

    def score_samples(self, z: np.ndarray) -> np.ndarray:
        """Minus isotree's score of each row (row-major input: its fastest path)."""
        _check_finite(z)
        return -self.forest.predict(np.ascontiguousarray(z))

    def decision_function(self, z: np.ndarray) -> np.ndarray:
        return self.score_samples(z) - self.offset_


def _check_finite(z: np.ndarray) -> None:
    if not np.isfinite(z).all():
        raise DataError("a window feature is NaN or infinite; rebuild the windows")


def fit(train: np.ndarray, p: ModelParams) -> Fitted:
    """Standardize on ``train`` and fit the forest; deterministic for a given seed.

    ``sklearn`` is the reference; ``isotree`` is the same algorithm in C++ with its own random
    draws, many times faster, and not bit-identical (``_Isotree``)."""
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    sd[sd == 0] = 1.0
    z = (train - mean) / sd
    if p.backend == "isotree":
        return Fitted(mean, sd, _Isotree(p, len(z)).fit(z))
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


@dataclass(frozen=True)
class RefitBatch:
    """Consecutive refits of one series with only the rows they read (``x`` starts at
    scoreable window ``offset``): a task an executor can ship anywhere. ``name`` names the
    series and the refits, for an error."""

    x: np.ndarray
    offset: int
    refits: tuple[tuple[int, int, int, int], ...]
    params: ModelParams
    name: str = ""


def run_batch(batch: RefitBatch) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """A batch's refits: (refit, first scored window, decision, prediction) each (module
    level and pure, so a pool or Ray can run it, twice if need be)."""
    return _batch(batch.x, batch.offset, batch.refits, batch.params)


@dataclass(frozen=True)
class WalkForward:
    """A series' walk-forward cut into refit batches: its scoreable rows and the batches."""

    ok: pl.Series
    n: int
    batches: list[RefitBatch]


def plan_walk_forward(
    windows: pl.DataFrame, p: ModelParams, size: int, name: str = ""
) -> WalkForward:
    """The refits of ``windows`` in batches of ``size``, each with the rows it reads;
    InputError when there are no more scoreable windows than the buffer."""
    ok = windows.select(scoreable()).to_series()
    x = windows.select(pl.col(p.features).filter(ok)).to_numpy().astype(np.float64)
    n = len(x)
    if n <= p.buffer:
        raise InputError(
            f"fewer windows than the buffer: {n} scoreable windows, --buffer {p.buffer} needs "
            "more; give a longer time range or a smaller --buffer"
        )
    plan = refit_plan(n, p)
    batches = [
        RefitBatch(
            x[b[0][1] : b[-1][3]],  # only the rows its refits read, not the whole matrix
            b[0][1],
            tuple(b),
            p,
            f"{name} refits {b[0][0]}-{b[-1][0]}".strip(),
        )
        for b in (plan[i : i + size] for i in range(0, len(plan), size))
    ]
    return WalkForward(ok, n, batches)


def scored_windows(
    windows: pl.DataFrame, wf: WalkForward, results: Sequence[list[tuple[int, int, Any, Any]]]
) -> pl.DataFrame:
    """``windows`` with ``score``, ``prediction`` and ``refit`` from the batches' results."""
    score = np.full(wf.n, np.nan)
    pred = np.zeros(wf.n, dtype=np.int8)
    refit = np.full(wf.n, -1, dtype=np.int64)
    for res in results:
        for k, s0, d, pr in res:
            score[s0 : s0 + len(d)] = d
            pred[s0 : s0 + len(d)] = pr
            refit[s0 : s0 + len(d)] = k
    # Back onto every window by position (cheaper than a join on a row index).
    rows = np.flatnonzero(wf.ok.to_numpy())

    def spread(col: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(windows.height, fill, dtype=col.dtype)
        out[rows] = col
        return out

    hit = pl.Series(spread(refit, -1) >= 0)
    return windows.with_columns(
        score=pl.when(hit).then(pl.Series(spread(score, np.nan))),
        prediction=pl.when(hit).then(pl.Series(spread(pred, 0), dtype=pl.Int8)),
        refit=pl.when(hit).then(pl.Series(spread(refit, -1), dtype=pl.Int64)),
    )


class WalkForwardFeed:
    """The walk-forward fed windows while they are being built (``build_windows``'s
    ``on_final``): each refit is started, in ``jobs`` threads, as soon as the windows it
    reads exist, so the refits fill the cores the build leaves idle. ``isotree`` only (its
    C++ releases the GIL). Each refit reads only its own rows, so the scores are those of
    ``walk_forward`` on the finished table, bit for bit.

    ``add`` the windows in time order with their gaps final, then ``finish`` with the whole
    table; ``close`` (also on error) stops what has not started."""

    BATCH = 20  # refits per task: ~0.1 s of work, so both threads stay busy to the end

    def __init__(
        self, p: ModelParams, jobs: int = 2, progress: Callable[[int, int], None] | None = None
    ):
        from concurrent.futures import ThreadPoolExecutor

        if p.backend != "isotree":
            raise ValueError("the feed runs refits in threads: isotree only")
        self.p = p
        self.x = np.empty((1024, len(p.features)))
        self.n = 0  # scoreable windows so far
        self.k = 0  # the next refit to start
        self.pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="tw-refit")
        self.futures: list[Any] = []
        self.progress = progress

    def add(self, windows: pl.DataFrame) -> None:
        """The next windows in time order, ``gap`` final; starts every refit they complete."""
        rows = windows.select(pl.col(self.p.features).filter(scoreable())).to_numpy()
        if self.n + len(rows) > len(self.x):  # grow by doubling; started refits keep views
            grown = np.empty((max(2 * len(self.x), self.n + len(rows)), self.x.shape[1]))
            grown[: self.n] = self.x[: self.n]
            self.x = grown
        self.x[self.n : self.n + len(rows)] = rows
        self.n += len(rows)
        for _, f in self.futures:  # a refit that failed stops the scan now, not at its end
            if f.done() and (error := f.exception()) is not None:
                raise error
        self._start(last=False)

    def _start(self, last: bool) -> None:
        """Start the refits whose rows are all here (``last``: the rest, the final one short),
        as ``refit_plan`` numbers them for the final count."""
        p = self.p
        ready = []
        while (s := p.buffer + self.k * p.retrain_every) < self.n:
            if s + p.retrain_every > self.n and not last:
                break
            ready.append((self.k, s - p.buffer, s, min(self.n, s + p.retrain_every)))
            self.k += 1
        for i in range(0, len(ready), self.BATCH):
            b = ready[i : i + self.BATCH]
            x = self.x[b[0][1] : b[-1][3]]
            self.futures.append((len(b), self.pool.submit(_batch, x, b[0][1], b, p)))
        self._report()

    def _report(self) -> None:
        if self.progress:
            done = sum(n for n, f in self.futures if f.done())
            self.progress(done, sum(n for n, _ in self.futures))

    def finish(self, windows: pl.DataFrame) -> pl.DataFrame:
        """``windows`` (the finished table) scored as ``walk_forward`` scores it."""
        ok = windows.select(scoreable()).to_series()
        if int(ok.sum()) != self.n:  # would misplace every score: a bug, not bad data
            raise RuntimeError(f"fed {self.n} scoreable windows, the table has {ok.sum()}")
        if self.n <= self.p.buffer:
            plan_walk_forward(windows, self.p, 1)  # raises its InputError
        self._start(last=True)
        results = []
        for _, f in self.futures:
            results.append(f.result())
            self._report()
        return scored_windows(windows, WalkForward(ok, self.n, []), results)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def walk_forward(
    windows: pl.DataFrame,
    p: ModelParams,
    jobs: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """``windows`` plus ``score``, ``prediction`` (-1 anomalous, 1 normal) and ``refit``
    (the refit that scored it); null where a window was not scored. ``jobs`` refits run at
    once: in threads for ``isotree`` (its C++ releases the GIL: no worker start-up, no second
    import, nothing copied between processes), in processes for ``sklearn`` (Python-bound).
    Each refit is independent, so how they are batched never changes a score."""
    ok = windows.select(scoreable()).to_series()
    n_refits = max(0, -(-(int(ok.sum()) - p.buffer) // p.retrain_every))
    # Small batches keep both workers busy to the end (a batch is ~0.2 s of isotree refits).
    wf = plan_walk_forward(windows, p, max(1, min(50, n_refits // (jobs * 4))))
    calls = [(b.x, b.offset, b.refits, p) for b in wf.batches]
    if jobs > 1 and len(calls) > 1:
        from joblib import Parallel, delayed

        prefer = "threads" if p.backend == "isotree" else "processes"
        results = Parallel(n_jobs=jobs, prefer=prefer, return_as="generator")(
            delayed(_batch)(*c) for c in calls
        )
    else:
        results = (_batch(*c) for c in calls)
    got = []
    done = 0
    for res in results:
        got.append(res)
        done += len(res)
        if progress:
            progress(done, n_refits)
    return scored_windows(windows, wf, got)
