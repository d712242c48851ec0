"""Server frames written by quoted itself (RFC 6455, RFC 7692), not through Autobahn.

quoted frames every quotes_patch and control reply itself (see QuoteProtocol._write), and
compresses quotes_patch with its own small zlib context when permessage-deflate was
negotiated: Autobahn's uses zlib's defaults, 256 KB a connection.
"""

from __future__ import annotations

import struct


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
