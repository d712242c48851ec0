"""Independent RFC 6455 frame helpers for tests: what a server writes, what a client wrote.

Written apart from quoted.wire.frames on purpose, so a test compares two implementations.
"""

from __future__ import annotations


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked server frame, any opcode, FIN and RSV1 as asked."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


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
