"""quoted over real sockets: handshake, snapshot, updates, messages, close codes, REST.

Ported from the prototype's cmd/tickstream/run_test.go. Each test runs a real
quoted (quoted.server.app.build on the real reactor) and talks to it as a client would.
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import pytest
import pytest_twisted
from twisted.internet import defer

from tests.harness import (
    SECRET,
    QuotedServer,
    WSClient,
    eventually,
    http,
    raw,
    sleep,
    upgrade_headers,
)

ensure = pytest_twisted.ensureDeferred
pytestmark = pytest.mark.transports("ws", "wss")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def handshake(
    s: QuotedServer, query: str, headers: dict[str, str] | None = None, upgrade: bool = True
) -> Any:
    h = upgrade_headers() if upgrade else {}
    h.update(headers or {})
    return await http(s.port, f"GET /ws/quotes{query} HTTP/1.1", h)


def error_code(r: Any) -> str:
    assert r.headers["content-type"] == "application/json", r
    body = r.json()
    assert body["error"]["message"], body
    return str(body["error"]["code"])


# -- handshake rejections ---------------------------------------------------------------------


def _jwt(claims: dict[str, Any], key: bytes = SECRET) -> str:
    import jwt

    return jwt.encode(claims, key, algorithm="HS256")


REJECTIONS = [
    # name, query, headers (callable of server), upgrade, status, code
    ("no token", "?symbols=AAPL", lambda s: {}, True, 401, "missing_token"),
    (
        "garbage token",
        "?symbols=AAPL",
        lambda s: {"Authorization": "Bearer not-a-jwt"},
        True,
        401,
        "malformed_token",
    ),
    (
        "basic scheme",
        "?symbols=AAPL",
        lambda s: {"Authorization": "Basic dXNlcjpwYXNz"},
        True,
        401,
        "malformed_token",
    ),
    (
        "bad signature",
        "?symbols=AAPL",
        lambda s: bearer(_jwt({"sub": "x", "exp": 4e9}, b"another-secret-of-at-least-32-bytes!!")),
        True,
        401,
        "invalid_token",
    ),
    (
        "expired",
        "?symbols=AAPL",
        lambda s: bearer(_jwt({"sub": "x", "exp": 1_000_000})),
        True,
        401,
        "token_expired",
    ),
    ("no exp", "?symbols=AAPL", lambda s: bearer(_jwt({"sub": "x"})), True, 401, "invalid_token"),
    ("no sub", "?symbols=AAPL", lambda s: bearer(_jwt({"exp": 4e9})), True, 401, "invalid_token"),
    ("bad query token", "?symbols=AAPL&token=abc", lambda s: {}, True, 401, "malformed_token"),
    (
        "not a websocket request",
        "?symbols=AAPL",
        lambda s: bearer(s.token()),
        False,
        400,
        "not_websocket",
    ),
    (
        "bad websocket key",
        "?symbols=AAPL",
        lambda s: {**bearer(s.token()), "Sec-WebSocket-Key": "short"},
        True,
        400,
        "not_websocket",
    ),
    (
        "bad websocket version",
        "?symbols=AAPL",
        lambda s: {**bearer(s.token()), "Sec-WebSocket-Version": "8"},
        True,
        400,
        "not_websocket",
    ),
    (
        "symbols present but empty",
        "?symbols=",
        lambda s: bearer(s.token()),
        True,
        400,
        "no_valid_symbols",
    ),
    ("only commas", "?symbols=,,", lambda s: bearer(s.token()), True, 400, "no_valid_symbols"),
    (
        "only unknown symbols",
        "?symbols=NOPE,ZZZ",
        lambda s: bearer(s.token()),
        True,
        400,
        "no_valid_symbols",
    ),
    (
        "too many symbols",
        "?symbols=AAPL,MSFT,GOOGL,NOPE",
        lambda s: bearer(s.token()),
        True,
        400,
        "too_many_symbols",
    ),
    (
        "forbidden origin",
        "?symbols=AAPL",
        lambda s: {**bearer(s.token()), "Origin": "https://evil.example"},
        True,
        403,
        "forbidden_origin",
    ),
    (
        "none entitled",
        "?symbols=TSLA",
        lambda s: bearer(s.token(symbols=["AAPL"])),
        True,
        403,
        "forbidden_symbols",
    ),
]


@pytest.mark.parametrize(
    ("name", "query", "headers", "upgrade", "status", "code"),
    REJECTIONS,
    ids=[r[0] for r in REJECTIONS],
)
@ensure
async def test_handshake_rejections(
    start_server: Any, name: str, query: str, headers: Any, upgrade: bool, status: int, code: str
) -> None:
    s = await start_server(websocket={"max_symbols": 3})
    r = await handshake(s, query, headers(s), upgrade)
    assert (r.status, error_code(r)) == (status, code)
    assert r.headers["cache-control"] == "no-store"
    if status == 401:
        assert r.headers["www-authenticate"] == 'Bearer realm="quoted"'


@ensure
async def test_size_method_and_path_rejections(server: QuotedServer) -> None:
    tok = server.token()
    r = await handshake(server, "?symbols=" + "A" * 9000, bearer(tok))
    assert (r.status, error_code(r)) == (414, "uri_too_long")
    r = await handshake(server, "?symbols=AAPL", {**bearer(tok), "X-Big": "x" * 17000})
    assert (r.status, error_code(r)) == (431, "headers_too_large")
    r = await http(server.port, "POST /ws/quotes HTTP/1.1", {"Content-Length": "0"})
    assert (r.status, error_code(r)) == (405, "method_not_allowed")
    assert r.headers["allow"] == "GET, HEAD"
    r = await http(server.port, "GET /nope HTTP/1.1")
    assert (r.status, error_code(r)) == (404, "not_found")


@ensure
async def test_connection_limit(start_server: Any) -> None:
    s = await start_server(websocket={"max_connections": 1})
    c = await s.connect("symbols=AAPL")
    await c.wait_type("quotes_patch")
    r = await handshake(s, "?symbols=AAPL", bearer(s.token("bob")))
    assert (r.status, error_code(r)) == (503, "server_full")
    assert r.headers["retry-after"] == "5"
    c.sendClose()
    await c.closed
    await eventually(lambda: not s.parts.pool.is_full())
    c2 = await s.connect("symbols=AAPL")
    await c2.wait_type("quotes_patch")


@ensure
async def test_user_connection_limit(start_server: Any) -> None:
    s = await start_server(websocket={"user_max_connections": 1})
    c = await s.connect("symbols=AAPL", token=s.token("carol"))
    await c.wait_type("quotes_patch")
    r = await handshake(s, "?symbols=AAPL", bearer(s.token("carol")))
    assert (r.status, error_code(r)) == (429, "too_many_connections")
    assert r.headers["retry-after"] == "5"
    other = await s.connect("symbols=AAPL", token=s.token("dave"))
    await other.wait_type("quotes_patch")


@ensure
async def test_handshake_rate_per_ip(start_server: Any) -> None:
    s = await start_server(websocket={"handshake_rate_per_ip": 1.0})
    statuses = []
    for _ in range(4):
        r = await handshake(s, "?symbols=AAPL", {})  # refused later for the token, if at all
        statuses.append(r.status)
    assert statuses[:2] == [401, 401]  # burst: twice the rate
    assert 429 in statuses[2:]
    r = await handshake(s, "?symbols=AAPL", {})
    assert (r.status, error_code(r)) == (429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1


# -- snapshot and updates ---------------------------------------------------------------------


@ensure
async def test_snapshot_then_updates(server: QuotedServer) -> None:
    c = await server.connect("symbols=AAPL,googl,NOPE,%20msft%20")
    first = await c.wait_type("quotes_patch")
    assert first["seq"] == 1
    assert first["operations"][0] == {"op": "add", "path": "/quotes", "value": {}}
    assert [op["path"] for op in first["operations"][1:]] == [
        "/quotes/AAPL",
        "/quotes/GOOGL",
        "/quotes/MSFT",
    ]
    assert first["invalid_symbols"] == ["NOPE"]
    assert first["forbidden_symbols"] == []
    aapl = first["operations"][1]["value"]
    assert set(aapl) == {
        "symbol",
        "name",
        "type",
        "current_price",
        "base_price",
        "change",
        "change_percent",
        "last_updated",
        "volume",
        "market_cap",
    }
    await c.wait_for(lambda m: m.get("seq", 0) >= 4)
    assert c.seqs == list(range(1, len(c.seqs) + 1))
    for m in c.messages[1:]:
        assert m["operations"], m
        assert all(op["op"] == "replace" for op in m["operations"])


@ensure
async def test_snapshot_without_symbols(server: QuotedServer) -> None:
    c = await server.connect()
    first = await c.wait_type("quotes_patch")
    assert first == {
        "type": "quotes_patch",
        "seq": 1,
        "operations": [{"op": "add", "path": "/quotes", "value": {}}],
        "invalid_symbols": [],
        "forbidden_symbols": [],
    }


@ensure
async def test_duplicates_count_once(start_server: Any) -> None:
    s = await start_server(websocket={"max_symbols": 3})
    c = await s.connect("symbols=aapl,AAPL,msft,MSFT,googl")
    m = await c.wait_type("quotes_patch")
    assert m["seq"] == 1
    assert len(c.quotes()) == 3


@pytest.mark.parametrize("start", [{}, {"quotes": {}}])
@pytest.mark.parametrize("compress", [False, True])
@ensure
async def test_conformance(server: QuotedServer, start: dict[str, Any], compress: bool) -> None:
    """Every quotes_patch applied with the jsonpatch library gives GET /v1/quotes."""
    symbols = ["AAPL", "MSFT", "SPY", "TSLA"]
    c = await server.connect("symbols=" + ",".join(symbols[:3]), compress=compress)
    doc: Any = json.loads(json.dumps(start))
    await c.wait_for(lambda m: m.get("seq", 0) >= 3)
    c.send_json({"type": "subscribe", "id": 1, "symbols": ["tsla"]})
    await c.wait_type("subscribed")
    c.send_json({"type": "unsubscribe", "id": 2, "symbols": ["MSFT"]})
    await c.wait_for(lambda m: m.get("type") == "subscribed" and m.get("id") == 2)
    n = len(c.messages)
    await c.wait_for(lambda m: m.get("type") == "quotes_patch", start=n)
    server.parts.oscillator.stopService()
    await sleep(0.2)
    for m in c.messages:
        if m["type"] == "quotes_patch":
            doc = jsonpatch.apply_patch(doc, m["operations"])
    want = await server.rest_quotes(["AAPL", "SPY", "TSLA"])
    assert doc == {"quotes": want}


@ensure
async def test_escaped_symbols(start_server: Any, tmp_path: Any) -> None:
    csv = tmp_path / "instruments.csv"
    csv.write_text(
        "symbol,name,type,base_price,volume,market_cap\n"
        "BRK.B,Berkshire Hathaway Inc. Class B,STOCK,410.50,3000000,880000000000\n"
        'BTC/USD,"Bitcoin, in US dollars",ETF,65000,120000,\n'
        "A~B,Tilde Test & Co,STOCK,10,1,\n"
    )
    s = await start_server(
        feed={"instruments_file": str(csv), "update_interval": 0.05, "mode": "all"}
    )
    c = await s.connect("symbols=BRK.B,BTC/USD,A~B")
    first = await c.wait_type("quotes_patch")
    assert [op["path"] for op in first["operations"][1:]] == [
        "/quotes/BRK.B",
        "/quotes/BTC~1USD",
        "/quotes/A~0B",
    ]
    await c.wait_for(lambda m: m.get("seq", 0) >= 3)
    assert set(c.quotes()) == {"BRK.B", "BTC/USD", "A~B"}
    assert "market_cap" not in c.quotes()["BTC/USD"]
    assert c.quotes()["A~B"]["name"] == "Tilde Test & Co"


# -- client messages --------------------------------------------------------------------------


@ensure
async def test_subscribe_unsubscribe(server: QuotedServer) -> None:
    c = await server.connect("symbols=AAPL,MSFT,nope")
    await c.wait_type("quotes_patch")
    n = len(c.messages)
    c.send_json({"type": "subscribe", "id": "sub-1", "symbols": ["tsla", "nope"]})
    ack = await c.wait_type("subscribed", start=n)
    assert ack == {
        "type": "subscribed",
        "id": "sub-1",
        "symbols": ["AAPL", "MSFT", "TSLA"],
        "invalid": ["NOPE"],
        "forbidden_symbols": [],
    }
    i = c.messages.index(ack)
    add = await c.wait_for(
        lambda m: (
            m.get("type") == "quotes_patch"
            and any(op["path"] == "/quotes/TSLA" and op["op"] == "add" for op in m["operations"])
        ),
        start=i,
    )
    assert add["seq"] > 1
    n = len(c.messages)
    c.send_json({"type": "unsubscribe", "id": "sub-2", "symbols": ["AAPL"]})
    ack = await c.wait_type("subscribed", start=n)
    assert ack["symbols"] == ["MSFT", "TSLA"]
    await c.wait_for(
        lambda m: (
            m.get("type") == "quotes_patch"
            and {"op": "remove", "path": "/quotes/AAPL"} in m["operations"]
        ),
        start=n,
    )
    await eventually(lambda: "AAPL" not in c.quotes())
    # nothing changes: only the ack
    n = len(c.messages)
    c.send_json({"type": "unsubscribe", "id": "sub-3", "symbols": ["AAPL"]})
    ack = await c.wait_type("subscribed", start=n)
    assert ack["symbols"] == ["MSFT", "TSLA"]


@ensure
async def test_subscribe_limit(start_server: Any) -> None:
    s = await start_server(websocket={"max_symbols": 3})
    c = await s.connect("symbols=AAPL,MSFT")
    await c.wait_type("quotes_patch")
    c.send_json({"type": "subscribe", "id": "s1", "symbols": ["GOOGL", "SPY"]})
    err = await c.wait_type("error")
    assert err == {
        "type": "error",
        "id": "s1",
        "code": "too_many_symbols",
        "message": "subscription would hold 4 symbols; the limit is 3",
    }
    c.send_json({"type": "subscribe", "id": "s2", "symbols": ["googl", "nope", "aapl"]})
    ack = await c.wait_type("subscribed")
    assert ack["symbols"] == ["AAPL", "GOOGL", "MSFT"]
    assert ack["invalid"] == ["NOPE"]


@pytest.mark.parametrize(
    ("message", "code", "has_id"),
    [
        (b"not json", "bad_json", False),
        (b"[1,2]", "bad_json", False),
        (b'{"type":"subscribe","symbols":"AAPL"}', "bad_json", False),
        (b'{"type":"hello","id":7}', "unknown_type", True),
        (b'{"id":"z"}', "bad_request", True),
        (b'{"type":"subscribe","id":"q","symbols":[]}', "bad_request", True),
        (
            b'{"type":"subscribe","id":"' + b"x" * 70 + b'","symbols":["AAPL"]}',
            "bad_request",
            False,
        ),
    ],
)
@ensure
async def test_errors_keep_connection_open(
    server: QuotedServer, message: bytes, code: str, has_id: bool
) -> None:
    c = await server.connect("symbols=AAPL")
    await c.wait_type("quotes_patch")
    c.sendMessage(message)
    err = await c.wait_type("error")
    assert err["code"] == code
    assert ("id" in err) == has_id
    c.send_json({"type": "ping", "id": 42})
    assert await c.wait_type("pong") == {"type": "pong", "id": 42}


@ensure
async def test_ping_message(server: QuotedServer) -> None:
    c = await server.connect()
    c.send_json({"type": "ping"})
    assert await c.wait_type("pong") == {"type": "pong"}


# -- close codes ------------------------------------------------------------------------------


@ensure
async def test_binary_message_closes_1003(server: QuotedServer) -> None:
    c = await server.connect("symbols=AAPL")
    c.sendMessage(b"\x00\x01", isBinary=True)
    code, _ = await c.closed
    assert code == 1003


@ensure
async def test_bad_utf8_closes_1007(server: QuotedServer) -> None:
    c = await server.connect("symbols=AAPL")
    c.sendMessage(b'{"type":"ping","id":"\xff\xfe"}')
    code, _ = await c.closed
    assert code == 1007


@ensure
async def test_too_big_closes_1009(server: QuotedServer) -> None:
    c = await server.connect("symbols=AAPL")
    c.sendMessage(json.dumps({"type": "ping", "pad": "x" * 5000}).encode())
    code, _ = await c.closed
    assert code == 1009


@ensure
async def test_message_of_4096_bytes_is_accepted(server: QuotedServer) -> None:
    c = await server.connect("symbols=AAPL")
    msg = b'{"type":"ping","id":1,"pad":"'
    msg += b"x" * (4096 - len(msg) - 2) + b'"}'
    assert len(msg) == 4096
    c.sendMessage(msg)
    assert (await c.wait_type("pong"))["id"] == 1


class SilentClient(WSClient):
    """Never answers the server's pings."""

    def onPing(self, payload: bytes) -> None:
        pass


