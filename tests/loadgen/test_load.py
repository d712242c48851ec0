"""quoted-load: its frame parser and fast patch alone, then whole runs against a real quoted.

The runs use quoted.loadgen.cli.run on the test's reactor, against quoted from tests.harness
ticking every 50 ms with every symbol moving.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import zlib
from typing import Any

import jsonpatch
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, utils
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from quoted.loadgen.cli import Unreachable, parse_args, run
from quoted.loadgen.conn import LoadConnection, Stats, upgrade_request
from quoted.loadgen.run import cpu_seconds
from quoted.loadgen.wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    PatchError,
    ProtocolError,
    apply_ops,
    client_frame,
)
from tests.harness import SECRET, QuotedServer, free_port

FEED = {"update_interval": 0.05, "mode": "all"}
WS = {"handshake_rate_per_ip": 0.0}


# -- frames -------------------------------------------------------------------------------------


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


def feed_all(reader: FrameReader, chunks: list[bytes]) -> list[tuple[int, bytes, bool, int]]:
    out = []
    for c in chunks:
        out += reader.feed(c)
    return out


STREAM = (
    server_frame(OP_TEXT, b'{"a":1}')
    + server_frame(OP_TEXT, b"x" * 300)  # 16-bit length
    + server_frame(OP_TEXT, b"part1-", fin=False)
    + server_frame(OP_PING, b"hi")  # a control frame between fragments
    + server_frame(0, b"part2-", fin=False)
    + server_frame(0, b"end")
    + server_frame(OP_TEXT, b"y" * 70000)  # 64-bit length
    + server_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")
)
EXPECTED = [
    (OP_TEXT, b'{"a":1}', False, 7),
    (OP_TEXT, b"x" * 300, False, 300),
    (OP_PING, b"hi", False, 2),
    (OP_TEXT, b"part1-part2-end", False, 15),
    (OP_TEXT, b"y" * 70000, False, 70000),
    (OP_CLOSE, b"\x03\xe8bye", False, 5),
]


def test_frames_whole_stream() -> None:
    assert FrameReader().feed(STREAM) == EXPECTED


def test_frames_split_at_every_position() -> None:
    for cut in range(1, len(STREAM)):
        got = feed_all(FrameReader(), [STREAM[:cut], STREAM[cut:]])
        assert got == EXPECTED, cut


def test_frames_byte_by_byte() -> None:
    small = STREAM[: STREAM.index(b"y" * 10) - 10]  # up to the 64-bit frame
    got = feed_all(FrameReader(), [small[i : i + 1] for i in range(len(small))])
    assert got == EXPECTED[:4]


@pytest.mark.parametrize(
    "data",
    [
        bytes((0x81, 0x81)) + b"abcd" + b"x",  # masked by the server
        bytes((0xA1, 0)),  # RSV2
        bytes((0x83, 0)),  # reserved opcode
        bytes((0x09, 0)),  # fragmented ping
        bytes((0x89, 126, 0, 200)) + b"p" * 200,  # ping over 125 bytes
        server_frame(0, b"c"),  # continuation out of place
        server_frame(OP_TEXT, b"a", fin=False) + server_frame(OP_TEXT, b"b"),
    ],
)
def test_frames_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameReader().feed(data)


def test_frames_rsv1_marks_the_message() -> None:
    frames = server_frame(OP_TEXT, b"ab", fin=False, rsv1=True) + server_frame(0, b"cd")
    assert FrameReader().feed(frames) == [(OP_TEXT, b"abcd", True, 4)]


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Final, masked client frames, unmasked: [(opcode, payload)]."""
    out = []
    while data:
        assert data[0] & 0x80 and data[1] & 0x80, data  # FIN and MASK
        n, hdr = data[1] & 0x7F, 2
        if n >= 126:
            hdr = 4 if n == 126 else 10
            n = int.from_bytes(data[2:hdr], "big")
        key, body = data[hdr : hdr + 4], data[hdr + 4 : hdr + 4 + n]
        out.append((data[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))))
        data = data[hdr + 4 + n :]
    return out


@pytest.mark.parametrize("n", [0, 5, 125, 126, 65535, 65536])
def test_client_frame_is_masked(n: int) -> None:
    payload = os.urandom(n)
    frame = client_frame(OP_PONG, payload)
    assert client_frames(frame) == [(OP_PONG, payload)]
    assert n < 8 or payload not in frame


# -- the fast patch -----------------------------------------------------------------------------


def quote(sym: str, price: float, stamp: str) -> dict[str, Any]:
    return {"symbol": sym, "name": "N & co", "current_price": price, "last_updated": stamp}


