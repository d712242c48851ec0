"""quoted.wire.closecodes: what a client does after each close code (docs/protocol.md section 7).

The codes are written as numbers here on purpose: they are the contract on the wire."""

from __future__ import annotations

import pytest

from quoted.wire import closecodes
from quoted.wire.closecodes import close_verdict


@pytest.mark.parametrize(
    ("code", "reason", "action"),
    [
        (1001, "server shutting down", "retry"),
        (1006, "", "retry"),
        (1011, "", "retry"),
        (1013, "", "retry"),
        (4008, "slow consumer", "retry"),
        (4029, "too many messages", "retry"),
        (1008, "no pong to the last ping", "retry"),
        (1008, "idle timeout", "retry"),
        (1008, "bad request", "fatal"),
        (1002, "", "fatal"),
        (1003, "", "fatal"),
        (1007, "", "fatal"),
        (1009, "", "fatal"),
        (4001, "token expired", "new_token"),
    ],
)
def test_close_verdict(code: int, reason: str, action: str) -> None:
    v = close_verdict(code, reason)
    assert v.action == action
    assert str(code) in v.reason


def test_the_names_have_the_documented_numbers() -> None:
    numbers = {name: getattr(closecodes, name) for name in closecodes.__all__ if "CLOSE_" in name}
    assert {k: v for k, v in numbers.items() if isinstance(v, int)} == {
        "CLOSE_NORMAL": 1000,
        "CLOSE_GOING_AWAY": 1001,
        "CLOSE_PROTOCOL_ERROR": 1002,
        "CLOSE_UNSUPPORTED": 1003,
        "CLOSE_NO_STATUS": 1005,
        "CLOSE_ABNORMAL": 1006,
        "CLOSE_BAD_DATA": 1007,
        "CLOSE_POLICY": 1008,
        "CLOSE_TOO_BIG": 1009,
        "CLOSE_INTERNAL_ERROR": 1011,
        "CLOSE_TRY_AGAIN_LATER": 1013,
        "CLOSE_TOKEN_EXPIRED": 4001,
        "CLOSE_SLOW_CONSUMER": 4008,
        "CLOSE_TOO_MANY_MESSAGES": 4029,
    }
