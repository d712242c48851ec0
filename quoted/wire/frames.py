"""RFC 6455 frames both ways, and quoted's side of RFC 7692 permessage-deflate.

The server side: quoted frames every quotes_patch and control reply itself (see
QuoteProtocol._write) with :func:`text_frame`, not through Autobahn, and compresses
quotes_patch with its own small zlib context when permessage-deflate was negotiated:
Autobahn's uses zlib's defaults, 256 KB a connection.

The client side (quoted-load's lean connections): :func:`client_frame` writes a masked
client frame; :class:`FrameReader` turns the server's byte stream into whole messages and
control frames (fragments reassembled, 7/16/64-bit lengths, control frames between
fragments), raising :class:`FrameError` where the server breaks the framing.
"""

from __future__ import annotations

import os
import struct
from typing import Final

__all__ = [
    "DEFLATE_LEVEL",
    "DEFLATE_MEM_LEVEL",
    "DEFLATE_TAIL",
    "DEFLATE_WINDOW_BITS",
    "MAX_MESSAGE",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "FrameReader",
    "client_frame",
    "text_frame",
]

OP_CONT: Final = 0
OP_TEXT: Final = 1
OP_BINARY: Final = 2
OP_CLOSE: Final = 8
OP_PING: Final = 9
OP_PONG: Final = 10

MAX_MESSAGE: Final = 16 * 1024 * 1024
"""The largest server message :class:`FrameReader` reassembles (what the server accepts from a
client is quoted.wire.messages.MAX_MESSAGE_BYTES)."""


class FrameError(Exception):
    """The server broke RFC 6455 framing."""


def text_frame(payload: bytes, first: int = 0x81) -> bytes:
    """An unmasked, unfragmented server text frame (RFC 6455 5.2); ``first`` 0xC1 sets
    RSV1, a compressed message (RFC 7692)."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


# permessage-deflate of quotes_patch, our side: zlib level 1 with a 2 KiB window and
# memLevel 2 keeps about 10 KB per compressed connection (zlib's defaults, which
# Autobahn uses, take 256 KB: 2.2 GB at 10,000 browser clients) and compresses a
# 5-symbol message to ~12% in ~11 us (bench/run compress; BENCHMARKS.md). A window
# smaller than the client allows needs no negotiation: every distance stays within it.
DEFLATE_LEVEL = 1
DEFLATE_WINDOW_BITS = 11
DEFLATE_MEM_LEVEL = 2
DEFLATE_TAIL = b"\x00\x00\xff\xff"


# -- the client side ---------------------------------------------------------------


def client_frame(opcode: int, payload: bytes = b"", key: bytes | None = None) -> bytes:
    """One final frame from the client, masked as RFC 6455 requires."""
    key = os.urandom(4) if key is None else key
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if not n:
        return head + key
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


class FrameReader:
    """Server frames from a byte stream: ``feed`` returns whole messages and control frames
    as (opcode, payload, rsv1, wire payload bytes), fragments reassembled."""

    __slots__ = ("_buf", "_frag_op", "_frag_parts", "_frag_rsv1", "_frag_wire", "_need")

    def __init__(self) -> None:
        self._buf: list[bytes] = []  # bytes of an incomplete frame
        self._need = 0  # bytes _buf must hold before parsing is worth trying again
        self._frag_op = -1
        self._frag_parts: list[bytes] = []
        self._frag_rsv1 = False
        self._frag_wire = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes, bool, int]]:
        if self._buf:
            self._buf.append(data)
            self._need -= len(data)
            if self._need > 0:
                return []
            data = b"".join(self._buf)
            self._buf = []
        out: list[tuple[int, bytes, bool, int]] = []
        pos, end = 0, len(data)
        need = 1  # after the loop: bytes missing before the next frame can be parsed
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            if b1 & 0x80:
                raise FrameError("masked server frame")
            length, hdr = b1 & 0x7F, 2
            if length == 126:
                hdr = 4
                if end - pos < hdr:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                hdr = 10
                if end - pos < hdr:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length > MAX_MESSAGE:
                    raise FrameError(f"frame of {length} bytes")
            if end - pos < hdr + length:
                need = hdr + length - (end - pos)
                break
            payload = data[pos + hdr : pos + hdr + length]
            pos += hdr + length
            self._frame(b0, payload, out)
        if pos < end:
            self._buf = [data[pos:] if pos else data]
            self._need = need
        return out

    def _frame(self, b0: int, payload: bytes, out: list[tuple[int, bytes, bool, int]]) -> None:
        fin, rsv1, opcode = b0 & 0x80, bool(b0 & 0x40), b0 & 0x0F
        if b0 & 0x30:
            raise FrameError("reserved bits RSV2/RSV3")
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG or not fin or len(payload) > 125 or rsv1:
                raise FrameError(f"bad control frame (opcode {opcode})")
            out.append((opcode, payload, False, len(payload)))
        elif opcode == OP_CONT:
            if self._frag_op < 0 or rsv1:
                raise FrameError("continuation out of place")
            self._frag_parts.append(payload)
            self._frag_wire += len(payload)
            if self._frag_wire > MAX_MESSAGE:
                raise FrameError("message too large")
            if fin:
                whole = b"".join(self._frag_parts)
                out.append((self._frag_op, whole, self._frag_rsv1, self._frag_wire))
                self._frag_op, self._frag_parts, self._frag_wire = -1, [], 0
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._frag_op >= 0:
                raise FrameError("new message inside a fragmented one")
            if fin:
                out.append((opcode, payload, rsv1, len(payload)))
            else:
                self._frag_op, self._frag_parts = opcode, [payload]
                self._frag_rsv1, self._frag_wire = rsv1, len(payload)
        else:
            raise FrameError(f"reserved opcode {opcode}")
