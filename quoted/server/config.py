"""Configuration: built-in defaults < INI file < environment < ``--listen``, checked once.

Every setting is declared once, as a field of its section's frozen dataclass with
``field(metadata=setting(default, kind, help, ...))``; ``_SETTINGS`` is read from those
fields, in order, and drives the defaults, the file and environment lookups, the error lines
and :func:`settings_table`. :func:`load_config` reads everything, reports every problem at
once in a :class:`ConfigError`, and returns a frozen :class:`Config`. Secrets (the HMAC
secret, the Redis URL, the JWKS URL) are never shown in errors or reprs.

``python -m quoted.config [--dev] [--listen ENDPOINT] [PATH]`` (quoted.server.checks.main)
runs these checks and those of :mod:`quoted.server.checks`, and prints ``ok`` (exit 0) or the
problems, one line each (exit 1, as a refused start).
"""

from __future__ import annotations

import configparser
import difflib
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from types import MappingProxyType
from typing import Any

from quoted.server.feeds.plugins import BUILTIN_SOURCES, installed_feeds
from quoted.server.settingkinds import (
    Kind,
    Network,
    any_text,
    boolean,
    choice,
    cipher_list,
    duration,
    endpoint,
    feed_name,
    file,
    group_or_world_readable,
    integer,
    jwks_url,
    networks,
    number,
    origins,
    prefix,
    raw_secret,
    redis_url,
    secret_file,
    size,
    tls_protocols,
)
from quoted.server.tls import DEFAULT_CIPHERS
from quoted.wire.durations import parse_duration

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "load_config",
    "parse_duration",
    "settings_table",
]

DEFAULT_CONFIG_PATH = "/etc/quoted/quoted.conf"
ENV_PREFIX = "QUOTED_"
HIDDEN = "<hidden>"


# -- the settings: one field each, declared once ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setting:
    section: str
    key: str
    default: str  # as written in etc/quoted.conf
    kind: Kind
    help: str
    aliases: tuple[str, ...] = ()  # the seed's environment variables, read after QUOTED_ ones
    alias_kind: Kind | None = None  # how an alias's value is read, when not like the key's
    attr: str = ""  # the dataclass field

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"

    @property
    def name(self) -> str:
        return f"[{self.section}] {self.key}"


_META = "quoted.setting"


def setting(
    default: str,
    kind: Kind,
    help: str,
    *,
    aliases: tuple[str, ...] = (),
    alias_kind: Kind | None = None,
    key: str = "",
) -> dict[str, _Setting]:
    """The metadata declaring a section field a setting: ``field(metadata=setting(...))``.

    ``default`` is the text written in etc/quoted.conf, read by ``kind`` like any other;
    ``key`` is the name in the file when it is not the field's. The section, key and field
    are filled in from where the field stands (:data:`_SETTINGS`).
    """
    return {_META: _Setting("", key, default, kind, help, aliases, alias_kind)}


_rate = number("a number >= 0 (0 = off)", lambda v: v >= 0)


