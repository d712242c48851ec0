"""quoted-load over wss (quoted.loadgen.tls) and its reconnect storm (quoted.loadgen.storm),
against a real quoted on the test's reactor; TLS through ``[server] listen = ssl:...``
with a self-signed certificate for localhost and 127.0.0.1 (as tests/server/test_tls.py)."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import ssl as stdssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from quoted.loadgen.cli import Unreachable, parse_args, run
from quoted.loadgen.run import Runner
from quoted.loadgen.storm import percentile
from quoted.server.config import Config
from tests.certs import self_signed, tls_files
from tests.harness import QuotedServer, make_config
from tests.loadgen.test_load import FEED, WS, argv, assert_clean, run_then_still

ensure = pytest_twisted.ensureDeferred


def tls_config() -> tuple[Config, Path]:
    """quoted ticking every 50 ms on ssl:0 with the test certificate (localhost, 127.0.0.1);
    the config and the certificate's file (the --ca of the runs)."""
    return make_config(tls=True, feed=FEED, websocket=WS), tls_files().cert


@pytest.fixture
def start_tls(start_config: Callable[..., Any]) -> Callable[..., Any]:
    """``await start_tls(tickets=True)``: a TLS quoted (``[server] tls_session_tickets`` as
    given) and the --ca file for it."""

    async def start(tickets: bool = True) -> tuple[QuotedServer, Path]:
        config, cert = tls_config()
        server_config = dataclasses.replace(config.server, tls_session_tickets=tickets)
        server: QuotedServer = await start_config(dataclasses.replace(config, server=server_config))
        return server, cert

    return start


def ws_argv(s: QuotedServer, *extra: str, conns: int = 20) -> list[str]:
    """test_load's run with ``conns`` connections: a later --conns wins (argparse)."""
    return argv(s, "--conns", str(conns), *extra)


def wss_argv(s: QuotedServer, cert: Path, *extra: str, conns: int = 20) -> list[str]:
    """The same over wss, trusting ``cert``: the later --url wins."""
    url = f"wss://127.0.0.1:{s.port}"
    return ws_argv(s, "--url", url, "--ca", str(cert), *extra, conns=conns)


# -- wss ------------------------------------------------------------------------------------------


@ensure
async def test_wss_run_verifies_documents_over_https(start_tls: Any) -> None:
    """Every connection is TLS 1.3, every handshake a full one; the documents equal the REST
    answers of the check (over https, with the same trust: a plain GET would get nothing)."""
    s, cert = await start_tls()
    err = io.StringIO()
    r = await run_then_still(s, wss_argv(s, cert), err)
    assert_clean(r)
    assert r["connected"] == 20 and err.getvalue() == "", err.getvalue()
    tls = r["tls"]
    assert tls["full"] == 20 and tls["resumed"] == 0, tls
    assert tls["version"] == "TLSv1.3" and tls["cipher"], tls
    assert r["storm"] is None


@ensure
async def test_wss_with_a_server_name_and_slow_readers(start_tls: Any) -> None:
    """--server-name localhost: the name checked (the URL's host is an address); slow
    readers over TLS pause the TCP socket under it."""
    s, cert = await start_tls()
    args = wss_argv(s, cert, "--server-name", "localhost", "--slow", "2")
    r = await run_then_still(s, args, io.StringIO())
    assert_clean(r)
    assert r["connected"] == 22 and r["slow"]["opened"] == 2, r
    assert r["tls"]["full"] == 22, r["tls"]


@ensure
async def test_a_connection_refusing_the_certificate_fails_as_tls(
    start_tls: Any, tmp_path: Path
) -> None:
    """The connections' own TLS (not the REST calls') verifies: with another CA every
    handshake fails, counted as "tls", and nothing is counted as a TLS handshake."""
    s, cert = await start_tls()
    other = tmp_path / "other.pem"
    other.write_bytes(self_signed("localhost", "127.0.0.1")[0])
    runner = Runner(parse_args(wss_argv(s, cert, "--duration", "300ms")), reactor, io.StringIO())
    assert runner.tls is not None
    runner.tls.context = stdssl.create_default_context(cafile=str(other))
    r = await runner.run()
    assert r["connected"] == 0 and r["failed"] == 20 and r["failed_by"] == {"tls": 20}, r
    assert r["tls"]["full"] == r["tls"]["resumed"] == 0, r["tls"]


