"""The recorder's only network code: the combined stream, trades by id over REST, and the
daily archive files. Every HTTP request goes through httpx with one overall deadline
(connect, headers and a body that may trickle in) and one error mapping: 429 and 418 are
``RateLimited`` (with their Retry-After), an archive file's 404 is ``NotPublished``, any other
failure is ``RestUnavailable``.

REST reply of ``GET /api/v3/historicalTrades?symbol=BTCUSDT&fromId=3735683259&limit=1000``::

    [{"id":3735683259,"price":"61837.63000000","qty":"0.02000000","quoteQty":"1236.75260000",
      "time":1723161255342,"isBuyerMaker":true,"isBestMatch":true}, ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from recorder.config import HISTORICAL_TRADES_WEIGHT
from recorder.errors import RestUnavailable

__all__ = [
    "NotPublished",
    "RateLimited",
    "RestBudget",
    "download",
    "fetch_text",
    "fetch_trades",
    "open_stream",
    "rest_client",
    "retry_after_seconds",
]

# Stream frames are small (a trade is ~200 bytes). Up to this size a frame is read and, if it
# is not a trade, quarantined; only a larger one ends the connection.
MAX_FRAME_BYTES = 16 << 20
# The longest Retry-After we obey: a 418 ban lasts at most 3 days.
MAX_RETRY_AFTER = 3 * 86_400.0
# Seconds one archive download may take in all; it resumes where it stopped when run again.
DOWNLOAD_DEADLINE = 600.0
_HEADERS = {"User-Agent": "tapewatch-recorder"}


class RateLimited(RestUnavailable):
    """HTTP 429 or 418: wait ``retry_after`` seconds before any further request."""

    def __init__(self, status: int, retry_after: float, what: str = "REST"):
        super().__init__(f"{what} answered {status}; retry after {retry_after:g} s", str(status))
        self.retry_after = retry_after


def retry_after_seconds(header: str | None, default: float = 60.0) -> float:
    """Seconds from a ``Retry-After`` header (``"30"``); ``default`` for a missing, non-finite
    or negative value, and never more than ``MAX_RETRY_AFTER``."""
    try:
        v = float(header) if header is not None else default
    except ValueError:
        return default
    if not math.isfinite(v) or v < 0:
        return default
    return min(v, MAX_RETRY_AFTER)


class RestBudget:
    """Request weight per minute as a token bucket, so backfill stays inside Binance's IP
    budget whatever the number of symbols; ``clock`` is injectable for tests."""

    def __init__(self, weight_per_minute: int, clock=time.monotonic):
        if weight_per_minute < HISTORICAL_TRADES_WEIGHT:
            raise ValueError(f"a budget of {weight_per_minute} cannot afford one request")
        self.rate = weight_per_minute / 60.0
        self.capacity = float(weight_per_minute)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()
        self.paused_until = 0.0

    def delay(self, weight: int) -> float:
        """Seconds to wait before spending ``weight``; spends it when the answer is 0."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if now < self.paused_until:
            return self.paused_until - now
        if self.tokens >= weight:
            self.tokens -= weight
            return 0.0
        return (weight - self.tokens) / self.rate

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    async def acquire(self, weight: int) -> None:
        while (d := self.delay(weight)) > 0:
            await asyncio.sleep(d)


async def open_stream(url: str, open_timeout: float) -> ClientConnection:
    """Open the combined stream. Keepalive is the recorder's own (see connections), so the
    library's is off; ``max_queue`` bounds what websockets buffers when we read slowly."""
    return await connect(
        url,
        open_timeout=open_timeout,
        ping_interval=None,
        max_size=MAX_FRAME_BYTES,
        max_queue=1024,
        close_timeout=2,
        compression=None,
    )


def rest_client() -> httpx.AsyncClient:
    """The recorder's one HTTP client (connection reuse across backfill requests)."""
    return httpx.AsyncClient(headers=_HEADERS, follow_redirects=False)