# Each section is a field of Config, in the order of etc/quoted.conf and the README's table.
# No dataclass defaults: a section is built with every value (mypy checks it); a setting's
# default is text, read by its kind like a value from the file.
# fmt: off
@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = field(metadata=setting(
        "tcp:8080:interface=127.0.0.1", endpoint,
        "Twisted server endpoint of the WebSocket, REST and metrics port"))
    shutdown_timeout: float = field(metadata=setting(
        "10s", duration("0", "10m"), "how long SIGTERM waits for clients to close"))
    allowed_origins: tuple[str, ...] = field(metadata=setting(
        "", origins,
        "browser origins allowed to open WebSockets, or * (empty: the server's own host only)"))
    trusted_proxies: tuple[Network, ...] = field(metadata=setting(
        "", networks, "reverse proxies whose X-Forwarded-For names the client IP (empty: none)"))
    max_connections_per_ip: int = field(metadata=setting(
        "2000", integer(0, 1_000_000),
        "open TCP connections per client IP (IPv6 /64), counted from accept, trusted_proxies "
        "aside; beyond it 429 and close (0: off)"))
    tls_protocols: tuple[str, ...] = field(metadata=setting(
        "TLSv1.2 TLSv1.3", tls_protocols,
        "TLS versions an ssl: listen offers (TLSv1.0 and 1.1 are never offered)"))
    tls_ciphers: str = field(metadata=setting(
        DEFAULT_CIPHERS, cipher_list,
        "OpenSSL cipher list for TLS 1.2 (TLS 1.3's suites are OpenSSL's, all AEAD)"))
    tls_session_tickets: bool = field(metadata=setting(
        "on", boolean,
        "TLS session tickets: a reconnect resumes without a full handshake"))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    secret: bytes | None = field(repr=False, metadata=setting(
        "", secret_file,
        "file holding the HMAC (HS256) token secret; JWT_SECRET gives the secret itself",
        aliases=("JWT_SECRET",), alias_kind=raw_secret, key="secret_file"))
    public_key_file: str = field(metadata=setting(
        "", file, "PEM public key (RSA, ECDSA or Ed25519) that verifies tokens"))
    jwks_url: str = field(repr=False, metadata=setting(
        "", jwks_url,
        "URL of a JSON Web Key Set that verifies tokens (may hold credentials: never shown)"))
    issuer: str = field(metadata=setting(
        "", any_text, "iss every token must carry (empty: not checked)"))
    audience: str = field(metadata=setting(
        "", any_text, "aud every token must include (empty: not checked)"))
    leeway: float = field(metadata=setting(
        "30s", duration("0", "10m"), "clock skew tolerated on exp, nbf and iat"))


@dataclass(frozen=True, slots=True)
class FeedConfig:
    source: str = field(metadata=setting(
        "simulator", feed_name,
        "where prices come from: simulator, publish, replay, redis_stream or a plugin feed"))
    update_interval: float = field(metadata=setting(
        "4s", duration("10ms", "1h"), "price simulator tick",
        aliases=("PRICE_UPDATE_INTERVAL",)))
    oscillation_percent: float = field(metadata=setting(
        "1", number("a number above 0 and below 100", lambda v: 0 < v < 100),
        "each move lands within ± this percent of the base price"))
    mode: str = field(metadata=setting(
        "subset", choice("subset", "all"),
        "which symbols move each tick: subset (a random few) or all"))
    instruments_file: str = field(metadata=setting(
        "", file, "CSV of instruments (empty: the built-in ones)"))
    synthetic_symbols: int = field(metadata=setting(
        "0", integer(0, 100_000), "generated instruments added for load tests"))
    replay_file: str = field(metadata=setting(
        "", file, "replay: CSV or NDJSON ticks to play (empty: the synthetic sample shipped)"))
    replay_speed: float = field(metadata=setting(
        "1", number("a number from 0.001 to 1000", lambda v: 0.001 <= v <= 1000),
        "replay: 1 plays at the recorded pace, 10 ten times faster"))
    replay_loop: bool = field(metadata=setting(
        "off", boolean, "replay: start over after the last tick"))
    stream: str = field(metadata=setting(
        "quoted:ticks", any_text, "redis_stream: the Redis Stream whose entries are ticks"))


