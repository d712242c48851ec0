"""Log output: text or JSON lines on stdout, filtered by level, with secrets redacted.

twistd logs through :func:`make_observer` on every start path: with
``--logger=quoted.logs.observer`` it calls :func:`observer` with no arguments; without
``--logger`` it takes the application's ``ILogObserver`` component, which the plugin sets
(quoted.server.tap.LoggedRoot, :func:`twistd_observer`: stdout, or ``--logfile``). The
plugin's ``makeService`` reads the configuration, and runs *before* twistd calls that
factory, so it hands the ``[log]`` settings over with :func:`configure`. That hand-over is
the one piece of module state in quoted: twistd's factory takes no arguments, so there is no
other way to reach it. Tests pass their own settings and stream and reset it with
``configure(...)`` again.

Every line has its control characters escaped (:func:`escape_controls`: a Host header's
``ESC[2J`` is written ``\\x1b[2J``), and the lines twisted.internet.tcp writes once per
connection refused while descriptors run out are throttled (:class:`Throttle`).

Text lines look like::

    2026-11-28T17:06:11.780Z [info] [quoted.hub#quoted.hub.slow_consumer] closing a slow consumer

(``#log_id`` only when the event has one). JSON lines hold one object each: ``time`` (RFC 3339,
milliseconds, UTC), ``level``, ``namespace``, ``log_id`` when present, ``text`` (the formatted
message), the event's own named fields (JSON values as they are, others by ``repr``) and, for
failures, ``traceback``.

Defence in depth, on top of "never log tokens": every line is redacted. Fields named token,
secret, authorization, password or jwt (or ``*_token`` and the like) show ``<hidden>``; so do
``token=...`` in URLs and query strings, ``Bearer <credentials>``, anything shaped like a JWT
and the password of a ``redis://`` URL.
"""

from __future__ import annotations

import json
import math
import re
import sys
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Final, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from quoted.server.config import LogConfig

HIDDEN: Final = "<hidden>"

_LEVELS: Final[dict[str, LogLevel]] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

# The settings configure() hands over to observer(); see the module docstring for why this
# module state exists. None: info, text, stdout.
_config: LogConfig | None = None
_stream: IO[str] | None = None


def configure(log: LogConfig, stream: IO[str] | None = None) -> None:
    """Store the ``[log]`` settings (and, for tests, a stream) for :func:`observer`."""
    if log.level not in _LEVELS:
        raise ValueError(f"log level {log.level!r}: want one of {', '.join(_LEVELS)}")
    if log.format not in ("text", "json"):
        raise ValueError(f"log format {log.format!r}: want text or json")
    global _config, _stream
    _config = log
    _stream = stream


def observer() -> ILogObserver:
    """twistd's ``--logger`` factory: the observer of the configured settings.

    The stream is bound now, before twistd redirects ``sys.stdout`` into the log system
    (which would otherwise make every line log itself again).
    """
    level = _config.level if _config else "info"
    fmt = _config.format if _config else "text"
    stream = _stream if _stream is not None else sys.stdout
    return make_observer(stream, level=level, json_format=fmt == "json")


# --- redaction -------------------------------------------------------------------------------

_SECRET_WORDS: Final = r"(?:token|secret|authorization|password|passwd|jwt)"
_SECRET_NAME: Final = re.compile(rf"(?i)^(?:\w*_)?{_SECRET_WORDS}$")
"""Field names whose values are never shown: token, access_token, redis_password, ..."""

_VALUE_END: Final = r"""[^\s"'\\&;,}\]]+"""
_REDACTIONS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # A JWT anywhere: three base64url parts, the first a JSON object's ('eyJ' is '{"').
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), HIDDEN),
    # Authorization: Bearer <credentials>
    (re.compile(rf"(?i)\b(bearer)(\s+){_VALUE_END}"), rf"\1\2{HIDDEN}"),
    # token=..., access_token=..., password=... in URLs, query strings and key=value text.
    (re.compile(rf"(?i)\b(\w*{_SECRET_WORDS})=({_VALUE_END})"), rf"\1={HIDDEN}"),
    # "token": "..." and 'token': '...' in reprs and embedded JSON.
    (
        re.compile(rf"""(?i)(["'])(\w*{_SECRET_WORDS})\1(\s*:\s*)(["'])(?:(?!\4)[^\\]|\\.)*\4"""),
        rf"\1\2\1\3\4{HIDDEN}\4",
    ),
    # ('token', '...') pairs, as in the repr of dict items.
    (
        re.compile(
            rf"""(?i)(\(\s*)(["'])(\w*{_SECRET_WORDS})\2(\s*,\s*)(["'])(?:(?!\5)[^\\]|\\.)*\5"""
        ),
        rf"\1\2\3\2\4\5{HIDDEN}\5",
    ),
    # redis://user:password@host and redis://:password@host
    (re.compile(r"(?i)\b(rediss?://[^:@/\s]*):[^@/\s]+@"), rf"\1:{HIDDEN}@"),
)