@contextlib.asynccontextmanager
async def _within(seconds: float, what: str) -> AsyncIterator[None]:
    """Run the block within ``seconds`` in all: a slow reply is a failure, never a hang. A
    timeout or network failure becomes RestUnavailable naming ``what`` (``"REST <url>"``)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise RestUnavailable(f"{what} took longer than {seconds:g} s", "timeout") from None
    except httpx.HTTPError as e:
        raise RestUnavailable(
            f"{what} unreachable: {str(e) or type(e).__name__}", "error"
        ) from None


def _refused(what: str, resp: httpx.Response) -> RestUnavailable:
    """The error for a reply that is not what was asked: RateLimited for 429 and 418."""
    if resp.status_code in (418, 429):
        wait = retry_after_seconds(resp.headers.get("Retry-After"))
        return RateLimited(resp.status_code, wait, what)
    return RestUnavailable(f"{what} answered HTTP {resp.status_code}", str(resp.status_code))


async def _get(client: httpx.AsyncClient, url: str, timeout: float) -> Any:
    """GET ``url`` as JSON within ``timeout`` seconds in all."""
    async with _within(timeout, f"REST {url}"):
        resp = await client.get(url, timeout=timeout)
    if resp.status_code != 200:
        raise _refused(f"REST {url}", resp)
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        raise RestUnavailable(f"REST {url} sent a reply that is not JSON", "invalid") from None


async def fetch_trades(
    client: httpx.AsyncClient, rest_url: str, symbol: str, from_id: int, limit: int, timeout: float
) -> list[Any]:
    """Up to ``limit`` trades of ``symbol`` from id ``from_id`` on, oldest first."""
    q = {"symbol": symbol, "fromId": from_id, "limit": limit}
    url = str(httpx.URL(f"{rest_url.rstrip('/')}/api/v3/historicalTrades", params=q))
    reply = await _get(client, url, timeout)
    if type(reply) is not list:
        raise RestUnavailable(f"REST {url} did not send a list of trades", "invalid")
    return reply


class NotPublished(RestUnavailable):
    """HTTP 404 for an archive file: Binance has not published it (yet)."""


def download(
    url: str, dest: Path, timeout: float = 30.0, deadline: float = DOWNLOAD_DEADLINE
) -> None:
    """Download ``url`` to ``dest``, resuming a partial ``dest`` with an HTTP Range request.
    Each wait for the server may take ``timeout`` seconds, the whole download ``deadline``.
    Blocking (it runs its own event loop): from async code, call it in a thread."""
    asyncio.run(_download(url, dest, timeout, deadline))


def fetch_text(url: str, timeout: float = 30.0) -> str:
    """A small text file (a .CHECKSUM) within ``timeout`` seconds in all; NotPublished on
    404, UnicodeDecodeError if it is not UTF-8."""
    return asyncio.run(_fetch(url, timeout)).decode()


def _file_client(timeout: float) -> httpx.AsyncClient:
    # Redirects are followed (a GET loses nothing); no content coding, so that a Range
    # offset counts the bytes of the file itself.
    headers = {**_HEADERS, "Accept-Encoding": "identity"}
    return httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=True)


async def _fetch(url: str, timeout: float) -> bytes:
    async with _file_client(timeout) as client, _within(timeout, url):
        resp = await client.get(url)
    if resp.status_code == 404:
        raise NotPublished(f"{url} is not published", "404")
    if resp.status_code != 200:
        raise _refused(url, resp)
    return resp.content


async def _download(url: str, dest: Path, timeout: float, deadline: float) -> None:
    have = dest.stat().st_size if dest.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    got, expected = 0, -1
    async with (
        _file_client(timeout) as client,
        _within(deadline, url),
        client.stream("GET", url, headers=headers) as resp,
    ):
        if resp.status_code == 416 and have:  # nothing left to fetch: the file is complete
            return
        if resp.status_code == 404:
            raise NotPublished(f"{url} is not published", "404")
        if resp.status_code not in (200, 206):
            raise _refused(url, resp)
        expected = int(resp.headers.get("Content-Length") or -1)
        # 206: the rest of the file, after what we have; 200: the whole file, from 0.
        with open(dest, "ab" if resp.status_code == 206 else "wb") as f:
            try:
                async for chunk in resp.aiter_raw():  # as it arrives: kept if the rest fails
                    f.write(chunk)
                    got += len(chunk)
            except httpx.TransportError:
                if expected < 0:  # no length to say what is missing
                    raise
    # A dropped connection can end the body early: what arrived is kept for the next try.
    if expected >= 0 and got < expected:
        raise RestUnavailable(f"{url}: the connection dropped after {got} of {expected} bytes")