@dataclass(frozen=True, slots=True)
class PublishConfig:
    max_body: int = field(metadata=setting(
        "1MiB", size(64, 64 * 1024**2), "POST /v1/quotes: largest body read"))
    max_items: int = field(metadata=setting(
        "10000", integer(1, 100_000), "POST /v1/quotes: most items in one request"))


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    enabled: bool = field(metadata=setting(
        "on", boolean, "keep each symbol's recent ticks and OHLC bars for GET /v1/history"))
    ticks: int = field(metadata=setting(
        "50", integer(1, 10_000), "ticks kept per symbol (interval=tick)"))
    bars_1s: int = field(metadata=setting(
        "50", integer(1, 10_000), "1-second bars kept per symbol"))
    bars_1m: int = field(metadata=setting(
        "60", integer(1, 10_000), "1-minute bars kept per symbol"))
    bars_5m: int = field(metadata=setting(
        "24", integer(1, 10_000), "5-minute bars kept per symbol"))
    bars_1h: int = field(metadata=setting(
        "12", integer(1, 10_000), "1-hour bars kept per symbol"))


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    max_connections: int = field(metadata=setting(
        "10000", integer(1, 1_000_000),
        "open WebSocket connections; beyond it handshakes get 503",
        aliases=("WS_MAX_CONNECTIONS",)))
    max_symbols: int = field(metadata=setting(
        "100", integer(1, 10_000), "symbols per connection"))
    idle_timeout: float = field(metadata=setting(
        "30m", duration("1s"), "close a connection that sent nothing for this long",
        aliases=("WS_IDLE_TIMEOUT",)))
    health_check_interval: float = field(metadata=setting(
        "30s", duration("100ms"), "ping interval; a pong must arrive before the next ping",
        aliases=("WS_HEALTH_CHECK_INTERVAL",)))
    circuit_breaker_threshold: int = field(metadata=setting(
        "5", integer(1, 100),
        "stalled writes in a row before a slow client is closed with 4008",
        aliases=("WS_CIRCUIT_BREAKER_THRESHOLD",)))
    compression: bool = field(metadata=setting(
        "on", boolean, "accept permessage-deflate when a client offers it"))
    handshake_rate_per_ip: float = field(metadata=setting(
        "20", _rate,
        "WebSocket handshakes per second per client IP, burst twice that (0: off)"))
    user_max_connections: int = field(metadata=setting(
        "10", integer(1, 1_000_000), "open connections per token subject; beyond it 429"))
    message_rate: float = field(metadata=setting(
        "10", _rate, "client messages per second per connection, burst twice that (0: off)"))


@dataclass(frozen=True, slots=True)
class RedisConfig:
    enabled: bool = field(metadata=setting(
        "no", boolean, "share one market between instances through Redis"))
    url: str = field(repr=False, metadata=setting(
        "redis://127.0.0.1:6379/0", redis_url,
        "Redis to use, with user and password if any (never shown)", aliases=("REDIS_URL",)))
    prefix: str = field(metadata=setting(
        "quoted:", prefix, "start of every Redis key and channel"))
    lease_ttl: float = field(metadata=setting(
        "3s", duration("300ms", "1m"),
        "lease of the instance that publishes prices; a dead one is replaced within it"))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = field(metadata=setting(
        "info", choice("debug", "info", "warn", "error"), "lowest level logged"))
    format: str = field(metadata=setting(
        "text", choice("text", "json"), "text, or JSON lines"))
# fmt: on


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    auth: AuthConfig
    feed: FeedConfig
    publish: PublishConfig
    history: HistoryConfig
    websocket: WebSocketConfig
    redis: RedisConfig
    log: LogConfig
    dev: bool
    feed_options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """The selected plugin feed's ``[feed:NAME]`` section, as strings."""
    warnings: tuple[str, ...] = ()
    """Settings that were accepted but will not do anything; logged at start."""


class ConfigError(Exception):
    """The configuration was refused; ``str()`` is one line per problem, secrets hidden."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


# -- the table, read from the declarations ------------------------------------------------------


def _section_classes() -> dict[str, type[Any]]:
    """Config's fields that are sections (every dataclass-typed one), in order."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config) if is_dataclass(hints[f.name])}


def _read_settings(sections: Mapping[str, type[Any]]) -> tuple[_Setting, ...]:
    rows: list[_Setting] = []
    for section, cls in sections.items():
        for f in fields(cls):
            if _META not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name}: not declared with setting()")
            declared: _Setting = f.metadata[_META]
            key = declared.key or f.name
            rows.append(replace(declared, section=section, key=key, attr=f.name))
    return tuple(rows)


_SECTION_CLASSES = _section_classes()
_SETTINGS = _read_settings(_SECTION_CLASSES)
_SECTIONS: tuple[str, ...] = tuple(_SECTION_CLASSES)
_KEYS: dict[str, tuple[str, ...]] = {
    section: tuple(s.key for s in _SETTINGS if s.section == section) for section in _SECTIONS
}
_TOKEN_KEYS = ("secret", "public_key_file", "jwks_url")


