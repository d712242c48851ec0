"""Tests of quoted.server.config: defaults, file, environment, aliases, --listen, errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from quoted.server import checks, config
from quoted.server.config import (
    AuthConfig,
    Config,
    ConfigError,
    FeedConfig,
    HistoryConfig,
    LogConfig,
    PublishConfig,
    RedisConfig,
    ServerConfig,
    WebSocketConfig,
    load_config,
    parse_duration,
    settings_table,
)
from quoted.server.settingkinds import integer
from quoted.wire import durations

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "etc" / "quoted.conf"
SECRET = b"s" * 31 + b"-hmac-secret-for-tests"  # 53 bytes
JWT = "j" * 30 + "-jwt-secret-from-the-environment"

DEFAULTS = Config(
    server=ServerConfig(
        listen="tcp:8080:interface=127.0.0.1",
        shutdown_timeout=10.0,
        allowed_origins=(),
        trusted_proxies=(),
        max_connections_per_ip=2000,
        tls_protocols=("TLSv1.2", "TLSv1.3"),
        tls_ciphers="ECDHE+AESGCM:ECDHE+CHACHA20",
        tls_session_tickets=True,
    ),
    auth=AuthConfig(
        secret=None, public_key_file="", jwks_url="", issuer="", audience="", leeway=30.0
    ),
    feed=FeedConfig(
        source="simulator",
        update_interval=4.0,
        oscillation_percent=1.0,
        mode="subset",
        instruments_file="",
        synthetic_symbols=0,
        replay_file="",
        replay_speed=1.0,
        replay_loop=False,
        stream="quoted:ticks",
    ),
    publish=PublishConfig(max_body=1024 * 1024, max_items=10000),
    history=HistoryConfig(enabled=True, ticks=50, bars_1s=50, bars_1m=60, bars_5m=24, bars_1h=12),
    websocket=WebSocketConfig(
        max_connections=10000,
        max_symbols=100,
        idle_timeout=1800.0,
        health_check_interval=30.0,
        circuit_breaker_threshold=5,
        compression=True,
        handshake_rate_per_ip=20.0,
        user_max_connections=10,
        message_rate=10.0,
    ),
    redis=RedisConfig(
        enabled=False, url="redis://127.0.0.1:6379/0", prefix="quoted:", lease_ttl=3.0
    ),
    log=LogConfig(level="info", format="text"),
    dev=True,
)


@pytest.fixture(autouse=True)
def no_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point DEFAULT_CONFIG_PATH at a file that does not exist, whatever the host has."""
    missing = tmp_path / "etc-quoted" / "quoted.conf"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(missing))
    return missing


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Existing files for the keys that name one."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    csv = tmp_path / "instruments.csv"
    csv.write_text("symbol,name,type,base_price,volume,market_cap\n")
    return {"secret": str(secret), "key": str(key), "csv": str(csv), "dir": str(tmp_path)}


def write_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "quoted.conf"
    path.write_text(text)
    return str(path)


def load_text(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, **kwargs: Any
) -> Config:
    kwargs.setdefault("dev", True)
    return load_config(write_conf(tmp_path, text), env or {}, **kwargs)


