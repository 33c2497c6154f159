"""``engine watch``: score every window as it closes, exactly as a batch rerun would.

This module puts the parts of ``engine/live/`` together and owns what the user sees: the
options, the results file (one JSON line per window, which is also where a restart resumes),
the printed lines (``--format table|ndjson``) and the counters. The parts:

- ``StoreFollower`` (``engine/live/follower.py``) follows the store while the recorder writes
  it and hands over each window once the exchange's clock has closed it;
- ``LiveScorer`` (``engine/live/scorer.py``) scores it with the batch model's refit plan, so
  live and batch agree window for window; the next refit trains in the background;
- ``Alerter`` (``engine/live/alerts.py``) delivers flagged windows to ``--on-anomaly`` and
  ``--webhook``, with a bounded queue and a deadline on every delivery.

On start the watcher resumes after the last window of its results file or, with none, at the
window the exchange's clock is in; the model's history is every window of the store before
that. Counters (``Watcher.counts``) feed the Prometheus endpoint of ``--metrics-addr``
(``engine/metrics.py``). SIGTERM ends the process in a few seconds whatever the hooks do.

Errors: bad options raise ``engine.errors.InputError`` (one ``Error:`` line in the CLI); a
failing hook is logged and counted, and never stops the watch.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from engine import config
from engine.errors import InputError
from engine.live import iso_ms
from engine.live.alerts import Alert, Alerter
from engine.live.follower import StoreFollower
from engine.live.hooks import check_webhook
from engine.live.scorer import LiveScorer, Scored
from engine.metrics import MetricsServer, WatchCollector, WatchCounts, parse_addr
from engine.model import Fitted
from engine.pipeline import Settings

__all__ = ["WatchOptions", "Watcher", "results_path"]

log = logging.getLogger("engine.watch")

# WatchOptions fields checked against the engine's settings table (engine/config.py), whose
# ranges keep each where it means something: no busy loop, no unbounded queue, no retry storm.
_SETTINGS = {
    "grace_ms": "grace",
    "poll": "poll",
    "webhook_tries": "webhook_tries",
    "hook_timeout": "hook_timeout",
    "alert_queue_max": "alert_queue_max",
}
# (lowest, highest) seconds of the knobs that are not options (tests shrink them).
_RANGES: dict[str, tuple[float, float]] = {"retry_delay": (0.0, 60.0), "stop_grace": (0.0, 3.0)}


@dataclass
class WatchOptions:
    """How ``engine watch`` runs; out-of-range values raise InputError."""

    grace_ms: int = config.SETTING["grace"].parse(config.GRACE)  # ms, exchange time
    poll: float = config.POLL  # seconds between looks at the store
    fmt: str = "table"  # or "ndjson"
    on_anomaly: str | None = None  # shell command, the window's JSON line on stdin
    webhook: str | None = None  # http(s) URL to POST the window's JSON line to
    webhook_tries: int = config.WEBHOOK_TRIES
    results: Path | None = None
    hook_timeout: float = config.HOOK_TIMEOUT  # seconds per command run or webhook request
    alert_queue_max: int = config.ALERT_QUEUE_MAX  # alerts waiting for or in delivery
    metrics_addr: str | None = None  # HOST:PORT for Prometheus metrics; None: off
    retry_delay: float = 0.2  # seconds before the second webhook try, doubling after
    stop_grace: float = 1.0  # seconds pending alerts get at stop before they are given up

    def __post_init__(self) -> None:
        for name, setting in _SETTINGS.items():
            config.SETTING[setting].check(getattr(self, name))
        for name, (lo, hi) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not lo <= value <= hi:
                raise InputError(
                    f"{name} {value:g} s is out of range: give a value between {lo:g} and {hi:g} s"
                )
        if self.webhook is not None:
            config.SETTING["webhook"].parse(self.webhook)
            check_webhook(self.webhook)
        if self.metrics_addr is not None:
            parse_addr(self.metrics_addr)


class _Stopping(Exception):
    """Stop was asked while waiting for a model: the window is scored again on restart."""


def results_path(s: Settings) -> Path:
    return s.data_dir / "results" / f"{s.symbol.upper()}-{s.every}-watch" / "scores.ndjson"


def _last_window(path: Path) -> int | None:
    """window_start (UTC ms) of the last complete line of a results file."""
    if not path.exists():
        return None
    last = None
    for line in path.read_bytes().splitlines():
        try:
            last = orjson.loads(line)["window_start_ms"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line from a kill: that window is scored again
    return last


class Watcher:
    """``engine watch`` for one symbol and window size: ``run()`` until ``stop_event``."""

    def __init__(
        self, s: Settings, opts: WatchOptions, out: TextIO | None = None, notifier: Any = None
    ):
        self.s = s
        self.o = opts
        self.out = out or sys.stdout
        self.notifier = notifier
        self.stop_event = threading.Event()
        self.follower = StoreFollower(s.data_dir, s.symbol, s.every_ms, opts.grace_ms)
        self.results = opts.results or results_path(s)
        self.scorer = LiveScorer(s.model)  # replaced by start(), with the store's history
        self.emitted = 0  # windows written (scored, warming up, gap or empty)
        self.scored = 0  # windows the model scored
        self.flags = 0  # windows flagged
        self.last_end_ms: int | None = None  # end of the last window written, UTC ms
        self.alerts: Alerter | None = None  # while running with hooks
        self.metrics_url: str | None = None  # while serving metrics: the bound address

    @property
    def next_start(self) -> int:
        """Start (UTC ms) of the next window to score."""
        return self.follower.next_start

    @property
    def n(self) -> int:
        """Scoreable windows so far, from the start of the store (numbered as in a batch run)."""
        return self.scorer.n

    def counts(self) -> WatchCounts:
        """The watcher's counters now (what the metrics endpoint serves)."""
        a = self.alerts
        return WatchCounts(
            windows=self.emitted,
            scored=self.scored,
            flags=self.flags,
            alerts_sent=a.sent if a else 0,
            alert_failures=a.failed if a else 0,
            dropped_queue_full=a.dropped_full if a else 0,
            dropped_stop=a.given_up if a else 0,
            queue_depth=a.pending if a else 0,
            last_window_end_ms=self.last_end_ms,
        )

    def start(self) -> None:
        """Resume after the last window written, or start at the window the exchange's clock is
        in; warm the model up on the store's windows before it."""
        resume = _last_window(self.results)
        first = self.follower.first_open() if resume is None else resume + self.s.every_ms
        history = self.follower.start(first)
        wait = functools.partial(_wait, self.stop_event)
        self.scorer = LiveScorer(self.s.model, history, wait=wait)
        log.info(
            "watching %s %s windows; %d scoreable windows of history; first window %s",
            *(self.s.symbol, self.s.every, self.scorer.n, iso_ms(first)),
        )

    def run(self) -> None:
        """Watch until ``stop_event`` is set, then stop within a few seconds: alerts still
        pending after ``stop_grace`` are given up, a refit still training is abandoned."""
        metrics = None
        if self.o.metrics_addr is not None:  # first, so that a bad address fails at once
            metrics = MetricsServer(self.o.metrics_addr, WatchCollector(self.counts))
            self.metrics_url = metrics.url
            log.info("serving metrics at %s", metrics.url)
        try:
            self.start()
            if self.o.on_anomaly or self.o.webhook:
                self.alerts = Alerter(self.o)
            if self.notifier:
                self.notifier.ready(f"watching {self.s.symbol} {self.s.every}")
            while not self.stop_event.is_set():
                try:
                    self.step()
                except _Stopping:
                    break
                if self.notifier:
                    self.notifier.watchdog()
                self.stop_event.wait(self.o.poll)
        finally:
            if self.alerts:
                self.alerts.close()
            if metrics:
                metrics.close()

    def step(self) -> int:
        """Look at the store; score and write every window that has closed. Returns how many."""
        done = 0
        for s0, window in self.follower.closed():
            if self.stop_event.is_set():
                break
            self._emit(s0, window.row(0, named=True), self.scorer.score(window))
            done += 1
        return done

    def _emit(self, s0: int, row: dict, scored: Scored) -> None:
        """Write the window's line to the results file and the output; alert if flagged."""
        rec = _record(self.s, s0, row, scored, self.follower.closed_wall_ms(s0))
        line = orjson.dumps(rec)
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with open(self.results, "ab") as f:
            f.write(line + b"\n")
        if self.o.fmt == "ndjson":
            self.out.write(line.decode() + "\n")
        else:
            self.out.write(_line(rec, self.n, self.s.model.buffer) + "\n")
        self.out.flush()
        self.emitted += 1
        self.last_end_ms = s0 + self.s.every_ms
        if scored.score is not None:
            self.scored += 1
        if scored.prediction == -1:
            self.flags += 1
            if self.alerts:
                self.alerts.submit(Alert(s0, line + b"\n"))  # one JSON line, shell-friendly