@pytest.mark.parametrize(
    "trouble",
    ["other-ca", "other-name"],
)
@ensure
async def test_wss_refuses_a_certificate_it_cannot_verify(
    start_tls: Any, tmp_path: Path, trouble: str
) -> None:
    s, cert = await start_tls()
    if trouble == "other-ca":
        other = tmp_path / "other.pem"
        other.write_bytes(self_signed("localhost", "127.0.0.1")[0])
        args = wss_argv(s, other)
    else:
        args = wss_argv(s, cert, "--server-name", "quotes.example")
    with pytest.raises(Unreachable):
        await run(parse_args(args), reactor, io.StringIO())


@ensure
async def test_resume_reuses_each_connections_session(start_tls: Any) -> None:
    """With session tickets on at the server, every storm client resumes its previous
    connection's session (the ticket of TLS 1.3, kept once the snapshot arrived)."""
    s, cert = await start_tls(tickets=True)
    args = wss_argv(s, cert, "--resume", "--storm-at", "1s", conns=8)
    r = await run_then_still(s, args, io.StringIO())
    assert_clean(r, 8)
    storm, tls = r["storm"], r["tls"]
    assert storm["clients"] == storm["back"] == 8 and storm["resumed"] == 8, storm
    assert tls["full"] == 8 and tls["resumed"] == 8, tls


@ensure
async def test_without_resume_the_storm_handshakes_in_full(start_tls: Any) -> None:
    s, cert = await start_tls(tickets=True)
    r = await run_then_still(s, wss_argv(s, cert, "--storm-at", "1s", conns=8), io.StringIO())
    assert_clean(r, 8)
    assert r["storm"]["back"] == 8 and r["storm"]["resumed"] == 0, r["storm"]
    assert r["tls"]["full"] == 16 and r["tls"]["resumed"] == 0, r["tls"]


@ensure
async def test_without_tickets_quoted_resumes_nothing(start_tls: Any) -> None:
    """``[server] tls_session_tickets = off``: every reconnect is a full handshake."""
    s, cert = await start_tls(tickets=False)
    args = wss_argv(s, cert, "--resume", "--storm-at", "1s", conns=8)
    r = await run_then_still(s, args, io.StringIO())
    assert r["storm"]["back"] == 8, r["storm"]
    assert r["tls"]["resumed"] == 0 and r["tls"]["full"] == 16, r["tls"]


# -- the storm -----------------------------------------------------------------------------------


def assert_storm(r: dict[str, Any], conns: int) -> None:
    """Every client back, counted once; no seq gap or mismatch across the reconnect."""
    assert_clean(r, conns)
    storm = r["storm"]
    assert storm["clients"] == storm["back"] == conns and storm["failed"] == 0, storm
    assert storm["pending"] == 0 and storm["failed_by"] == {}, storm
    assert 0 < storm["back_p50_ms"] <= storm["back_p99_ms"] <= storm["all_back_s"] * 1000 + 1, storm
    assert r["connected"] == 2 * conns, r  # the first connections and the storm's
    assert r["verified"] == conns * 3, r  # the new documents, checked at the end


@pytest.mark.parametrize("drop", [False, True], ids=["close", "reset"])
@ensure
async def test_storm_over_ws(start_server: Any, drop: bool) -> None:
    s = await start_server(feed=FEED, websocket=WS)
    err = io.StringIO()
    extra = ["--storm-at", "1s", *(["--storm-drop"] if drop else [])]
    r = await run_then_still(s, ws_argv(s, *extra, conns=10), err)
    assert_storm(r, 10)
    assert r["storm"]["drop"] is drop and r["tls"] is None
    assert "storm: 10 connections reconnect" in err.getvalue()


