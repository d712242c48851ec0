"""quoted-load: one connection on a fake transport, its arguments, then whole runs against a
real quoted (its frames and fast patch are quoted.wire's: tests/wire).

The runs use quoted.loadgen.cli.run on the test's reactor, against quoted from tests.harness
ticking every 50 ms with every symbol moving, or with ``[feed] source = publish`` and
quoted-load's own publisher (quoted.loadgen.publish) moving the prices.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zlib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, utils
from twisted.internet.error import NotConnectingError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from quoted.loadgen.cli import Unreachable, parse_args, run
from quoted.loadgen.conn import LoadConnection, Stats, upgrade_request
from quoted.loadgen.publish import cents
from quoted.loadgen.run import Runner, cpu_seconds
from quoted.wire.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from tests.harness import SECRET, QuotedServer, free_port
from tests.wire.framing import client_frames, server_frame

FEED = {"update_interval": 0.05, "mode": "all"}
WS = {"handshake_rate_per_ip": 0.0}


def quote(sym: str, price: float, stamp: str) -> dict[str, Any]:
    return {"symbol": sym, "name": "N & co", "current_price": price, "last_updated": stamp}


STAMP = "2026-11-28T17:06:10.780Z"


# -- one connection on a fake transport --------------------------------------------------------


class Hooks:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def opened(self, conn: LoadConnection) -> None:
        self.events.append(("opened", None))

    def failed(self, conn: LoadConnection, reason: str) -> None:
        self.events.append(("failed", reason))

    def closed(self, conn: LoadConnection, code: int, by_us: bool) -> None:
        self.events.append(("closed", (code, by_us)))

    def snapshot(self, conn: LoadConnection) -> None:
        self.events.append(("snapshot", conn.seq))


def fake_conn(compress: bool = False) -> tuple[LoadConnection, StringTransport, Hooks, Stats]:
    stats, hooks = Stats(), Hooks()
    req = upgrade_request("h:1", "/ws/quotes", "symbols=AAPL", "tok", compress, key=b"k" * 16)
    conn = LoadConnection(0, ["AAPL"], req, stats, hooks, Clock(), compress=compress)
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport, hooks, stats


def test_rejected_handshake_split_in_pieces() -> None:
    conn, transport, hooks, stats = fake_conn()
    assert transport.value().startswith(b"GET /ws/quotes?symbols=AAPL HTTP/1.1\r\n")
    body = b'{"error":{"code":"invalid_token","message":"no"}}'
    answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for i in range(len(answer)):
        conn.dataReceived(answer[i : i + 1])
    assert hooks.events == [("failed", "401")]
    assert stats.failed_by == {"401": 1} and stats.failed_codes == {"401 invalid_token": 1}


def test_open_compressed_patch_ping_and_close() -> None:
    conn, transport, hooks, stats = fake_conn(compress=True)
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {conn.accept_key()}\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n\r\n"
    ).encode()
    snapshot = {
        "type": "quotes_patch",
        "seq": 1,
        "operations": [
            {"op": "add", "path": "/quotes", "value": {}},
            {"op": "add", "path": "/quotes/AAPL", "value": quote("AAPL", 1, STAMP)},
        ],
    }
    deflate = zlib.compressobj(wbits=-15)
    packed = deflate.compress(json.dumps(snapshot).encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
    transport.clear()
    conn.dataReceived(head + server_frame(OP_TEXT, packed[:-4], rsv1=True))
    conn.dataReceived(server_frame(OP_PING, b"p") + server_frame(OP_CLOSE, b"\x0f\xa8"))
    assert conn.doc == {"quotes": {"AAPL": quote("AAPL", 1, STAMP)}}
    assert stats.connected == 1 and stats.messages == 1 and stats.bytes == len(packed) - 4
    assert client_frames(transport.value()) == [(OP_PONG, b"p"), (OP_CLOSE, b"\x0f\xa8")]
    assert transport.disconnecting
    conn.connectionLost(None)
    assert hooks.events == [("opened", None), ("snapshot", 1), ("closed", (4008, False))]


class DoneConnector:
    """A connector whose connect already failed: stopConnecting raises, as Twisted's does."""

    def stopConnecting(self) -> None:
        raise NotConnectingError()


