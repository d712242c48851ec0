"""quoted.wire.frames: the client side (FrameReader over the server's stream, the masked
client_frame) against independent helpers, and the server's text_frame read back."""

from __future__ import annotations

import os

import pytest

from quoted.wire.frames import (
    MAX_MESSAGE,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    client_frame,
    text_frame,
)
from tests.wire.framing import client_frames, server_frame


def feed_all(reader: FrameReader, chunks: list[bytes]) -> list[tuple[int, bytes, bool, int]]:
    out = []
    for c in chunks:
        out += reader.feed(c)
    return out


STREAM = (
    server_frame(OP_TEXT, b'{"a":1}')
    + server_frame(OP_TEXT, b"x" * 300)  # 16-bit length
    + server_frame(OP_TEXT, b"part1-", fin=False)
    + server_frame(OP_PING, b"hi")  # a control frame between fragments
    + server_frame(0, b"part2-", fin=False)
    + server_frame(0, b"end")
    + server_frame(OP_TEXT, b"y" * 70000)  # 64-bit length
    + server_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")
)
EXPECTED = [
    (OP_TEXT, b'{"a":1}', False, 7),
    (OP_TEXT, b"x" * 300, False, 300),
    (OP_PING, b"hi", False, 2),
    (OP_TEXT, b"part1-part2-end", False, 15),
    (OP_TEXT, b"y" * 70000, False, 70000),
    (OP_CLOSE, b"\x03\xe8bye", False, 5),
]


def test_frames_whole_stream() -> None:
    assert FrameReader().feed(STREAM) == EXPECTED


def test_frames_split_at_every_position() -> None:
    for cut in range(1, len(STREAM)):
        got = feed_all(FrameReader(), [STREAM[:cut], STREAM[cut:]])
        assert got == EXPECTED, cut


def test_frames_byte_by_byte() -> None:
    small = STREAM[: STREAM.index(b"y" * 10) - 10]  # up to the 64-bit frame
    got = feed_all(FrameReader(), [small[i : i + 1] for i in range(len(small))])
    assert got == EXPECTED[:4]


@pytest.mark.parametrize(
    "data",
    [
        bytes((0x81, 0x81)) + b"abcd" + b"x",  # masked by the server
        bytes((0xA1, 0)),  # RSV2
        bytes((0x83, 0)),  # reserved opcode
        bytes((0x09, 0)),  # fragmented ping
        bytes((0x89, 126, 0, 200)) + b"p" * 200,  # ping over 125 bytes
        server_frame(0, b"c"),  # continuation out of place
        server_frame(OP_TEXT, b"a", fin=False) + server_frame(OP_TEXT, b"b"),
    ],
)
def test_frames_protocol_errors(data: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(data)


def test_frames_over_the_limit() -> None:
    head = bytes((0x81, 127)) + (MAX_MESSAGE + 1).to_bytes(8, "big")
    with pytest.raises(FrameError):
        FrameReader().feed(head)
    reader = FrameReader()
    reader.feed(server_frame(OP_TEXT, b"a" * MAX_MESSAGE, fin=False))
    with pytest.raises(FrameError):
        reader.feed(server_frame(0, b"b"))


def test_frames_rsv1_marks_the_message() -> None:
    frames = server_frame(OP_TEXT, b"ab", fin=False, rsv1=True) + server_frame(0, b"cd")
    assert FrameReader().feed(frames) == [(OP_TEXT, b"abcd", True, 4)]


@pytest.mark.parametrize("n", [0, 5, 125, 126, 65535, 65536])
def test_client_frame_is_masked(n: int) -> None:
    payload = os.urandom(n)
    frame = client_frame(OP_PONG, payload)
    assert client_frames(frame) == [(OP_PONG, payload)]
    assert n < 8 or payload not in frame


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("first", [0x81, 0xC1])
def test_text_frame_reads_back(n: int, first: int) -> None:
    payload = os.urandom(n)
    assert text_frame(payload, first) == server_frame(OP_TEXT, payload, rsv1=first == 0xC1)
    assert FrameReader().feed(text_frame(payload, first)) == [(OP_TEXT, payload, first == 0xC1, n)]
