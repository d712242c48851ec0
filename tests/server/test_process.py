"""quoted as operators run it: ``twistd quoted`` in a child process.

Each test starts a real twistd (the command of ``make run``) on a free loopback port and talks
to it over plain sockets: a minimal blocking WebSocket client below, and http.client for REST.
Every wait is bounded; the only polling is for a real process (its port, its exit). Children
still running when a test ends are killed by the ``spawn`` fixture.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import SECRET, free_port

TWISTD = str(Path(sys.executable).with_name("twistd"))
SHUTDOWN_TIMEOUT = 3.0  # QUOTED_SERVER_SHUTDOWN_TIMEOUT below
MARGIN = 3.0  # process start-up of the interpreter aside, how late an exit may be
START_TIMEOUT = 20.0
POLL = 0.05
# environment variables quoted reads: none may leak in from the environment running the tests
QUOTED_ALIASES = (
    "JWT_SECRET",
    "PRICE_UPDATE_INTERVAL",
    "WS_MAX_CONNECTIONS",
    "WS_IDLE_TIMEOUT",
    "WS_HEALTH_CHECK_INTERVAL",
    "WS_CIRCUIT_BREAKER_THRESHOLD",
    "REDIS_URL",
)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[")


# -- the child process --------------------------------------------------------------------------


class Daemon:
    """One twistd child; stdout and stderr go to files (no pipe can fill up and block it)."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path, port: int) -> None:
        self.port = port
        self.out_path = workdir / "stdout.txt"
        self.err_path = workdir / "stderr.txt"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    TWISTD,
                    "--nodaemon",
                    "--pidfile=",
                    "--logger=quoted.logs.observer",
                    "quoted",
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=workdir,
            )

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout:\n{self.stdout()}\n--- stderr:\n{self.stderr()}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the port answers; fails at once if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"twistd exited with {self.proc.returncode}\n{self.output()}")
            try:
                # answered (anything, or a close) once the reactor runs: by then the banner,
                # written when the port opens, is out
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    s.recv(1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"twistd did not listen within {timeout}s\n{self.output()}")
                time.sleep(POLL)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"twistd still running after {timeout}s\n{self.output()}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def quoted_env(**overrides: str) -> dict[str, str]:
    """This environment without any quoted setting, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("QUOTED_") and k not in QUOTED_ALIASES
    }
    env.update(overrides)
    return env


Spawn = Callable[..., Daemon]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(*args, env=...)``: a twistd quoted child listening on a free port (``--listen``
    is added unless ``listen=False``); killed after the test if it is still running."""
    children: list[Daemon] = []

    def start(*args: str, env: dict[str, str] | None = None, listen: bool = True) -> Daemon:
        port = free_port()
        workdir = tmp_path / f"twistd{len(children)}"
        workdir.mkdir()
        argv = [*args, "--listen", f"tcp:{port}:interface=127.0.0.1"] if listen else list(args)
        d = Daemon(argv, quoted_env() if env is None else env, workdir, port)
        children.append(d)
        return d

    yield start
    for d in children:
        d.kill()


def banner_token(stdout: str) -> str:
    m = re.search(r"Demo token \(sub \"demo\", valid 24h\):\n  (\S+)\n", stdout)
    assert m, stdout
    return m.group(1)


def after_banner(stdout: str) -> str:
    """What twistd's logging wrote to stdout: everything after the banner's last line."""
    _, sep, rest = stdout.rpartition("curl -H 'Authorization: Bearer ")
    assert sep, stdout
    return rest.partition("\n")[2]


# -- a minimal blocking WebSocket client ----------------------------------------------------------

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class WSClosed(Exception):
    """The server dropped the TCP connection."""


