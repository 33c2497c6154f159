"""``engine watch``: score every window as it closes, exactly as a batch rerun would.

The watcher follows the store while the recorder writes it (the open hour's NDJSON, then its
Parquet after compaction) through the same reader and window code as the batch engine. A
window ``[s, s + every)`` closes when the exchange's clock passes ``s + every + grace``; that
clock is the latest trade time in the store, advanced while the market is quiet by the wall
clock minus the usual receive-time offset the recorder stored, so a replay of old trades at
any speed behaves like live. Scoreable windows are numbered from the start of the store as
in ``engine score``; refit ``k`` trains on the same ``buffer`` windows and scores the same
``retrain_every`` windows, so live and batch agree window for window. The next refit is
trained in the background as soon as its training windows are complete.

Alerts. A flagged window becomes an ``Alert`` for the hooks (``--on-anomaly`` gets the
window's JSON line on stdin, ``--webhook`` gets it POSTed). At most ``alert_queue_max`` alerts
wait for or are in delivery at a time; beyond that they are dropped, counted and logged. One
background thread with its own asyncio loop delivers them oldest first, the webhook through
httpx with a few tries and a short back-off. Every command run and every webhook request has
an overall deadline (``hook_timeout``), so a webhook that never answers, or trickles its reply
a byte at a time, costs at most that. On stop, alerts still pending after ``stop_grace`` are
given up (counted, logged once): SIGTERM ends the process in a few seconds whatever the hooks
do. Counters (``Watcher.counts``) feed the Prometheus endpoint of ``--metrics-addr``
(``engine/metrics.py``).

Errors: bad options raise ``engine.errors.InputError`` (one ``Error:`` line in the CLI); a
failing hook is logged and counted, and never stops the watch.

Known limit: a trade that reaches the store after its window closed (a backfill slower than
``--grace``) is in the batch rerun but not in the live score.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
import numpy as np
import orjson
import polars as pl

from engine import config
from engine.errors import InputError
from engine.metrics import MetricsServer, WatchCollector, WatchCounts, parse_addr
from engine.model import Fitted, fit
from engine.pipeline import Settings
from engine.scan import TailCache, open_store
from engine.windows import build_windows, id_gaps, mark_gaps, window_features

__all__ = ["Alert", "Alerter", "WatchOptions", "Watcher", "results_path"]

log = logging.getLogger("engine.watch")
_LOOK_MS = 3 * 3_600_000  # trades read ahead of the next window per look at the store
_JOIN_TIMEOUT = 2.0  # seconds to wait for the alert thread once its work is cancelled
_T = TypeVar("_T")

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
    extra: dict[str, Any] = field(default_factory=dict)

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
            try:
                url = httpx.URL(self.webhook)
            except httpx.InvalidURL as e:
                raise InputError(f"--webhook {self.webhook!r} is not a URL: {e}") from e
            if url.scheme not in ("http", "https") or not url.host:
                raise InputError(
                    f"--webhook {self.webhook!r} is not an http(s) URL; "
                    "give for example http://localhost:9000/hook"
                )
        if self.metrics_addr is not None:
            parse_addr(self.metrics_addr)


@dataclass(frozen=True)
class Alert:
    """A flagged window for the hooks: its start (UTC ms) and its JSON line (with newline)."""

    window_start_ms: int
    body: bytes


class _Stopping(Exception):
    """Stop was asked while waiting for a model: the window is scored again on restart."""


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


def results_path(s: Settings) -> Path:
    return s.data_dir / "results" / f"{s.symbol.upper()}-{s.every}-watch" / "scores.ndjson"


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


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
    def __init__(
        self, s: Settings, opts: WatchOptions, out: TextIO | None = None, notifier: Any = None
    ):
        self.s = s
        self.o = opts
        self.out = out or sys.stdout
        self.e = s.every_ms
        self.p = s.model
        self.notifier = notifier
        self.stop_event = threading.Event()
        self.index = open_store(s.data_dir, s.symbol)
        self.index.tail = TailCache()
        self.results = opts.results or results_path(s)
        # Enough scoreable rows for the current refit's training set, wherever in its cycle.
        self.history: collections.deque[np.ndarray] = collections.deque(
            maxlen=self.p.buffer + self.p.retrain_every
        )
        self.n = 0  # scoreable windows so far (from the start of the store)
        self.models: dict[int, Future[Fitted]] = {}
        self.prev: tuple[int, int] | None = None  # (id, ms) of the last trade before next_start
        self.next_start = 0
        self.emitted = 0  # windows written (scored, warming up, gap or empty)
        self.scored = 0  # windows the model scored
        self.flags = 0  # windows flagged
        self.last_end_ms: int | None = None  # end of the last window written, UTC ms
        self.alerts: Alerter | None = None  # while running with hooks
        self.metrics_url: str | None = None  # while serving metrics: the bound address

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

    # ---- start ----------------------------------------------------------------------

    def exchange_now(self, latest_ms: int | None) -> int:
        offset = self.index.tail.recv_offset_ms if self.index.tail else None
        if offset is None:  # nothing is being written: time stands at the last trade
            return latest_ms or 0
        return max(int(time.time() * 1000) - offset, latest_ms or 0)

    def start(self) -> None:
        """Rebuild the model's history from the store; resume after the last scored window."""
        resume = _last_window(self.results)
        if resume is not None:
            self.next_start = resume + self.e
        else:
            t = self.index.load(
                self.index.last_hour * 3_600_000, (self.index.last_hour + 2) * 3_600_000
            )
            latest = int(t["trade_time"].max().timestamp() * 1000) if t.height else None  # type: ignore[union-attr]
            self.next_start = (self.exchange_now(latest) - self.o.grace_ms) // self.e * self.e
        first_ms = self.index.first_hour * 3_600_000
        if self.next_start > first_ms:
            hist = build_windows(self.index, [self.e], None, self.next_start)[self.e]
            able = hist.filter((pl.col("trade_count") > 0) & ~pl.col("gap"))
            self.n = able.height
            for row in able.tail(self.history.maxlen or 0).select(self.p.features).to_numpy():
                self.history.append(row.astype(np.float64))
            before = self.index.load(
                max(first_ms, self.next_start - 3_600_000 * 24), self.next_start
            )
            if before.height:
                last = before.select(
                    pl.col("trade_id").last(), pl.col("trade_time").last().dt.epoch("ms")
                ).row(0)
                self.prev = (int(last[0]), int(last[1]))
        self._schedule_refit()
        log.info(
            "watching %s %s windows; %d scoreable windows of history; first window %s",
            self.s.symbol,
            self.s.every,
            self.n,
            _iso(self.next_start),
        )

    def _schedule_refit(self) -> None:
        """Make sure the model that scores the next scoreable window is being trained (in
        the background): refit k trains on scoreable windows [s_k - buffer, s_k)."""
        b, r = self.p.buffer, self.p.retrain_every
        if self.n < b:
            return
        k = (self.n - b) // r
        if k in self.models:
            return
        s_k = b + k * r
        base = self.n - len(self.history)  # scoreable number of history[0]
        train = np.vstack(list(self.history)[s_k - b - base : s_k - base])
        self.models[k] = _background(fit, train, self.p)
        self.models.pop(k - 2, None)

    # ---- the loop ---------------------------------------------------------------------

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
        """Look at the store; score every window that has closed. Returns how many."""
        done = 0
        while not self.stop_event.is_set():
            lo = self.next_start
            trades = self.index.load(lo, lo + _LOOK_MS)
            latest = int(trades["trade_time"][-1].timestamp() * 1000) if trades.height else None
            now = self.exchange_now(latest)
            gaps = id_gaps(trades, self.prev) + self.index.recorded_gaps()
            # A window is finished with the trades up to its close (for id continuity), so
            # only windows whose close lies inside what was read are done from this read.
            limit = min(now, lo + _LOOK_MS)
            before = done
            while (
                self.next_start + self.e + self.o.grace_ms <= limit and not self.stop_event.is_set()
            ):
                self._window(trades, gaps)
                done += 1
            if done == before or now < lo + _LOOK_MS:
                return done
        return done

    def _window(self, trades: pl.DataFrame, gaps: list[tuple[int, int]]) -> None:
        s0 = self.next_start
        w = mark_gaps(window_features(trades, self.e, s0, s0 + self.e), self.e, gaps)
        row = w.row(0, named=True)
        inside = trades.filter(pl.col("trade_time").dt.epoch("ms") < s0 + self.e)
        if inside.height:
            last = inside.select(
                pl.col("trade_id").last(), pl.col("trade_time").last().dt.epoch("ms")
            ).row(0)
            self.prev = (int(last[0]), int(last[1]))
        score = pred = refit = None
        if row["trade_count"] > 0 and not row["gap"]:
            x = np.array([row[f] for f in self.p.features], dtype=np.float64)
            j = self.n
            if j >= self.p.buffer:
                refit = (j - self.p.buffer) // self.p.retrain_every
                d, pr = self._model(refit).score(x[None, :])
                score, pred = float(d[0]), int(pr[0])
            self.history.append(x)
            self.n += 1
            self._schedule_refit()
        self.next_start = s0 + self.e
        self._emit(s0, row, score, pred, refit)

    def _model(self, k: int) -> Fitted:
        """Refit ``k``, waiting for its training; _Stopping if stop is asked meanwhile."""
        while True:
            try:
                return self.models[k].result(timeout=0.1)
            except TimeoutError:
                if self.stop_event.is_set():
                    raise _Stopping from None

    # ---- output ---------------------------------------------------------------------

    def _emit(
        self, s0: int, row: dict, score: float | None, pred: int | None, refit: int | None
    ) -> None:
        offset = self.index.tail.recv_offset_ms if self.index.tail else None
        closed_wall = s0 + self.e + self.o.grace_ms + offset if offset is not None else None
        rec = {
            "symbol": self.s.symbol,
            "every": self.s.every,
            "window_start": _iso(s0),
            "window_start_ms": s0,
            **{k: v for k, v in row.items() if k != "window_start"},
            "score": score,
            "prediction": pred,
            "refit": refit,
            "flagged": pred == -1,
            # Wall time from the window's close (as the recorder saw it) to this line.
            "lag_ms": None if closed_wall is None else int(time.time() * 1000) - closed_wall,
        }
        line = orjson.dumps(rec)
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with open(self.results, "ab") as f:
            f.write(line + b"\n")
        if self.o.fmt == "ndjson":
            self.out.write(line.decode() + "\n")
        else:
            self.out.write(_line(rec, self.n, self.p.buffer) + "\n")
        self.out.flush()
        self.emitted += 1
        self.last_end_ms = s0 + self.e
        if score is not None:
            self.scored += 1
        if pred == -1:
            self.flags += 1
            if self.alerts:
                self.alerts.submit(Alert(s0, line + b"\n"))  # one JSON line, shell-friendly