def test_a_failed_connect_is_reported_once() -> None:
    """The connect's own failure (refused, its timeout) reaches the runner: the connector is
    no longer connecting, which must not stop the report (it hung a storm's check)."""
    stats, hooks = Stats(), Hooks()
    req = upgrade_request("h:1", "/ws/quotes", "", "tok", False, key=b"k" * 16)
    conn = LoadConnection(3, [], req, stats, hooks, Clock())
    conn.start(DoneConnector(), 10.0)  # type: ignore[arg-type]
    conn.connect_failed(Failure(ConnectionRefusedError()))
    conn.connect_failed(Failure(ConnectionRefusedError()))
    assert hooks.events == [("failed", "connect")]
    assert stats.failed == 1 and stats.failed_by == {"connect": 1}


# -- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither --secret nor --token
        ["--secret", "s", "--token", "t"],
        ["--secret", "s", "--duration", "soon"],
        ["--secret", "s", "--duration", "0"],
        ["--secret", "s", "--timeout", "0s"],
        ["--secret", "s", "--conns", "0"],
        ["--secret", "s", "--url", "http://127.0.0.1:1"],
        ["--secret", "s", "--source-ips", "127.0.0.9-127.0.0.2"],
        ["--secret", "s", "--symbols-per-conn", "9", "--symbols-pool", "3"],
        ["--secret", "s", "--churn", "-1"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2


def test_arguments() -> None:
    o = parse_args(
        [
            "--secret",
            "a-secret-value",
            "--duration",
            "500ms",
            "--settle",
            "2m",
            "--source-ips",
            "127.0.0.2-127.0.0.4,10.0.0.1",
            "--url",
            "ws://h:81",
        ]
    )
    assert (o.duration, o.settle, o.host, o.port) == (0.5, 120.0, "h", 81)
    assert o.source_ips == ("127.0.0.2", "127.0.0.3", "127.0.0.4", "10.0.0.1")
    assert "a-secret-value" not in repr(o)
    assert cpu_seconds() > 0


@pytest.mark.parametrize("option", ["--duration", "--settle", "--timeout"])
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("60", "missing unit"),  # a bare number: seconds before the one grammar, refused now
        ("1.5", "missing unit"),
        ("10 s", "not a duration"),
        ("soon", "not a duration"),
        ("-1s", "negative"),
    ],
)
def test_durations_refused_with_the_reason(
    option: str, text: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["--secret", "s", f"{option}={text}"])  # "=": -1s is no flag
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {text!r}: {reason}" in err
    assert "such as 60s, 500ms, 2m or 1m30s" in err


def test_durations_in_the_settings_grammar() -> None:
    o = parse_args(["--secret", "s", "--duration", "1m30s", "--settle", "0", "--timeout", "1.5s"])
    assert (o.duration, o.settle, o.timeout) == (90.0, 0.0, 1.5)
    o = parse_args(["--secret", "s"])
    assert (o.duration, o.settle, o.timeout) == (30.0, 1.0, 10.0)


# -- whole runs -----------------------------------------------------------------------------------


def argv(s: QuotedServer, *extra: str) -> list[str]:
    return [
        "--url",
        f"ws://127.0.0.1:{s.port}",
        "--secret",
        SECRET.decode(),
        "--conns",
        "20",
        "--symbols-per-conn",
        "3",
        "--symbols-pool",
        "20",
        "--duration",
        "2s",
        "--settle",
        "200ms",
        *extra,
    ]


