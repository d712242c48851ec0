"""Issue 19's log items: redaction and ``[log]`` on every start path (11), control characters
escaped (12), and the accept-error lines throttled.

The start paths are real twistd processes, started each documented way (with
``--logger=quoted.logs.observer``, without it, with ``--logfile``, JSON, level error); each is
sent a planted token in a query string, an Authorization header, a HEAD request (which logs
nothing: quoted answers it, so twisted.web's warning quoting the request line is not reached)
and a handshake whose Host Autobahn refuses (its failure line quotes the Host, here with
``ESC[2J``); then the whole output is searched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from twisted.logger import LogLevel

from quoted.server.logs import THROTTLED, Throttle, escape_controls, format_json, format_text
from quoted.wire.tokens import mint_token
from tests.harness import SECRET, free_port
from tests.server.test_process import TWISTD, quoted_env

ESC = "\x1b[2J"


def planted() -> str:
    return mint_token(SECRET, "planted-user", now=time.time(), ttl=3600)


def request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def attack(port: int, token: str) -> None:
    """Every way the token reached a log line before."""
    h = f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n"
    for line, extra in (
        (f"GET /v1/quotes?symbols=AAPL&token={token} HTTP/1.1", ""),
        ("GET /v1/quotes?symbols=AAPL HTTP/1.1", f"Authorization: Bearer {token}\r\n"),
        (f"HEAD /v1/quotes?symbols=AAPL&token={token} HTTP/1.1", ""),
        (f"GET /nowhere?token={token} HTTP/1.1", f"Authorization: Bearer {token}x\r\n"),
    ):
        request(port, f"{line}\r\n{h}{extra}\r\n".encode())
    # Autobahn refuses the Host's port, quoting it: with the token and a terminal escape
    ws = (
        f"GET /ws/quotes?symbols=AAPL&token={token} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{token}{ESC}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    request(port, ws.encode("latin-1"))


def wait_listening(proc: subprocess.Popen[bytes], port: int, out: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail(f"twistd exited {proc.returncode}: {out.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail("twistd did not listen")
            time.sleep(0.05)


PATHS = {
    "--logger": (["--logger=quoted.logs.observer"], {}),
    "no --logger": ([], {}),
    "no --logger, --logfile": (["--logfile=quoted.log"], {}),
    "no --logger, JSON": ([], {"QUOTED_LOG_FORMAT": "json"}),
    "--logger, JSON": (["--logger=quoted.logs.observer"], {"QUOTED_LOG_FORMAT": "json"}),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_no_token_and_no_raw_control_character_on_any_start_path(tmp_path: Path, path: str) -> None:
    args, env = PATHS[path]
    port = free_port()
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", *args, "quoted",
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            env=quoted_env(JWT_SECRET=SECRET.decode(), **env), cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_listening(proc, port, out)
        token = planted()
        attack(port, token)
        time.sleep(0.3)  # the child's last lines: a real process, not a unit test's clock
    finally:
        proc.terminate()
        proc.wait(15)
    text = out.read_text(errors="replace")
    if "--logfile" in path:
        text += (tmp_path / "quoted.log").read_text(errors="replace")
    assert token not in text and token[40:80] not in text
    assert "\x1b" not in text
    # the lines were written, escaped: quoted's observer is the one writing
    # the lines were written, escaped (a HEAD is answered by quoted and logs nothing: issue 20)
    assert "HEAD request" not in text and "invalid port" in text, text
    assert "\\x1b[2J" in text or "\\u001b[2J" in text, text
    if "JSON" in path:
        for line in text.splitlines():
            if line.startswith("{"):
                json.loads(line)
        assert '"level":"info"' in text


@pytest.mark.parametrize("args", [[], ["--logger=quoted.logs.observer"]], ids=["without", "with"])
def test_log_level_error_is_honoured_with_or_without_logger(
    tmp_path: Path, args: list[str]
) -> None:
    port = free_port()
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", *args, "quoted",
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            env=quoted_env(JWT_SECRET=SECRET.decode(), QUOTED_LOG_LEVEL="error"), cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_listening(proc, port, out)
        attack(port, planted())
    finally:
        proc.terminate()
        proc.wait(15)
    text = out.read_text(errors="replace")
    assert "[info]" not in text and "[warn]" not in text, text
    assert "Site starting" not in text and "invalid port" not in text, text


# -- formatting, in memory --------------------------------------------------------------------


def event(fmt: str, **fields: object) -> dict[str, object]:
    return {
        "log_format": fmt,
        "log_level": LogLevel.warn,
        "log_namespace": "autobahn",
        "log_time": 1.0,
        **fields,
    }


def test_control_characters_are_escaped_in_text_and_json() -> None:
    e = event("failing WebSocket opening handshake ('{reason}')", reason=f'invalid port "{ESC}x"')
    text = format_text(e)
    assert "\x1b" not in text and "\\x1b[2J" in text
    line = format_json(e)
    assert "\x1b" not in line and "\\u001b[2J" in line
    assert "\x7f" not in format_json(event("a{x}", x="\x7f"))
    assert escape_controls("a\nb\tc\x85\u2028") == "a\\nb\\tc\\x85\\u2028"


def test_a_traceback_keeps_its_lines_but_not_their_controls() -> None:
    from twisted.python.failure import Failure

    try:
        raise ValueError(f"bad {ESC}")
    except ValueError:
        f = Failure()
    text = format_text(event("oops", log_failure=f))
    assert "\x1b" not in text and text.count("\n") >= 2


def test_accept_errors_are_logged_once_per_window_with_a_count() -> None:
    seen: list[dict[str, object]] = []
    throttle = Throttle(seen.append, seconds=10)  # type: ignore[arg-type]
    fmt = "Could not accept new connection ({acceptError})"
    assert fmt in THROTTLED
    for i in range(1338):  # 40 s of them, 33 a second
        throttle(event(fmt, acceptError="EMFILE", log_time=1000 + i * 0.03))
    throttle(event("something else"))
    assert len(seen) == 6  # at 0, 10, 20, 30 and 40 s, and the other line
    left_out = [e.get("left_out") for e in seen[:4]]
    assert left_out[0] is None and all(isinstance(n, int) and n > 300 for n in left_out[1:])
    assert "more like this were not logged" in format_text(seen[1])