class RawWS:
    """RFC 6455 over a blocking socket: enough to open, read, answer pings and close."""

    def __init__(self, port: int, query: str, token: str, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws/quotes?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        assert status.split()[1] == b"101", head

    def _more(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            raise WSClosed from None
        if not data:
            raise WSClosed
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        b0, b1 = self._take(2)
        assert not b1 & 0x80, "server frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return b0 & 0x0F, self._take(n)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = (
            bytes((0x80 | opcode, 0x80 | n))
            if n < 126
            else (struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n))
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def message(self) -> dict[str, Any]:
        """The next text message (pings answered on the way)."""
        while True:
            op, payload = self.frame()
            if op == OP_PING:
                self.send(OP_PONG, payload)
            elif op == OP_TEXT:
                return json.loads(payload)  # type: ignore[no-any-return]
            else:
                raise AssertionError(f"opcode {op} {payload!r} where a message was expected")

    def close_frame(self) -> tuple[int, str]:
        """Read past messages up to the server's close frame: (code, reason)."""
        while True:
            op, payload = self.frame()
            if op == OP_CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()
            if op == OP_PING:
                self.send(OP_PONG, payload)

    def reply_close(self, code: int) -> None:
        self.send(OP_CLOSE, struct.pack("!H", code))

    def wait_eof(self) -> None:
        """Until the server drops the connection, closed or reset (bounded by the timeout)."""
        try:
            while True:
                self._more()
        except WSClosed:
            return

    def close(self) -> None:
        self.sock.close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, body = get_full(port, path, headers)
    return status, body


def get_full(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, json.loads(r.read())
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, token: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


# -- tests ----------------------------------------------------------------------------------------


# after an orderly drain, SIGTERM ends twistd with status 0 (quoted.server.tap clears the signal
# twistd would otherwise re-raise)
CLEAN_EXIT = (0,)


def dev_env(**overrides: str) -> dict[str, str]:
    return quoted_env(QUOTED_SERVER_SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT:g}s", **overrides)


def test_sigterm_closes_every_client_with_1001_and_exits_0(spawn: Spawn) -> None:
    d = spawn("--dev", env=dev_env())
    d.wait_ready()
    token = banner_token(d.stdout())
    clients = [RawWS(d.port, "symbols=AAPL", token), RawWS(d.port, "symbols=AAPL,GOOGL", token)]
    for c, symbols in zip(clients, (["AAPL"], ["AAPL", "GOOGL"]), strict=True):
        snapshot = c.message()
        assert snapshot["type"] == "quotes_patch" and snapshot["seq"] == 1
        assert sorted(op["path"] for op in snapshot["operations"][1:]) == [
            f"/quotes/{s}" for s in symbols
        ]

    started = time.monotonic()
    d.terminate()
    for c in clients:
        assert c.close_frame() == (1001, "server shutting down")
        c.reply_close(1001)
    for c in clients:
        c.wait_eof()
        c.close()
    rc = d.wait_exit(SHUTDOWN_TIMEOUT + MARGIN)
    elapsed = time.monotonic() - started
    assert rc in CLEAN_EXIT, d.output()
    # both clients answered their close: no reason to wait for the timeout
    assert elapsed < SHUTDOWN_TIMEOUT, (elapsed, d.output())
    assert "quoted stopped" in d.stdout()


def test_while_draining_handshakes_get_503_and_exit_comes_within_the_timeout(
    spawn: Spawn,
) -> None:
    d = spawn("--dev", env=dev_env())
    d.wait_ready()
    token = banner_token(d.stdout())
    # a client that never answers the close frame keeps the server draining for a while
    silent = RawWS(d.port, "symbols=AAPL", token, timeout=SHUTDOWN_TIMEOUT + MARGIN)
    assert silent.message()["seq"] == 1

    started = time.monotonic()
    d.terminate()
    assert silent.close_frame() == (1001, "server shutting down")
    # the close frame is written while draining is set: the window is open now
    status, headers, body = get_full(
        d.port,
        "/ws/quotes?symbols=AAPL",
        {
            "Authorization": f"Bearer {token}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    assert (status, body["error"]["code"]) == (503, "shutting_down"), body
    assert headers["Retry-After"] == "5"
    status, body = get(d.port, "/readyz")
    assert (status, body) == (503, {"status": "draining"})

    silent.wait_eof()  # dropped: by the close handshake timeout or the shutdown timeout
    silent.close()
    rc = d.wait_exit(SHUTDOWN_TIMEOUT + MARGIN)
    assert rc in CLEAN_EXIT, d.output()
    assert time.monotonic() - started < SHUTDOWN_TIMEOUT + MARGIN


def test_sigterm_exit_status_is_0(spawn: Spawn) -> None:
    d = spawn("--dev", env=dev_env())
    d.wait_ready()
    d.terminate()
    rc = d.wait_exit(SHUTDOWN_TIMEOUT + MARGIN)
    assert "Server Shut Down." in d.stdout(), d.output()  # the stop itself was clean
    assert rc == 0, d.output()


def test_dev_banner_token_works_and_never_reaches_the_log(spawn: Spawn) -> None:
    d = spawn("--dev", env=dev_env())
    d.wait_ready()
    token = banner_token(d.stdout())

    status, body = get(d.port, "/v1/quotes?symbols=AAPL", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    assert list(body["quotes"]) == ["AAPL"]
    assert body["quotes"]["AAPL"]["symbol"] == "AAPL"
    # the token in query strings too, the way the banner's WebSocket URL carries it
    status, body = get(d.port, f"/v1/quotes?symbols=GOOGL&token={token}")
    assert status == 200, body
    status, body = get(
        d.port, "/v1/quotes?symbols=AAPL", {"Authorization": f"Bearer {token[:-4]}AAAA"}
    )
    assert status == 401, body
    ws = RawWS(d.port, f"symbols=AAPL,GOOGL&token={token}", token)
    assert ws.message()["seq"] == 1

    d.terminate()
    assert ws.close_frame()[0] == 1001
    ws.reply_close(1001)
    ws.close()
    assert d.wait_exit(SHUTDOWN_TIMEOUT + MARGIN) in CLEAN_EXIT, d.output()
    out = d.stdout()
    # the banner shows it four times (token, WebSocket URL, browser board, curl line);
    # the logs never
    assert out.count(token) == 4, out
    log = after_banner(out)
    assert TIMESTAMP.match(log), log  # the logs did come after the banner
    assert "quoted stopped" in log
    signature = token.rsplit(".", 1)[1]
    assert signature not in log, log
    assert signature not in d.stderr()


def test_dev_banner_publisher_token_posts_prices(spawn: Spawn) -> None:
    d = spawn("--dev", env=dev_env(QUOTED_FEED_SOURCE="publish"))
    d.wait_ready()
    out = d.stdout()
    m = re.search(r"Publisher token \(sub \"demo-feed\", [^)]*\):\n  (\S+)\n", out)
    assert m, out
    publisher = m.group(1)
    line = next(x for x in out.splitlines() if x.startswith("  curl") and "/v1/quotes'" in x)
    assert publisher in line and "-d '" in line
    body = line.split("-d '", 1)[1].rstrip("'").encode()
    status, answer = post(d.port, "/v1/quotes", body, publisher)
    assert (status, answer) == (200, {"accepted": 1, "rejected": []}), answer
    status, answer = post(d.port, "/v1/quotes", body, banner_token(out))
    assert (status, answer["error"]["code"]) == (403, "insufficient_scope")
    d.terminate()
    assert d.wait_exit(SHUTDOWN_TIMEOUT + MARGIN) in CLEAN_EXIT, d.output()
    assert publisher.rsplit(".", 1)[1] not in after_banner(d.stdout())


def test_json_log_format_writes_one_object_per_line(spawn: Spawn) -> None:
    d = spawn("--dev", env=dev_env(QUOTED_LOG_FORMAT="json"))
    d.wait_ready()
    d.terminate()
    assert d.wait_exit(SHUTDOWN_TIMEOUT + MARGIN) in CLEAN_EXIT, d.output()
    lines = after_banner(d.stdout()).splitlines()
    assert len(lines) >= 3, d.output()  # start-up, start of the site, stop at least
    records = [json.loads(line) for line in lines]
    for r in records:
        assert isinstance(r, dict), r
        assert {"time", "level", "namespace", "text"} <= r.keys(), r
    assert any(r.get("log_id") == "quoted.app.stopped" for r in records), records


SECRET_VALUE = "do-not-print-this-secret-0123456789abcdef"
BAD_CONFIGS = [
    pytest.param(
        ["--dev"],
        {"QUOTED_WEBSOCKET_MAX_CONNECTIONS": "abc"},
        "[websocket] max_connections",
        id="bad-max-connections",
    ),
    pytest.param(["--dev", "--config", "/nonexistent"], {}, "/nonexistent", id="missing-file"),
    pytest.param([], {}, "[auth] secret_file", id="no-token-key"),
    pytest.param(
        [],
        {"JWT_SECRET": SECRET_VALUE, "QUOTED_WEBSOCKET_MAX_CONNECTIONS": "abc"},
        "[websocket] max_connections",
        id="secret-set-other-key-bad",
    ),
    pytest.param(
        [], {"JWT_SECRET": SECRET_VALUE[:20]}, "[auth] secret_file", id="secret-too-short"
    ),
]


@pytest.mark.parametrize(("args", "env", "names"), BAD_CONFIGS)
def test_bad_configuration_exits_non_zero_naming_the_problem(
    spawn: Spawn,
    args: list[str],
    env: dict[str, str],
    names: str,
) -> None:
    d = spawn(*args, env=quoted_env(**env))
    rc = d.wait_exit(START_TIMEOUT)
    assert rc == 1, d.output()  # the status of python -m quoted.config, and of every refused start
    output = d.stdout() + d.stderr()
    assert names in d.stderr(), output  # one line a problem, as the checker prints them
    assert "Traceback" not in output, output
    assert "Demo token" not in output  # refused before the banner
    assert SECRET_VALUE[:20] not in output, output


def running_daemon(tmp_path: Path, tick: str) -> Iterator[Daemon]:
    """A twistd quoted on a free port with JWT_SECRET=SECRET, ticking every ``tick`` with
    2% moves, for the clients' tests (``yield from`` it in a fixture); killed after."""
    port = free_port()
    env = quoted_env(
        JWT_SECRET=SECRET.decode(),
        QUOTED_FEED_UPDATE_INTERVAL=tick,
        QUOTED_FEED_OSCILLATION_PERCENT="2",
    )
    workdir = tmp_path / "twistd"
    workdir.mkdir()
    d = Daemon(["--listen", f"tcp:{port}:interface=127.0.0.1"], env, workdir, port)
    try:
        d.wait_ready()
        yield d
    finally:
        d.kill()
