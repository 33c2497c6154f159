"""Decoding what arrives from Binance into store lines (pure: no I/O, no clock).

A trade on the combined stream, byte for byte as Binance sends it::

    {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",
     "t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}

The open-hour line keeps that frame verbatim and adds the local receive time (UTC µs)::

    {"recv_time":1723161255343512,"frame":{"stream":"btcusdt@trade","data":{...}}}

A trade fetched from REST (``/api/v3/historicalTrades``) keeps the item as Binance sent it::

    {"recv_time":...,"symbol":"BTCUSDT","rest":{"id":..,"price":"..","qty":"..","quoteQty":"..",
     "time":..,"isBuyerMaker":true,"isBestMatch":true}}

Fields we do not know yet, and a price or quantity that a float64 cannot hold exactly, are
copied into ``"extra"`` (a JSON object, as text) so the typed Parquet columns lose nothing.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "REST_KEYS",
    "TRADE_KEYS",
    "Frame",
    "Kind",
    "decode_frame",
    "decode_rest_trade",
    "reject_line",
]

TRADE_KEYS = frozenset({"e", "E", "s", "t", "p", "q", "T", "m", "M", "b", "a"})
REST_KEYS = frozenset({"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"})
_WRAPPER_KEYS = frozenset({"stream", "data"})
# Plausible trade times (UTC ms): Binance opened in 2017; beyond 2100 is a unit mix-up.
_MIN_MS = 1_483_228_800_000
_MAX_MS = 4_102_444_800_000


class Kind(enum.Enum):
    TRADE = "trade"
    REPLY = "reply"  # {"result":null,"id":1}
    ERROR = "error"  # {"code":2,"msg":"...","id":1}
    SHUTDOWN = "shutdown"  # serverShutdown: open a new connection now
    REJECT = "reject"  # malformed or unexpected: quarantined


@dataclass(slots=True)
class Frame:
    """One decoded frame. For trades, ``line`` is the NDJSON line to store."""

    kind: Kind
    symbol: str = ""
    trade_id: int = 0
    trade_time: int = 0  # UTC ms
    line: bytes = b""
    reason: str = ""
    recv_us: int = 0  # local receive time, UTC µs


def _is_int(v: Any) -> bool:
    return type(v) is int


def _float_exact(s: str) -> bool:
    """True when float64 holds the decimal string's value exactly (<= 15 significant digits)."""
    if "e" in s or "E" in s:
        return False
    digits = s.lstrip("+-").replace(".", "", 1).strip("0")
    return len(digits) <= 15


def _number_ok(s: Any, *, positive: bool) -> bool:
    if type(s) is not str:
        return False
    try:
        v = float(s)
    except ValueError:
        return False
    return math.isfinite(v) and (v > 0 if positive else v >= 0)


def _extra(
    obj: dict[str, Any], known: frozenset[str], price: str, qty: str, pk: str, qk: str
) -> dict[str, Any]:
    extra = {k: obj[k] for k in obj.keys() - known}
    if not _float_exact(price):
        extra[pk] = price
    if not _float_exact(qty):
        extra[qk] = qty
    return extra