@ensure
async def test_no_pong_closes_1008(start_server: Any) -> None:
    s = await start_server(websocket={"health_check_interval": 0.2})
    c = await SilentClient.open(s.port, "symbols=AAPL", s.token())
    code, reason = await c.closed
    assert (code, reason) == (1008, "no pong to the last ping")


@ensure
async def test_pong_keeps_connection(start_server: Any) -> None:
    s = await start_server(websocket={"health_check_interval": 0.1})
    c = await s.connect("symbols=AAPL")
    await sleep(0.6)
    assert c.close_code is None
    assert c.state == c.STATE_OPEN


@ensure
async def test_idle_timeout_closes_1008(start_server: Any) -> None:
    s = await start_server(websocket={"idle_timeout": 1.0})
    c = await s.connect("symbols=AAPL")
    code, reason = await c.closed
    assert (code, reason) == (1008, "idle timeout")


@ensure
async def test_shutdown_closes_1001(start_server: Any) -> None:
    s = await start_server()
    c = await s.connect("symbols=AAPL")
    await c.wait_type("quotes_patch")
    stopping = defer.ensureDeferred(s.stop())
    code, reason = await c.closed
    assert (code, reason) == (1001, "server shutting down")
    await stopping


@ensure
async def test_draining_refuses_handshakes(start_server: Any) -> None:
    s = await start_server()
    pool = s.parts.pool
    pool.draining = True
    r = await handshake(s, "?symbols=AAPL", bearer(s.token()))
    assert (r.status, error_code(r)) == (503, "shutting_down")
    assert r.headers["retry-after"] == "5"
    r = await s.get("/readyz")
    assert (r.status, r.json()) == (503, {"status": "draining"})
    pool.draining = False


