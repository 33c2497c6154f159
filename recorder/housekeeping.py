"""The recorder's periodic jobs: compacting closed hours, uploading closed files (with
``--upload-to``), the status file and systemd's STATUS/WATCHDOG, and checking that the store
it locked is still the one on disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from recorder.compact import closed_hours, compact_hour
from recorder.errors import RecorderError
from recorder.sink import DaemonWorker
from recorder.store import layout
from recorder.store.durable import atomic_write
from recorder.store.lock import StoreLock
from recorder.upload import upload_in_child

if TYPE_CHECKING:
    from recorder.service import Recorder

__all__ = ["Housekeeping"]

log = logging.getLogger("recorder")


class Housekeeping:
    def __init__(self, rec: Recorder, lock: StoreLock):
        self.rec = rec
        self.lock = lock
        self._compactor = DaemonWorker("compact")
        self._upload_due = asyncio.Event()  # set when compaction closed files

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        upload = [("upload", self.upload_loop())] if self.rec.cfg.upload_to else []
        return [
            ("compact", self.compact_loop()),
            *upload,
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
                    self._upload_due.set()
                await asyncio.sleep(rec.cfg.compact_interval)
        finally:
            self._compactor.shutdown()

    async def upload_loop(self) -> None:
        """Copy the closed files to ``--upload-to`` at start, after each compaction and
        every ``--upload-interval`` seconds; a failure (the server down, a missing bucket) is
        logged, counted and retried, never fatal. Each run is a child process, killed when
        the recorder stops, so a hung server holds up neither ingestion nor the stop."""
        rec, url = self.rec, self.rec.cfg.upload_to
        assert url is not None
        rec.stats.update(files_uploaded=0, bytes_uploaded=0, upload_failures=0)
        while True:
            self._upload_due.clear()
            try:
                res = await upload_in_child(rec.root, url, rec.cfg.endpoint_url)
            except Exception as e:  # never fatal: the recording matters more than its copy
                rec.stats["upload_failures"] += 1
                log.error(
                    "upload to %s failed, retried in %g s: %s",
                    url,
                    rec.cfg.upload_interval,
                    e,
                    exc_info=not isinstance(e, RecorderError),  # a bug: its traceback
                )
            else:
                rec.stats["files_uploaded"] += res.copied
                rec.stats["bytes_uploaded"] += res.copied_bytes
                rec.stats["last_upload_ms"] = int(time.time() * 1000)
                if res.copied:
                    log.info(
                        "uploaded %d files (%d bytes) to %s", res.copied, res.copied_bytes, url
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rec.cfg.upload_interval):
                    await self._upload_due.wait()

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