def settings_table() -> list[tuple[str, str, str, str]]:
    """(section, key, default as written in etc/quoted.conf, one-line meaning), in order."""
    return [(s.section, s.key, s.default, s.help) for s in _SETTINGS]


# -- loading ----------------------------------------------------------------------------------


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]}? " if close else ""


def _read_file(
    path: str, problems: list[str], plugins: dict[str, dict[str, str]]
) -> dict[tuple[str, str], str]:
    """The (section, key) -> value pairs of an INI file; its problems go into ``problems``,
    and its ``[feed:NAME]`` sections (a plugin feed's options, as strings) into ``plugins``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        problems.append(f"{path}: cannot read the configuration file: {exc.strerror}")
        return {}
    except UnicodeDecodeError:
        problems.append(f"{path}: cannot read the configuration file: not UTF-8 text")
        return {}
    # Only "key = value" (a URL's ":" is no delimiter), no DEFAULT section, no interpolation.
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None, default_section="\0")
    try:
        parser.read_string(text, source=path)
    except configparser.MissingSectionHeaderError as exc:  # its message quotes the line
        problems.append(f"{path}: line {exc.lineno}: a setting before any [section] header")
        return {}
    except configparser.ParsingError as exc:  # raised at the end: the rest was read
        for lineno, _line in exc.errors:  # the line itself may hold a secret
            problems.append(f"{path}: line {lineno}: not a 'key = value' line or a [section]")
    except configparser.Error as exc:  # a duplicate section or key: names them, no value
        problems.append(str(exc))
        return {}
    values: dict[tuple[str, str], str] = {}
    for section in parser.sections():
        if section.startswith(PLUGIN_SECTION):
            plugins[section[len(PLUGIN_SECTION) :]] = dict(parser.items(section, raw=True))
            continue
        if section not in _KEYS:
            problems.append(
                f"[{section}]: unknown section; {_suggest(section, _SECTIONS)}"
                f"accepted: {', '.join(_SECTIONS)}"
            )
            continue
        for key, value in parser.items(section, raw=True):
            if key not in _KEYS[section]:
                problems.append(
                    f"[{section}] {key}: unknown key; {_suggest(key, _KEYS[section])}"
                    f"accepted: {', '.join(_KEYS[section])}"
                )
            else:
                values[section, key] = value
    return values


def _check_environ(environ: Mapping[str, str], problems: list[str]) -> None:
    """Report QUOTED_<SECTION>_<KEY> variables of a known section but an unknown key."""
    known = {s.env for s in _SETTINGS}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in known or value == "":
            continue
        for section in _SECTIONS:
            if name.startswith(f"{ENV_PREFIX}{section.upper()}_"):
                names = [s.env for s in _SETTINGS if s.section == section]
                problems.append(
                    f"{name}: unknown environment variable; {_suggest(name, names)}"
                    f"accepted: {', '.join(names)}"
                )


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    dev: bool = False,
    listen: str | None = None,
) -> Config:
    """Read, check and return the configuration, or raise ConfigError listing every problem.

    ``path`` None means DEFAULT_CONFIG_PATH if it exists, else the built-in defaults only;
    a path given must exist. ``environ`` None means ``os.environ``. It reads files (the
    configuration, the secret file), so it runs before the reactor starts.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    problems: list[str] = []
    if path is None:
        path = DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None
    plugins: dict[str, dict[str, str]] = {}
    from_file = {} if path is None else _read_file(path, problems, plugins)
    _check_environ(env, problems)

    sections: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    failed: set[str] = set()
    origin: dict[str, str] = {}  # attr -> environment variable it came from, for auth names
    chosen: set[str] = set()  # "[section] key" of every setting the file or environment set
    notes: list[str] = []  # warnings found while reading
    for s in _SETTINGS:
        text, kind, source = from_file.get((s.section, s.key), s.default), s.kind, ""
        for name in (*reversed(s.aliases), s.env):  # the QUOTED_ name, checked last, wins
            if env.get(name, ""):
                kind = s.alias_kind if name in s.aliases and s.alias_kind else s.kind
                text, source = env[name], name
        if s.section == "server" and s.key == "listen" and listen is not None:
            text, kind, source = listen, s.kind, "--listen"
        if source or (s.section, s.key) in from_file:
            chosen.add(s.name)
        if source and kind.strip:
            text = text.strip()
        attr = s.attr
        try:
            sections[s.section][attr] = kind.parse(text)
        except ValueError as exc:
            shown = HIDDEN if kind.secret else repr(text)
            via = f" (from {source})" if source else ""
            problems.append(f"{s.name} = {shown}{via}: {exc}; accepted: {kind.accepted}")
            failed.add(f"{s.section}.{attr}")
            continue
        if source:
            origin[attr] = source
        if kind is secret_file and text and group_or_world_readable(text):
            notes.append(
                f"{s.name}: the file may be read by other users (mode "
                f"{os.stat(text).st_mode & 0o777:o}); chmod 600 it, or use systemd's "
                "LoadCredential="
            )

    auth = sections["auth"]
    if not failed.intersection(f"auth.{key}" for key in _TOKEN_KEYS):
        given = [key for key in _TOKEN_KEYS if auth[key]]
        if len(given) > 1:
            jwt_env = origin.get("secret") == "JWT_SECRET"
            secret_name = "JWT_SECRET" if jwt_env else "secret_file"
            names = [secret_name if key == "secret" else key for key in given]
            problems.append(
                "[auth] secret_file, public_key_file, jwks_url: more than one token key is set "
                f"({' and '.join(names)}); set only one"
            )
        elif not given and not dev:
            problems.append(
                "[auth] secret_file: no token key is configured (secret_file, JWT_SECRET, "
                "public_key_file or jwks_url); set one, or start with --dev for development"
            )
    warnings: list[str] = notes
    options: dict[str, str] = {}
    if "feed.source" not in failed:
        source = sections["feed"]["source"]
        _check_source(source, problems)
        warnings += _unused(source, chosen, plugins)
        options = plugins.get(source, {})
    if problems:
        raise ConfigError(problems)
    return Config(
        **{name: cls(**sections[name]) for name, cls in _SECTION_CLASSES.items()},
        dev=dev,
        feed_options=MappingProxyType(options),
        warnings=tuple(warnings),
    )


