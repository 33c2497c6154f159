"""Prometheus metrics for ``engine watch`` (``--metrics-addr HOST:PORT``, off by default).

The watcher keeps plain counters; this module only reads them, at scrape time, through a
collector on a registry of its own (never prometheus_client's global one), so one process can
run several watchers, each with its own endpoint. What is served (``GET /metrics``)::

    tapewatch_watch_windows_total                    windows closed and written, scored or not
    tapewatch_watch_windows_scored_total             windows the model scored
    tapewatch_watch_flags_total                      windows flagged as anomalies
    tapewatch_watch_alerts_sent_total                alerts every hook delivered
    tapewatch_watch_alert_failures_total             alerts a hook failed on after all tries
    tapewatch_watch_alerts_dropped_total{reason}     queue_full: not queued; stop: given up
    tapewatch_watch_alert_queue_depth                alerts waiting for or in delivery
    tapewatch_watch_last_window_end_timestamp_seconds  end of the last window written (UTC s)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.errors import InputError

__all__ = ["MetricsServer", "WatchCollector", "WatchCounts", "parse_addr"]

_CLOSE_TIMEOUT = 2.0  # seconds to wait for the HTTP server's thread at stop


@dataclass(frozen=True)
class WatchCounts:
    """A snapshot of one watcher's counters (counts since the process started)."""

    windows: int = 0
    scored: int = 0
    flags: int = 0
    alerts_sent: int = 0
    alert_failures: int = 0
    dropped_queue_full: int = 0
    dropped_stop: int = 0
    queue_depth: int = 0
    last_window_end_ms: int | None = None  # UTC ms; None before the first window


class WatchCollector(Collector):
    """Turns a watcher's ``WatchCounts`` into Prometheus metrics on every scrape."""

    def __init__(self, counts: Callable[[], WatchCounts]):
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        c = self._counts()
        p = "tapewatch_watch_"
        yield CounterMetricFamily(
            p + "windows",
            "Windows closed and written (scored, warming up, gap or empty).",
            c.windows,
        )
        yield CounterMetricFamily(p + "windows_scored", "Windows the model scored.", c.scored)
        yield CounterMetricFamily(p + "flags", "Windows flagged as anomalies.", c.flags)
        yield CounterMetricFamily(
            p + "alerts_sent", "Alerts every configured hook delivered.", c.alerts_sent
        )
        yield CounterMetricFamily(
            p + "alert_failures", "Alerts a hook failed on after all tries.", c.alert_failures
        )
        dropped = CounterMetricFamily(
            p + "alerts_dropped",
            "Alerts not delivered: queue_full (the alert queue was full), stop (pending at stop).",
            labels=["reason"],
        )
        dropped.add_metric(["queue_full"], c.dropped_queue_full)
        dropped.add_metric(["stop"], c.dropped_stop)
        yield dropped
        yield GaugeMetricFamily(
            p + "alert_queue_depth", "Alerts waiting for or in delivery.", c.queue_depth
        )
        if c.last_window_end_ms is not None:
            yield GaugeMetricFamily(
                p + "last_window_end_timestamp_seconds",
                "End of the last window written, UTC seconds (exchange time).",
                c.last_window_end_ms / 1000,
            )


def parse_addr(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9109"``, ``"[::1]:9109"`` or ``"localhost:0"`` (any free port) as
    ``(host, port)``; InputError for anything else."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(
            f"--metrics-addr {text!r} is not HOST:PORT; give for example 127.0.0.1:9109"
        )
    return host, int(port)


class MetricsServer:
    """Serves one collector at ``http://HOST:PORT/metrics`` from a daemon thread. ``port`` is
    the port actually bound (the one the system chose when asked for port 0)."""

    def __init__(self, addr: str, collector: Collector):
        host, port = parse_addr(addr)
        registry = CollectorRegistry()
        registry.register(collector)
        try:
            self._httpd, self._thread = start_http_server(port, host, registry)
        except OSError as e:  # a host that does not resolve, a port in use or not allowed
            raise InputError(
                f"cannot serve metrics on {addr}: {e.strerror or e}; "
                "give a free local address to --metrics-addr"
            ) from e
        self.host = host
        self.port: int = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving; waits at most a couple of seconds (scrapes in flight are dropped)."""
        # shutdown() waits without a timeout for serve_forever to notice: bound that wait.
        stopper = threading.Thread(target=self._httpd.shutdown, daemon=True)
        stopper.start()
        stopper.join(_CLOSE_TIMEOUT)
        self._httpd.server_close()
        self._thread.join(_CLOSE_TIMEOUT)
