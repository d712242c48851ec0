"""Client messages in, server control messages out (docs/protocol.md sections 4 and 5).

``quotes_patch`` is not here: it is built once per tick on the fan-out path. These messages
are rare, so they are encoded with the standard :mod:`json` module.

Decoding follows the Go prototype's rules (``internal/ws/protocol.go``):

* the message must be a JSON object (else ``bad_json``); a field of the wrong type
  (``"symbols":"AAPL"``, ``"symbols":[1]``, ``"type":1``, ``"token":42``) is ``bad_json`` too;
* ``id``, when present and not ``null``, must be a string or a number of at most 64 bytes as
  written, quotes included; otherwise ``bad_request`` without an ``id``;
* ``type`` missing (or ``null`` or ``""``) is ``bad_request``, echoing the ``id``;
* unknown fields are ignored; an unknown ``type`` value is left to the protocol layer.

Error messages never quote the input, except an ``unknown_type`` answer's first 32 characters
of the type.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

MAX_MESSAGE_BYTES: Final = 4096
"""The largest client message, after reassembly and decompression (larger: close 1009)."""

MAX_ID_BYTES: Final = 64
"""The longest ``id``, as written in the message (JSON encoded, quotes included)."""

# Error codes of {"type":"error"} messages.
CODE_BAD_JSON: Final = "bad_json"
CODE_UNKNOWN_TYPE: Final = "unknown_type"
CODE_BAD_REQUEST: Final = "bad_request"
CODE_TOO_MANY_SYMBOLS: Final = "too_many_symbols"
CODE_RATE_LIMITED: Final = "rate_limited"
CODE_MALFORMED_TOKEN: Final = "malformed_token"
CODE_INVALID_TOKEN: Final = "invalid_token"
CODE_TOKEN_EXPIRED: Final = "token_expired"
CODE_SUBJECT_MISMATCH: Final = "subject_mismatch"

# Fixed human texts of those codes (the ones with variable parts are functions below).
BAD_JSON_PREFIX: Final = "message is not a JSON object of the documented shape: "
MSG_TYPE_MISSING: Final = '"type" is missing'
MSG_SYMBOLS_REQUIRED: Final = '"symbols" must be a non-empty list'
MSG_TOKEN_MISSING: Final = '"token" is missing'
MSG_MALFORMED_TOKEN: Final = "the token is not a well-formed JWT"
MSG_INVALID_TOKEN: Final = "the token's signature, algorithm or claims are not accepted"
MSG_TOKEN_EXPIRED: Final = "the token has expired"
"""The answer to an ``auth`` message whose token has expired."""
MSG_CONNECTION_TOKEN_EXPIRED: Final = (
    'the token expired; send {"type":"auth","token":...} before exp to extend the connection'
)
"""Sent without an id just before close 4001, when the connection's own token expires."""
MSG_SUBJECT_MISMATCH: Final = "the token is for another user; open a new connection for it"

# The messages of auth's TokenError codes, as answers to an ``auth`` message.
TOKEN_ERROR_MESSAGES: Final[dict[str, str]] = {
    CODE_MALFORMED_TOKEN: MSG_MALFORMED_TOKEN,
    CODE_INVALID_TOKEN: MSG_INVALID_TOKEN,
    CODE_TOKEN_EXPIRED: MSG_TOKEN_EXPIRED,
}

_UNKNOWN_TYPE_QUOTE_CHARS: Final = 32

MessageId = str | int | float | None


def unknown_type_message(type_: str) -> str:
    """``unknown message type "hello"``, quoting at most 32 characters of the type."""
    if len(type_) > _UNKNOWN_TYPE_QUOTE_CHARS:
        type_ = type_[:_UNKNOWN_TYPE_QUOTE_CHARS] + "\u2026"
    return "unknown message type " + json.dumps(type_, ensure_ascii=False)


def too_many_symbols_message(would_hold: int, limit: int) -> str:
    return f"subscription would hold {would_hold} symbols; the limit is {limit}"


