"""``quoted-token``: an operator's tool that mints a token for a service, a publisher or a test.

The key is the configured one (``-c FILE``: its ``[auth]`` read by :func:`load_config`, the
environment included, as the daemon reads it), or a secret file, or a private key whose
public half the server holds (``[auth] public_key_file`` or its JWK Set). ``iss`` and ``aud``
come from the configuration when it sets them. Before printing, the token is checked with the
server's own :class:`TokenVerifier` (the configuration's, or one built from the same key), so
a token that prints is one the server accepts.

Only the token goes to stdout; every message goes to stderr and names files, never their
content: the key is never printed. A configuration without a token key is a development
configuration (``twistd quoted --dev`` signs with a random secret that dies with the
process), and is refused.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from twisted.internet.task import Clock

from quoted.server.auth import MAX_SYMBOLS, TokenError, TokenVerifier
from quoted.server.config import AuthConfig, ConfigError, load_config
from quoted.server.keys import algorithms_for
from quoted.server.settingkinds import secret_file
from quoted.wire.durations import parse_duration
from quoted.wire.symbols import SYMBOL_RULE, normalize_symbols, valid_symbol
from quoted.wire.tokens import HMAC_ALGORITHMS, mint_token

__all__ = ["main"]

PROG: Final = "quoted-token"
DEFAULT_TTL: Final = "1h"
MAX_TTL_SECONDS: Final = 366 * 24 * 3600

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class Refused(Exception):
    """One line for stderr; the tool exits 1. Never holds a key."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Mint a quoted access token from the configured key and print it (only it) on "
            "stdout. The key is never printed."
        ),
        epilog=(
            "examples: quoted-token -c /etc/quoted/quoted.conf --secret-file "
            "/etc/quoted/jwt-secret --sub risk-desk --symbols AAPL,MSFT --ttl 30d;  "
            "quoted-token -c /etc/quoted/quoted.conf --private-key issuer.pem --sub feed-1 "
            "--symbols '*' --scope quotes:publish"
        ),
    )
    key = parser.add_argument_group("the key (at least one of these)")
    key.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="quoted's configuration: its [auth] key (secret_file or JWT_SECRET), iss and aud",
    )
    key.add_argument(
        "--secret-file",
        metavar="FILE",
        help="the HMAC secret (what [auth] secret_file names, e.g. /etc/quoted/jwt-secret)",
    )
    key.add_argument(
        "--private-key",
        metavar="FILE",
        help="a PEM private key (RSA, ECDSA P-256/384/521 or Ed25519) whose public key the "
        "server verifies with ([auth] public_key_file or jwks_url)",
    )
    key.add_argument(
        "--alg",
        help="signing algorithm (default: HS256 for a secret; RS256, ES256/384/512 or EdDSA "
        "as the private key's type implies)",
    )
    key.add_argument("--kid", help="the kid header (the key's id in a JWK Set)")
    claims = parser.add_argument_group("the claims")
    claims.add_argument("--sub", required=True, help="the subject: the user or service")
    claims.add_argument(
        "--symbols",
        required=True,
        help="comma-separated symbols the token is entitled to, or '*' for every symbol",
    )
    claims.add_argument(
        "--scope",
        help="space-separated scopes, e.g. quotes:publish for a publisher of [feed] source = "
        "publish",
    )
    claims.add_argument(
        "--ttl",
        default=DEFAULT_TTL,
        help=f"lifetime, such as 15m, 12h or 30d (default {DEFAULT_TTL}; at most 366d)",
    )
    claims.add_argument("--iss", help="issuer (default: the configuration's [auth] issuer)")
    claims.add_argument("--aud", help="audience (default: the configuration's [auth] audience)")
    return parser


def _ttl(text: str) -> float:
    try:
        seconds = parse_duration(_days(text))
    except ValueError as exc:
        raise Refused(f"--ttl {text!r}: {exc}") from None
    if not math.isfinite(seconds) or seconds < 1 or seconds > MAX_TTL_SECONDS:
        raise Refused(f"--ttl {text!r}: want at least 1s and at most 366d")
    return seconds


def _days(text: str) -> str:
    """``30d`` as hours, since quoted's duration grammar stops at ``h``."""
    stripped = text.strip()
    if stripped.endswith("d") and stripped[:-1].replace(".", "", 1).isdigit():
        return f"{float(stripped[:-1]) * 24:g}h"
    return stripped


def _symbols(text: str) -> list[str] | None:
    """None for ``*`` (no claim: every symbol, as the server reads it)."""
    if text.strip() == "*":
        return None
    symbols = normalize_symbols(text.split(","))
    bad = [symbol for symbol in symbols if not valid_symbol(symbol)]
    if bad or not symbols:
        shown = ", ".join(repr(b) for b in bad) or "empty"
        raise Refused(f"--symbols: {shown}: want comma-separated symbols or '*' ({SYMBOL_RULE})")
    if len(symbols) > MAX_SYMBOLS:
        raise Refused(f"--symbols: more than {MAX_SYMBOLS} symbols")
    return symbols