def problems_of(call: Callable[[], object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        call()
    lines = str(info.value).split("\n")
    assert tuple(lines) == info.value.problems
    return lines


def get(cfg: Config, dotted: str) -> Any:
    section, attr = dotted.split(".")
    return getattr(getattr(cfg, section), attr)


# -- defaults and the file's presence ---------------------------------------------------------


def test_defaults_without_a_file() -> None:
    assert load_config(None, {}, dev=True) == DEFAULTS


def test_default_path_absent_is_fine_but_an_explicit_missing_path_is_not(tmp_path: Path) -> None:
    assert load_config(environ={}, dev=True) == DEFAULTS
    missing = str(tmp_path / "nope.conf")
    [line] = problems_of(lambda: load_config(missing, {}, dev=True))
    assert line.startswith(f"{missing}: cannot read the configuration file")


def test_default_path_is_read_when_present(no_default_file: Path) -> None:
    no_default_file.parent.mkdir()
    no_default_file.write_text("[websocket]\nmax_symbols = 7\n")
    assert load_config(None, {}, dev=True).websocket.max_symbols == 7


def test_os_environ_is_the_default_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTED_WEBSOCKET_MAX_SYMBOLS", "9")
    assert load_config(dev=True).websocket.max_symbols == 9


# -- every key from the file -------------------------------------------------------------------

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network

# section, key, text in the file ({secret}, {key}, {csv} are files), attribute, expected value
GOOD = [
    ("server", "listen", "tcp6:9000:interface=\\:\\:1", "server.listen",
     "tcp6:9000:interface=\\:\\:1"),
    ("server", "shutdown_timeout", "1m30s", "server.shutdown_timeout", 90.0),
    ("server", "allowed_origins", "HTTPS://App.Example.com, http://h:8443,,*",
     "server.allowed_origins", ("https://app.example.com", "http://h:8443", "*")),
    ("server", "trusted_proxies", "127.0.0.1, 10.1.2.3/8, ::1",
     "server.trusted_proxies", (V4("127.0.0.1/32"), V4("10.0.0.0/8"), V6("::1/128"))),
    ("server", "max_connections_per_ip", "0", "server.max_connections_per_ip", 0),
    ("server", "tls_protocols", " tlsv1.3, ", "server.tls_protocols", ("TLSv1.3",)),
    ("server", "tls_ciphers", "ECDHE+AESGCM", "server.tls_ciphers", "ECDHE+AESGCM"),
    ("server", "tls_session_tickets", "off", "server.tls_session_tickets", False),
    ("auth", "secret_file", "{secret}", "auth.secret", SECRET),
    ("auth", "public_key_file", "{key}", "auth.public_key_file", "{key}"),
    ("auth", "jwks_url", "https://idp.example.com/jwks.json", "auth.jwks_url",
     "https://idp.example.com/jwks.json"),
    ("auth", "issuer", "https://idp.example.com/", "auth.issuer", "https://idp.example.com/"),
    ("auth", "audience", "quotes", "auth.audience", "quotes"),
    ("auth", "leeway", "0", "auth.leeway", 0.0),
    ("feed", "source", "Publish", "feed.source", "publish"),
    ("feed", "update_interval", "250ms", "feed.update_interval", 0.25),
    ("feed", "oscillation_percent", "2.5", "feed.oscillation_percent", 2.5),
    ("feed", "mode", "ALL", "feed.mode", "all"),
    ("feed", "instruments_file", "{csv}", "feed.instruments_file", "{csv}"),
    ("feed", "synthetic_symbols", "100000", "feed.synthetic_symbols", 100000),
    ("feed", "replay_file", "{csv}", "feed.replay_file", "{csv}"),
    ("feed", "replay_speed", "10", "feed.replay_speed", 10.0),
    ("feed", "replay_loop", "on", "feed.replay_loop", True),
    ("feed", "stream", "vendor:ticks", "feed.stream", "vendor:ticks"),
    ("publish", "max_body", "64KiB", "publish.max_body", 65536),
    ("publish", "max_items", "50", "publish.max_items", 50),
    ("history", "enabled", "off", "history.enabled", False),
    ("history", "ticks", "10000", "history.ticks", 10000),
    ("history", "bars_1s", "1", "history.bars_1s", 1),
    ("history", "bars_1m", "1440", "history.bars_1m", 1440),
    ("history", "bars_5m", "288", "history.bars_5m", 288),
    ("history", "bars_1h", "168", "history.bars_1h", 168),
    ("websocket", "max_connections", "1", "websocket.max_connections", 1),
    ("websocket", "max_symbols", "10000", "websocket.max_symbols", 10000),
    ("websocket", "idle_timeout", "1h", "websocket.idle_timeout", 3600.0),
    ("websocket", "health_check_interval", "100ms", "websocket.health_check_interval", 0.1),
    ("websocket", "circuit_breaker_threshold", "100", "websocket.circuit_breaker_threshold", 100),
    ("websocket", "compression", "Off", "websocket.compression", False),
    ("websocket", "handshake_rate_per_ip", "0", "websocket.handshake_rate_per_ip", 0.0),
    ("websocket", "user_max_connections", "1000000", "websocket.user_max_connections", 1000000),
    ("websocket", "message_rate", "2.5", "websocket.message_rate", 2.5),
    ("redis", "enabled", "YES", "redis.enabled", True),
    ("redis", "url", "rediss://user:pw@redis.example.com:6380/2", "redis.url",
     "rediss://user:pw@redis.example.com:6380/2"),
    ("redis", "prefix", "prod:quotes:", "redis.prefix", "prod:quotes:"),
    ("redis", "lease_ttl", "300ms", "redis.lease_ttl", 0.3),
    ("log", "level", "WARN", "log.level", "warn"),
    ("log", "format", "json", "log.format", "json"),
]  # fmt: skip


def test_good_values_cover_every_setting() -> None:
    assert [(s, k) for s, k, *_ in GOOD] == [(s, k) for s, k, _, _ in settings_table()]


@pytest.mark.parametrize(("section", "key", "text", "attr", "expected"), GOOD)
def test_every_key_is_read_from_the_file(
    tmp_path: Path, files: dict[str, str], *, section: str, key: str, text: str, attr: str,
    expected: object,
) -> None:  # fmt: skip
    if isinstance(expected, str):
        expected = expected.format(**files)
    cfg = load_text(tmp_path, f"[{section}]\n{key} = {text.format(**files)}\n")
    assert get(cfg, attr) == expected
    assert get(cfg, attr) != get(DEFAULTS, attr)


@pytest.mark.parametrize(("section", "key", "text", "attr", "expected"), GOOD)
def test_every_key_is_read_from_the_environment(
    tmp_path: Path, files: dict[str, str], *, section: str, key: str, text: str, attr: str,
    expected: object,
) -> None:  # fmt: skip
    if isinstance(expected, str):
        expected = expected.format(**files)
    env = {f"QUOTED_{section.upper()}_{key.upper()}": text.format(**files)}
    assert get(load_config(None, env, dev=True), attr) == expected


# -- bad values -------------------------------------------------------------------------------

# section, key, bad text, a piece of the reason or accepted text
BAD = [
    ("server", "listen", "http:8080", "tcp, tcp6, ssl, unix or systemd"),
    ("server", "listen", "tcp:80x", "bad port"),
    ("server", "listen", "tcp", "not a server endpoint"),
    ("server", "shutdown_timeout", "11m", "0 to 10m"),
    ("server", "allowed_origins", "https://a.example.com/path", "not an origin"),
    ("server", "allowed_origins", "app.example.com", "not an origin"),
    ("server", "trusted_proxies", "10.0.0.300", "not an IP address or CIDR"),
    ("server", "max_connections_per_ip", "-1", "0 to 1000000"),
    ("server", "tls_protocols", "TLSv1.1 TLSv1.2", "TLSv1.1 is not safe"),
    ("server", "tls_protocols", "TLSv2", "unknown version"),
    ("server", "tls_protocols", ",", "no version"),
    ("server", "tls_ciphers", "ECDHE AESGCM", "not a cipher list"),
    ("server", "tls_session_tickets", "maybe", "not a boolean"),
    ("auth", "secret_file", "{dir}/missing", "no such file"),
    ("auth", "secret_file", "{dir}", "not a regular file"),
    ("auth", "public_key_file", "{dir}/missing.pem", "no such file"),
    ("auth", "jwks_url", "ftp://idp.example.com/jwks", "http:// or https://"),
    ("auth", "leeway", "10m1s", "0 to 10m"),
    ("feed", "source", "no such", "not a feed name"),
    ("feed", "update_interval", "4", "missing unit"),
    ("feed", "update_interval", "9ms", "10ms to 1h"),
    ("feed", "oscillation_percent", "100", "above 0 and below 100"),
    ("feed", "oscillation_percent", "nan", "above 0 and below 100"),
    ("feed", "mode", "some", "subset, all"),
    ("feed", "instruments_file", "{dir}", "not a regular file"),
    ("feed", "synthetic_symbols", "100001", "0 to 100000"),
    ("feed", "replay_file", "{dir}/missing.csv", "no such file"),
    ("feed", "replay_speed", "0", "0.001 to 1000"),
    ("feed", "replay_loop", "twice", "on/off"),
    ("publish", "max_body", "1MB", "not a size"),
    ("publish", "max_body", "32", "64 to 67108864 bytes"),
    ("publish", "max_items", "0", "1 to 100000"),
    ("history", "enabled", "sometimes", "on/off"),
    ("history", "ticks", "0", "1 to 10000"),
    ("history", "bars_1s", "10001", "1 to 10000"),
    ("history", "bars_1m", "1.5", "not an integer"),
    ("history", "bars_5m", "-1", "1 to 10000"),
    ("history", "bars_1h", "many", "not an integer"),
    ("websocket", "max_connections", "abc", "not an integer; accepted: 1 to 1000000"),
    ("websocket", "max_symbols", "0", "1 to 10000"),
    ("websocket", "idle_timeout", "999ms", "at least 1s"),
    ("websocket", "health_check_interval", "-1s", "negative"),
    ("websocket", "circuit_breaker_threshold", "1.5", "not an integer"),
    ("websocket", "compression", "maybe", "on/off"),
    ("websocket", "handshake_rate_per_ip", "-1", ">= 0"),
    ("websocket", "user_max_connections", "", "not an integer"),
    ("websocket", "message_rate", "fast", "not a number"),
    ("redis", "enabled", "2", "on/off"),
    ("redis", "url", "http://127.0.0.1:6379", "redis:// or rediss://"),
    ("redis", "prefix", "a b", "without whitespace"),
    ("redis", "prefix", "{{q}}", "without whitespace, { or }"),
    ("redis", "lease_ttl", "2m", "300ms to 1m"),
    ("log", "level", "trace", "debug, info, warn, error"),
    ("log", "format", "xml", "text, json"),
]
SECRET_KEYS = {("auth", "jwks_url"), ("redis", "url")}


def test_bad_values_cover_every_setting() -> None:
    assert {(s, k) for s, k, _, _ in BAD} == {(s, k) for s, k, _, _ in settings_table()} - {
        ("auth", "issuer"),
        ("auth", "audience"),
        ("feed", "stream"),  # any text is accepted
    }


@pytest.mark.parametrize(("section", "key", "text", "reason"), BAD)
def test_bad_value_names_section_key_and_value(
    tmp_path: Path, files: dict[str, str], *, section: str, key: str, text: str, reason: str
) -> None:
    text = text.format(**files)
    [line] = problems_of(lambda: load_text(tmp_path, f"[{section}]\n{key} = {text}\n"))
    shown = "<hidden>" if (section, key) in SECRET_KEYS else repr(text)
    assert line.startswith(f"[{section}] {key} = {shown}: ")
    assert reason in line
    assert "; accepted: " in line
    if (section, key) in SECRET_KEYS:
        assert text not in line


@pytest.mark.parametrize(("section", "key", "text", "reason"), BAD[:3])
def test_bad_environment_value_names_the_variable(
    section: str, key: str, text: str, reason: str
) -> None:
    name = f"QUOTED_{section.upper()}_{key.upper()}"
    [line] = problems_of(lambda: load_config(None, {name: text}, dev=True))
    assert line.startswith(f"[{section}] {key} = {text!r} (from {name}): ")
    assert reason in line


def test_the_documented_example_line(tmp_path: Path) -> None:
    [line] = problems_of(lambda: load_text(tmp_path, "[websocket]\nmax_connections = abc\n"))
    assert line == "[websocket] max_connections = 'abc': not an integer; accepted: 1 to 1000000"
    [line] = problems_of(lambda: load_config(None, {"PRICE_UPDATE_INTERVAL": "4x"}, dev=True))
    assert line.startswith("[feed] update_interval = '4x' (from PRICE_UPDATE_INTERVAL): ")


# -- unknown sections and keys, file syntax -----------------------------------------------------


def test_unknown_section(tmp_path: Path) -> None:
    [line] = problems_of(lambda: load_text(tmp_path, "[websockets]\nmax_symbols = 3\n"))
    assert line.startswith("[websockets]: unknown section; did you mean websocket?")
    assert "accepted: server, auth, feed, publish, history, websocket, redis, log" in line


def test_default_section_is_not_special(tmp_path: Path) -> None:
    [line] = problems_of(lambda: load_text(tmp_path, "[DEFAULT]\nmax_symbols = 3\n"))
    assert line.startswith("[DEFAULT]: unknown section")


def test_unknown_key_names_it_and_suggests(tmp_path: Path) -> None:
    [line] = problems_of(lambda: load_text(tmp_path, "[websocket]\nmax_conections = 5\n"))
    assert line.startswith("[websocket] max_conections: unknown key; did you mean max_connections?")


def test_unknown_environment_key_of_a_known_section() -> None:
    env = {"QUOTED_WEBSOCKET_MAX_CONECTIONS": "5", "QUOTED_SOMETHING_ELSE": "x"}
    [line] = problems_of(lambda: load_config(None, env, dev=True))
    assert line.startswith("QUOTED_WEBSOCKET_MAX_CONECTIONS: unknown environment variable")
    assert "did you mean QUOTED_WEBSOCKET_MAX_CONNECTIONS?" in line


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = (
        "[server]\nshutdown_timeout = forever\n"
        "[websocket]\nmax_symbols = many\nmax_symbol = 3\n"
        "[logging]\nlevel = info\n"
    )
    env = {"WS_IDLE_TIMEOUT": "0"}
    lines = problems_of(lambda: load_text(tmp_path, text, env))
    assert len(lines) == 5
    assert lines[0].startswith("[websocket] max_symbol: unknown key")
    assert lines[1].startswith("[logging]: unknown section")
    assert lines[2].startswith("[server] shutdown_timeout = 'forever': ")
    assert lines[3].startswith("[websocket] max_symbols = 'many': ")
    assert lines[4].startswith("[websocket] idle_timeout = '0' (from WS_IDLE_TIMEOUT): ")


def test_a_line_without_equals_is_reported_by_number_without_its_text(tmp_path: Path) -> None:
    text = "[redis]\nredis://u:topsecretpw@host\nprefix = x{\n"
    lines = problems_of(lambda: load_text(tmp_path, text))
    assert len(lines) == 2
    assert re.search(r": line 2: not a 'key = value' line", lines[0])
    assert lines[1].startswith("[redis] prefix = 'x{': ")
    assert "topsecretpw" not in "\n".join(lines)


def test_a_setting_before_any_section(tmp_path: Path) -> None:
    [line] = problems_of(lambda: load_text(tmp_path, "url = redis://u:topsecretpw@h\n"))
    assert "line 1: a setting before any [section] header" in line
    assert "topsecretpw" not in line


def test_a_duplicate_key(tmp_path: Path) -> None:
    [line] = problems_of(lambda: load_text(tmp_path, "[log]\nlevel = info\nlevel = debug\n"))
    assert "'level'" in line
    assert "already exists" in line


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[log]\n# caf\xe9\n")
    [line] = problems_of(lambda: load_config(str(path), {}, dev=True))
    assert line == f"{path}: cannot read the configuration file: not UTF-8 text"


# -- precedence --------------------------------------------------------------------------------


def test_environment_beats_the_file(tmp_path: Path) -> None:
    text = "[websocket]\nmax_connections = 50\nmax_symbols = 60\n[log]\nlevel = debug\n"
    env = {"QUOTED_WEBSOCKET_MAX_CONNECTIONS": "70", "QUOTED_LOG_LEVEL": " Error "}
    cfg = load_text(tmp_path, text, env)
    assert (cfg.websocket.max_connections, cfg.websocket.max_symbols) == (70, 60)
    assert cfg.log.level == "error"


# alias, its value, the [section] key it sets, the attribute, expected
ALIASES = [
    ("WS_MAX_CONNECTIONS", "77", "websocket", "max_connections", 77),
    ("WS_IDLE_TIMEOUT", "2m", "websocket", "idle_timeout", 120.0),
    ("WS_HEALTH_CHECK_INTERVAL", "5s", "websocket", "health_check_interval", 5.0),
    ("WS_CIRCUIT_BREAKER_THRESHOLD", "9", "websocket", "circuit_breaker_threshold", 9),
    ("PRICE_UPDATE_INTERVAL", "1.5s", "feed", "update_interval", 1.5),
    ("JWT_SECRET", JWT, "auth", "secret_file", JWT.encode()),
    ("REDIS_URL", "redis://:pw@cache:6379/1", "redis", "url", "redis://:pw@cache:6379/1"),
]
# a value of the QUOTED_ name that differs from the alias's, and what it gives
QUOTED_VALUES = {
    "WS_MAX_CONNECTIONS": ("88", 88),
    "WS_IDLE_TIMEOUT": ("3m", 180.0),
    "WS_HEALTH_CHECK_INTERVAL": ("6s", 6.0),
    "WS_CIRCUIT_BREAKER_THRESHOLD": ("8", 8),
    "PRICE_UPDATE_INTERVAL": ("2s", 2.0),
    "JWT_SECRET": ("{secret}", SECRET),
    "REDIS_URL": ("redis://other:6379/3", "redis://other:6379/3"),
}


def attr_of(section: str, key: str) -> str:
    return next(attr for s, k, _, attr, _ in GOOD if (s, k) == (section, key))


@pytest.mark.parametrize(("alias", "value", "section", "key", "expected"), ALIASES)
def test_seed_alias_beats_the_file(
    tmp_path: Path, files: dict[str, str], *, alias: str, value: str, section: str, key: str,
    expected: object,
) -> None:  # fmt: skip
    file_value = next(t for s, k, t, _, _ in GOOD if (s, k) == (section, key)).format(**files)
    cfg = load_text(tmp_path, f"[{section}]\n{key} = {file_value}\n", {alias: value})
    assert get(cfg, attr_of(section, key)) == expected


@pytest.mark.parametrize(("alias", "value", "section", "key", "expected"), ALIASES)
def test_quoted_name_beats_the_alias(
    files: dict[str, str], *, alias: str, value: str, section: str, key: str, expected: object
) -> None:
    quoted_value, quoted_expected = QUOTED_VALUES[alias]
    name = f"QUOTED_{section.upper()}_{key.upper()}"
    cfg = load_config(None, {alias: value, name: quoted_value.format(**files)}, dev=True)
    assert get(cfg, attr_of(section, key)) == quoted_expected != expected


def test_listen_beats_everything(tmp_path: Path) -> None:
    env = {"QUOTED_SERVER_LISTEN": "tcp:9001"}
    cfg = load_text(tmp_path, "[server]\nlisten = tcp:9000\n", env, listen="unix:/run/q.sock")
    assert cfg.server.listen == "unix:/run/q.sock"
    [line] = problems_of(lambda: load_config(None, env, dev=True, listen="udp:53"))
    assert line.startswith("[server] listen = 'udp:53' (from --listen): ")


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    env = {"QUOTED_WEBSOCKET_MAX_CONNECTIONS": "", "WS_MAX_CONNECTIONS": "", "JWT_SECRET": ""}
    cfg = load_text(tmp_path, "[websocket]\nmax_connections = 42\n", env)
    assert cfg.websocket.max_connections == 42
    env = {"QUOTED_WEBSOCKET_MAX_CONNECTIONS": "", "WS_MAX_CONNECTIONS": "43"}
    assert load_config(None, env, dev=True).websocket.max_connections == 43
    assert load_config(None, {"JWT_SECRET": ""}, dev=True).auth.secret is None


# -- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"", b"\n", b"\n\n", b"\r\n"])
def test_secret_file_is_read_and_trailing_newlines_stripped(tmp_path: Path, ending: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + ending)
    cfg = load_text(tmp_path, f"[auth]\nsecret_file = {path}\n", dev=False)
    assert cfg.auth.secret == SECRET
    assert cfg.dev is False


def test_short_secret_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    content = b"Sh0rt-Secret-Content-0123456789"  # 31 bytes
    path.write_bytes(content + b"\n")
    [line] = problems_of(lambda: load_text(tmp_path, f"[auth]\nsecret_file = {path}\n"))
    assert line.startswith(f"[auth] secret_file = {str(path)!r}: the secret in it is too short")
    assert "at least 32 bytes" in line
    assert content.decode() not in line


def test_secret_file_content_is_never_in_errors(tmp_path: Path, files: dict[str, str]) -> None:
    text = f"[auth]\nsecret_file = {files['secret']}\njwks_url = https://idp/jwks\n"
    text += "[websocket]\nmax_symbols = x\n"
    lines = problems_of(lambda: load_text(tmp_path, text))
    assert len(lines) == 2
    assert "more than one token key is set (secret_file and jwks_url)" in lines[1]
    assert SECRET.decode() not in "\n".join(lines)


def test_jwt_secret_is_taken_as_is_and_never_shown(tmp_path: Path) -> None:
    spaced = f" {JWT} "
    cfg = load_config(None, {"JWT_SECRET": spaced}, dev=False)
    assert cfg.auth.secret == spaced.encode()
    assert JWT not in repr(cfg)
    assert JWT not in repr(cfg.auth)
    short = "short-jwt-secret-value"
    env = {"JWT_SECRET": short, "WS_MAX_CONNECTIONS": "0"}
    lines = problems_of(lambda: load_config(None, env))
    assert lines[0] == (
        "[auth] secret_file = <hidden> (from JWT_SECRET): too short; "
        "accepted: a secret of at least 32 bytes"
    )
    assert short not in "\n".join(lines)
    lines = problems_of(lambda: load_config(None, {"JWT_SECRET": JWT, "WS_MAX_CONNECTIONS": "0"}))
    assert JWT not in "\n".join(lines)


def test_redis_url_with_password_is_never_shown(tmp_path: Path) -> None:
    good = "rediss://quoted:Pa55w0rd-xyz@redis.example.com:6380/0"
    cfg = load_config(None, {"REDIS_URL": good}, dev=True)
    assert cfg.redis.url == good
    assert "Pa55w0rd-xyz" not in repr(cfg)
    for bad in ("redis://quoted:Pa55w0rd-xyz@redis.example.com:port/0", "Pa55w0rd-xyz"):
        [line] = problems_of(partial(load_config, None, {"REDIS_URL": bad}, dev=True))
        assert line.startswith("[redis] url = <hidden> (from REDIS_URL): ")
        assert "Pa55w0rd-xyz" not in line
    [line] = problems_of(lambda: load_text(tmp_path, "[redis]\nurl = http://u:Pa55w0rd-xyz@h\n"))
    assert line.startswith("[redis] url = <hidden>: wrong scheme")
    assert "Pa55w0rd-xyz" not in line


def test_jwks_url_is_never_shown() -> None:
    url = "https://idp.example.com/jwks?key=T0ken-in-url"
    cfg = load_config(None, {"QUOTED_AUTH_JWKS_URL": url})
    assert cfg.auth.jwks_url == url
    assert "T0ken-in-url" not in repr(cfg)
    [line] = problems_of(
        lambda: load_config(None, {"QUOTED_AUTH_JWKS_URL": "https://:T0ken-in-url@:x"})
    )
    assert line.startswith("[auth] jwks_url = <hidden> (from QUOTED_AUTH_JWKS_URL): ")
    assert "T0ken-in-url" not in line


def test_no_token_key_without_dev_refuses() -> None:
    [line] = problems_of(lambda: load_config(None, {}))
    assert line == (
        "[auth] secret_file: no token key is configured (secret_file, JWT_SECRET, "
        "public_key_file or jwks_url); set one, or start with --dev for development"
    )


def test_dev_without_a_key_is_fine() -> None:
    cfg = load_config(None, {}, dev=True)
    assert cfg.dev is True
    assert cfg.auth.secret is None


@pytest.mark.parametrize(
    ("env", "text", "names"),
    [
        ({"JWT_SECRET": JWT}, "public_key_file = {key}", "JWT_SECRET and public_key_file"),
        ({}, "secret_file = {secret}\npublic_key_file = {key}", "secret_file and public_key_file"),
        ({"QUOTED_AUTH_JWKS_URL": "https://idp/j"}, "public_key_file = {key}",
         "public_key_file and jwks_url"),
        ({"JWT_SECRET": JWT, "QUOTED_AUTH_JWKS_URL": "https://idp/j"}, "public_key_file = {key}",
         "JWT_SECRET and public_key_file and jwks_url"),
    ],
)  # fmt: skip
def test_two_token_keys_refuse(
    tmp_path: Path, files: dict[str, str], env: dict[str, str], text: str, names: str
) -> None:
    conf = f"[auth]\n{text.format(**files)}\n"
    [line] = problems_of(lambda: load_text(tmp_path, conf, env))
    assert line == (
        "[auth] secret_file, public_key_file, jwks_url: more than one token key is set "
        f"({names}); set only one"
    )


def test_a_bad_token_key_is_not_also_reported_as_missing(tmp_path: Path) -> None:
    [line] = problems_of(lambda: load_config(None, {"JWT_SECRET": "short"}))
    assert "too short" in line


# -- durations (the grammar's own tests: tests/wire/test_durations.py) ----------------------------


def test_parse_duration_is_the_wire_grammar() -> None:
    assert parse_duration is durations.parse_duration
    assert "parse_duration" in config.__all__


# -- the shipped file and the table --------------------------------------------------------------


def test_shipped_conf_loads_to_exactly_the_defaults() -> None:
    assert load_config(str(SHIPPED_CONF), {}, dev=True) == DEFAULTS


def shipped_settings() -> dict[tuple[str, str], str]:
    """(section, key) -> the default written on a '# key = value' or 'key = value' line."""
    found: dict[tuple[str, str], str] = {}
    section = ""
    for line in SHIPPED_CONF.read_text().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header[1]
        elif setting := re.fullmatch(r"(?:# )?([a-z][a-z0-9_]*) =(?: (.*))?", line):
            found[section, setting[1]] = setting[2] or ""
    return found


def test_every_setting_is_in_the_shipped_conf_with_its_default() -> None:
    shipped = shipped_settings()
    table = {(section, key): default for section, key, default, _ in settings_table()}
    assert shipped == table


def test_every_shipped_setting_is_documented_with_its_default() -> None:
    lines = SHIPPED_CONF.read_text().splitlines()
    for section, key, default, _ in settings_table():
        at = lines.index(f"# {key} = {default}".rstrip())
        comment = "\n".join(lines[at - 4 : at])
        assert "Default:" in comment, (section, key)
        assert (default or "empty") in comment, (section, key)


def test_settings_table_shape() -> None:
    table = settings_table()
    assert len(table) == len({(s, k) for s, k, _, _ in table}) == 47
    assert all(help_text and "\n" not in help_text for *_, help_text in table)
    assert table[0] == (
        "server",
        "listen",
        "tcp:8080:interface=127.0.0.1",
        "Twisted server endpoint of the WebSocket, REST and metrics port",
    )


# -- the object ----------------------------------------------------------------------------------


def test_each_setting_is_a_field_of_its_section_in_order() -> None:
    others = ("dev", "feed_options", "warnings")
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name not in others}
    declared = [
        (section, f.name)
        for section, cls in config._SECTION_CLASSES.items()
        for f in dataclasses.fields(cls)
    ]
    assert list(config._SECTION_CLASSES) == list(sections)
    assert declared == [(s.section, s.attr) for s in config._SETTINGS]
    assert [(s.section, s.key) for s in config._SETTINGS if s.key != s.attr] == [
        ("auth", "secret_file")
    ]


def test_only_the_secret_fields_are_left_out_of_reprs() -> None:
    hidden = {
        (cls.__name__, f.name)
        for cls in config._SECTION_CLASSES.values()
        for f in dataclasses.fields(cls)
        if not f.repr
    }
    assert hidden == {("AuthConfig", "secret"), ("AuthConfig", "jwks_url"), ("RedisConfig", "url")}


def test_a_section_field_without_setting_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Section:
        known: int = dataclasses.field(metadata=config.setting("1", integer(0, 9), "a"))
        stray: int = 0

    with pytest.raises(TypeError, match=r"Section.stray: not declared with setting\(\)"):
        config._read_settings({"extra": Section})


def test_config_is_frozen() -> None:
    cfg = load_config(None, {}, dev=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.websocket.max_connections = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dev = False  # type: ignore[misc]
    assert not hasattr(cfg.server, "__dict__")  # slots


# -- python -m quoted.config ------------------------------------------------------------------


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "quoted.config", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO,
        check=False,
        timeout=60,
    )


def test_module_check_ok(files: dict[str, str]) -> None:
    done = run_check("--dev", str(SHIPPED_CONF))
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
    done = run_check(str(SHIPPED_CONF), env={"QUOTED_AUTH_SECRET_FILE": files["secret"]})
    assert (done.returncode, done.stdout) == (0, "ok\n")


def test_module_check_errors(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "[websocket]\nmax_connections = abc\nmax_symbol = 1\n")
    done = run_check("--dev", path)
    assert done.returncode == 1  # a refused start's status
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "[websocket] max_symbol: unknown key; did you mean max_symbols? accepted: "
        "max_connections, max_symbols, idle_timeout, health_check_interval, "
        "circuit_breaker_threshold, compression, handshake_rate_per_ip, "
        "user_max_connections, message_rate",
        "[websocket] max_connections = 'abc': not an integer; accepted: 1 to 1000000",
    ]
    done = run_check(str(SHIPPED_CONF))  # no key, no --dev
    assert done.returncode == 1
    assert "no token key is configured" in done.stderr


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert checks.main(["--dev", "--listen", "tcp:0", str(SHIPPED_CONF)]) == 0
    assert capsys.readouterr().out == "ok\n"
    assert checks.main(["--dev", "--listen", "nope", str(SHIPPED_CONF)]) == 1
    assert "(from --listen)" in capsys.readouterr().err


