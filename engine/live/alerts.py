"""Alerts: flagged windows queued for the hooks of ``engine watch`` (``engine.live.hooks``).

At most ``alert_queue_max`` alerts wait for
or are in delivery at a time; beyond that they are dropped, counted and logged. One
background thread with its own asyncio loop delivers them oldest first. Every command run and
every webhook request has an overall deadline (``hook_timeout``), so a webhook that never
answers, or trickles its reply a byte at a time, costs at most that. On stop, alerts still
pending after ``stop_grace`` are given up (counted, logged once), whatever the hooks do.

A failing hook is logged and counted, and never stops the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

import httpx

from engine.live import iso_ms
from engine.live.hooks import deliver

__all__ = ["Alert", "AlertSettings", "Alerter"]

log = logging.getLogger("engine.watch.alerts")  # under the command's logger
_JOIN_TIMEOUT = 2.0  # seconds to wait for the alert thread once its work is cancelled


class AlertSettings(Protocol):
    """What an Alerter reads of ``engine.watch.WatchOptions``."""

    on_anomaly: str | None  # shell command
    webhook: str | None  # http(s) URL
    webhook_tries: int
    hook_timeout: float  # seconds per command run or webhook request
    alert_queue_max: int  # alerts waiting for or in delivery
    retry_delay: float  # seconds before the second webhook try, doubling after
    stop_grace: float  # seconds pending alerts get at stop


@dataclass(frozen=True)
class Alert:
    """A flagged window for the hooks: its start (UTC ms) and its JSON line (with newline)."""

    window_start_ms: int
    body: bytes


class Alerter:
    """Delivers alerts to the hooks from one background thread, oldest first, with at most
    ``alert_queue_max`` alerts pending (waiting or in delivery); ``close()`` at stop.

    Counters (since start): ``sent`` (every hook delivered), ``failed`` (a hook failed after
    all tries), ``dropped_full`` (not queued: queue full), ``given_up`` (pending at stop),
    ``pending`` (now)."""

    def __init__(self, opts: AlertSettings):
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
                        iso_ms(alert.window_start_ms),
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
                *(self.given_up, self.sent, self.failed, self.dropped_full),
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
        # A redirect is never followed: httpx would resend the POST as a bodiless GET.
        client = (
            httpx.AsyncClient(timeout=self.o.hook_timeout, follow_redirects=False)
            if self.o.webhook
            else None
        )
        try:
            while True:
                alert = await self._queue.get()
                try:
                    ok = await deliver(self.o, client, alert)
                except Exception:  # a hook must never stop the watch, nor this thread
                    log.exception("alert for window %s failed", iso_ms(alert.window_start_ms))
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