def redact(text: str) -> str:
    """``text`` with every secret shape replaced by ``<hidden>``."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    """A JSON value with secrets redacted; anything else becomes its redacted repr."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < 8 and isinstance(value, list | tuple):
        return [_redact_value(item, depth + 1) for item in value]
    if depth < 8 and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {
            k: HIDDEN if _SECRET_NAME.match(k) else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    try:
        return redact(repr(value))
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


# --- formatting ------------------------------------------------------------------------------

# Keys of an event that are Twisted's (log_*) or the legacy log system's, not the caller's.
_LEGACY_KEYS: Final = frozenset(
    {"message", "isError", "system", "format", "why", "failure", "printed", "time"}
)
_OWN_KEYS: Final = frozenset({"time", "level", "namespace", "log_id", "text", "traceback"})


def format_time(seconds: float | None) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-11-28T17:06:11.780Z``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole, ms = divmod(math.floor(seconds * 1000), 1000)
    try:
        moment = datetime.fromtimestamp(whole, UTC)
    except (OverflowError, OSError, ValueError):
        return "-"
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}.{ms:03d}Z"


def _level_name(event: LogEvent) -> str:
    name = getattr(event.get("log_level"), "name", None)
    return name if isinstance(name, str) else "info"


def _safe_event(event: LogEvent) -> dict[str, Any]:
    """A copy of event whose secret-named fields read ``<hidden>``, for formatEvent."""
    return {
        key: HIDDEN if not key.startswith("log_") and _SECRET_NAME.match(key) else value
        for key, value in event.items()
    }


def _traceback(event: LogEvent) -> str | None:
    failure = event.get("log_failure")
    if not isinstance(failure, Failure):
        return None
    try:
        text: str = failure.getTraceback()
    except Exception:
        text = f"(unable to render the failure of type {type(failure.value).__name__})"
    return text.rstrip("\n")