# -- slow consumers ---------------------------------------------------------------------------


@ensure
async def test_client_that_never_reads_is_closed_4008(start_server: Any) -> None:
    """A client that stops reading is conflated, then dropped; a calm one keeps up."""
    s = await start_server(
        feed={"update_interval": 0.02, "mode": "all", "synthetic_symbols": 100},
        websocket={"circuit_breaker_threshold": 3, "max_symbols": 120},
    )
    symbols = ",".join(f"SYN{i:05d}" for i in range(1, 101))
    calm = await s.connect("symbols=" + symbols)
    stuck = await s.connect("symbols=" + symbols, token=s.token("stuck"))
    stuck.transport.pauseProducing()  # stop reading: the server's socket fills up
    metrics = s.parts.metrics
    await eventually(lambda: metrics.slow_consumer_closes._value.get() >= 1, timeout=20)
    calm_seq = calm.seqs[-1]
    await calm.wait_for(lambda m: m.get("seq", 0) > calm_seq + 5)
    assert calm.seqs == list(range(1, len(calm.seqs) + 1))
    await eventually(lambda: len(s.parts.pool.connections) == 1)
    stuck.transport.resumeProducing()


# -- REST -------------------------------------------------------------------------------------


@ensure
async def test_rest_endpoints(server: QuotedServer) -> None:
    tok = server.token()
    r = await server.get("/v1/quotes?symbols=AAPL,nope", tok)
    assert r.status == 200
    body = r.json()
    assert set(body["quotes"]) == {"AAPL"}
    assert body["invalid_symbols"] == ["NOPE"]
    r = await server.get("/v1/quotes", tok)
    assert len(r.json()["quotes"]) == 20
    r = await server.get("/v1/quotes")
    assert (r.status, error_code(r)) == (401, "missing_token")
    r = await server.get("/v1/quotes?symbols=" + ",".join(f"S{i}" for i in range(1001)), tok)
    assert (r.status, error_code(r)) == (400, "too_many_symbols")
    r = await server.get("/v1/instruments", tok)
    inst = r.json()["instruments"]
    assert len(inst) == 20
    assert inst[0] == {
        "symbol": "AAPL",
        "name": "Apple Inc.",
        "type": "STOCK",
        "base_price": 175.5,
        "volume": 52000000,
        "market_cap": 2750000000000,
    }
    assert "market_cap" not in inst[10]
    r = await server.get("/healthz")
    assert (r.status, r.json()) == (200, {"status": "ok"})
    r = await server.get("/readyz")
    assert (r.status, r.json()) == (200, {"status": "ready"})
    r = await server.get("/metrics")
    assert r.status == 200
    for name in (b"quoted_connections ", b"quoted_handshakes_total", b"quoted_ticks_total"):
        assert name in r.body