PLUGIN_SECTION = "feed:"
# the settings only one source reads
_SOURCE_KEYS = {
    "simulator": ("update_interval", "oscillation_percent", "mode"),
    "replay": ("replay_file", "replay_speed", "replay_loop"),
    "redis_stream": ("stream",),
}


def _check_source(source: str, problems: list[str]) -> None:
    """``[feed] source`` names a built-in source or an installed plugin feed."""
    if source in BUILTIN_SOURCES:
        return
    try:
        installed = installed_feeds()
    except ValueError as e:
        problems.append(f"[feed] source = {source!r}: {e}")
        return
    if source not in installed:
        problems.append(
            f"[feed] source = {source!r}: no such source; {_suggest(source, BUILTIN_SOURCES)}"
            f"accepted: {', '.join(BUILTIN_SOURCES)}; installed plugin feeds: "
            f"{', '.join(sorted(installed)) or 'none'}"
        )


def _unused(source: str, chosen: set[str], plugins: Mapping[str, object]) -> list[str]:
    """A warning for each setting that was set but that the selected source does not read."""
    out = []
    for owner, keys in _SOURCE_KEYS.items():
        if owner != source:
            out += [
                f"[feed] {key}: set, but only [feed] source = {owner} reads it "
                f"(the source is {source})"
                for key in keys
                if f"[feed] {key}" in chosen
            ]
    out += [
        f"[{PLUGIN_SECTION}{name}]: ignored, [feed] source is {source}"
        for name in sorted(plugins)
        if name != source
    ]
    return out