async def run_then_still(s: QuotedServer, args: list[str], err: io.StringIO) -> dict[str, Any]:
    """Run quoted-load against ``s`` with its feed stopped before the final check.

    The feed ticks every 50 ms and the server shares the load generator's reactor: with prices
    still moving, a loaded machine can see every symbol change between the REST answer and the
    documents it is compared with, and the check then verifies nothing (all "inconclusive").
    The feed stops at 1.5 s of the 2 s run, so the window still carries updates."""
    stop = reactor.callLater(1.5, s.parts.oscillator.stopService)
    try:
        return await run(parse_args(args), reactor, err)
    finally:
        if stop.active():
            stop.cancel()


def assert_clean(r: dict[str, Any], conns: int = 20) -> None:
    assert r["connected"] >= conns and r["failed"] == 0, r
    assert r["mismatches"] == r["seq_gaps"] == r["patch_mismatches"] == r["patch_errors"] == 0, r
    assert r["protocol_errors"] == 0 and r["closed"] == {}, r
    assert r["messages"] > conns and r["updates"] > 0 and r["verified"] > 0, r
    assert r["latency_ms"]["p50"] is not None and r["connect_ms"]["p50"] is not None, r
    assert r["cpu_s"] > 0 and r["duration_s"] >= 2, r


@pytest_twisted.ensureDeferred
async def test_run_plain_and_from_source_ips(start_server: Any) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    err = io.StringIO()
    r = await run_then_still(s, argv(s, "--source-ips", "127.0.0.2-127.0.0.3"), err)
    assert_clean(r)
    assert r["connected"] == 20 and err.getvalue() == ""


@pytest_twisted.ensureDeferred
async def test_run_compressed(start_server: Any) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    r = await run_then_still(s, argv(s, "--compress"), io.StringIO())
    assert_clean(r)
    per_message = r["bytes"] / r["messages"]
    assert per_message < 400, r  # a whole snapshot of 3 quotes is over 600 bytes uncompressed


@pytest_twisted.ensureDeferred
async def test_run_with_a_bad_token_fails_every_handshake(start_server: Any) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    bad = s.token(ttl=-3600)
    args = argv(s, "--duration", "300ms")
    args[args.index("--secret") : args.index("--secret") + 2] = ["--token", bad]
    err = io.StringIO()
    r = await run(parse_args(args), reactor, err)
    assert r["failed"] == 20 and r["connected"] == 0 and r["failed_by"] == {"401": 20}, r
    assert r["failed_codes"] == {"401 token_expired": 20}
    assert "401" in err.getvalue()


@pytest_twisted.ensureDeferred
async def test_run_with_churn_and_slow_readers(start_server: Any) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    r = await run_then_still(
        s, argv(s, "--churn", "3", "--slow", "2", "--seed", "7"), io.StringIO()
    )
    assert_clean(r, 20)
    assert r["churn"]["closed"] >= 3 and r["churn"]["opened"] >= 3, r
    assert r["connected"] == 22 + r["churn"]["opened"], r
    assert r["slow"]["opened"] == 2, r


@pytest_twisted.ensureDeferred
async def test_unreachable_server() -> None:
    opts = parse_args(["--url", f"ws://127.0.0.1:{free_port()}", "--secret", SECRET.decode()])
    with pytest.raises(Unreachable):
        await run(opts, reactor, io.StringIO())


@pytest_twisted.ensureDeferred
async def test_console_script_json_last_line(start_server: Any) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    args = argv(s, "--json", "--conns", "5", "--duration", "500ms")
    code = "import sys; from quoted.loadgen.cli import main; main(sys.argv[1:])"
    out, err, status = await utils.getProcessOutputAndValue(
        sys.executable, ["-c", code, *args], env=dict(os.environ), reactor=reactor
    )
    assert status == 0, err
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["connected"] == 5 and summary["mismatches"] == 0, summary
    assert err == b""  # no TTY: nothing on stderr but errors


# -- whole runs with the publisher ----------------------------------------------------------------

PUBLISH_FEED = {"source": "publish"}


def publish_argv(s: QuotedServer, *extra: str) -> list[str]:
    return argv(s, "--publish-rate", "20", "--publish-symbols", "8", *extra)