@ensure
async def test_rest_entitlements(server: QuotedServer) -> None:
    tok = server.token(symbols=["AAPL", "MSFT"])
    r = await server.get("/v1/quotes", tok)
    assert set(r.json()["quotes"]) == {"AAPL", "MSFT"}
    r = await server.get("/v1/quotes?symbols=AAPL,TSLA", tok)
    assert set(r.json()["quotes"]) == {"AAPL"}
    assert r.json()["forbidden_symbols"] == ["TSLA"]
    r = await server.get("/v1/quotes?symbols=TSLA", tok)
    assert (r.status, error_code(r)) == (403, "forbidden_symbols")


@ensure
async def test_entitled_stream(server: QuotedServer) -> None:
    tok = server.token(symbols=["AAPL", "MSFT"])
    c = await server.connect("symbols=AAPL,TSLA", token=tok)
    first = await c.wait_type("quotes_patch")
    assert first["forbidden_symbols"] == ["TSLA"]
    c.send_json({"type": "subscribe", "id": "s1", "symbols": ["MSFT", "NVDA"]})
    ack = await c.wait_type("subscribed")
    assert ack == {
        "type": "subscribed",
        "id": "s1",
        "symbols": ["AAPL", "MSFT"],
        "invalid": [],
        "forbidden_symbols": ["NVDA"],
    }


