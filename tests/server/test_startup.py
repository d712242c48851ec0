"""Start failures as operators meet them, and the checker that foresees them.

A real ``twistd quoted`` per case (tests/server/test_process.py's spawn helper): every refused
start is its problem on one stderr line and exit status 1, no traceback, no banner, and
``python -m quoted.config`` with the same file, environment and options prints the same line
and exits 1 (both run quoted.server.checks). The in-process tests below check each check alone.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from quoted.server import checks
from quoted.server.config import ConfigError, load_config
from tests.certs import self_signed
from tests.server.test_process import (
    SHUTDOWN_TIMEOUT,
    START_TIMEOUT,
    Daemon,
    Spawn,
    dev_env,
    quoted_env,
    spawn,
)

__all__ = ["spawn"]  # the fixture, used by name

MARGIN = 5.0


def run_check(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m quoted.config`` with twistd quoted's options (``--config F`` becomes F)."""
    argv: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--config", "-c"):
            argv.append(rest.pop(0))
        elif arg == "--listen":
            argv += [arg, rest.pop(0)]
        else:
            argv.append(arg)
    return subprocess.run(
        [sys.executable, "-m", "quoted.config", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=60,
    )


def refused(d: Daemon) -> str:
    """The one line a refused start printed on stderr (its status 1, no traceback, no banner)."""
    rc = d.wait_exit(START_TIMEOUT)
    assert rc == 1, d.output()
    lines = d.stderr().splitlines()
    assert len(lines) == 1, d.output()
    assert "Traceback" not in d.output()
    assert "Demo token" not in d.stdout(), d.output()
    return lines[0]


def refused_alike(spawn: Spawn, args: list[str], tmp_path: Path) -> str:
    """The line of a refused twistd start, checked to be the checker's too."""
    env = dev_env()
    d = spawn(*args, env=env, listen=False)
    line = refused(d)
    done = run_check(args, env, tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"{line}\n")
    return line


def test_a_port_in_use_is_one_line_and_exit_1_without_the_banner(spawn: Spawn) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = spawn("--dev", "--listen", f"tcp:{port}:interface=127.0.0.1", listen=False)
        assert refused(d) == f"[server] listen: 127.0.0.1:{port} is in use"


def test_a_misspelt_endpoint_argument_is_named(spawn: Spawn, tmp_path: Path) -> None:
    line = refused_alike(spawn, ["--dev", "--listen", "tcp:8090:interfase=127.0.0.1"], tmp_path)
    assert line.startswith("[server] listen = 'tcp:8090:interfase=127.0.0.1' (from --listen): ")
    assert "unknown argument interfase=; did you mean interface=?" in line


def test_a_missing_tls_key_is_named(spawn: Spawn, tmp_path: Path) -> None:
    cert, _ = self_signed("localhost")
    (tmp_path / "cert.pem").write_bytes(cert)
    key = tmp_path / "missing.pem"
    listen = f"ssl:8443:interface=127.0.0.1:privateKey={key}:certKey={tmp_path / 'cert.pem'}"
    line = refused_alike(spawn, ["--dev", "--listen", listen], tmp_path)
    assert line == (
        f"[server] listen: privateKey={key}: cannot read the file: No such file or directory"
    )


def test_a_bad_instruments_csv_is_named(spawn: Spawn, tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("symbol,name,type,base_price,volume,market_cap\nAAPL,Apple,stock,abc,1,1\n")
    conf = tmp_path / "quoted.conf"
    conf.write_text(f"[feed]\ninstruments_file = {csv}\n")
    line = refused_alike(spawn, ["--dev", "--config", str(conf)], tmp_path)
    assert line.startswith(f"[feed] instruments_file: {csv}: line 2: "), line


def test_a_bad_replay_file_is_named(spawn: Spawn, tmp_path: Path) -> None:
    ticks = tmp_path / "ticks.ndjson"
    ticks.write_text('{"t": 0, "symbol": "AAPL", "price": 1}\nnot json\n')
    conf = tmp_path / "quoted.conf"
    conf.write_text(f"[feed]\nsource = replay\nreplay_file = {ticks}\n")
    line = refused_alike(spawn, ["--dev", "--config", str(conf)], tmp_path)
    assert line.startswith(f"[feed] replay_file: {ticks}: line "), line


def test_the_banner_comes_once_the_port_listens_and_head_is_quiet(spawn: Spawn) -> None:
    d = spawn("--dev", env=dev_env())
    d.wait_ready()
    out = d.stdout()
    assert "Demo token" in out, d.output()
    # the site's "starting on PORT" line is logged when the port is open, before the banner
    assert out.index(f"starting on {d.port}") < out.index("Demo token"), out
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        get = conn.getresponse()
        body = get.read()
        for _ in range(3):  # a load balancer's probes
            conn.request("HEAD", "/healthz")
            head = conn.getresponse()
            assert head.status == get.status
            assert head.getheader("Content-Length") == str(len(body))
            assert head.read() == b""
    finally:
        conn.close()
    d.terminate()
    assert d.wait_exit(SHUTDOWN_TIMEOUT + MARGIN) == 0, d.output()
    assert "HEAD request" not in d.output(), d.output()
    assert "eat it" not in d.output()


def test_a_good_configuration_is_ok_for_both(spawn: Spawn, tmp_path: Path) -> None:
    done = run_check(["--dev", "--listen", "tcp:0:interface=127.0.0.1"], quoted_env(), tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


# -- each check in process ----------------------------------------------------------------------


def problems(tmp_path: Path, listen: str, text: str = "") -> list[str]:
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    config = load_config(str(conf), {}, dev=True, listen=listen)
    return checks.check_config(config)


@pytest.fixture
def pems(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = self_signed("localhost")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    return tmp_path / "key.pem", tmp_path / "cert.pem"


def test_tls_key_and_certificate_that_match_pass(tmp_path: Path, pems: tuple[Path, Path]) -> None:
    key, cert = pems
    assert problems(tmp_path, f"ssl:8443:privateKey={key}:certKey={cert}") == []
    both = tmp_path / "server.pem"  # one file holding both, Twisted's default layout
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert problems(tmp_path, f"ssl:8443:privateKey={both}") == []


def test_tls_not_a_key_not_a_certificate_and_a_mismatch(
    tmp_path: Path, pems: tuple[Path, Path]
) -> None:
    key, cert = pems
    assert problems(tmp_path, f"ssl:8443:privateKey={cert}:certKey={key}") == [
        f"[server] listen: privateKey={cert}: not a PEM private key",
        f"[server] listen: certKey={key}: not a PEM certificate",
    ]
    other, _ = self_signed("other")
    (tmp_path / "other.pem").write_bytes(other)
    assert problems(tmp_path, f"ssl:8443:privateKey={key}:certKey={tmp_path / 'other.pem'}") == [
        f"[server] listen: privateKey={key} is not the key of the certificate "
        f"certKey={tmp_path / 'other.pem'}"
    ]


@pytest.mark.parametrize(
    ("listen", "words"),
    [
        ("tcp6:8080:interfase=::1", "unknown argument interfase=; did you mean interface=?"),
        ("unix:/tmp/q.sock:mod=600", "unknown argument mod=; did you mean mode=?"),
        ("systemd:domain=INET:nam=quoted", "unknown argument nam=; did you mean name=?"),
        ("ssl:8443:privatekey=k.pem", "unknown argument privatekey=; did you mean privateKey=?"),
        ("tcp:8080:127.0.0.1:50:x", "tcp: too many positional arguments"),
    ],
)
def test_endpoint_arguments_are_checked_for_every_type(listen: str, words: str) -> None:
    with pytest.raises(ConfigError, match="listen") as e:
        load_config(None, {}, dev=True, listen=listen)
    assert words in str(e.value)


def test_a_systemd_endpoint_is_not_built_by_the_checker(tmp_path: Path) -> None:
    assert problems(tmp_path, "systemd:domain=INET:name=quoted") == []


def test_a_bad_backlog_is_found_by_twisted_building_the_endpoint(tmp_path: Path) -> None:
    [line] = problems(tmp_path, "tcp:8080:backlog=many")
    assert line.startswith("[server] listen = 'tcp:8080:backlog=many': ValueError: "), line


def test_a_bad_replay_file_in_process(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("")
    conf = f"[feed]\nsource = replay\nreplay_file = {tmp_path / 't.csv'}\n"
    [line] = problems(tmp_path, "tcp:0", conf)
    assert line.startswith(f"[feed] replay_file: {tmp_path / 't.csv'}: line 1: "), line
