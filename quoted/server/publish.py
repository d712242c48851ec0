"""``POST /v1/quotes``: the publish API (docs/protocol.md, "Publishing").

The router (quoted.server.web) has verified the token and read the body within
``[publish] max_body`` (quoted.server.web.QuotedRequest); this module checks what is left in
the documented order (the ``quotes:publish`` scope: 403; the media type: 415; the JSON and its
shape: 400), hands the items to the sink (quoted.server.feeds.sink: per item, good ones
applied) and answers ``{"accepted": N, "rejected": [...]}``, or 503 ``broker_unavailable``
when the shared order cannot be reached.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from quoted.server.auth import Claims
from quoted.server.errors import RETRY_AFTER, HTTPError, answer_later
from quoted.server.feeds.sink import BrokerUnavailable, FeedSink, PublishResult

__all__ = ["PUBLISH_SCOPE", "PublishRoute", "read_items"]

PUBLISH_SCOPE = "quotes:publish"
_log = Logger()


def read_items(body: bytes, content_type: str | None, max_items: int) -> list[object]:
    """The items of a publish body, or the HTTPError (415, 400) saying why not."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise HTTPError(
            415,
            "unsupported_media_type",
            "the body must be Content-Type: application/json",
        )
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPError(400, "bad_request", "the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise HTTPError(400, "bad_request", f"the body is not JSON: {e}") from None
    except RecursionError:
        raise HTTPError(400, "bad_request", "the body is nested too deeply") from None
    except ValueError:  # an integer of more digits than Python reads
        raise HTTPError(400, "bad_request", "the body holds a number too long to read") from None
    if not isinstance(doc, dict) or set(doc) != {"quotes"}:
        raise HTTPError(400, "bad_request", 'the body must be {"quotes": [ITEM, ...]}')
    items = doc["quotes"]
    if not isinstance(items, list):
        raise HTTPError(400, "bad_request", '"quotes" must be a list of items')
    if len(items) > max_items:
        raise HTTPError(
            400,
            "bad_request",
            f"{len(items)} items; the limit is {max_items} ([publish] max_items)",
        )
    return items


def broker_unavailable() -> HTTPError:
    return HTTPError(
        503,
        "broker_unavailable",
        "the shared market (Redis) cannot be reached: nothing was applied; retry later",
        RETRY_AFTER,
    )


class PublishRoute:
    """The handler the router calls with a verified token's claims."""

    def __init__(self, sink: FeedSink, max_items: int) -> None:
        self.sink = sink
        self.max_items = max_items

    def __call__(self, request: Request, claims: Claims) -> bytes | int:
        if PUBLISH_SCOPE not in claims.scopes:
            raise HTTPError(
                403,
                "insufficient_scope",
                f"the token's scope claim does not include {PUBLISH_SCOPE}",
            )
        content_type = request.getHeader(b"content-type")
        body = request.content.getvalue() if request.content is not None else b""
        media = content_type.decode("latin-1") if content_type else None
        items = read_items(body, media, self.max_items)

        def failed(failure: Failure) -> bytes:
            if failure.check(BrokerUnavailable):
                return broker_unavailable().render(request)
            _log.failure("publish failed", failure, log_id="quoted.publish.failed")
            return HTTPError(500, "internal_error", "the server failed; retry later").render(
                request
            )

        def accepted(result: PublishResult) -> bytes:
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            return json.dumps(result.as_json(), separators=(",", ":")).encode() + b"\n"

        d = self.sink.publish(items, symbols=claims.symbols)
        return answer_later(request, d, accepted, failed)
