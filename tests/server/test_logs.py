"""Log observer: level filter, text and JSON lines, redaction, failures."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure

from quoted.server import logs
from quoted.server.config import LogConfig

T = 1_795_885_571.78  # 2026-11-28T17:06:11.780Z
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0"
    ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
)


@pytest.fixture(autouse=True)
def reset_logs() -> Iterator[None]:
    yield
    logs._config = None
    logs._stream = None


def event(fmt: str = "hello", level: LogLevel = LogLevel.info, **fields: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "log_format": fmt,
        "log_level": level,
        "log_namespace": "quoted.hub",
        "log_time": T,
    }
    e.update(fields)
    return e


def observe(events: list[dict[str, Any]], level: str = "info", fmt: str = "text") -> list[str]:
    stream = io.StringIO()
    logs.configure(LogConfig(level=level, format=fmt), stream)
    obs = logs.observer()
    for e in events:
        obs(e)
    return stream.getvalue().splitlines()


def observe_json(events: list[dict[str, Any]], level: str = "info") -> list[dict[str, Any]]:
    return [json.loads(line) for line in observe(events, level, "json")]


# --- level filter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["debug", "info", "warn", "error", "critical"]),
        ("info", ["info", "warn", "error", "critical"]),
        ("warn", ["warn", "error", "critical"]),
        ("error", ["error", "critical"]),
    ],
)
def test_level_filter(level: str, shown: list[str]) -> None:
    levels = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]
    lines = observe([event(lv.name, lv) for lv in levels], level=level)
    assert [line.split(" ")[1].strip("[]") for line in lines] == shown


def test_defaults_without_configure_are_info_and_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    obs = logs.observer()
    obs(event("quiet", LogLevel.debug))
    obs(event("shown"))
    out = capsys.readouterr().out
    assert out == "2026-11-28T17:06:11.780Z [info] [quoted.hub] shown\n"


def test_configure_refuses_unknown_settings() -> None:
    with pytest.raises(ValueError, match="level"):
        logs.configure(LogConfig(level="verbose", format="text"))
    with pytest.raises(ValueError, match="format"):
        logs.configure(LogConfig(level="info", format="xml"))


def test_observer_provides_ilogobserver() -> None:
    assert ILogObserver.providedBy(logs.observer())


# --- text ------------------------------------------------------------------------------------


def test_text_line() -> None:
    lines = observe(
        [
            event("closing {count} connections", count=3),
            event("slow consumer", LogLevel.warn, log_id="quoted.hub.slow_consumer"),
        ]
    )
    assert lines == [
        "2026-11-28T17:06:11.780Z [info] [quoted.hub] closing 3 connections",
        "2026-11-28T17:06:11.780Z [warn] [quoted.hub#quoted.hub.slow_consumer] slow consumer",
    ]


def test_time_is_utc_with_milliseconds() -> None:
    assert logs.format_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert logs.format_time(T) == "2026-11-28T17:06:11.780Z"
    assert logs.format_time(1.9999) == "1970-01-01T00:00:01.999Z"
    assert logs.format_time(None) == "-"


def test_a_real_logger_reaches_the_observer() -> None:
    stream = io.StringIO()
    logs.configure(LogConfig(level="info", format="text"), stream)
    log = Logger(namespace="quoted.app", observer=logs.observer())
    log.info("quoted started on {port}", port=8080, log_id="quoted.app.started")
    log.debug("not shown")
    (line,) = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[info\] \[quoted.app#quoted.app.started\] "
        r"quoted started on 8080",
        line,
    )


def test_text_failure_has_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failure = Failure()
    lines = observe([event("tick failed", LogLevel.critical, log_failure=failure)])
    assert lines[0] == "2026-11-28T17:06:11.780Z [critical] [quoted.hub] tick failed"
    text = "\n".join(lines)
    assert "Traceback" in text
    assert "RuntimeError: boom" in text


# --- JSON ------------------------------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


def test_json_shape() -> None:
    (obj,) = observe_json(
        [
            event(
                "closed {peer} with {code}",
                LogLevel.warn,
                log_id="quoted.ws.closed",
                peer="10.0.0.1",
                code=4008,
                symbols=["AAPL", "MSFT"],
                detail={"a": 1, "b": None},
                ratio=0.5,
                opaque=Opaque(),
                raw=b"\x00",
                nan=float("nan"),
            )
        ]
    )
    assert obj == {
        "time": "2026-11-28T17:06:11.780Z",
        "level": "warn",
        "namespace": "quoted.hub",
        "log_id": "quoted.ws.closed",
        "text": "closed 10.0.0.1 with 4008",
        "peer": "10.0.0.1",
        "code": 4008,
        "symbols": ["AAPL", "MSFT"],
        "detail": {"a": 1, "b": None},
        "ratio": 0.5,
        "opaque": "<Opaque>",
        "raw": "b'\\x00'",
        "nan": "nan",
    }


def test_json_leaves_out_twisted_keys_and_log_id_when_absent() -> None:
    (obj,) = observe_json(
        [event("x", log_logger=object(), log_source=object(), isError=0, system="-")]
    )
    assert obj == {
        "time": "2026-11-28T17:06:11.780Z",
        "level": "info",
        "namespace": "quoted.hub",
        "text": "x",
    }


def test_json_one_object_per_line_even_with_newlines() -> None:
    lines = observe([event("a\nb", note="c\nd")], fmt="json")
    assert len(lines) == 1
    assert json.loads(lines[0])["text"] == "a\nb"


def test_json_failure_has_the_traceback() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        failure = Failure()
    (obj,) = observe_json([event("handler failed", LogLevel.error, log_failure=failure)])
    assert obj["text"] == "handler failed"
    assert obj["traceback"].startswith("Traceback")
    assert "ValueError: bad value" in obj["traceback"]


def test_a_broken_format_does_not_break_the_observer() -> None:
    lines = observe([event("{missing} field"), event("next")])
    assert len(lines) == 2
    assert "Unable to format event" in lines[0]
    assert lines[1].endswith("next")


# --- redaction -------------------------------------------------------------------------------

SECRET_FIELDS = ["token", "secret", "authorization", "password", "jwt", "Token", "redis_password"]


@pytest.mark.parametrize("name", SECRET_FIELDS)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_fields_are_hidden(name: str, fmt: str) -> None:
    lines = observe([event(f"got {{{name}}}", **{name: "s3cr3t-value"})], fmt=fmt)
    assert "s3cr3t-value" not in "\n".join(lines)
    assert "<hidden>" in lines[0]
    if fmt == "json":
        obj = json.loads(lines[0])
        assert obj[name] == "<hidden>"
        assert obj["text"] == "got <hidden>"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "GET /ws/quotes?symbols=AAPL&token=abc.def-ghi&x=1",
            "GET /ws/quotes?symbols=AAPL&token=<hidden>&x=1",
        ),
        ("url http://h/?access_token=xyz123", "url http://h/?access_token=<hidden>"),
        ("password=hunter2 user=bob", "password=<hidden> user=bob"),
        ("Authorization: Bearer abcdef123", "Authorization: Bearer <hidden>"),
        ("authorization: bearer abcdef123, next", "authorization: bearer <hidden>, next"),
        (f"token {JWT} seen", "token <hidden> seen"),
        (JWT.rsplit(".", 1)[0] + ".", "<hidden>"),  # alg none: no signature
        ("[('token', 'abc'), ('n', 1)]", "[('token', '<hidden>'), ('n', 1)]"),
        ("redis://:pa55word@redis:6379/0", "redis://:<hidden>@redis:6379/0"),
        ("rediss://user:pa55word@redis:6380", "rediss://user:<hidden>@redis:6380"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("{'token': 'abc', 'n': 1}", "{'token': '<hidden>', 'n': 1}"),
        ('{"secret": "abc\\"def", "n": 1}', '{"secret": "<hidden>", "n": 1}'),
        # Not secrets: left alone.
        ("token_expired: the token has expired", "token_expired: the token has expired"),
        ("subscribed to AAPL,MSFT", "subscribed to AAPL,MSFT"),
    ],
)
def test_redact(text: str, want: str) -> None:
    assert logs.redact(text) == want


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_in_messages_and_nested_fields_are_hidden(fmt: str) -> None:
    events = [
        event("handshake from {url}", url=f"/ws/quotes?token={JWT}"),
        event("header {h}", h=f"Bearer {JWT}"),
        event("connecting to {url}", url="redis://:pa55word@redis:6379"),
        event("claims {c}", c={"token": "plain-secret", "nested": {"password": "pw-secret"}}),
        event("opaque", obj={"jwt": "jwt-secret"}.items()),
        event(f"raw {JWT} in the format itself"),
    ]
    out = "\n".join(observe(events, fmt=fmt))
    for secret in (JWT, "pa55word", "plain-secret", "pw-secret", "jwt-secret"):
        assert secret not in out
    for part in JWT.split("."):
        assert part not in out
    if fmt == "json":
        for line in out.splitlines():
            json.loads(line)  # redaction never breaks the JSON


def test_secrets_in_tracebacks_are_hidden() -> None:
    try:
        raise RuntimeError(f"could not verify {JWT}")
    except RuntimeError:
        failure = Failure()
    for fmt in ("text", "json"):
        out = "\n".join(observe([event("failed", LogLevel.error, log_failure=failure)], fmt=fmt))
        assert "RuntimeError" in out
        assert JWT not in out


def test_lone_surrogates_do_not_break_writing() -> None:
    lines = observe([event("type {t}", t="\ud800")])
    assert lines == ["2026-11-28T17:06:11.780Z [info] [quoted.hub] type \\ud800"]
