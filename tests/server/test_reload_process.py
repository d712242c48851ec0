"""SIGHUP to a real ``twistd quoted`` after its configuration file is edited.

A client connected before the reload stays connected and its seq goes on; a lowered limit
holds for it at once; a bad file is refused (the log says why) and the running values kept;
a setting that needs a restart is named in one warning line. Every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from quoted.wire.tokens import mint_token
from tests.harness import SECRET
from tests.server.test_process import Daemon, RawWS, Spawn, dev_env, spawn

__all__ = ["spawn"]  # the fixture, used by name

LOG_WAIT = 10.0


def write_config(path: Path, secret: Path, **sections: dict[str, str]) -> None:
    lines = ["[auth]", f"secret_file = {secret}"]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


def wait_log(d: Daemon, needle: str, count: int = 1) -> str:
    """The daemon's output once ``needle`` appears ``count`` times in it (bounded)."""
    deadline = time.monotonic() + LOG_WAIT
    while True:
        out = d.stdout()
        if out.count(needle) >= count:
            return out
        if d.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {needle!r} in the log\n{d.output()}")
        time.sleep(0.05)


def next_patch(ws: RawWS) -> dict[str, Any]:
    while True:
        m = ws.message()
        if m.get("type") == "quotes_patch":
            return m


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return tmp_path / "quoted.conf", secret


def test_sighup_applies_a_limit_keeps_the_client_and_names_what_needs_a_restart(
    spawn: Spawn, files: tuple[Path, Path]
) -> None:
    conf, secret = files
    base = {"feed": {"update_interval": "100ms", "mode": "all"}, "websocket": {"max_symbols": "5"}}
    write_config(conf, secret, **base)
    d = spawn("--config", str(conf), env=dev_env())
    d.wait_ready()
    token = mint_token(SECRET, "client", now=time.time(), ttl=600)
    ws = RawWS(d.port, "symbols=AAPL,MSFT", token)
    try:
        first = next_patch(ws)
        assert first["seq"] == 1
        seq = next_patch(ws)["seq"]

        write_config(
            conf,
            secret,
            feed={"update_interval": "100ms", "mode": "all"},
            websocket={"max_symbols": "2"},
            history={"ticks": "10"},
            log={"level": "info"},
        )
        d.proc.send_signal(signal.SIGHUP)
        out = wait_log(d, "configuration reloaded")
        assert "[websocket] max_symbols" in out
        assert "a restart is needed to change [history] ticks" in out
        assert out.count("a restart is needed") == 1

        # still connected, the seq goes on without a gap
        for _ in range(3):
            m = next_patch(ws)
            assert m["seq"] == seq + 1, m
            seq = m["seq"]
        # the new limit holds for the connection opened before the reload
        ws.send(0x1, json.dumps({"type": "subscribe", "id": "s", "symbols": ["GOOGL"]}).encode())
        while True:
            m = ws.message()
            if m.get("type") == "error":
                assert m["code"] == "too_many_symbols", m
                break
            assert m.get("type") == "quotes_patch", m
            assert m["seq"] == seq + 1
            seq = m["seq"]
        assert next_patch(ws)["seq"] > seq

        # a bad file: refused whole, the running values kept, the reason logged
        write_config(
            conf,
            secret,
            feed={"update_interval": "100ms", "mode": "all"},
            websocket={"max_symbols": "50"},
            bogus={"x": "1"},
        )
        d.proc.send_signal(signal.SIGHUP)
        out = wait_log(d, "configuration reload refused")
        assert "[bogus]: unknown section" in out
        assert "the running configuration is kept" in out
        ws.send(0x1, json.dumps({"type": "subscribe", "id": "t", "symbols": ["GOOGL"]}).encode())
        while True:
            m = ws.message()
            if m.get("type") == "error":
                assert m["code"] == "too_many_symbols", m  # still 2, not 50
                break
        assert d.proc.poll() is None
    finally:
        ws.close()
    d.terminate()
    assert d.wait_exit(10) == 0, d.output()
    assert "Traceback" not in d.output()


def test_sighup_retires_an_instrument_from_a_connected_client_in_sequence(
    spawn: Spawn, files: tuple[Path, Path], tmp_path: Path
) -> None:
    conf, secret = files
    csv = tmp_path / "instruments.csv"
    header = "symbol,name,type,base_price,volume,market_cap\n"
    rows = ["AAPL,Apple,STOCK,150,1000,0\n", "MSFT,Microsoft,STOCK,300,1000,0\n"]
    csv.write_text(header + "".join(rows))
    feed = {"update_interval": "100ms", "mode": "all", "instruments_file": str(csv)}
    write_config(conf, secret, feed=feed)
    d = spawn("--config", str(conf), env=dev_env())
    d.wait_ready()
    token = mint_token(SECRET, "client", now=time.time(), ttl=600)
    ws = RawWS(d.port, "symbols=AAPL,MSFT", token)
    try:
        seq = next_patch(ws)["seq"]
        csv.write_text(header + rows[1] + "NEWCO,New Co,STOCK,12.5,1000,0\n")
        d.proc.send_signal(signal.SIGHUP)
        removed = False
        deadline = time.monotonic() + LOG_WAIT
        while not removed and time.monotonic() < deadline:
            m = next_patch(ws)
            assert m["seq"] == seq + 1, m
            seq = m["seq"]
            removed = {"op": "remove", "path": "/quotes/AAPL"} in m["operations"]
        assert removed
        out = wait_log(d, "instruments retired: AAPL")
        assert "instruments added: NEWCO" in out
        for _ in range(2):  # MSFT goes on moving, in sequence
            m = next_patch(ws)
            assert m["seq"] == seq + 1
            seq = m["seq"]
            assert all("AAPL" not in op["path"] for op in m["operations"])
    finally:
        ws.close()