class Alerter:
    """Delivers alerts to the hooks from one background thread, oldest first, with at most
    ``alert_queue_max`` alerts pending (waiting or in delivery); ``close()`` at stop.

    Counters (since start): ``sent`` (every hook delivered), ``failed`` (a hook failed after
    all tries), ``dropped_full`` (not queued: queue full), ``given_up`` (pending at stop),
    ``pending`` (now)."""

    def __init__(self, opts: WatchOptions):
        self.o = opts
        self.sent = self.failed = self.dropped_full = self.given_up = 0
        self._cond = threading.Condition()
        self._pending = 0
        self._full = False  # in a run of drops: logged once per run
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._queue: asyncio.Queue[Alert] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, alert: Alert) -> bool:
        """Queue an alert; False (dropped and counted) if the queue is full or closing."""
        with self._cond:
            if self._closing:
                return False
            if self._pending >= self.o.alert_queue_max:
                self.dropped_full += 1
                if not self._full:
                    self._full = True
                    log.warning(
                        "alert queue full (%d pending, --alert-queue-max): dropping alerts "
                        "until it drains, starting with window %s",
                        self._pending,
                        _iso(alert.window_start_ms),
                    )
                return False
            if self._full:
                self._full = False
                log.warning("alert queue has room again; %d alerts dropped", self.dropped_full)
            self._pending += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, alert)
        return True

    def close(self) -> int:
        """Stop: pending alerts get ``stop_grace`` seconds to finish; the rest are given up,
        counted and logged once. Returns how many were given up; takes at most
        ``stop_grace`` + 2 seconds, whatever the hooks do."""
        with self._cond:
            self._closing = True
            self._cond.wait_for(lambda: self._pending == 0, timeout=self.o.stop_grace)
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._cancel)
            self._thread.join(_JOIN_TIMEOUT)
        with self._cond:
            self.given_up = self._pending
        if self.given_up:
            log.warning(
                "stopping: gave up %d pending alert(s); %d sent, %d failed, "
                "%d dropped (queue full)",
                self.given_up,
                self.sent,
                self.failed,
                self.dropped_full,
            )
        return self.given_up

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        self._task = asyncio.current_task()
        if self._closing:  # closed before this loop ran: nothing to wait for
            return
        client = (
            # A redirect is never followed: httpx would resend the POST as a bodiless GET.
            httpx.AsyncClient(timeout=self.o.hook_timeout, follow_redirects=False)
            if self.o.webhook
            else None
        )
        try:
            while True:
                alert = await self._queue.get()
                try:
                    ok = await self._deliver(client, alert)
                except Exception:  # a hook must never stop the watch, nor this thread
                    log.exception("alert for window %s failed", _iso(alert.window_start_ms))
                    ok = False
                # Cancelled above (at stop), the alert stays pending: it is counted given up.
                with self._cond:
                    self._pending -= 1
                    if ok:
                        self.sent += 1
                    else:
                        self.failed += 1
                    self._cond.notify_all()
        finally:
            if client is not None:
                await client.aclose()

    async def _deliver(self, client: httpx.AsyncClient | None, alert: Alert) -> bool:
        ok = True
        if self.o.on_anomaly:
            ok = await self._command(self.o.on_anomaly, alert.body) and ok
        if client is not None and self.o.webhook:
            ok = await self._post(client, self.o.webhook, alert.body) and ok
        return ok

    async def _command(self, command: str, body: bytes) -> bool:
        """Run the shell command with ``body`` on stdin, within ``hook_timeout`` seconds."""
        try:
            proc = await asyncio.create_subprocess_shell(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,  # never mixed into the watcher's own output
                stderr=subprocess.PIPE,
                start_new_session=True,  # so that a kill reaches whatever the shell started
            )
        except OSError as e:
            log.warning("--on-anomaly failed: %s", e)
            return False
        try:
            async with asyncio.timeout(self.o.hook_timeout):
                _, err = await proc.communicate(body)
        except TimeoutError:
            log.warning("--on-anomaly took longer than %g s: killed", self.o.hook_timeout)
            return False
        finally:
            if proc.returncode is None:  # timed out, or cancelled at stop
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), _JOIN_TIMEOUT)
        if proc.returncode:
            text = err.decode(errors="replace").strip()[:200]
            log.warning("--on-anomaly exited %d: %s", proc.returncode, text)
            return False
        return True

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes) -> bool:
        """POST ``body``; each try must complete (reply read in full) within
        ``hook_timeout`` seconds. 5xx, 408, 429 and network errors are tried again; a
        redirect (3xx) is a failed delivery, not followed."""
        tries = self.o.webhook_tries
        for attempt in range(1, tries + 1):
            try:
                async with asyncio.timeout(self.o.hook_timeout):
                    r = await client.post(
                        url, content=body, headers={"Content-Type": "application/json"}
                    )
                if r.is_success:
                    return True
                why = f"HTTP {r.status_code}"
                if r.is_redirect:
                    why += (
                        f", a redirect to {r.headers['location']}: not followed (the alert "
                        "would arrive without its body); give --webhook the final URL"
                    )
                again = r.status_code >= 500 or r.status_code in (408, 429)
            except TimeoutError:
                why, again = f"no complete reply within {self.o.hook_timeout:g} s", True
            except httpx.HTTPError as e:
                why, again = f"{type(e).__name__}: {e}", True
            log.warning("webhook attempt %d/%d failed: %s", attempt, tries, why)
            if not again:
                break
            if attempt < tries:
                await asyncio.sleep(self.o.retry_delay * 2 ** (attempt - 1))
        return False


def _line(rec: dict, n: int, buffer: int) -> str:
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
