"""From the event loop to the disk: the typed items the recorder queues, and the one writer
thread that appends them, fsyncs on a timer and measures receive-to-fsync latency.

    readers, backfill ──put(item)──> bounded queue ──batches──> writer thread (StoreWriter)

The queue is bounded, so a slow disk makes the socket readers wait (backpressure) instead of
growing memory. A write that fails (disk full, store read-only or removed) is fatal: it is
raised from ``run``/``sync_loop`` as a ``DiskError`` and the recorder stops, never carrying on
with a dead writer while it looks healthy.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

import numpy as np

from recorder.errors import StoreError
from recorder.writer import StoreWriter

__all__ = [
    "DaemonWorker",
    "DiskError",
    "DiskSink",
    "GapItem",
    "Item",
    "RejectItem",
    "StateItem",
    "TradeItem",
]


class DaemonWorker:
    """One daemon thread that runs calls in the order given. Unlike the standard library's
    executors, whose threads the interpreter joins at exit, a call stuck on a hung disk (or
    a long compaction) cannot keep a stopping process alive: it is abandoned. Everything on
    disk is written under temporary names or appended, so an abandoned call loses nothing
    that a restart does not redo."""

    def __init__(self, name: str):
        self._calls: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            fut, fn, args = call
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:
                    fut.set_exception(e)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        fut: Future = Future()
        self._calls.put((fut, fn, args))
        return await asyncio.wrap_future(fut)

    def shutdown(self) -> None:
        self._calls.put(None)


class DiskError(StoreError):
    """The store could not be written (ENOSPC, read-only, removed)."""


# Queue items are NamedTuples: typed and immutable like frozen dataclasses, but as cheap to
# build as a tuple (a frozen dataclass's __init__ cost the socket reader ~5 % at 100k trades/s).
class TradeItem(NamedTuple):
    symbol: str
    hour: int  # hours since the epoch (layout.hour_of)
    line: bytes  # the NDJSON line, newline included
    recv_us: int  # local receive time, UTC µs


class RejectItem(NamedTuple):
    line: bytes  # frames.reject_line(...)
    when: float  # UTC seconds: picks the day's rejects file


class StateItem(NamedTuple):
    symbol: str
    state: dict[str, Any]


class GapItem(NamedTuple):
    records: tuple[dict[str, Any], ...]


Item = TradeItem | RejectItem | StateItem | GapItem


class DiskSink:
    """The queue and the writer thread of one recorder. ``observe`` gets the receive-to-fsync
    latencies (seconds) of the trades each fsync made durable, as one array."""

    def __init__(
        self,
        writer: StoreWriter,
        queue_max: int,
        observe: Callable[[np.ndarray], None] = lambda s: None,
    ):
        self.writer = writer
        self.queue: asyncio.Queue[Item] = asyncio.Queue(queue_max)
        self.written = 0  # trades appended (writer thread only)
        self._observe = observe
        self.failed = False  # a write failed: nothing more goes to disk
        self._thread: DaemonWorker | None = None
        self._unsynced: list[int] = []
        self._latency_us: collections.deque[int] = collections.deque(maxlen=100_000)

    @property
    def _worker(self) -> DaemonWorker:
        if self._thread is None:  # started on first use: a recorder never run has no thread
            self._thread = DaemonWorker("writer")
        return self._thread

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the writer thread, after everything queued to it before."""
        try:
            return await self._worker.call(fn, *args)
        except OSError as e:
            self.failed = True
            where = f" ({e.filename})" if e.filename else ""
            raise DiskError(
                f"writing to the store failed: {e.strerror or e}{where}; "
                "free space or fix permissions, then restart: backfill fetches what was missed"
            ) from None

    async def run(self) -> None:
        """Write queued items in batches until cancelled; DiskError if a write fails."""
        q = self.queue
        while True:
            batch = [await q.get()]
            while len(batch) < 20_000 and not q.empty():
                batch.append(q.get_nowait())
            await self.call(self._write_batch, batch)
            for _ in batch:
                q.task_done()

    async def sync_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.call(self._sync)

    async def close(self, timeout: float) -> bool:
        """Write what is queued, fsync and close, within ``timeout`` seconds; False if the
        disk did not let us in time (what was not written is refetched after a restart).
        After a failed write the queue is abandoned, but the files are still closed (their
        buffers flushed if the disk lets us), never left for a later flush to interleave with
        a restarted recorder's lines."""
        try:
            async with asyncio.timeout(timeout):
                if not self.failed:
                    await self.queue.join()
                await self.call(self._close)
            return not self.failed
        except (TimeoutError, DiskError):
            return False
        finally:
            self._worker.shutdown()

    def _write_batch(self, batch: list[Item]) -> None:
        w = self.writer
        trades: list[tuple[str, int, bytes]] = []
        for item in batch:
            if type(item) is TradeItem:
                trades.append((item.symbol, item.hour, item.line))
                self._unsynced.append(item.recv_us)
                continue
            if trades:
                w.append(trades)
                self.written += len(trades)
                trades = []
            if type(item) is RejectItem:
                w.reject(item.line, item.when)
            elif type(item) is StateItem:
                # The state says which ids are still missing: the trades queued before it
                # (the fill) must be on disk before it says they no longer are.
                w.sync()
                w.write_state(item.symbol, item.state)
            elif type(item) is GapItem:
                w.sync()
                w.record_gaps(list(item.records))
        if trades:
            w.append(trades)
            self.written += len(trades)

    def _sync(self) -> None:
        self.writer.sync()
        if self._unsynced:
            lat = time.time_ns() // 1000 - np.asarray(self._unsynced, dtype=np.int64)
            self._latency_us.extend(lat[-100_000:].tolist())
            self._observe(lat / 1e6)
            self._unsynced.clear()

    def _close(self) -> None:
        self._sync()
        self.writer.close()

    def latency_ms(self) -> dict[str, float]:
        """Receive-to-fsync latency percentiles over the last 100,000 trades (ms)."""
        if len(self._latency_us) < 2:
            return {}
        q = statistics.quantiles(self._latency_us, n=100, method="inclusive")
        return {
            "p50": round(q[49] / 1000, 2),
            "p99": round(q[98] / 1000, 2),
            "n": len(self._latency_us),
        }