@pytest.mark.parametrize("drop", [False, True], ids=["close", "reset"])
@ensure
async def test_storm_over_wss(start_tls: Any, drop: bool) -> None:
    s, cert = await start_tls()
    extra = ["--storm-at", "1s", *(["--storm-drop"] if drop else [])]
    r = await run_then_still(s, wss_argv(s, cert, *extra, conns=10), io.StringIO())
    assert_storm(r, 10)
    assert r["tls"]["full"] == 20 and r["storm"]["resumed"] == 0, r["tls"]


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
@ensure
async def test_storm_from_behind_a_trusted_proxy_is_not_refused(
    start_server: Any, trusted: bool
) -> None:
    """Issue 21: 20 clients behind one proxy (all from 127.0.0.7, each with its own
    X-Forwarded-For) connect and then reconnect at once, against 1 handshake a second per IP
    (burst 2) and 5 connections per IP. With the proxy in ``trusted_proxies`` each client has
    its own budget and the proxy's connections are not counted: all are back. Without, the
    whole storm is one address and is refused."""
    proxies = (ipaddress.ip_network("127.0.0.7/32"),) if trusted else ()
    s = await start_server(
        feed=FEED,
        websocket={"handshake_rate_per_ip": 1.0},
        server={"trusted_proxies": proxies, "max_connections_per_ip": 5},
    )
    behind = ["--source-ips", "127.0.0.7", "--forwarded-for", "10.9.0.0/24", "--storm-at", "1s"]
    r = await run_then_still(s, ws_argv(s, *behind, conns=20), io.StringIO())
    if trusted:
        assert_storm(r, 20)
    else:
        codes = set(r["failed_codes"])
        assert r["failed"] > 0 and set(r["failed_by"]) == {"429"}, r
        assert codes <= {"429 too_many_ip_connections", "429 rate_limited"}, codes


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile(values, 100) == 100 and percentile([7.0], 99) == 7
    assert percentile([], 50) is None


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--url", "wss://h:1", "--ca", "/nonexistent/ca.pem"], "--ca /nonexistent/ca.pem: "),
        (["--resume"], "--resume needs a wss:// --url, got 'ws://127.0.0.1:8080'"),
        (["--ca", "x.pem"], "--ca needs a wss:// --url"),
        (["--server-name", "h"], "--server-name needs a wss:// --url"),
        (["--storm-at", "30s"], "--storm-at must be above 0 and before the end of --duration"),
        (["--storm-drop"], "--storm-drop needs --storm-at"),
        (["--url", "https://h:1"], "--url: the scheme must be ws:// or wss://"),
    ],
)
def test_bad_tls_and_storm_arguments_exit_2_with_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["--secret", "s", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("quoted-load: error: ") and line in err[-1], err
    assert not err[-1].rstrip().endswith(":"), err  # a reason follows


def test_ca_that_is_no_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(SystemExit) as e:
        parse_args(["--secret", "s", "--url", "wss://h:1", "--ca", str(bad)])
    assert e.value.code == 2
    assert f"--ca {bad}: no PEM certificate in it" in capsys.readouterr().err


def test_wss_arguments(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_bytes(self_signed("localhost")[0])
    o = parse_args(["--secret", "s", "--url", "wss://quotes.example", "--ca", str(cert)])
    assert (o.tls, o.port, o.ca, o.server_name) == (True, 443, str(cert), "")
    assert o.http_base == "https://quotes.example:443"
    o = parse_args(["--secret", "s", "--storm-at", "20s", "--duration", "1m", "--storm-drop"])
    assert (o.tls, o.storm_at, o.storm_drop, o.http_base) == (
        False,
        20.0,
        True,
        "http://127.0.0.1:8080",
    )