def decode_frame(
    raw: bytes, recv_us: int, symbols: frozenset[str], max_skew_ms: int | None = None
) -> Frame:
    """Classify one WebSocket message; ``symbols`` are the subscribed symbols, upper case.

    With ``max_skew_ms``, a trade whose time lies further than that from its receive time
    (``recv_us``, UTC µs) is rejected: one trade dated decades away would otherwise stretch
    every window build over the years between."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Frame(Kind.REJECT, reason="not JSON")
    if type(msg) is not dict:
        return Frame(Kind.REJECT, reason="not a JSON object")
    data = msg.get("data")
    if type(data) is not dict:
        if "result" in msg and "id" in msg:
            return Frame(Kind.REPLY)
        if "code" in msg and "msg" in msg:
            return Frame(Kind.ERROR, reason=f"code {msg.get('code')}: {msg.get('msg')}")
        if msg.get("e") == "serverShutdown":
            return Frame(Kind.SHUTDOWN)
        return Frame(Kind.REJECT, reason="no 'data' object")
    event = data.get("e")
    if event != "trade":
        if event == "serverShutdown":
            return Frame(Kind.SHUTDOWN)
        return Frame(Kind.REJECT, reason=f"unexpected event {str(event)[:40]!r}")
    symbol: Any = data.get("s")
    tid: Any = data.get("t")
    ttime: Any = data.get("T")
    price: Any = data.get("p")
    qty: Any = data.get("q")
    if type(symbol) is not str or symbol not in symbols:
        return Frame(Kind.REJECT, reason=f"unsubscribed symbol {str(symbol)[:40]!r}")
    if not (_is_int(tid) and tid >= 0):
        return Frame(Kind.REJECT, reason="trade id 't' is not a non-negative integer")
    if not (_is_int(ttime) and _MIN_MS <= ttime < _MAX_MS):
        return Frame(Kind.REJECT, reason="trade time 'T' is not UTC milliseconds")
    if max_skew_ms is not None and abs(ttime - recv_us // 1000) > max_skew_ms:
        return Frame(
            Kind.REJECT,
            reason=f"trade time 'T' is {(ttime - recv_us // 1000) / 1000:+.0f} s from its "
            "receive time",
        )
    if "E" in data and not _is_int(data["E"]):
        return Frame(Kind.REJECT, reason="event time 'E' is not an integer")
    if not _number_ok(price, positive=True) or not _number_ok(qty, positive=False):
        return Frame(Kind.REJECT, reason="price 'p' or quantity 'q' is not a decimal string")
    if type(data.get("m")) is not bool:
        return Frame(Kind.REJECT, reason="'m' is not a boolean")
    for k in ("M", "b", "a"):
        if k in data and not (type(data[k]) is bool if k == "M" else _is_int(data[k])):
            return Frame(Kind.REJECT, reason=f"{k!r} has the wrong type")
    extra = _extra(data, TRADE_KEYS, price, qty, "p", "q")
    extra.update({f"frame.{k}": msg[k] for k in msg.keys() - _WRAPPER_KEYS})
    if extra or b"\n" in raw or b"\r" in raw:
        # Rare: keep the frame's values (re-serialized compactly, one line) plus what the
        # typed columns cannot hold.
        body = orjson.dumps(msg)
        head = b'{"recv_time":%d,"extra":%s,"frame":' % (
            recv_us,
            orjson.dumps(orjson.dumps(extra).decode()),
        )
        line = head + body + b"}\n" if extra else b'{"recv_time":%d,"frame":%s}\n' % (recv_us, body)
    else:
        line = b'{"recv_time":%d,"frame":%s}\n' % (recv_us, raw)
    return Frame(Kind.TRADE, symbol, tid, ttime, line, recv_us=recv_us)


def decode_rest_trade(item: Any, symbol: str, recv_us: int) -> Frame:
    """One item of a ``historicalTrades`` reply, as a store line (or a reject)."""
    if type(item) is not dict:
        return Frame(Kind.REJECT, reason="REST trade is not an object")
    tid: Any = item.get("id")
    ttime: Any = item.get("time")
    price: Any = item.get("price")
    qty: Any = item.get("qty")
    if not (_is_int(tid) and tid >= 0 and _is_int(ttime) and _MIN_MS <= ttime < _MAX_MS):
        return Frame(Kind.REJECT, reason="REST trade has no integer 'id' or ms 'time'")
    if not _number_ok(price, positive=True) or not _number_ok(qty, positive=False):
        return Frame(Kind.REJECT, reason="REST trade 'price' or 'qty' is not a decimal string")
    if type(item.get("isBuyerMaker")) is not bool:
        return Frame(Kind.REJECT, reason="REST trade 'isBuyerMaker' is not a boolean")
    out: dict[str, Any] = {"recv_time": recv_us, "symbol": symbol, "rest": item}
    extra = _extra(item, REST_KEYS, price, qty, "price", "qty")
    if extra:
        out["extra"] = orjson.dumps(extra).decode()
    return Frame(Kind.TRADE, symbol, tid, ttime, orjson.dumps(out) + b"\n", recv_us=recv_us)


def reject_line(raw: bytes, recv_us: int, reason: str) -> bytes:
    """The quarantine record: the frame verbatim (as text, or base64 if not UTF-8)."""
    rec: dict[str, Any] = {"recv_time": recv_us, "reason": reason}
    try:
        rec["frame"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        rec["frame_base64"] = base64.b64encode(raw).decode()
    return orjson.dumps(rec) + b"\n"