def test_integers_take_ascii_digits_only() -> None:
    [line] = problems_of(lambda: load_config(None, {"WS_MAX_CONNECTIONS": "٣"}, dev=True))
    assert "not an integer" in line


# -- the feed source ----------------------------------------------------------------------------


def test_settings_another_source_does_not_read_are_warnings(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "[feed]\nsource = publish\nmode = all\nreplay_speed = 2\n"
        "[feed:vendor]\nhost = example.com\n",
    )
    assert cfg.warnings == (
        "[feed] mode: set, but only [feed] source = simulator reads it (the source is publish)",
        "[feed] replay_speed: set, but only [feed] source = replay reads it "
        "(the source is publish)",
        "[feed:vendor]: ignored, [feed] source is publish",
    )
    assert dict(cfg.feed_options) == {}
    assert load_config(None, {}, dev=True).warnings == ()


def test_an_unknown_source_names_the_accepted_and_installed_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, {"QUOTED_FEED_SOURCE": "replya"}, dev=True)
    assert str(e.value) == (
        "[feed] source = 'replya': no such source; did you mean replay? accepted: simulator, "
        "publish, replay, redis_stream; installed plugin feeds: none"
    )


def test_the_checker_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.conf"
    path.write_text("[feed]\nsource = publish\nupdate_interval = 1s\n")
    assert checks.main(["--dev", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == "ok\n"
    assert out.err.startswith("warning: [feed] update_interval: set, but only")


# -- secrets that are no secrets ---------------------------------------------------------------


@pytest.mark.parametrize("weak", [b"\0" * 32, b" " * 40, b"ab" * 20, b"0123456" * 6])
def test_a_secret_of_few_different_bytes_is_refused(tmp_path: Path, weak: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(weak)
    path.chmod(0o600)
    lines = problems_of(lambda: load_text(tmp_path, f"[auth]\nsecret_file = {path}\n"))
    assert lines[0].startswith("[auth] secret_file = ")
    assert "fewer than 8 different bytes" in lines[0]
    if weak.strip():
        lines = problems_of(lambda: load_config(None, {"JWT_SECRET": weak.decode()}))
        assert lines[0].startswith("[auth] secret_file = <hidden> (from JWT_SECRET): ")
        assert weak.decode() not in "\n".join(lines)


def test_a_secret_file_others_may_read_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o644)
    cfg = load_text(tmp_path, f"[auth]\nsecret_file = {path}\n")
    assert cfg.auth.secret == SECRET
    assert cfg.warnings == (
        "[auth] secret_file: the file may be read by other users (mode 644); chmod 600 it, "
        "or use systemd's LoadCredential=",
    )
    path.chmod(0o600)
    assert load_text(tmp_path, f"[auth]\nsecret_file = {path}\n").warnings == ()