@pytest_twisted.ensureDeferred
async def test_run_with_a_publisher(start_server: Any) -> None:
    """Every item posted is accepted, the subscribers' documents (patched with each broadcast)
    equal REST at the end, and REST carries the last price the publisher posted."""
    s = await start_server(feed=PUBLISH_FEED, websocket=WS)
    err = io.StringIO()
    runner = Runner(parse_args(publish_argv(s)), reactor, err)
    r = await runner.run()
    p = r["publish"]
    assert p["posts"] >= 20 and p["items"] == 8 * p["posts"], p
    assert p["accepted"] == p["items"] and p["rejected"] == 0 and p["rejected_by"] == {}, p
    assert p["statuses"] == {"200": p["posts"]} and p["errors"] == {} and p["skipped"] == 0, p
    assert_clean(r)
    # the pool's 20 symbols are posted 8 at a time: each moved many times, seen by subscribers
    assert r["updates"] > r["connected"] * 3, r
    assert r["inconclusive"] == 0 and r["verified"] == 20 * 3, r
    publisher = runner.publisher
    assert publisher is not None
    rest = await s.rest_quotes([sym.replace("/", "%2F") for sym in publisher.symbols])
    assert {sym: q["current_price"] for sym, q in rest.items()} == {
        sym: cents(price) for sym, price in publisher.price.items()
    }
    assert err.getvalue() == ""
    text = (await s.get("/metrics")).body.decode()
    count = [
        ln for ln in text.splitlines() if ln.startswith("quoted_publish_latency_seconds_count")
    ]
    assert count and float(count[0].split()[-1]) == p["posts"], count


@pytest_twisted.ensureDeferred
async def test_publisher_without_the_scope_is_refused(start_server: Any) -> None:
    s = await start_server(feed=PUBLISH_FEED, websocket=WS)
    err = io.StringIO()
    args = publish_argv(s, "--publish-token", s.token(), "--duration", "500ms")
    r = await run(parse_args(args), reactor, err)
    p = r["publish"]
    assert p["posts"] > 0 and p["accepted"] == 0, p
    assert p["statuses"] == {"403": p["posts"]} and p["non_200"] == p["posts"], p
    assert "insufficient_scope" in err.getvalue()
    assert r["failed"] == 0 and r["mismatches"] == 0 and r["verified"] == 20 * 3, r


@pytest_twisted.ensureDeferred
async def test_publisher_against_the_simulator_is_not_allowed(start_server: Any) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    r = await run_then_still(s, publish_argv(s), io.StringIO())
    p = r["publish"]
    assert p["posts"] > 0 and p["statuses"] == {"405": p["posts"]} and p["accepted"] == 0, p
    assert_clean(r)


@pytest_twisted.ensureDeferred
async def test_a_publisher_of_its_own_beside_subscribers_that_catch_up(start_server: Any) -> None:
    """bench/run's publish scenario in small: ``--conns 0`` only publishes, and the
    subscribers' run (``--catch-up``) checks its documents once the posts have stopped."""
    s = await start_server(feed=PUBLISH_FEED, websocket=WS)
    err = io.StringIO()
    subscribers = defer.ensureDeferred(run(parse_args(argv(s, "--catch-up")), reactor, err))
    posts = argv(s, "--conns", "0", "--publish-rate", "20", "--publish-symbols", "8")
    publisher = await run(parse_args(posts), reactor, err)
    r = await subscribers
    p = publisher["publish"]
    assert publisher["connected"] == 0 and publisher["verified"] == 0, publisher
    assert p["posts"] >= 20 and p["accepted"] == p["items"] and p["non_200"] == 0, p
    assert r["publish"] is None and r["catch_up_s"] is not None, r
    assert_clean(r)
    assert r["inconclusive"] == 0 and r["verified"] == 20 * 3, r
    assert r["updates"] > r["connected"] * 3, r
    assert err.getvalue() == ""