SYMS = ["AAPL", "BTC/USD", "A~B", "BRK.B"]
STAMPS = [f"2026-11-28T17:06:1{i}.780Z" for i in range(10)]
ptr = st.sampled_from(SYMS).map(lambda s: s.replace("~", "~0").replace("/", "~1"))
whole = st.builds(
    lambda op, p, price, t: {"op": op, "path": "/quotes/" + p, "value": quote("X", price, t)},
    st.sampled_from(["add", "replace"]),
    ptr,
    st.floats(1, 1e5, allow_nan=False),
    st.sampled_from(STAMPS),
)
field = st.builds(
    lambda p, f, v: {"op": "replace", "path": f"/quotes/{p}/{f}", "value": v},
    ptr,
    st.sampled_from(["current_price", "last_updated", "name"]),
    st.one_of(st.floats(1, 1e5, allow_nan=False), st.sampled_from(STAMPS)),
)
remove = st.builds(lambda p: {"op": "remove", "path": "/quotes/" + p}, ptr)
ops_st = st.lists(st.one_of(whole, field, remove), max_size=12)


@settings(max_examples=300, deadline=None)
@given(ops=ops_st, start=st.sampled_from(SYMS[:2]))
def test_fast_patch_agrees_with_jsonpatch(ops: list[dict[str, Any]], start: str) -> None:
    snapshot = [{"op": "add", "path": "/quotes", "value": {}}]
    snapshot.append(
        {
            "op": "add",
            "path": "/quotes/" + start.replace("/", "~1"),
            "value": quote(start, 1.0, STAMPS[0]),
        }
    )
    doc: dict[str, Any] = {}
    apply_ops(doc, copy.deepcopy(snapshot), [])
    for op in ops:  # one at a time: a failing op leaves both documents as before it
        try:
            expected = jsonpatch.apply_patch(doc, [copy.deepcopy(op)])
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            expected = None
        before = copy.deepcopy(doc)
        try:
            apply_ops(doc, [copy.deepcopy(op)], [])
        except PatchError:
            assert expected is None, op
            assert doc == before
            continue
        assert doc == expected, op


def test_fast_patch_reports_new_and_stale_last_updated() -> None:
    doc: dict[str, Any] = {}
    updates: list[str] = []
    ops = [
        {"op": "add", "path": "/quotes", "value": {}},
        {"op": "add", "path": "/quotes/BTC~1USD", "value": quote("BTC/USD", 1, STAMPS[1])},
    ]
    assert apply_ops(doc, ops, updates) == 0 and updates == []  # the snapshot is no update
    ops = [
        {"op": "replace", "path": "/quotes/BTC~1USD", "value": quote("BTC/USD", 2, STAMPS[1])},
        {"op": "replace", "path": "/quotes/BTC~1USD/last_updated", "value": STAMPS[2]},
        {"op": "replace", "path": "/quotes/BTC~1USD", "value": quote("BTC/USD", 3, STAMPS[3])},
    ]
    assert apply_ops(doc, ops, updates) == 1  # the first repeats STAMPS[1]
    assert updates == [STAMPS[2], STAMPS[3]]
    assert doc == {"quotes": {"BTC/USD": quote("BTC/USD", 3, STAMPS[3])}}
    with pytest.raises(PatchError):
        apply_ops(doc, [{"op": "replace", "path": "/quotes/NOPE", "value": {}}], [])


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
            {"op": "add", "path": "/quotes/AAPL", "value": quote("AAPL", 1, STAMPS[0])},
        ],
    }
    deflate = zlib.compressobj(wbits=-15)
    packed = deflate.compress(json.dumps(snapshot).encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
    transport.clear()
    conn.dataReceived(head + server_frame(OP_TEXT, packed[:-4], rsv1=True))
    conn.dataReceived(server_frame(OP_PING, b"p") + server_frame(OP_CLOSE, b"\x0f\xa8"))
    assert conn.doc == {"quotes": {"AAPL": quote("AAPL", 1, STAMPS[0])}}
    assert stats.connected == 1 and stats.messages == 1 and stats.bytes == len(packed) - 4
    assert client_frames(transport.value()) == [(OP_PONG, b"p"), (OP_CLOSE, b"\x0f\xa8")]
    assert transport.disconnecting
    conn.connectionLost(None)
    assert hooks.events == [("opened", None), ("closed", (4008, False))]


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
    r = await run(parse_args(argv(s, "--source-ips", "127.0.0.2-127.0.0.3")), reactor, err)
    assert_clean(r)
    assert r["connected"] == 20 and err.getvalue() == ""


@pytest_twisted.ensureDeferred
async def test_run_compressed(start_server: Any) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    r = await run(parse_args(argv(s, "--compress")), reactor, io.StringIO())
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
    r = await run(
        parse_args(argv(s, "--churn", "3", "--slow", "2", "--seed", "7")), reactor, io.StringIO()
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