def _read_secret(path: str) -> bytes:
    try:
        secret = secret_file.parse(path)
    except ValueError as exc:
        raise Refused(f"--secret-file {path!r}: {exc}") from None
    assert isinstance(secret, bytes)
    return secret


def _read_private_key(path: str) -> PrivateKey:
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise Refused(f"--private-key {path!r}: cannot read: {exc.strerror}") from None
    try:
        key: Any = load_pem_private_key(pem, password=None)
    except TypeError:
        raise Refused(f"--private-key {path!r}: the key is encrypted; decrypt it first") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: never quote the file
        raise Refused(f"--private-key {path!r}: not a PEM private key this tool reads") from None
    if not isinstance(key, PrivateKey):
        raise Refused(f"--private-key {path!r}: want an RSA, ECDSA or Ed25519 private key")
    return key


def _config(path: str, keyed: bool) -> AuthConfig:
    try:
        # dev=True only when a key is given on the command line: the file may then leave the
        # key to the environment systemd builds (QUOTED_AUTH_SECRET_FILE=%d/jwt-secret)
        return load_config(path, dev=keyed).auth
    except ConfigError as exc:
        lines = str(exc).splitlines()
        if not keyed and any("no token key is configured" in line for line in lines):
            raise Refused(
                f"-c {path}: no token key is configured there: a development configuration "
                "(twistd quoted --dev signs with a random secret no one else has). Give "
                "--secret-file or --private-key, or set [auth] secret_file"
            ) from None
        raise Refused(f"-c {path}: " + "; ".join(lines)) from None


def mint(args: argparse.Namespace, now: float) -> str:
    """The token ``args`` asks for, checked by the server's verifier; Refused otherwise."""
    if args.secret_file and args.private_key:
        raise Refused("--secret-file and --private-key: give one key, not both")
    if not (args.config or args.secret_file or args.private_key):
        raise Refused("no key: give -c FILE, --secret-file FILE or --private-key FILE")
    if not args.sub or not args.sub.strip():
        raise Refused("--sub: empty")
    auth = _config(args.config, bool(args.secret_file or args.private_key)) if args.config else None
    issuer = auth.issuer if auth is not None and args.iss is None else (args.iss or "")
    audience = auth.audience if auth is not None and args.aud is None else (args.aud or "")
    ttl = _ttl(args.ttl)
    symbols = _symbols(args.symbols)

    if args.private_key:
        key = _read_private_key(args.private_key)
        try:
            allowed = algorithms_for(key.public_key())
        except ValueError as exc:
            raise Refused(f"--private-key {args.private_key!r}: {exc}") from None
        alg = args.alg or allowed[0]
        if alg not in allowed:
            raise Refused(f"--alg {alg}: this key signs {', '.join(allowed)}")
        claims: dict[str, Any] = {"sub": args.sub, "iat": math.floor(now)}
        claims["exp"] = math.floor(now + ttl)
        if issuer:
            claims["iss"] = issuer
        if audience:
            claims["aud"] = audience
        if symbols is not None:
            claims["symbols"] = symbols
        if args.scope is not None:
            claims["scope"] = args.scope
        headers = {"kid": args.kid} if args.kid else None
        token = jwt.encode(claims, key, algorithm=alg, headers=headers)
        own = TokenVerifier(
            _clock(now), public_key_pem=_public_pem(key), issuer=issuer, audience=audience
        )
    else:
        secret = _read_secret(args.secret_file) if args.secret_file else None
        if secret is None:
            assert auth is not None
            if auth.secret is None:
                raise Refused(
                    f"-c {args.config}: [auth] verifies with a public key or a JWK Set; give "
                    "--private-key FILE (its private half)"
                )
            secret = auth.secret
        alg = args.alg or "HS256"
        if alg not in HMAC_ALGORITHMS:
            raise Refused(f"--alg {alg}: a secret signs {', '.join(HMAC_ALGORITHMS)}")
        if args.kid:
            raise Refused("--kid: only with --private-key")
        token = mint_token(
            secret,
            args.sub,
            now=now,
            ttl=ttl,
            symbols=symbols,
            algorithm=alg,
            issuer=issuer,
            audience=audience,
            scope=args.scope,
        )
        own = TokenVerifier(_clock(now), secret=secret, issuer=issuer, audience=audience)
    _check(own, token, "the key given")
    if auth is not None and not auth.jwks_url and (auth.secret or auth.public_key_file):
        try:
            server = TokenVerifier.from_config(auth, _clock(now))
        except ValueError as exc:
            raise Refused(f"-c {args.config}: {exc}") from None
        _check(server, token, f"the [auth] key of {args.config}")
    return token


def _clock(now: float) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def _public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _check(verifier: TokenVerifier, token: str, what: str) -> None:
    try:
        verifier.verify(token)
    except TokenError as exc:
        raise Refused(f"the token does not verify with {what} ({exc}): not printed") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        token = mint(args, time.time())  # a command-line tool: the wall clock is the edge
    except Refused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(token + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