def _wait(stop: threading.Event, model: Future[Fitted]) -> Fitted:
    """A refit's model, waiting for its training; _Stopping if ``stop`` is set meanwhile."""
    while True:
        try:
            return model.result(timeout=0.1)
        except TimeoutError:
            if stop.is_set():
                raise _Stopping from None


def _record(s: Settings, s0: int, row: dict, scored: Scored, closed_wall_ms: int | None) -> dict:
    """A window's line of the results file (and of ``--format ndjson``)."""
    return {
        "symbol": s.symbol,
        "every": s.every,
        "window_start": iso_ms(s0),
        "window_start_ms": s0,
        **{k: v for k, v in row.items() if k != "window_start"},
        "score": scored.score,
        "prediction": scored.prediction,
        "refit": scored.refit,
        "flagged": scored.prediction == -1,
        # Wall time from the window's close (as the recorder saw it) to this line.
        "lag_ms": None if closed_wall_ms is None else int(time.time() * 1000) - closed_wall_ms,
    }


def _line(rec: dict, n: int, buffer: int) -> str:
    """A window's line for people (``--format table``); ``n``: scoreable windows so far."""
    ret = rec["return"]
    ret_text = "" if ret is None else f"{ret:+.4%}"
    text = (
        f"{rec['window_start'][:19]}Z  trades {rec['trade_count']:>6}  "
        f"volume {rec['volume']:>12.4f}  return {ret_text:>9}  vol {rec['volatility']:>9.4f}  "
    )
    if rec["gap"]:
        return text + "gap: not scored"
    if rec["trade_count"] == 0:
        return text + "no trades"
    if rec["score"] is None:
        return text + f"warming up {min(n, buffer)}/{buffer}"
    text += f"score {rec['score']:+.4f}"
    return text + "  << ANOMALY" if rec["flagged"] else text
