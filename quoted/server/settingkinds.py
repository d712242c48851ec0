"""The kinds of values quoted's settings take: a parser each, and the words saying what
it accepts (durations, bounded numbers, choices, files, URLs, origins, networks, secrets).

Each setting of quoted/server/config.py names one kind; a parser raises ValueError with a
reason, which config.py turns into the ``[section] key`` line of its error. The duration
grammar itself is quoted.wire.durations, shared with the load generator.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from quoted.server.edge import endpoint_arguments
from quoted.wire.durations import parse_duration

MIN_SECRET_BYTES = 32
# a secret of fewer different bytes is not random (32 zero bytes, spaces, "aaaa..."): a random
# 32-byte secret has about 30, its hex form 16, its base64 form about 25
MIN_DISTINCT_BYTES = 8
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- value kinds: a parser and the text saying what it accepts --------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    parse: Callable[[str], Any]  # raises ValueError(reason); a secret's reason never holds it
    accepted: str
    secret: bool = False  # the value is shown as <hidden> in errors
    strip: bool = True  # environment values are stripped of surrounding whitespace


def value_kind(
    accepted: str, *, secret: bool = False, strip: bool = True
) -> Callable[[Callable[[str], Any]], Kind]:
    """Make the decorated parser a Kind."""
    return lambda parse: Kind(parse, accepted, secret, strip)


def integer(low: int, high: int) -> Kind:
    @value_kind(f"{low} to {high}")
    def kind(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError("not an integer")
        if not low <= int(text) <= high:
            raise ValueError("out of range")
        return int(text)

    return kind


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def size(low: int, high: int) -> Kind:
    """A number of bytes: ``65536``, ``512KiB``, ``1MiB`` (binary units only: no guessing
    whether kB means 1000 or 1024)."""

    @value_kind(f"a size from {low} to {high} bytes, such as 65536, 512KiB or 1MiB")
    def kind(text: str) -> int:
        m = re.fullmatch(r"([0-9]{1,12})\s*([A-Za-z]*)", text)
        if m is None or m.group(2).lower() not in _SIZE_UNITS:
            raise ValueError("not a size")
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        if not low <= value <= high:
            raise ValueError("out of range")
        return value

    return kind


@value_kind("a lower-case name: letters, digits, _ and - (a built-in source or a plugin feed)")
def feed_name(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", text.lower()):
        raise ValueError("not a feed name")
    return text.lower()


def number(accepted: str, ok: Callable[[float], bool]) -> Kind:
    @value_kind(accepted)
    def kind(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(value) or not ok(value):
            raise ValueError("out of range")
        return value

    return kind


def duration(low: str, high: str | None = None) -> Kind:
    low_s, high_s = parse_duration(low), parse_duration(high or "0") or math.inf
    bounds = f"at least {low}" if high is None else f"{low} to {high}"

    @value_kind(f"a duration such as 500ms, 4s, 1m30s or 1.5h, {bounds}")
    def kind(text: str) -> float:
        if not low_s <= (value := parse_duration(text)) <= high_s:
            raise ValueError("out of range")
        return value

    return kind


def choice(*options: str) -> Kind:
    @value_kind(", ".join(options))
    def kind(text: str) -> str:
        if text.lower() not in options:
            raise ValueError("not one of the choices")
        return text.lower()

    return kind


@value_kind("on/off, yes/no, true/false or 1/0")
def boolean(text: str) -> bool:
    if text.lower() not in ("on", "yes", "true", "1", "off", "no", "false", "0"):
        raise ValueError("not a boolean")
    return text.lower() in ("on", "yes", "true", "1")


any_text = Kind(str, "any text")

TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


@value_kind("TLSv1.2, TLSv1.3 or both (space- or comma-separated)")
def tls_protocols(text: str) -> tuple[str, ...]:
    """The TLS versions offered, oldest first: TLS 1.0 and 1.1 are refused by name."""
    named = [part for part in re.split(r"[\s,]+", text.strip()) if part]
    by_name = {v.lower(): v for v in TLS_VERSIONS}
    for part in named:
        if part.lower() in ("tlsv1", "tlsv1.0", "tlsv1.1", "sslv3", "sslv2"):
            raise ValueError(f"{part} is not safe")
        if part.lower() not in by_name:
            raise ValueError(f"unknown version {part!r}")
    chosen = tuple(v for v in TLS_VERSIONS if v.lower() in {p.lower() for p in named})
    if not chosen:
        raise ValueError("no version")
    return chosen


@value_kind("an OpenSSL cipher list such as ECDHE+AESGCM:ECDHE+CHACHA20")
def cipher_list(text: str) -> str:
    """Its syntax only: OpenSSL itself checks it when an ssl: listen builds its context."""
    if not text or not re.fullmatch(r"[A-Za-z0-9+\-_:!@=.,]+", text):
        raise ValueError("not a cipher list")
    return text


@value_kind(
    "a Twisted server endpoint of type tcp, tcp6, ssl, unix or systemd, "
    "such as tcp:8080:interface=127.0.0.1 or systemd:domain=INET:name=quoted-wss"
)
def endpoint(text: str) -> str:
    """A server endpoint string whose type Twisted knows and whose every argument its parser
    takes (a misspelt ``interfase=`` named); nothing is opened or read."""
    kind, sep, rest = text.partition(":")
    if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd") or not sep or not rest:
        raise ValueError("not a server endpoint")
    try:
        _, args, kw, signature = endpoint_arguments(text)
    except ValueError as e:
        raise ValueError(f"not a server endpoint: {e}") from None
    named = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty
    ]
    for key in kw:
        if key not in signature.parameters:
            close = difflib.get_close_matches(key, named, n=1)
            hint = f"did you mean {close[0]}=? " if close else ""
            takes = ", ".join(f"{name}=" for name in named)
            raise ValueError(f"unknown argument {key}=; {hint}{kind} takes {takes or 'none'}")
    try:
        signature.bind(*args, **kw)
    except TypeError as e:  # a missing port, one too many, a value given twice
        raise ValueError(f"{kind}: {e}") from None
    port = rest.split(":", 1)[0]
    positional_port = kind in ("tcp", "tcp6", "ssl") and "=" not in port
    if positional_port and (not port.isdigit() or int(port) > 65535):
        raise ValueError("bad port")
    return text


def split_url(text: str, schemes: tuple[str, ...]) -> SplitResult:
    """Check a URL's scheme, host and port; never pass urllib's messages on (they quote it)."""
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.scheme not in schemes:
        raise ValueError("wrong scheme")
    if not parts.hostname:
        raise ValueError("no host")
    return parts


@value_kind("comma-separated origins such as https://app.example.com or https://host:8443, or *")
def origins(text: str) -> tuple[str, ...]:
    origins: list[str] = []
    for origin in filter(None, (part.strip().lower() for part in text.split(","))):
        if origin != "*":
            try:
                parts = split_url(origin, ("http", "https"))
            except ValueError as exc:
                raise ValueError(f"{origin!r} is not an origin: {exc}") from None
            if "@" in origin or origin != f"{parts.scheme}://{parts.netloc}":
                raise ValueError(f"{origin!r} is not an origin: more than scheme://host[:port]")
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


@value_kind("comma-separated IP addresses or CIDRs such as 10.0.0.0/8")
def networks(text: str) -> tuple[Network, ...]:
    networks: list[Network] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(networks)


def check_file(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValueError("not a regular file")


@value_kind("empty, or the path of an existing regular file")
def file(text: str) -> str:
    if text:
        check_file(text)
    return text


@value_kind(
    f"empty, or a readable file holding a secret of at least {MIN_SECRET_BYTES} bytes "
    "(trailing newlines are stripped)"
)
def secret_file(text: str) -> bytes | None:
    if not text:
        return None
    check_file(text)
    try:
        with open(text, "rb") as handle:
            secret = handle.read().rstrip(b"\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError("the secret in it is too short")
    check_variety(secret)
    return secret


def check_variety(secret: bytes) -> None:
    """Refuse a secret of too few different bytes (never saying which)."""
    if len(set(secret)) < MIN_DISTINCT_BYTES:
        raise ValueError(
            f"the secret has fewer than {MIN_DISTINCT_BYTES} different bytes: not a random "
            "secret (make one with: head -c 32 /dev/urandom | base64)"
        )


def group_or_world_readable(path: str) -> bool:
    """Whether a secret file may be read by users other than its owner."""
    try:
        return bool(os.stat(path).st_mode & 0o077)
    except OSError:
        return False


@value_kind(f"a secret of at least {MIN_SECRET_BYTES} bytes", secret=True, strip=False)
def raw_secret(text: str) -> bytes:
    if len(secret := text.encode()) < MIN_SECRET_BYTES:
        raise ValueError("too short")
    check_variety(secret)
    return secret


@value_kind("empty, or an http:// or https:// URL", secret=True)
def jwks_url(text: str) -> str:
    if text:
        split_url(text, ("http", "https"))
    return text


@value_kind("a redis:// or rediss:// URL such as redis://user:password@host:6379/0", secret=True)
def redis_url(text: str) -> str:
    split_url(text, ("redis", "rediss"))
    return text


@value_kind("non-empty text without whitespace, { or }")
def prefix(text: str) -> str:
    if not text or re.search(r"[\s{}]", text):
        raise ValueError("empty, or holds whitespace or braces")
    return text
