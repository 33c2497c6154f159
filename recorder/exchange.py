"""The recorder's only network code: opening the combined stream and fetching trades by id.

REST reply of ``GET /api/v3/historicalTrades?symbol=BTCUSDT&fromId=3735683259&limit=1000``::

    [{"id":3735683259,"price":"61837.63000000","qty":"0.02000000","quoteQty":"1236.75260000",
      "time":1723161255342,"isBuyerMaker":true,"isBestMatch":true}, ...]
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from recorder.errors import RestUnavailable

__all__ = [
    "NotPublished",
    "RateLimited",
    "RestBudget",
    "download",
    "fetch_text",
    "fetch_trades",
    "open_stream",
    "rest_ping",
]

HISTORICAL_TRADES_WEIGHT = 25
# Frames are small; anything larger than this is not a trade frame.
MAX_FRAME_BYTES = 1 << 20


class RateLimited(RestUnavailable):
    """HTTP 429 or 418: wait ``retry_after`` seconds before any further request."""

    def __init__(self, status: int, retry_after: float):
        super().__init__(f"REST answered {status}; retry after {retry_after:g} s")
        self.retry_after = retry_after


class RestBudget:
    """Request weight per minute as a token bucket, so backfill stays inside Binance's IP
    budget whatever the number of symbols; ``clock`` is injectable for tests."""

    def __init__(self, weight_per_minute: int, clock=time.monotonic):
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
    """Open the combined stream. Keepalive is the recorder's own (see service), so the
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


def _get(url: str, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": "tapewatch-recorder"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        if e.code in (418, 429):
            try:
                retry = float(e.headers.get("Retry-After", "60"))
            except ValueError:
                retry = 60.0
            raise RateLimited(e.code, retry) from None
        raise RestUnavailable(f"REST {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RestUnavailable(f"REST {url} unreachable: {getattr(e, 'reason', e)}") from None
    except orjson.JSONDecodeError:
        raise RestUnavailable(f"REST {url} sent a reply that is not JSON") from None


async def fetch_trades(
    rest_url: str, symbol: str, from_id: int, limit: int, timeout: float
) -> list[Any]:
    """Up to ``limit`` trades of ``symbol`` from id ``from_id`` on, oldest first."""
    q = urllib.parse.urlencode({"symbol": symbol, "fromId": from_id, "limit": limit})
    url = f"{rest_url.rstrip('/')}/api/v3/historicalTrades?{q}"
    reply = await asyncio.to_thread(_get, url, timeout)
    if type(reply) is not list:
        raise RestUnavailable(f"REST {url} did not send a list of trades")
    return reply


async def rest_ping(rest_url: str, timeout: float) -> None:
    """Check that the REST host answers (weight 1); RestUnavailable if not."""
    await asyncio.to_thread(_get, f"{rest_url.rstrip('/')}/api/v3/ping", timeout)


class NotPublished(RestUnavailable):
    """HTTP 404 for an archive file: Binance has not published it (yet)."""


def download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest``, resuming a partial ``dest`` with an HTTP Range request."""
    have = dest.stat().st_size if dest.exists() else 0
    headers = {"User-Agent": "tapewatch-recorder"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            mode = "ab" if resp.status == 206 else "wb"
            expected = int(resp.headers.get("Content-Length") or -1)
            got = 0
            with open(dest, mode) as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
            # A dropped connection can end the body early without an error: check the length.
            if expected >= 0 and got < expected:
                raise RestUnavailable(
                    f"{url}: the connection dropped after {got} of {expected} bytes"
                )
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the partial file is complete
            return
        if e.code == 404:
            raise NotPublished(f"{url} is not published") from None
        raise RestUnavailable(f"{url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RestUnavailable(f"{url} unreachable: {getattr(e, 'reason', e)}") from None


def fetch_text(url: str, timeout: float = 30.0) -> str:
    """A small text file (a .CHECKSUM); NotPublished on 404."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotPublished(f"{url} is not published") from None
        raise RestUnavailable(f"{url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RestUnavailable(f"{url} unreachable: {getattr(e, 'reason', e)}") from None