def rate_limited_message(rate: float, burst: int) -> str:
    return f"more than {rate:g} messages per second (burst {burst}): this message was not processed"


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One decoded client message.

    ``type`` is never empty. ``symbols`` is None when absent or null (a null item is kept as
    ``""``, as Go decoded it; the symbol normaliser drops empty entries). ``token`` is None when
    absent, null or empty.
    """

    type: str
    id: MessageId = None
    symbols: list[str] | None = None
    token: str | None = None


class ProtocolError(Exception):
    """A client mistake, answered with an ``error`` message; the connection stays open."""

    def __init__(self, code: str, message: str, id: MessageId = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.id = id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def encode(self) -> bytes:
        """This error as the ``error`` message answering it."""
        return encode_error(self.code, self.message, self.id)


def _reject_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are not JSON.
    raise ValueError(name)


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _skip(text: str, idx: int) -> int:
    """The index of the first non-whitespace character at or after idx."""
    match = _WHITESPACE.match(text, idx)
    return match.end() if match else idx


class _SyntaxError(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def _bad_json(detail: str) -> ProtocolError:
    return ProtocolError(CODE_BAD_JSON, BAD_JSON_PREFIX + detail)


def _clean(s: str) -> str:
    """Replace lone surrogates (from ``"\\ud800"`` escapes) by U+FFFD, as Go does."""
    if s.isascii():
        return s
    return _SURROGATE.sub("\ufffd", s)


def _parse_object(text: str) -> dict[str, tuple[Any, str]]:
    """Parse a top-level JSON object into {key: (value, the value as written)}.

    Raises _SyntaxError (at a character position) for a syntax error, and TypeError when the
    text is valid JSON but not an object. Later duplicate keys win, as in Go.
    """
    idx = _skip(text, 0)
    if not text.startswith("{", idx):
        try:
            _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise _SyntaxError(exc.pos) from None
        raise TypeError("not an object")
    fields: dict[str, tuple[Any, str]] = {}
    idx = _skip(text, idx + 1)
    if text.startswith("}", idx):
        idx += 1
    else:
        while True:
            if not text.startswith('"', idx):
                raise _SyntaxError(idx)
            try:
                key, idx = _DECODER.raw_decode(text, idx)
            except json.JSONDecodeError as exc:
                raise _SyntaxError(exc.pos) from None
            idx = _skip(text, idx)
            if not text.startswith(":", idx):
                raise _SyntaxError(idx)
            start = _skip(text, idx + 1)
            try:
                value, end = _DECODER.raw_decode(text, start)
            except json.JSONDecodeError as exc:
                raise _SyntaxError(exc.pos) from None
            fields[key] = (value, text[start:end])
            idx = _skip(text, end)
            if text.startswith(",", idx):
                idx = _skip(text, idx + 1)
            elif text.startswith("}", idx):
                idx += 1
                break
            else:
                raise _SyntaxError(idx)
    idx = _skip(text, idx)
    if idx != len(text):
        raise _SyntaxError(idx)
    return fields


def _valid_id(value: Any, raw: str) -> bool:
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return False
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int)


def decode_client_message(data: bytes) -> ClientMessage:
    """Decode one client text message; raises only :class:`ProtocolError`."""
    # The WebSocket layer has already refused text that is not UTF-8 (close 1007); replacing
    # bad bytes here, as Go's decoder does, keeps this function total.
    text = data.decode("utf-8", "replace")
    try:
        fields = _parse_object(text)
    except _SyntaxError as exc:
        offset = len(text[: exc.pos].encode("utf-8", "surrogatepass"))
        raise _bad_json(f"syntax error at byte {offset}") from None
    except TypeError:
        raise _bad_json("the message must be a JSON object") from None
    except RecursionError:
        raise _bad_json("nested too deeply") from None
    except ValueError:  # NaN/Infinity, an integer of more than 4300 digits
        raise _bad_json("invalid JSON") from None

    type_: str = ""
    symbols: list[str] | None = None
    token: str | None = None
    if "type" in fields:
        value = fields["type"][0]
        if isinstance(value, str):
            type_ = _clean(value)
        elif value is not None:
            raise _bad_json('field "type" must be a string')
    if "symbols" in fields:
        value = fields["symbols"][0]
        if isinstance(value, list):
            symbols = []
            for item in value:
                if isinstance(item, str):
                    symbols.append(_clean(item))
                elif item is None:
                    symbols.append("")
                else:
                    raise _bad_json('field "symbols" must be a list of strings')
        elif value is not None:
            raise _bad_json('field "symbols" must be a list of strings')
    if "token" in fields:
        value = fields["token"][0]
        if isinstance(value, str):
            token = _clean(value) or None
        elif value is not None:
            raise _bad_json('field "token" must be a string')

    id_: MessageId = None
    if "id" in fields:
        value, raw = fields["id"]
        if value is not None:
            if not _valid_id(value, raw):
                size = len(raw.encode("utf-8", "surrogatepass"))
                raise ProtocolError(
                    CODE_BAD_REQUEST,
                    f"id must be a string or number of at most {MAX_ID_BYTES} bytes, "
                    f"got {size} bytes",
                )
            id_ = _clean(value) if isinstance(value, str) else value
    if not type_:
        raise ProtocolError(CODE_BAD_REQUEST, MSG_TYPE_MISSING, id_)
    return ClientMessage(type=type_, id=id_, symbols=symbols, token=token)


_HTML_UNSAFE: Final = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def json_text(value: Any) -> bytes:
    """Compact ASCII JSON with ``<``, ``>`` and ``&`` escaped (``\\u003c``...), as Go's
    encoding/json writes them: client input echoed back (invalid symbols, ids) can never
    form markup, even in a client that pastes a message into HTML."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.translate(_HTML_UNSAFE).encode("ascii")


