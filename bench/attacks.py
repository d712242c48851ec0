#!/usr/bin/env python3
"""bench/attacks.py: the attacks of issue 19 items 1-3, kept up against one quoted for the soak.

Run by ``bench/run soak`` beside quoted-load's calm clients (and the Redis hangs of item 7,
which bench/run does itself). Each attacker reconnects when the server closes it, so the
attack lasts the whole run; the summary (stdout, one JSON line) counts what the server did
to them: connections opened, closed by the server, close codes seen, HTTP statuses.

- ``nonreader``: subscribes to 4 KiB of invalid symbols ten times a second (each reply echoes
  them), never reads, and sends an unsolicited pong frame every 5 s (item 1).
- ``fragments``: one text frame with FIN=0, then zero-length continuation frames without end,
  an occasional pong (item 2).
- ``trickle``: ``POST /healthz`` with a body of 500 bytes declared and one byte sent every
  20 s (item 3: a declared 1 GB body is refused at once with 413, so the deadline is what
  this one meets).

Blocking sockets in threads: this is a load tool, not quoted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import threading
import time
from collections import Counter
from typing import Any

from quoted.wire.frames import client_frame
from quoted.wire.tokens import mint_token

OP_CONT, OP_TEXT, OP_PONG = 0x0, 0x1, 0xA


class Tally:
    """What the attackers saw, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n


def handshake(host: str, port: int, token: str, source: str) -> socket.socket:
    s = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws/quotes HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
    return s


def fragment_frame(opcode: int, fin: bool) -> bytes:
    """A masked, empty frame: ``opcode`` with FIN as given (client_frame always sets FIN)."""
    frame = bytearray(client_frame(opcode))
    if not fin:
        frame[0] &= 0x7F
    return bytes(frame)


def nonreader(args: Any, tally: Tally, stop: threading.Event, n: int) -> None:
    symbols = ",".join(f"<X{i:04d}>" for i in range(500))[:4000].split(",")
    message = json.dumps({"type": "subscribe", "id": "x", "symbols": symbols}).encode()
    while not stop.is_set():
        try:
            s = handshake(args.host, args.port, args.token, args.source)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            tally.add("nonreader_opened")
            last_pong = 0.0
            while not stop.is_set():
                s.sendall(client_frame(OP_TEXT, message))
                tally.add("nonreader_messages")
                now = time.monotonic()
                if now - last_pong > 5:
                    s.sendall(client_frame(OP_PONG))
                    last_pong = now
                time.sleep(0.1)
        except OSError as e:
            tally.add(f"nonreader_closed:{type(e).__name__}")
            time.sleep(1)


def fragments(args: Any, tally: Tally, stop: threading.Event, n: int) -> None:
    while not stop.is_set():
        try:
            s = handshake(args.host, args.port, args.token, args.source)
            tally.add("fragments_opened")
            s.sendall(fragment_frame(OP_TEXT, fin=False))
            frame = fragment_frame(OP_CONT, fin=False)
            sent = 0
            while not stop.is_set():
                s.sendall(frame * 100)
                sent += 100
                if sent % 10_000 == 0:
                    s.sendall(client_frame(OP_PONG))
                time.sleep(0.01)  # about 10,000 frames a second
            tally.add("fragments_frames", sent)
        except OSError as e:
            tally.add(f"fragments_closed:{type(e).__name__}")
            time.sleep(1)


def trickle(args: Any, tally: Tally, stop: threading.Event, n: int) -> None:
    while not stop.is_set():
        try:
            s = socket.create_connection(
                (args.host, args.port), timeout=30, source_address=(args.source, 0)
            )
            tally.add("trickle_opened")
            s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n")
            while not stop.is_set():
                s.sendall(b"x")
                s.settimeout(20)
                try:
                    answer = s.recv(4096)
                except TimeoutError:
                    continue
                status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else ""
                tally.add(f"trickle_answered:{status or 'closed'}")
                time.sleep(1)
                break
        except OSError as e:
            tally.add(f"trickle_closed:{type(e).__name__}")
            time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--source", default="127.0.0.20", help="source address of the attackers")
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--nonreaders", type=int, default=10)
    ap.add_argument("--fragmenters", type=int, default=3)
    ap.add_argument("--tricklers", type=int, default=50)
    args = ap.parse_args()
    args.token = mint_token(args.secret.encode(), "attacker", now=time.time(), ttl=86400)
    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(target=fn, args=(args, tally, stop, i), daemon=True)
        for fn, count in (
            (nonreader, args.nonreaders),
            (fragments, args.fragmenters),
            (trickle, args.tricklers),
        )
        for i in range(count)
    ]
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join(timeout=25)
    print(json.dumps(dict(sorted(tally.counts.items()))), flush=True)


if __name__ == "__main__":
    main()
