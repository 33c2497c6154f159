"""The live scorer: each window, as it closes, scored exactly as ``walk_forward`` scores it.

The windows and the model are those of a batch run: ``scoreable()`` picks the windows the
model trains on and scores, and ``refit_plan`` says which refit trains on which of them and
scores which. The scorer keeps the scoreable windows from the training start of the refit
that scores the next window on; since the plan repeats every ``retrain_every`` windows,
``refit_plan`` over those windows is the tail of the batch plan, shifted. A refit is trained
in the background as soon as its training windows are all in, so it is usually ready when
its first window closes. No store, no clock, no output: windows in, scores out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import polars as pl

from engine.model import Fitted, ModelParams, fit, refit_plan, scoreable

__all__ = ["LiveScorer", "Scored", "train_in_background"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Scored:
    """What the model said of one window; all None when it was not scored (no trades, a gap,
    or the first refit's buffer still filling)."""

    score: float | None = None  # decision function: negative = anomalous
    prediction: int | None = None  # -1 anomalous, 1 normal
    refit: int | None = None  # the refit that scored it, numbered as in a batch run


def _background(fn: Callable[..., _T], *args: Any) -> Future[_T]:
    """Run ``fn(*args)`` in a daemon thread. Unlike a ThreadPoolExecutor's worker, the thread
    never holds up the process's exit: a refit still training at stop is abandoned."""
    fut: Future[_T] = Future()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to whoever waits on the future
            fut.set_exception(e)

    threading.Thread(target=work, name="refit", daemon=True).start()
    return fut


def train_in_background(train: np.ndarray, p: ModelParams) -> Future[Fitted]:
    """``fit(train, p)`` in a daemon thread."""
    return _background(fit, train, p)


class LiveScorer:
    """Scores windows one at a time, in order, as they close.

    ``history``: the windows before the first one to score (as ``build_windows`` makes them;
    None if there are none). ``train`` starts a refit and returns its future; ``wait`` waits
    for one (it may raise to give up, e.g. at stop)."""

    def __init__(
        self,
        p: ModelParams,
        history: pl.DataFrame | None = None,
        train: Callable[[np.ndarray, ModelParams], Future[Fitted]] = train_in_background,
        wait: Callable[[Future[Fitted]], Fitted] = Future.result,
    ):
        self.p = p
        self._train = train
        self._wait = wait
        able = history.filter(scoreable()) if history is not None else None
        self.n = able.height if able is not None else 0  # scoreable windows so far
        plan = refit_plan(self.n + 1, p)  # the batch plan up to the next scoreable window
        k, t0 = (plan[-1][0], plan[-1][1]) if plan else (0, 0)
        # Scoreable windows from t0 on (t0: the training start of refit k), one row each.
        self._k0 = k
        self._rows: list[np.ndarray] = (
            list(self._features(able.slice(t0))) if able is not None else []
        )
        self._models: dict[int, Future[Fitted]] = {}
        self._next: int | None = None  # the refit that scores the next scoreable window
        self._schedule()

    def score(self, window: pl.DataFrame) -> Scored:
        """Score one closed window (one row of ``window_features`` with ``gap``); waits for its
        refit if that is still training."""
        if not window.select(scoreable()).item():
            return Scored()
        x = self._features(window)[0]
        out = Scored()
        if self._next is not None:
            d, pred = self._wait(self._models[self._next]).score(x[None, :])
            out = Scored(float(d[0]), int(pred[0]), self._next)
        self._rows.append(x)
        self.n += 1
        self._schedule()
        return out

    def _features(self, windows: pl.DataFrame) -> np.ndarray:
        return windows.select(self.p.features).to_numpy().astype(np.float64)

    def _schedule(self) -> None:
        """Start training the refit that scores the next scoreable window, once its training
        windows are all in; then forget the windows before its training start."""
        # _rows[0] is the training start of refit _k0, a whole number of refits into the batch
        # plan, so the plan over _rows is the batch plan from refit _k0 on, renumbered.
        plan = refit_plan(len(self._rows) + 1, self.p)
        if not plan:
            return  # the first refit's buffer is still filling
        i, t0, s0, _ = plan[-1]
        k = self._k0 + i
        if k not in self._models:
            self._models[k] = self._train(np.vstack(self._rows[t0:s0]), self.p)
            self._models.pop(k - 2, None)
        del self._rows[:t0]  # no later refit trains on them
        self._k0 = self._next = k