def _encode(message: dict[str, Any]) -> bytes:
    return json_text(message)


# close codes a peer may send (RFC 6455 7.4; Autobahn's list plus the private range)
def _with_id(type_: str, id: MessageId) -> dict[str, Any]:
    message: dict[str, Any] = {"type": type_}
    if id is not None:
        message["id"] = id
    return message


def encode_error(code: str, message: str, id: MessageId = None) -> bytes:
    """``{"type":"error","id":..,"code":..,"message":..}``, without ``id`` when None."""
    out = _with_id("error", id)
    out["code"] = code
    out["message"] = message
    return _encode(out)


def encode_pong(id: MessageId = None) -> bytes:
    return _encode(_with_id("pong", id))


def encode_subscribed(
    id: MessageId, symbols: list[str], invalid: list[str], forbidden: list[str]
) -> bytes:
    """The ack of subscribe/unsubscribe: the whole current set (sorted by the caller)."""
    out = _with_id("subscribed", id)
    out["symbols"] = list(symbols)
    out["invalid"] = list(invalid)
    out["forbidden_symbols"] = list(forbidden)
    return _encode(out)


_LATEST_RFC3339: Final = "9999-12-31T23:59:59Z"


def format_expires_at(expires_at: float) -> str:
    """RFC 3339 UTC, whole seconds: ``2026-11-29T03:12:38Z``."""
    try:
        moment = datetime.fromtimestamp(math.floor(expires_at), UTC)
    except (OverflowError, OSError, ValueError):  # beyond datetime's years 1..9999, or NaN
        return _LATEST_RFC3339 if expires_at > 0 else "1970-01-01T00:00:00Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_authenticated(id: MessageId, expires_at: float, forbidden: list[str]) -> bytes:
    """The answer to an accepted ``auth``: the new ``exp`` and the symbols it no longer entitles."""
    out = _with_id("authenticated", id)
    out["expires_at"] = format_expires_at(expires_at)
    out["forbidden_symbols"] = list(forbidden)
    return _encode(out)