# C0 and C1 control characters, DEL and the Unicode line separators: from a header value
# (Autobahn quotes the Host header in its handshake failures) they would move the cursor,
# clear the screen or forge a line in a terminal or a log viewer
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    c = match.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``ESC`` as ``\\x1b``,
    a newline as ``\\n``): one event, one line, nothing a terminal would act on."""
    return _CONTROL.sub(_escape_one, text)


def format_text(event: LogEvent) -> str:
    """One text line (more when a failure's traceback follows), redacted, control characters
    escaped (the traceback's own line breaks aside)."""
    namespace = event.get("log_namespace", "-")
    log_id = event.get("log_id")
    where = f"{namespace}#{log_id}" if log_id else f"{namespace}"
    line = escape_controls(
        redact(
            f"{format_time(event.get('log_time'))} [{_level_name(event)}] [{where}] "
            f"{formatEvent(_safe_event(event))}"
        )
    )
    tb = _traceback(event)
    if tb:
        line += "".join(f"\n{escape_controls(t)}" for t in redact(tb).split("\n"))
    return line


def format_json(event: LogEvent) -> str:
    """One JSON object on one line, redacted."""
    out: dict[str, Any] = {
        "time": format_time(event.get("log_time")),
        "level": _level_name(event),
        "namespace": event.get("log_namespace", "-"),
    }
    if event.get("log_id"):
        out["log_id"] = _redact_value(event["log_id"])
    out["text"] = redact(formatEvent(_safe_event(event)))
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        if key in _OWN_KEYS:
            continue
        out[key] = HIDDEN if _SECRET_NAME.match(key) else _redact_value(value)
    tb = _traceback(event)
    if tb:
        out["traceback"] = redact(tb)
    # json escapes C0 and (ensure_ascii) C1 controls and the line separators; not DEL
    return json.dumps(out, separators=(",", ":"), allow_nan=False).replace("\x7f", "\\u007f")


def make_formatter(json_format: bool) -> Callable[[LogEvent], str | None]:
    """The FileLogObserver formatter: one redacted line per event, newline included."""
    fmt = format_json if json_format else format_text

    def format_line(event: LogEvent) -> str:
        try:
            line = fmt(event)
        except Exception as exc:  # an observer must never raise into the publisher
            line = (
                f"{format_time(event.get('log_time'))} [error] [quoted.logs] "
                f"unable to format a log event: {type(exc).__name__}"
            )
        # Lone surrogates cannot be written to a UTF-8 stream: escape them.
        return line.encode("utf-8", "backslashreplace").decode("utf-8") + "\n"

    return format_line


def make_observer(
    stream: IO[str], *, level: str = "info", json_format: bool = False
) -> ILogObserver:
    """An observer writing the events at or above ``level`` to ``stream``, as text or JSON,
    the lines of :data:`THROTTLED` at most once per :data:`THROTTLE_SECONDS`."""
    # The casts spell out @implementer declarations, which mypy sees only with the zope plugin.
    live = _Live(level, json_format)
    writer = cast(ILogObserver, FileLogObserver(stream, live.format))
    keep = cast(ILogFilterPredicate, live.predicate)
    _observers.add(live)
    return cast(ILogObserver, Throttle(cast(ILogObserver, FilteringLogObserver(writer, [keep]))))


class _Live:
    """An observer's level and format, changed in place by :func:`reconfigure` (a reload)."""

    def __init__(self, level: str, json_format: bool) -> None:
        self.predicate = LogLevelFilterPredicate(_LEVELS[level])
        self._format = make_formatter(json_format)

    def format(self, event: LogEvent) -> str | None:
        return self._format(event)

    def set(self, level: str, json_format: bool) -> None:
        self.predicate.setLogLevelForNamespace("", _LEVELS[level])
        self._format = make_formatter(json_format)


_observers: weakref.WeakSet[_Live] = weakref.WeakSet()


def reconfigure(log: LogConfig) -> None:
    """Apply ``[log]`` level and format to every observer made here, at once (SIGHUP)."""
    configure(log, _stream)
    for live in list(_observers):
        live.set(log.level, log.format == "json")


def twistd_observer(log: LogConfig, logfile: str = "", nodaemon: bool = True) -> ILogObserver:
    """The observer of ``[log]`` for twistd started without ``--logger``, writing where twistd
    itself would: stdout with ``--nodaemon`` (or ``--logfile=-``), else ``--logfile``'s file
    (twistd.log by default), rotated as twistd rotates it."""
    stream: IO[str]
    if logfile == "-" or (nodaemon and not logfile):
        stream = sys.stdout
    else:
        from twisted.python.logfile import LogFile  # noqa: PLC0415

        stream = cast(IO[str], LogFile.fromFullPath(logfile or "twistd.log"))
    return make_observer(stream, level=log.level, json_format=log.format == "json")


# --- throttling ------------------------------------------------------------------------------

THROTTLED: Final = frozenset(
    {
        # twisted.internet.tcp, once per connection refused while descriptors run out
        "Could not accept new connection ({acceptError})",
        "EMFILE encountered; releasing reserved file descriptor.",
        "EMFILE recovery: Closed socket from {address}",
        "Re-reserving EMFILE recovery file descriptor.",
    }
)
"""Log formats written at most once per THROTTLE_SECONDS: each is one line per refused
connection, 1,338 lines in 40 s when descriptors ran out; the next line that passes says how
many were left out."""
THROTTLE_SECONDS: Final = 10.0


@implementer(ILogObserver)
class Throttle:
    """Passes every event to ``observer``, but an event of a format in :data:`THROTTLED`
    only when the last one of that format passed :data:`THROTTLE_SECONDS` ago (by the
    events' own ``log_time``, so no timer). Memory: one entry per throttled format."""

    def __init__(self, observer: ILogObserver, seconds: float = THROTTLE_SECONDS) -> None:
        self.observer = observer
        self.seconds = seconds
        self.windows: dict[str, list[float]] = {}  # format -> [time passed, count left out]

    def __call__(self, event: LogEvent) -> None:
        fmt = event.get("log_format")
        if fmt not in THROTTLED:
            self.observer(event)
            return
        now = float(event.get("log_time") or 0.0)
        window = self.windows.get(fmt)
        if window is not None and now - window[0] < self.seconds:
            window[1] += 1
            return
        left_out = int(window[1]) if window is not None else 0
        self.windows[fmt] = [now, 0]
        if left_out:
            event = dict(event)
            event["log_format"] = f"{fmt} ({{left_out}} more like this were not logged)"
            event["left_out"] = left_out
        self.observer(event)
