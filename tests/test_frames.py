"""Frame decoding: trades, control frames, and a corpus of malformed frames."""

from __future__ import annotations

import orjson
import pytest

from recorder.frames import Kind, decode_frame, decode_rest_trade, reject_line

SYMS = frozenset({"BTCUSDT"})
TRADE = (
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",'
    b'"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)


def test_trade_line_keeps_the_frame_byte_for_byte():
    f = decode_frame(TRADE, 1723161255343512, SYMS)
    assert (f.kind, f.symbol, f.trade_id, f.trade_time) == (
        Kind.TRADE,
        "BTCUSDT",
        3735683259,
        1723161255342,
    )
    assert f.line == b'{"recv_time":1723161255343512,"frame":' + TRADE + b"}\n"


def test_unknown_fields_and_inexact_numbers_go_to_extra():
    data = orjson.loads(TRADE)
    data["data"]["X"] = {"new": 1}
    data["data"]["q"] = "12345678901.234567890"  # 20 significant digits: not a float64
    data["id"] = 7
    f = decode_frame(orjson.dumps(data), 1, SYMS)
    line = orjson.loads(f.line)
    assert orjson.loads(line["extra"]) == {
        "X": {"new": 1},
        "q": "12345678901.234567890",
        "frame.id": 7,
    }
    assert line["frame"] == data


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"result":null,"id":1}', Kind.REPLY),
        (b'{"code":2,"msg":"Invalid request","id":1}', Kind.ERROR),
        (b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}', Kind.SHUTDOWN),
        (b'{"e":"serverShutdown","E":1}', Kind.SHUTDOWN),
    ],
)
def test_control_frames(raw, kind):
    assert decode_frame(raw, 1, SYMS).kind is kind


MALFORMED = [
    (b"", "not JSON"),
    (b"{", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"stream":"x"}', "no 'data' object"),
    (b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate"}}', "unexpected event 'depthUpdate'"),
    (TRADE.replace(b'"s":"BTCUSDT"', b'"s":"ETHUSDT"'), "unsubscribed symbol 'ETHUSDT'"),
    (
        TRADE.replace(b'"t":3735683259', b'"t":"3735683259"'),
        "trade id 't' is not a non-negative integer",
    ),
    (TRADE.replace(b'"t":3735683259', b'"t":-1'), "trade id 't' is not a non-negative integer"),
    (
        TRADE.replace(b'"T":1723161255342', b'"T":1723161255342000'),
        "trade time 'T' is not UTC milliseconds",
    ),
    (
        TRADE.replace(b'"p":"61837.63000000"', b'"p":"abc"'),
        "price 'p' or quantity 'q' is not a decimal string",
    ),
    (
        TRADE.replace(b'"p":"61837.63000000"', b'"p":61837.63'),
        "price 'p' or quantity 'q' is not a decimal string",
    ),
    (
        TRADE.replace(b'"q":"0.02000000"', b'"q":"-1"'),
        "price 'p' or quantity 'q' is not a decimal string",
    ),
    (
        TRADE.replace(b'"p":"61837.63000000"', b'"p":"nan"'),
        "price 'p' or quantity 'q' is not a decimal string",
    ),
    (TRADE.replace(b'"m":true', b'"m":1'), "'m' is not a boolean"),
    (TRADE.replace(b'"E":1723161255343', b'"E":"x"'), "event time 'E' is not an integer"),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
def test_malformed_frames_are_rejected_with_a_reason(raw, reason):
    f = decode_frame(raw, 5, SYMS)
    assert (f.kind, f.reason) == (Kind.REJECT, reason)
    rec = orjson.loads(reject_line(raw, 5, f.reason))
    assert rec["reason"] == reason
    assert rec.get("frame", "").encode() == raw or rec.get("frame_base64")


def test_rest_item_and_bad_rest_item():
    item = {
        "id": 5,
        "price": "1.5",
        "qty": "2",
        "quoteQty": "3",
        "time": 1723161255342,
        "isBuyerMaker": False,
        "isBestMatch": True,
    }
    f = decode_rest_trade(item, "BTCUSDT", 9)
    assert (f.kind, f.trade_id) == (Kind.TRADE, 5)
    assert orjson.loads(f.line) == {"recv_time": 9, "symbol": "BTCUSDT", "rest": item}
    assert decode_rest_trade({**item, "id": None}, "BTCUSDT", 9).kind is Kind.REJECT
