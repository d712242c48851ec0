"""Client message decoding and server control message encoding (docs/protocol.md 4 and 5)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoted.wire import messages
from quoted.wire.messages import (
    ClientMessage,
    ProtocolError,
    decode_client_message,
    encode_authenticated,
    encode_error,
    encode_pong,
    encode_subscribed,
)


def decode_error(data: bytes | str) -> ProtocolError:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(ProtocolError) as info:
        decode_client_message(raw)
    return info.value


# --- accepted messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (
            '{"type":"subscribe","id":"sub-1","symbols":["tsla","nope"]}',
            ClientMessage("subscribe", "sub-1", ["tsla", "nope"], None),
        ),
        (
            '{"type":"unsubscribe","id":"sub-2","symbols":["AAPL"]}',
            ClientMessage("unsubscribe", "sub-2", ["AAPL"], None),
        ),
        ('{"type":"ping","id":42}', ClientMessage("ping", 42)),
        ('{"type":"ping","id":-1.5}', ClientMessage("ping", -1.5)),
        ('{"type":"ping"}', ClientMessage("ping")),
        ('{"type":"ping","id":null}', ClientMessage("ping")),
        ('{"type":"auth","id":"r1","token":"a.b.c"}', ClientMessage("auth", "r1", token="a.b.c")),
        # Unknown fields, of any shape, are ignored.
        ('{"type":"ping","extra":{"a":[1,2,{"b":null}]},"x":true}', ClientMessage("ping")),
        # Unknown types are the protocol layer's business.
        ('{"type":"hello","id":7}', ClientMessage("hello", 7)),
        # Whitespace anywhere JSON allows it.
        (' \r\n\t{ "type" : "ping" , "id" : "a" } \n', ClientMessage("ping", "a")),
        # Duplicate keys: the last one wins, as in Go.
        (
            '{"type":"ping","type":"subscribe","symbols":["AAPL"]}',
            ClientMessage("subscribe", symbols=["AAPL"]),
        ),
        # Null fields count as absent; a null symbol is "" (dropped by the normaliser), like Go.
        ('{"type":"auth","symbols":null,"token":null}', ClientMessage("auth")),
        (
            '{"type":"subscribe","symbols":["A",null]}',
            ClientMessage("subscribe", symbols=["A", ""]),
        ),
        ('{"type":"auth","token":""}', ClientMessage("auth")),
        ('{"type":"subscribe","symbols":[]}', ClientMessage("subscribe", symbols=[])),
        (
            '{"type":"subscribe","id":"x","symbols":["BTC/USD","A~B","../etc"]}',
            ClientMessage("subscribe", "x", ["BTC/USD", "A~B", "../etc"]),
        ),
        # Escapes are decoded; a lone surrogate becomes U+FFFD as in Go.
        ('{"type":"\\u0070ing","id":"\\ud800"}', ClientMessage("ping", "\ufffd")),
    ],
)
def test_decode_accepts(data: str, want: ClientMessage) -> None:
    assert decode_client_message(data.encode()) == want


def test_decode_invalid_utf8_is_replaced_like_go() -> None:
    assert decode_client_message(b'{"type":"\xc0\xaf"}').type == "\ufffd\ufffd"


# --- the error table of protocol.md section 5 ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ('{"type":', "syntax error at byte 8"),
        ("", "syntax error at byte 0"),
        ("not json", "syntax error at byte 0"),
        ('{"type":"ping"} {}', "syntax error at byte 16"),
        ('{"type":"ping",}', "syntax error at byte 15"),
        ('{"type":"ping" "id":1}', "syntax error at byte 15"),
        ("{'type':'ping'}", "syntax error at byte 1"),
        ('{"type":"ping","id":NaN}', "invalid JSON"),
        ('{"type":"ping","x":Infinity}', "invalid JSON"),
        ("[]", "the message must be a JSON object"),
        ("[1,2]", "the message must be a JSON object"),
        ("null", "the message must be a JSON object"),
        ('"x"', "the message must be a JSON object"),
        ("42", "the message must be a JSON object"),
        ('{"type":1}', 'field "type" must be a string'),
        ('{"type":["ping"]}', 'field "type" must be a string'),
        ('{"type":"subscribe","symbols":"AAPL"}', 'field "symbols" must be a list of strings'),
        ('{"type":"subscribe","symbols":[1,null,{}]}', 'field "symbols" must be a list of strings'),
        ('{"type":"subscribe","symbols":{"AAPL":1}}', 'field "symbols" must be a list of strings'),
        ('{"type":"auth","token":42}', 'field "token" must be a string'),
        ('{"type":"auth","token":["a"]}', 'field "token" must be a string'),
    ],
)
def test_bad_json(data: str, detail: str) -> None:
    err = decode_error(data)
    assert err.code == "bad_json"
    assert err.message == "message is not a JSON object of the documented shape: " + detail
    assert err.id is None  # never an id, even when the message had a valid one


def test_bad_json_type_error_drops_a_valid_id() -> None:
    err = decode_error('{"type":1,"id":"x"}')
    assert (err.code, err.id) == ("bad_json", None)


def test_bad_json_deep_nesting_is_refused_not_crashed() -> None:
    err = decode_error('{"type":"ping","x":' + "[" * 5000 + "]" * 5000 + "}")
    assert err.code == "bad_json"


@pytest.mark.parametrize(
    ("data", "want_id"),
    [
        ("{}", None),
        ('{"id":"z"}', "z"),
        ('{"id":7,"symbols":["A"]}', 7),
        ('{"type":null,"id":"z"}', "z"),
        ('{"type":"","id":"z"}', "z"),
    ],
)
def test_type_missing_is_bad_request_with_id(data: str, want_id: object) -> None:
    err = decode_error(data)
    assert (err.code, err.message, err.id) == ("bad_request", '"type" is missing', want_id)


# --- id rules --------------------------------------------------------------------------------


def test_id_of_62_characters_is_64_bytes_and_accepted() -> None:
    id_ = "x" * 62
    assert decode_client_message(f'{{"type":"ping","id":"{id_}"}}'.encode()).id == id_


def test_id_of_63_characters_is_refused_without_id() -> None:
    err = decode_error(f'{{"type":"ping","id":"{"x" * 63}"}}')
    assert err.code == "bad_request"
    assert err.message == "id must be a string or number of at most 64 bytes, got 65 bytes"
    assert err.id is None


def test_id_is_measured_as_written() -> None:
    # "\u00e9" is 6 bytes as written, 1 character decoded: 10 of them plus quotes = 62 bytes.
    ok = '{"type":"ping","id":"' + "\\u00e9" * 10 + '"}'
    assert decode_client_message(ok.encode()).id == "\u00e9" * 10
    too_long = '{"type":"ping","id":"' + "\\u00e9" * 11 + '"}'
    assert decode_error(too_long).code == "bad_request"
    # Numbers too: 64 digits pass, 65 do not.
    assert decode_client_message(b'{"type":"ping","id":' + b"1" * 64 + b"}").id == int("1" * 64)
    assert decode_error(b'{"type":"ping","id":' + b"1" * 65 + b"}").code == "bad_request"


@pytest.mark.parametrize(
    "raw_id",
    ['{"a":1}', "[1]", "true", "false", "1e999", "-1e999", "{}"],
)
def test_id_of_another_kind_is_bad_request_without_id(raw_id: str) -> None:
    err = decode_error('{"type":"ping","id":' + raw_id + "}")
    assert err.code == "bad_request"
    assert err.message.startswith("id must be a string or number of at most 64 bytes")
    assert err.id is None


def test_invalid_id_is_checked_before_type() -> None:
    err = decode_error('{"id":true}')
    assert err.message.startswith("id must be")


# --- hypothesis: only ProtocolError, and an error answer always encodes ----------------------


def check_decode(data: bytes) -> None:
    try:
        msg = decode_client_message(data)
    except ProtocolError as err:
        answer = json.loads(err.encode())
        assert answer["code"] in {"bad_json", "bad_request"}
        if len(data) > 40:
            assert data.decode("utf-8", "replace") not in err.message
        return
    assert msg.type
    assert msg.id is None or isinstance(msg.id, str | int | float)
    assert not isinstance(msg.id, bool)
    json.loads(encode_pong(msg.id))


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    check_decode(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values | st.sampled_from(["ping", "subscribe", "auth", ""]),
        "id": json_values,
        "symbols": json_values | st.lists(st.text(max_size=6), max_size=4),
        "token": json_values,
    },
)


@settings(max_examples=500)
@given(json_values | message_like)
def test_arbitrary_json_raises_only_protocol_error(value: Any) -> None:
    check_decode(json.dumps(value).encode())
    check_decode(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@given(st.text(max_size=80))
def test_arbitrary_text_in_fields(text: str) -> None:
    for template in ('{"type":%s}', '{"type":"ping","id":%s}', '{"type":"a","symbols":[%s]}'):
        check_decode((template % json.dumps(text)).encode())


# --- encoders --------------------------------------------------------------------------------


def test_encode_error() -> None:
    assert encode_error("bad_request", '"symbols" must be a non-empty list', "x") == (
        b'{"type":"error","id":"x","code":"bad_request",'
        b'"message":"\\"symbols\\" must be a non-empty list"}'
    )
    assert encode_error("token_expired", messages.MSG_TOKEN_EXPIRED) == (
        b'{"type":"error","code":"token_expired","message":"the token has expired"}'
    )
    assert encode_error("unknown_type", messages.unknown_type_message("hello"), 7) == (
        b'{"type":"error","id":7,"code":"unknown_type",'
        b'"message":"unknown message type \\"hello\\""}'
    )


def test_documented_error_texts() -> None:
    assert json.loads(encode_error("token_expired", messages.MSG_CONNECTION_TOKEN_EXPIRED))[
        "message"
    ] == ('the token expired; send {"type":"auth","token":...} before exp to extend the connection')
    assert messages.too_many_symbols_message(4, 3) == (
        "subscription would hold 4 symbols; the limit is 3"
    )
    assert messages.rate_limited_message(10.0, 20) == (
        "more than 10 messages per second (burst 20): this message was not processed"
    )
    assert messages.rate_limited_message(2.5, 5).startswith("more than 2.5 messages")
    assert (
        messages.unknown_type_message("x" * 40) == 'unknown message type "' + "x" * 32 + '\u2026"'
    )
    assert set(messages.TOKEN_ERROR_MESSAGES) == {
        "malformed_token",
        "invalid_token",
        "token_expired",
    }


def test_protocol_error_encode_keeps_id() -> None:
    err = ProtocolError("subject_mismatch", messages.MSG_SUBJECT_MISMATCH, "r2")
    assert err.encode() == (
        b'{"type":"error","id":"r2","code":"subject_mismatch",'
        b'"message":"the token is for another user; open a new connection for it"}'
    )


def test_encode_pong() -> None:
    assert encode_pong(42) == b'{"type":"pong","id":42}'
    assert encode_pong() == b'{"type":"pong"}'
    assert encode_pong("a") == b'{"type":"pong","id":"a"}'
    assert encode_pong(0) == b'{"type":"pong","id":0}'  # a falsy id is still an id


def test_encode_subscribed() -> None:
    assert encode_subscribed("s1", ["AAPL", "MSFT"], [], ["NVDA"]) == (
        b'{"type":"subscribed","id":"s1","symbols":["AAPL","MSFT"],"invalid":[],'
        b'"forbidden_symbols":["NVDA"]}'
    )
    assert encode_subscribed(None, [], ["NOPE"], []) == (
        b'{"type":"subscribed","symbols":[],"invalid":["NOPE"],"forbidden_symbols":[]}'
    )


def test_encode_authenticated() -> None:
    # 2026-11-29T03:12:38Z
    exp = 1795921958.0
    assert encode_authenticated("r1", exp, ["MSFT"]) == (
        b'{"type":"authenticated","id":"r1","expires_at":"2026-11-29T03:12:38Z",'
        b'"forbidden_symbols":["MSFT"]}'
    )
    assert encode_authenticated(None, exp + 0.9, []) == (
        b'{"type":"authenticated","expires_at":"2026-11-29T03:12:38Z","forbidden_symbols":[]}'
    )


def test_expires_at_out_of_range_still_encodes() -> None:
    assert messages.format_expires_at(1e20) == "9999-12-31T23:59:59Z"
    assert messages.format_expires_at(0) == "1970-01-01T00:00:00Z"


def test_non_ascii_is_escaped_in_answers() -> None:
    out = encode_error("unknown_type", messages.unknown_type_message("\u00e9\ud800"), "\u00e9")
    assert out.isascii()
    assert json.loads(out)["id"] == "\u00e9"


# -- escaping of echoed input and close payloads --------------------------------------------------


@given(st.recursive(st.text() | st.integers() | st.none(), lambda i: st.lists(i, max_size=4)))
def test_json_text_round_trips_and_never_holds_markup(value: Any) -> None:
    from quoted.wire.messages import json_text

    out = json_text(value)
    assert json.loads(out) == value
    assert not set(out) & set(b"<>&") and out.isascii()


@pytest.mark.parametrize(
    "payload,want",
    [
        (b"", None),
        (b"\x03", (1002, "close payload of one byte")),
        ((1000).to_bytes(2, "big"), None),
        ((4001).to_bytes(2, "big") + "bye \u00e9".encode(), None),
        ((999).to_bytes(2, "big"), (1002, "invalid close code")),
        ((1005).to_bytes(2, "big"), (1002, "invalid close code")),
        ((1006).to_bytes(2, "big"), (1002, "invalid close code")),
        ((2999).to_bytes(2, "big"), (1002, "invalid close code")),
        ((5000).to_bytes(2, "big"), (1002, "invalid close code")),
        ((1000).to_bytes(2, "big") + b"\xff", (1007, "close reason is not UTF-8")),
    ],
)
def test_close_payload_error(payload: bytes, want: tuple[int, str] | None) -> None:
    from quoted.wire.closecodes import close_payload_error

    assert close_payload_error(payload) == want


@given(st.binary(max_size=130))
def test_close_payload_error_is_total(payload: bytes) -> None:
    from quoted.wire.closecodes import close_payload_error

    got = close_payload_error(payload)
    assert got is None or got[0] in (1002, 1007)
