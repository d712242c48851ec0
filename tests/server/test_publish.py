"""POST /v1/quotes over real sockets: every status, items per item, what subscribers see."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from quoted.server.errors import HTTPError
from quoted.server.publish import read_items
from quoted.server.store import format_time_ms
from tests.harness import QuotedServer, eventually, http, sleep

ensure = pytest_twisted.ensureDeferred

PUBLISH = {"feed": {"source": "publish"}}


def body(*items: dict[str, Any]) -> bytes:
    return json.dumps({"quotes": list(items)}).encode()


def error(r: Any) -> tuple[int, str]:
    assert r.headers["content-type"] == "application/json", r
    return r.status, r.json()["error"]["code"]


@pytest.fixture
def publisher(start_server: Any) -> Any:
    async def start(**sections: dict[str, Any]) -> QuotedServer:
        s: QuotedServer = await start_server(**PUBLISH, **sections)
        return s

    return start


@ensure
async def test_refusals_before_any_item(publisher: Any) -> None:
    s = await publisher(publish={"max_items": 3, "max_body": 16384})
    ok = s.publisher_token()
    good = body({"symbol": "AAPL", "price": 150})
    r = await s.post("/v1/quotes", good)
    assert error(r) == (401, "missing_token")
    assert r.headers["www-authenticate"] == 'Bearer realm="quoted"'
    r = await s.post("/v1/quotes", good, s.token())  # a subscriber's token: no scope
    assert error(r) == (403, "insufficient_scope")
    r = await s.post("/v1/quotes", good, s.publisher_token(scope="quotes:read"))
    assert error(r) == (403, "insufficient_scope")
    r = await s.post("/v1/quotes", good, ok, {"Content-Type": "text/plain"})
    assert error(r) == (415, "unsupported_media_type")
    r = await s.post("/v1/quotes", good, ok, {"Content-Type": "application/json; charset=utf-8"})
    assert r.status == 200
    for bad in (
        b'{"quotes": [',
        b"[]",
        b'{"quotes": {}}',
        b'{"quotes": [], "extra": 1}',
        b"\xff\xfe",
        b"[" * 3000 + b"]" * 3000,
        b'{"quotes": [{"symbol": "AAPL", "price": 1' + b"0" * 5000 + b"}]}",
        body(*[{"symbol": "AAPL", "price": 1}] * 4),
    ):
        r = await s.post("/v1/quotes", bad, ok)
        assert error(r) == (400, "bad_request"), bad[:40]
        assert r.json()["error"]["message"]
    r = await s.post("/v1/quotes", b"x" * 16385, ok)
    assert error(r) == (413, "body_too_large")
    r = await http(s.port, "PUT /v1/quotes HTTP/1.1", {"Content-Length": "0"})
    assert error(r) == (405, "method_not_allowed") and r.headers["allow"] == "GET, HEAD, POST"
    r = await s.get("/metrics")
    metrics = r.body.decode()
    assert 'quoted_rejections_total{code="insufficient_scope"} 2.0' in metrics
    assert 'quoted_rejections_total{code="bad_request"} 8.0' in metrics


@ensure
async def test_publishing_is_off_with_another_source(start_server: Any) -> None:
    s = await start_server()
    r = await s.post("/v1/quotes", body({"symbol": "AAPL", "price": 1}), s.publisher_token())
    assert error(r) == (405, "method_not_allowed") and r.headers["allow"] == "GET, HEAD"


class Raw(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


async def open_raw(port: int) -> Raw:
    proto = Raw()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: proto))
    return proto


def head(s: QuotedServer, extra: str) -> bytes:
    return (
        f"POST /v1/quotes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.publisher_token()}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


@ensure
async def test_a_declared_large_body_is_refused_without_being_read(publisher: Any) -> None:
    s = await publisher(publish={"max_body": 1024})
    proto = await open_raw(s.port)
    proto.transport.write(head(s, "Content-Length: 1000000000\r\n"))  # and never the body
    await eventually(lambda: proto.lost, timeout=3)
    assert proto.data.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"body_too_large"' in proto.data


@ensure
async def test_a_chunked_body_is_cut_at_the_limit(publisher: Any) -> None:
    s = await publisher(publish={"max_body": 1024})
    proto = await open_raw(s.port)
    proto.transport.write(head(s, "Transfer-Encoding: chunked\r\n"))
    sent = 0
    while not proto.lost and sent < 1_000_000:
        proto.transport.write(b"200\r\n" + b" " * 0x200 + b"\r\n")
        sent += 0x200
        await sleep(0.001)
    assert proto.lost and sent < 100_000, sent
    assert proto.data.startswith(b"HTTP/1.1 413 ")


@ensure
async def test_a_body_that_trickles_is_dropped(publisher: Any) -> None:
    s = await publisher()
    s.service.getServiceNamed("listener").factory.body_timeout = 0.3
    proto = await open_raw(s.port)
    proto.transport.write(head(s, "Content-Length: 100\r\n") + b'{"quotes":')
    await eventually(lambda: proto.lost, timeout=3)
    assert proto.data.startswith(b"HTTP/1.1 408 ")


@ensure
async def test_good_and_bad_items_and_what_subscribers_see(publisher: Any) -> None:
    s = await publisher()
    c = await s.connect("symbols=AAPL,MSFT,TSLA")
    await c.wait_type("quotes_patch")
    first = len(c.messages)
    now = int(reactor.seconds() * 1000)
    r = await s.post(
        "/v1/quotes",
        body(
            {"symbol": "AAPL", "price": 151.25, "time": format_time_ms(now), "volume": 1200},
            {"symbol": "NOPE", "price": 1},
            {"symbol": "MSFT", "price": 0},
            {"symbol": "TSLA", "price": 250.1, "reference_price": 240},
            {"symbol": "AAPL", "price": 151.5, "time": format_time_ms(now + 1)},
            {"symbol": "AAPL", "price": 140, "time": format_time_ms(now - 1)},
        ),
        s.publisher_token(),
    )
    assert r.status == 200 and r.headers["cache-control"] == "no-store"
    answer = r.json()
    assert answer["accepted"] == 3
    assert [(x["index"], x["symbol"], x["code"]) for x in answer["rejected"]] == [
        (1, "NOPE", "unknown_symbol"),
        (2, "MSFT", "bad_price"),
        (5, "AAPL", "stale"),
    ]
    await c.wait_type("quotes_patch", start=first)
    await sleep(0.05)
    update = c.messages[first:]
    assert len(update) == 1  # one broadcast for the request, one message on this connection
    assert update[0]["seq"] == c.messages[first - 1]["seq"] + 1
    rest = await s.rest_quotes(["AAPL", "MSFT", "TSLA"])
    assert c.quotes() == rest
    assert rest["AAPL"]["current_price"] == 151.5 and rest["AAPL"]["volume"] == 1200
    assert rest["AAPL"]["last_updated"] == format_time_ms(now + 1)
    assert rest["TSLA"]["base_price"] == 240 and rest["TSLA"]["change"] == 10.1
    # an older tick later never overwrites the newer one
    r = await s.post(
        "/v1/quotes",
        body({"symbol": "AAPL", "price": 1, "time": format_time_ms(now)}),
        s.publisher_token(),
    )
    assert r.json()["rejected"][0]["code"] == "stale"
    assert (await s.rest_quotes(["AAPL"]))["AAPL"]["current_price"] == 151.5
    metrics = (await s.get("/metrics")).body.decode()
    assert 'quoted_publish_items_total{result="accepted"} 3.0' in metrics
    assert 'quoted_publish_items_total{result="stale"} 2.0' in metrics
    assert "quoted_publish_latency_seconds_count 1.0" in metrics


@ensure
async def test_the_token_symbols_limit_publishing(publisher: Any) -> None:
    s = await publisher()
    tok = s.publisher_token(symbols=["MSFT"])
    r = await s.post(
        "/v1/quotes", body({"symbol": "AAPL", "price": 1}, {"symbol": "MSFT", "price": 2}), tok
    )
    assert r.json()["accepted"] == 1
    assert r.json()["rejected"][0]["code"] == "forbidden_symbol"


@ensure
async def test_many_posts_keep_the_documents_equal_to_rest(publisher: Any) -> None:
    s = await publisher()
    symbols = ["AAPL", "MSFT", "GOOGL", "TSLA"]
    clients = [await s.connect("symbols=" + ",".join(symbols), compress=i == 1) for i in range(3)]
    for c in clients:
        await c.wait_type("quotes_patch")
    tok = s.publisher_token()
    for i in range(40):
        items = [{"symbol": sym, "price": 100 + i + j / 100} for j, sym in enumerate(symbols)]
        if i % 3 == 0:
            items.append({"symbol": "AAPL", "price": 1000 + i, "volume": i})
        r = await s.post("/v1/quotes", body(*items[i % 2 :]), tok)
        assert r.status == 200 and not r.json()["rejected"]
    rest = await s.rest_quotes(symbols)
    for c in clients:
        await eventually(lambda c=c: c.quotes() == rest)
        assert c.seqs == list(range(1, len(c.seqs) + 1))
    assert rest["AAPL"]["volume"] == 39
    r = await s.get("/v1/instruments", s.token())
    aapl = next(i for i in r.json()["instruments"] if i["symbol"] == "AAPL")
    assert aapl["volume"] == 39 and aapl["base_price"] == rest["AAPL"]["base_price"]


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | JSON.map(lambda v: json.dumps({"quotes": v}).encode()))
def test_any_body_is_items_or_a_400(raw_body: bytes) -> None:
    try:
        items = read_items(raw_body, "application/json", 10)
    except HTTPError as e:
        assert (e.status, e.code) == (400, "bad_request") and e.message
    else:
        assert isinstance(items, list) and len(items) <= 10
