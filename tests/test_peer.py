"""bench/peers/ws-peer.js, the Node peer bench/run's ``peers`` measures quoted against, is
faithful to the protocol as quoted-load checks it: every document verified against the
peer's own GET /v1/quotes, no seq gap, no mismatch, over ws and wss."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.certs import self_signed
from tests.harness import SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
VENV = Path(sys.executable).parent


def node_deps() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (.ci/run installs them)")
    if not (PEERS / "node_modules" / "ws").exists():
        done = subprocess.run(
            ["npm", "ci", "--silent", "--no-audit", "--no-fund", "--prefix", str(PEERS)],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]


def instruments(tmp_path: Path) -> Path:
    from quoted.server.instruments import load_instruments

    path = tmp_path / "instruments.json"
    items = [
        {
            "symbol": i.symbol,
            "name": i.name,
            "type": i.type,
            "base_price": i.base_price,
            "volume": i.volume,
            "market_cap": i.market_cap,
        }
        for i in load_instruments("", 0)
    ]
    path.write_text(json.dumps(items))
    return path


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the peer exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the peer did not listen")


@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_quoted_load_verifies_every_document_of_the_node_peer(
    tmp_path: Path, transport: str
) -> None:
    node_deps()
    port = free_port()
    cmd = ["node", str(PEERS / "ws-peer.js"), "--port", str(port)]
    cmd += ["--instruments", str(instruments(tmp_path)), "--interval", "0.1"]
    load = [str(VENV / "quoted-load"), "--url", f"{transport}://127.0.0.1:{port}"]
    if transport == "wss":
        cert_pem, key_pem = self_signed("localhost", "127.0.0.1")
        (tmp_path / "cert.pem").write_bytes(cert_pem)
        (tmp_path / "key.pem").write_bytes(key_pem)
        cmd += ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")]
        load += ["--ca", str(tmp_path / "cert.pem"), "--server-name", "localhost"]
    env = {**os.environ, "JWT_SECRET": SECRET.decode()}
    peer = subprocess.Popen(cmd, env=env)
    try:
        wait_listening(port, peer)
        load += ["--secret", SECRET.decode(), "--conns", "50", "--symbols-per-conn", "3"]
        load += ["--symbols-pool", "15", "--duration", "3s", "--json"]
        done = subprocess.run(load, check=False, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        r = json.loads(done.stdout.strip().splitlines()[-1])
        assert r["connected"] == 50 and r["failed"] == 0, r
        assert r["mismatches"] == 0 and r["seq_gaps"] == 0 and r["patch_mismatches"] == 0, r
        assert r["verified"] > 0 and r["updates"] > 0, r
    finally:
        peer.terminate()
        peer.wait(10)
