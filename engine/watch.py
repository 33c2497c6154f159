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

Known limit: a trade that reaches the store after its window closed (a backfill slower than
``--grace``) is in the batch rerun but not in the live score.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import orjson
import polars as pl

from engine.model import Fitted, fit
from engine.pipeline import Settings
from engine.scan import TailCache, open_store
from engine.windows import build_windows, id_gaps, mark_gaps, window_features

__all__ = ["WatchOptions", "Watcher", "results_path"]

log = logging.getLogger("engine.watch")
_LOOK_MS = 3 * 3_600_000  # trades read ahead of the next window per look at the store


@dataclass
class WatchOptions:
    grace_ms: int = 2000
    poll: float = 0.2
    fmt: str = "table"  # or "ndjson"
    on_anomaly: str | None = None
    webhook: str | None = None
    webhook_tries: int = 3
    results: Path | None = None
    hooks_timeout: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


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
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="refit")
        self.hooks = ThreadPoolExecutor(2, thread_name_prefix="hooks")
        self.prev: tuple[int, int] | None = None  # (id, ms) of the last trade before next_start
        self.next_start = 0
        self.emitted = 0

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
        self.models[k] = self.pool.submit(fit, train, self.p)
        self.models.pop(k - 2, None)

    # ---- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        self.start()
        if self.notifier:
            self.notifier.ready(f"watching {self.s.symbol} {self.s.every}")
        while not self.stop_event.is_set():
            self.step()
            if self.notifier:
                self.notifier.watchdog()
            self.stop_event.wait(self.o.poll)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.hooks.shutdown(wait=True)

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
                d, pr = self.models[refit].result().score(x[None, :])
                score, pred = float(d[0]), int(pr[0])
            self.history.append(x)
            self.n += 1
            self._schedule_refit()
        self.next_start = s0 + self.e
        self._emit(s0, row, score, pred, refit)

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
        if pred == -1:
            self.hooks.submit(self._alert, line + b"\n")  # one JSON line, shell-friendly

    def _alert(self, body: bytes) -> None:
        if self.o.on_anomaly:
            try:
                r = subprocess.run(
                    self.o.on_anomaly,
                    shell=True,
                    input=body,
                    timeout=self.o.hooks_timeout,
                    capture_output=True,
                )
                if r.returncode:
                    log.warning(
                        "--on-anomaly exited %d: %s",
                        r.returncode,
                        r.stderr.decode(errors="replace").strip()[:200],
                    )
            except (OSError, subprocess.TimeoutExpired) as e:
                log.warning("--on-anomaly failed: %s", e)
        if self.o.webhook:
            for attempt in range(1, self.o.webhook_tries + 1):
                try:
                    req = urllib.request.Request(
                        self.o.webhook, data=body, headers={"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(req, timeout=self.o.hooks_timeout):
                        return
                except OSError as e:  # URLError and HTTPError are OSErrors
                    log.warning(
                        "webhook attempt %d/%d failed: %s", attempt, self.o.webhook_tries, e
                    )
                    time.sleep(0.2 * 2**attempt)


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