@ensure
async def test_token_in_query(server: QuotedServer) -> None:
    c = await WSClient.open(server.port, f"symbols=AAPL&token={server.token()}", None)
    assert (await c.wait_type("quotes_patch"))["seq"] == 1


@ensure
async def test_head_request(server: QuotedServer) -> None:
    data = await raw(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")


@ensure
async def test_origin_rules(start_server: Any) -> None:
    s = await start_server()
    tok = bearer(s.token())
    own = {**tok, "Origin": f"http://127.0.0.1:{s.port}"}
    c = await s.connect("symbols=AAPL", headers={"Origin": f"http://127.0.0.1:{s.port}"})
    assert (await c.wait_type("quotes_patch"))["seq"] == 1
    r = await handshake(s, "?symbols=AAPL", {**own, "Origin": "http://127.0.0.1:1"})
    assert (r.status, error_code(r)) == (403, "forbidden_origin")
    listed = await start_server(server={"allowed_origins": ("https://app.example.com",)})
    c = await listed.connect("symbols=AAPL", headers={"Origin": "https://APP.example.com"})
    assert (await c.wait_type("quotes_patch"))["seq"] == 1
    r = await handshake(listed, "?symbols=AAPL", {**tok, "Origin": f"http://127.0.0.1:{s.port}"})
    assert (r.status, error_code(r)) == (403, "forbidden_origin")
