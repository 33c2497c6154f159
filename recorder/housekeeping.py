"""The recorder's periodic jobs: compacting closed hours, the status file and systemd's
STATUS/WATCHDOG, and checking that the store it locked is still the one on disk."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from recorder.compact import closed_hours, compact_hour
from recorder.sink import DaemonWorker
from recorder.store import layout
from recorder.store.durable import atomic_write
from recorder.store.lock import StoreLock

if TYPE_CHECKING:
    from recorder.service import Recorder

__all__ = ["Housekeeping"]

log = logging.getLogger("recorder")


class Housekeeping:
    def __init__(self, rec: Recorder, lock: StoreLock):
        self.rec = rec
        self.lock = lock
        self._compactor = DaemonWorker("compact")

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        return [
            ("compact", self.compact_loop()),
            ("status", self.status_loop()),
            ("watchdog", self.watchdog_loop()),
        ]

    async def compact_loop(self) -> None:
        rec = self.rec
        grace_ms = int(rec.cfg.compact_grace * 1000)
        try:
            while True:
                now_ms = int(time.time() * 1000)
                for d in await self._compactor.call(closed_hours, rec.root, now_ms, grace_ms):
                    await rec.sink.call(rec.sink.writer.seal, *layout.parse_hour_dir(d))
                    try:
                        res = await self._compactor.call(compact_hour, rec.root, d, False)
                    except Exception as e:  # one bad hour must not stop the others
                        rec.stats["compaction_errors"] += 1
                        log.error("compaction of %s failed: %s", d, e)
                        continue
                    rec.stats["hours_compacted"] += 1
                    log.info("compacted %s: %d trades", d.relative_to(rec.root), res.rows)
                await asyncio.sleep(rec.cfg.compact_interval)
        finally:
            self._compactor.shutdown()

    def status_text(self) -> str:
        rec = self.rec
        age = time.monotonic() - rec.conns.last_activity
        down = rec.ingest.rest_down_since
        rest = "" if down is None else f", REST unavailable since {_utc(down)}"
        return (
            f"{len(rec.symbols)} symbols, {rec.stats['trades']} trades, "
            f"{len(rec.conns.open)} connections, last frame {age:.1f} s ago, "
            f"gaps {rec.stats['gaps_recorded']}, rejects {rec.stats['rejects']}{rest}"
        )

    def _state(self) -> dict[str, Any]:
        rec = self.rec
        down = rec.ingest.rest_down_since
        return {
            "pid": os.getpid(),
            "started_at": rec.started,
            "updated_at": time.time(),
            "connections_open": len(rec.conns.open),
            "stats": {**rec.stats, "written": rec.sink.written},
            "rest_unavailable_since": None if down is None else _utc(down),
            "fsync_latency_ms": rec.sink.latency_ms(),
            "symbols": {
                s: {
                    "high": t.high,
                    "high_time": t.high_time,
                    "missing": [m.as_list() for m in t.missing],
                }
                for s, t in rec.trackers.items()
            },
        }

    def _write_status(self, state: dict[str, Any], durable: bool = True) -> None:
        import orjson

        path = self.rec.root / layout.STATE / "recorder.json"
        if durable:
            atomic_write(path, orjson.dumps(state))
        else:  # advisory: renamed into place, not fsynced (a slow disk must not delay a stop)
            tmp = path.with_name(f".{path.name}.final-{os.getpid()}")
            tmp.write_bytes(orjson.dumps(state))
            os.replace(tmp, path)

    def write_status_now(self) -> None:
        """The last status file, from the calling thread (the writer may be gone)."""
        try:
            self._write_status(self._state(), durable=False)
        except OSError as e:
            log.error("could not write the final status: %s", e)

    async def status_loop(self) -> None:
        while True:
            self.lock.check()
            await self.rec.sink.call(self.rec.sink.writer.check_linked)
            await self.rec.sink.call(self._write_status, self._state())
            self.rec.notifier.status(self.status_text())
            await asyncio.sleep(self.rec.cfg.status_interval)

    async def watchdog_loop(self) -> None:
        """WATCHDOG=1 only while frames or pongs keep arriving: a wedged loop or a silent
        socket stops the pings and systemd restarts us. A fault ends the recorder, and with
        it the pings."""
        interval = self.rec.notifier.watchdog_seconds
        if not interval:
            await asyncio.Event().wait()  # no watchdog asked for: idle until cancelled
            return
        while True:
            await asyncio.sleep(interval / 3)
            if time.monotonic() - self.rec.conns.last_activity < interval:
                self.rec.notifier.watchdog()


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
