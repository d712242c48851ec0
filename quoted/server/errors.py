"""HTTP rejections: one status, code and JSON body each (docs/protocol.md section 2).

Every refusal, of a WebSocket handshake or a REST request, is an ``HTTPError``
answered as ``{"error":{"code":...,"message":...}}`` with ``Cache-Control:
no-store``, ``WWW-Authenticate`` on 401 and ``Retry-After`` on 429 and 503.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from quoted.server.auth import TokenError

RETRY_AFTER = 5
REALM = b'Bearer realm="quoted"'


class HTTPError(Exception):
    """A request refused with a status, a machine-readable code and a human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: int = 0,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.headers = headers

    @classmethod
    def from_token(cls, e: TokenError) -> HTTPError:
        return cls(401, e.code, e.message)

    def body(self) -> bytes:
        return (
            json.dumps(
                {"error": {"code": self.code, "message": self.message}}, separators=(",", ":")
            ).encode()
            + b"\n"
        )

    def all_headers(self) -> list[tuple[bytes, bytes]]:
        out = [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")]
        if self.status == 401:
            out.append((b"WWW-Authenticate", REALM))
        if self.retry_after:
            out.append((b"Retry-After", str(self.retry_after).encode()))
        out.extend(self.headers)
        return out

    def render(self, request: Request) -> bytes:
        """Set the status and headers on a twisted.web request; return the body."""
        # twisted.web knows no reason phrase for some statuses (431): give it ours
        request.setResponseCode(self.status, HTTPStatus(self.status).phrase.encode())
        for k, v in self.all_headers():
            request.setHeader(k, v)
        return self.body()

    def raw_response(self) -> bytes:
        """The whole HTTP/1.1 response, for a socket no longer owned by twisted.web."""
        body = self.body()
        reason = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {reason}".encode()]
        lines += [k + b": " + v for k, v in self.all_headers()]
        lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def not_found() -> HTTPError:
    return HTTPError(404, "not_found", "no such path")


def method_not_allowed(allow: bytes = b"GET, HEAD") -> HTTPError:
    return HTTPError(
        405,
        "method_not_allowed",
        "only GET and HEAD are allowed"
        if allow == b"GET, HEAD"
        else f"the methods allowed here are {allow.decode()}",
        headers=((b"Allow", allow),),
    )


def shutting_down() -> HTTPError:
    return HTTPError(
        503,
        "shutting_down",
        "the server is shutting down; retry on another instance or later",
        RETRY_AFTER,
    )


def server_full() -> HTTPError:
    return HTTPError(
        503,
        "server_full",
        "the server holds its maximum number of connections; retry later",
        RETRY_AFTER,
    )


def not_websocket(why: str) -> HTTPError:
    return HTTPError(400, "not_websocket", f"the request is not a WebSocket upgrade: {why}")


_log = Logger()


def answer_later(
    request: Request,
    d: Deferred[Any],
    ok: Callable[[Any], bytes],
    failed: Callable[[Failure], bytes],
) -> bytes | int:
    """A route's answer to a Deferred: the body now if ``d`` has fired (``ok(result)`` or
    ``failed(failure)``), else NOT_DONE_YET and the body written when it fires, unless the
    client has gone. A body function that raises is logged and answered 500."""
    state: dict[str, Any] = {}

    def settle(result: object) -> None:
        try:
            body = failed(result) if isinstance(result, Failure) else ok(result)
        except Exception:
            _log.failure("answer failed", log_id="quoted.http.answer_failed")
            body = HTTPError(500, "internal_error", "the server failed; retry later").render(
                request
            )
        if "waiting" not in state:
            state["body"] = body
        elif "gone" not in state:
            request.write(body)
            request.finish()

    d.addBoth(settle)
    if "body" in state:
        body: bytes = state["body"]
        return body
    state["waiting"] = True
    request.notifyFinish().addErrback(lambda _: state.setdefault("gone", True))
    return NOT_DONE_YET
