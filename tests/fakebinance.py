"""A fake Binance on 127.0.0.1 (port 0): combined trade stream plus REST, on one port.

The market runs on its own clock in a background thread: ``rate`` trades a second are
"executed" from a tape of real frames and sent to every open connection; REST serves every
executed trade by id. Tests script misbehaviour: drop connections, stall, send
``serverShutdown``, inject garbage, refuse connections; REST (its own small HTTP server, so
that it can also misbehave below HTTP) can fail, rate-limit, answer garbage or another
symbol's trades, never answer, or trickle its reply a byte at a time. Ranges of trade ids can
be held back from REST (``rest_skip``: an exchange-side hole in its history) and from the
stream (``stream_skip``).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

DATA = Path(__file__).parent / "data"
CAPTURE_2024 = DATA / "btcusdt-trade-2024-08-08T2354Z.combined.jsonl.gz"
CAPTURE_2023 = DATA / "btcusdt-trade-2023-04-04T2359Z.combined.jsonl.gz"


def load_frames(path: Path) -> list[bytes]:
    return gzip.open(path).read().splitlines()


def rest_item(frame: bytes) -> dict:
    d = orjson.loads(frame)["data"]
    return {
        "id": d["t"],
        "price": d["p"],
        "qty": d["q"],
        "quoteQty": f"{Decimal(d['p']) * Decimal(d['q']):.8f}",
        "time": d["T"],
        "isBuyerMaker": d["m"],
        "isBestMatch": d["M"],
    }


_END = b"<end of connection>"


def _inside(trade_id: int, ranges: list[tuple[int, int]]) -> bool:
    return any(first <= trade_id <= last for first, last in ranges)


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    streams: str = ""
    opened: float = field(default_factory=time.monotonic)


class FakeBinance:
    def __init__(self, frames: list[bytes], rate: float = 2000.0, tick: float = 0.01):
        self.frames = frames
        self.rate = rate
        self.tick = tick
        self.first_id = orjson.loads(frames[0])["data"]["t"]
        self.executed = 0
        self.clients: list[_Client] = []
        self.connections = 0
        self.rest_requests: list[tuple[int, int]] = []
        # ok | fail (500) | 429 (once, then ok) | garbage (HTML) | other (another symbol's
        # trades) | hang (never answers) | trickle (200, then a byte every 2 s)
        self.rest_mode = "ok"
        self.retry_after: object = 1
        # Inclusive trade-id ranges historicalTrades never serves (it answers with the next ids
        # it has, as Binance answers ``fromId`` with ids >= fromId), and ranges the stream never
        # sends. Both are read in the server thread: set them before the market reaches them.
        self.rest_skip: list[tuple[int, int]] = []
        self.stream_skip: list[tuple[int, int]] = []
        self.refuse = False
        self.paused = True
        self.actions: dict[int, list] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server = None
        self._market_task = None

    # ---- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> FakeBinance:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def _call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._http, close_timeout=0.2
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._rest_server = await asyncio.start_server(self._rest, "127.0.0.1", 0)
        self.rest_port = self._rest_server.sockets[0].getsockname()[1]
        self._rest_tasks: set[asyncio.Task] = set()
        self._market_task = asyncio.ensure_future(self._market())

    async def _stop(self) -> None:
        self._market_task.cancel()
        self._rest_server.close()
        for t in list(self._rest_tasks):
            t.cancel()
        self._server.close(close_connections=False)
        for c in list(self.clients):
            self._end(c)
        await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    # ---- the market ----------------------------------------------------------------

    def start_market(self) -> None:
        self.paused = False

    def at(self, index: int, action) -> None:
        """Run ``action(self)`` (in the server thread) just before trade ``index`` executes."""
        self.actions.setdefault(index, []).append(action)

    async def _market(self) -> None:
        carry = 0.0
        last = time.monotonic()
        while self.executed < len(self.frames):
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            if self.paused:
                last = now
                continue
            carry += (now - last) * self.rate
            last = now
            n, carry = int(carry), carry - int(carry)
            for _ in range(n):
                if self.executed >= len(self.frames):
                    break
                for act in self.actions.pop(self.executed, []):
                    act(self)
                frame = self.frames[self.executed]
                self.executed += 1
                if self.stream_skip and _inside(
                    self.first_id + self.executed - 1, self.stream_skip
                ):
                    continue
                for c in self.clients:
                    c.queue.put_nowait(frame)

    def wait_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.executed < len(self.frames):
            if time.monotonic() > deadline:
                raise TimeoutError(f"market executed {self.executed}/{len(self.frames)}")
            time.sleep(0.02)

    # ---- misbehaviour (call from the server thread via ``at``, or threadsafe helpers) ---

    @staticmethod
    def _end(c: _Client) -> None:
        """Abort the TCP connection (no close frame) and end its handler."""
        c.ws.transport.abort()
        c.queue.put_nowait(_END)

    def drop_all(self) -> None:
        for c in list(self.clients):
            self._end(c)

    @staticmethod
    def drop_when_connected(min_age: float = 0.0):
        """An action for ``at``: ``drop_all`` once a connection is open and ``min_age`` seconds
        old. Until then it moves on to the next trade, so a drop due while the recorder is
        still reconnecting (a slow machine) is late, never lost."""

        def act(f: FakeBinance) -> None:
            now = time.monotonic()
            if f.clients and all(now - c.opened >= min_age for c in f.clients):
                f.drop_all()
            else:
                f.at(f.executed + 1, act)

        return act

    def shutdown_all(self, close_after: float = 0.5) -> None:
        msg = orjson.dumps({"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1}})
        victims = list(self.clients)
        for c in victims:
            c.queue.put_nowait(msg)

        def close() -> None:
            for c in victims:
                self._end(c)

        self.loop.call_later(close_after, close)

    def stall_all(self) -> None:
        """Stop sending and stop reading (so pings go unanswered), connection left open."""
        for c in list(self.clients):
            c.queue.put_nowait(None)
            c.ws.transport.pause_reading()

    def inject(self, raw: bytes) -> None:
        for c in self.clients:
            c.queue.put_nowait(raw)

    def threadsafe(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def set_rest_mode(self, mode: str, retry_after: object = None) -> None:
        """Switch REST to ``mode`` (see ``rest_mode``); with ``retry_after`` for "429"."""
        if retry_after is not None:
            self.retry_after = retry_after
        self.rest_mode = mode

    # ---- servers -------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        client = _Client(ws, streams=ws.request.path if ws.request else "")
        self.clients.append(client)
        self.connections += 1
        try:
            while True:
                frame = await client.queue.get()
                if frame is _END:
                    return
                if frame is None:  # stalled: send nothing until the end
                    while await client.queue.get() is not _END:
                        pass
                    return
                try:
                    text = frame.decode()
                except UnicodeDecodeError:  # not UTF-8: can only go as a binary frame
                    await ws.send(frame)
                    continue
                await ws.send(text)
        except Exception:
            pass
        finally:
            self.clients.remove(client)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path)
        if path.path.startswith("/stream"):
            if self.refuse:
                return connection.respond(503, "maintenance\n")
            return None
        return connection.respond(404, "not found\n")

    async def _rest(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.1 request per connection (``Connection: close``)."""
        task = asyncio.current_task()
        assert task is not None
        self._rest_tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            status, headers, body = self._rest_reply(urllib.parse.urlsplit(target))
            if status is None:  # hang: never answer
                await asyncio.sleep(3600)
            lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            if self.rest_mode == "trickle":
                for i in range(len(body)):
                    writer.write(body[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(2)
            writer.write(body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._rest_tasks.discard(task)

    def _rest_reply(self, target) -> tuple[int | None, dict, bytes]:
        mode = self.rest_mode
        if mode == "hang":
            return None, {}, b""
        if mode == "fail":
            return 500, {}, b"internal error\n"
        if mode == "garbage":
            return 200, {"Content-Type": "text/html"}, b"<html>maintenance</html>"
        if mode == "429":
            self.rest_mode = "ok"
            return 429, {"Retry-After": str(self.retry_after)}, b"too many requests\n"
        if target.path == "/api/v3/ping":
            return 200, {}, b"{}"
        if target.path != "/api/v3/historicalTrades":
            return 404, {}, b"not found\n"
        q = dict(urllib.parse.parse_qsl(target.query))
        from_id, limit = int(q.get("fromId", self.first_id)), int(q.get("limit", 500))
        self.rest_requests.append((from_id, limit))
        if mode == "other":  # BTCUSDT-sized ids and prices, whatever was asked
            items = [
                {**rest_item(f), "id": 3_000_000_000 + i} for i, f in enumerate(self.frames[:50])
            ]
            return 200, {}, orjson.dumps(items)
        lo = max(0, from_id - self.first_id)
        if self.rest_skip:
            picked: list[bytes] = []
            while lo < self.executed and len(picked) < limit:
                if not _inside(self.first_id + lo, self.rest_skip):
                    picked.append(self.frames[lo])
                lo += 1
            return 200, {}, orjson.dumps([rest_item(f) for f in picked])
        hi = min(self.executed, lo + limit)
        return 200, {}, orjson.dumps([rest_item(f) for f in self.frames[lo:hi]])

    @staticmethod
    def _json(connection: ServerConnection, status: int, obj) -> Response:
        body = orjson.dumps(obj)
        return Response(
            status,
            "OK" if status == 200 else "Error",
            Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))]),
            body,
        )
