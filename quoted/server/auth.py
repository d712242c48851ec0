"""JWT verification (docs/protocol.md section 1, "Token"), ported from the Go prototype.

The accepted algorithms follow from the configured key, never from the token
(quoted.server.keys), so ``alg: none`` and algorithm confusion (an HS256 token "signed" with
the RSA public key) are refused.

pyjwt checks the signature only. The structure (segments, base64url, JSON, claim types) and
the time claims are checked here, the latter against the injected clock (``clock.seconds()``)
so that tests drive expiry with ``task.Clock``.

Nothing here ever puts any part of a token in an exception, a repr or a log line: a
:class:`TokenError` carries only its code, a fixed message and a fixed reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import jwt
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from quoted.server.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    PublicKey,
    algorithms_for,
    load_public_key,
)

if TYPE_CHECKING:
    from quoted.server.config import AuthConfig
    from quoted.server.jwks import KeySetService

MISSING_TOKEN: Final = "missing_token"
MALFORMED_TOKEN: Final = "malformed_token"
INVALID_TOKEN: Final = "invalid_token"
TOKEN_EXPIRED: Final = "token_expired"

# The 401 bodies' messages (Go internal/server/errors.go): fixed, never quoting the token.
MESSAGES: Final[dict[str, str]] = {
    MISSING_TOKEN: "a token is required: Authorization: Bearer <JWT>, or ?token=<JWT>",
    MALFORMED_TOKEN: (
        "the token is not a well-formed JWT, or the Authorization header is not Bearer"
    ),
    INVALID_TOKEN: "the token's signature, algorithm or claims are not accepted",
    TOKEN_EXPIRED: "the token has expired",
}

DEFAULT_LEEWAY: Final = 30.0
MAX_SYMBOLS: Final = 10_000
"""Cap on the symbols claim, so a token cannot make the server hold an arbitrarily large set."""


class TokenError(Exception):
    """A refused token: ``code`` and ``message`` for the client, ``reason`` for logs.

    None of them ever holds any part of the token.
    """

    def __init__(self, code: str, reason: str = "") -> None:
        self.code = code
        self.message = MESSAGES[code]
        self.reason = reason or code.replace("_", " ")
        super().__init__(code, self.reason)

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"

    def __repr__(self) -> str:
        return f"TokenError({self.code!r}, {self.reason!r})"


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token tells the server."""

    subject: str
    expires_at: float
    """``exp``, unix seconds."""
    symbols: frozenset[str] | None
    """The entitlement, trimmed and upper-cased; None allows every symbol (``"*"`` or absent)."""
    scopes: frozenset[str] = frozenset()
    """The ``scope`` claim's words (a space-separated string, as in OAuth); empty when absent."""

    def entitled(self, symbol: str) -> bool:
        """Whether the holder may receive ``symbol``, which must already be upper-case."""
        return self.symbols is None or symbol in self.symbols


def bearer_token(authorization: list[bytes] | list[str], query_token: str | None) -> str:
    """The request's token: ``Authorization: Bearer <tok>`` first, else ``?token=``.

    Several Authorization headers, or one of another shape, are ``malformed_token`` even when
    the query has a token: a client that sent credentials should hear they are wrong. No
    header and no (non-empty) query token is ``missing_token``.
    """
    if authorization:
        if len(authorization) > 1:
            raise TokenError(MALFORMED_TOKEN, "several Authorization headers")
        header = authorization[0]
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, space, token = header.partition(" ")
        token = token.strip()
        if not space or scheme.lower() != "bearer" or not token:
            raise TokenError(MALFORMED_TOKEN, "Authorization header is not Bearer <token>")
        return token
    if query_token:
        return query_token
    raise TokenError(MISSING_TOKEN, "no token")


# --- token structure -------------------------------------------------------------------------

_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON


_JSON: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _segment(text: str) -> bytes:
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(MALFORMED_TOKEN, "a segment is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(MALFORMED_TOKEN, "a segment is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = _JSON.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise TokenError(MALFORMED_TOKEN, f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(MALFORMED_TOKEN, f"the {what} is not a JSON object")
    return value


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    # A registered claim of the wrong JSON type is malformed, as in Go's jwt/v5.
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(MALFORMED_TOKEN, f"{name} claim is not a number")
    try:
        result = float(value)
    except OverflowError:
        raise TokenError(MALFORMED_TOKEN, f"{name} claim is out of range") from None
    if not math.isfinite(result):
        raise TokenError(MALFORMED_TOKEN, f"{name} claim is out of range")
    return result


def _string_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TokenError(MALFORMED_TOKEN, f"{name} claim is not a string")
    return value


def _audience(claims: dict[str, Any]) -> list[str]:
    value = claims.get("aud")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise TokenError(MALFORMED_TOKEN, "aud claim is not a string or a list of strings")


_SYMBOLS_SHAPE: Final = 'symbols claim must be "*" or a list of symbols'


def _symbols(claims: dict[str, Any]) -> frozenset[str] | None:
    if "symbols" not in claims:
        return None
    value = claims["symbols"]
    if value == "*":
        return None
    if not isinstance(value, list):
        raise TokenError(INVALID_TOKEN, _SYMBOLS_SHAPE)
    if len(value) > MAX_SYMBOLS:
        raise TokenError(INVALID_TOKEN, f"symbols claim lists more than {MAX_SYMBOLS} symbols")
    out: set[str] = set()
    for item in value:
        if not isinstance(item, str):
            raise TokenError(INVALID_TOKEN, _SYMBOLS_SHAPE)
        symbol = item.strip().upper()
        # An empty entry or "*" in a list: the issuer meant something the list cannot say,
        # and guessing could grant too much.
        if symbol in ("", "*"):
            raise TokenError(INVALID_TOKEN, _SYMBOLS_SHAPE)
        out.add(symbol)
    return frozenset(out)


MAX_SCOPE_CHARS: Final = 4096


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """The ``scope`` claim (RFC 8693 section 4.2: a space-separated string) as a set."""
    value = claims.get("scope")
    if value is None:
        return frozenset()
    if not isinstance(value, str) or len(value) > MAX_SCOPE_CHARS:
        raise TokenError(INVALID_TOKEN, "scope claim is not a space-separated string")
    return frozenset(value.split())


# --- verifier --------------------------------------------------------------------------------


class _Seconds(Protocol):
    def seconds(self) -> float: ...


class UnknownKeyError(TokenError):
    """The token names a ``kid`` the JWK Set does not hold (yet): worth one refetch."""

    def __init__(self) -> None:
        super().__init__(INVALID_TOKEN, "unknown key id")


class TokenVerifier:
    """Checks tokens against a shared secret, a public key or a JWK Set (``keyset``).

    Built once at start-up, so each handshake only parses and checks. With a JWK Set, a token
    whose ``kid`` is unknown needs a fetch first: :meth:`verify_deferred` waits for it (never
    blocking the reactor), :meth:`verify` refuses it at once.
    """

    __slots__ = (
        "_audience",
        "_issuer",
        "_jws",
        "_key",
        "_leeway",
        "_seconds",
        "algorithms",
        "keyset",
    )

    def __init__(
        self,
        clock: IReactorTime,
        *,
        secret: bytes | None = None,
        public_key_pem: bytes | None = None,
        issuer: str = "",
        audience: str = "",
        leeway: float = DEFAULT_LEEWAY,
        keyset: KeySetService | None = None,
    ) -> None:
        if bool(secret) + bool(public_key_pem) + (keyset is not None) != 1:
            raise ValueError("set exactly one of a (non-empty) secret, a public key and a key set")
        if not math.isfinite(leeway) or leeway < 0:
            raise ValueError("leeway must be a non-negative number of seconds")
        # IReactorTime.seconds, typed for mypy with or without the zope plugin
        self._seconds = cast(_Seconds, clock).seconds
        self._issuer = issuer
        self._audience = audience
        self._leeway = float(leeway)
        self._key: bytes | PublicKey | None = None
        self.keyset = keyset
        if keyset is not None:
            self.algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
        elif secret:
            self._key = bytes(secret)
            self.algorithms = HMAC_ALGORITHMS
        else:
            assert public_key_pem is not None
            key = load_public_key(public_key_pem)
            self.algorithms = algorithms_for(key)
            self._key = key
        self._jws = jwt.PyJWS(algorithms=list(self.algorithms))

    def adopt(self, other: TokenVerifier) -> None:
        """Check tokens as ``other`` does from now on (a reload swapping the token keys): the
        parts holding this verifier keep it."""
        for name in TokenVerifier.__slots__:
            setattr(self, name, getattr(other, name))

    def __repr__(self) -> str:
        kind = "jwks" if self.keyset is not None else "key"
        return f"<TokenVerifier {kind} algorithms={','.join(self.algorithms)}>"

    @property
    def leeway(self) -> float:
        """Seconds of clock skew allowed on exp, nbf and iat."""
        return self._leeway

    @property
    def ready(self) -> bool:
        """False while a JWK Set has not been loaded yet (every token is refused)."""
        return self.keyset is None or self.keyset.loaded

    @classmethod
    def from_config(
        cls,
        auth: AuthConfig,
        clock: IReactorTime,
        secret: bytes | None = None,
        keyset: KeySetService | None = None,
    ) -> TokenVerifier:
        """The verifier of the ``[auth]`` settings; ``secret`` overrides ``auth.secret``
        (development mode passes a random one). Reads ``public_key_file`` now, so call it
        before the reactor runs. ValueError names the setting at fault.

        With ``jwks_url``, ``keyset`` is the KeySetService of that URL (quoted.server.app builds it
        and runs it as a service)."""
        key_secret = secret if secret else auth.secret
        common: dict[str, Any] = {
            "issuer": auth.issuer,
            "audience": auth.audience,
            "leeway": auth.leeway,
        }
        if auth.jwks_url:
            if key_secret or auth.public_key_file:
                raise ValueError("[auth] jwks_url: another token key is set too; set only one")
            if keyset is None:
                raise ValueError("[auth] jwks_url: no key set service was given")
            return cls(clock, keyset=keyset, **common)
        if auth.public_key_file:
            if key_secret:
                raise ValueError(
                    "[auth] public_key_file: a secret is set too; set only one token key"
                )
            path = Path(auth.public_key_file)
            try:
                pem = path.read_bytes()
            except OSError as exc:
                raise ValueError(
                    f"[auth] public_key_file: cannot read {str(path)!r}: {exc.strerror}"
                ) from None
            try:
                return cls(clock, public_key_pem=pem, **common)
            except ValueError as exc:
                raise ValueError(f"[auth] public_key_file: {str(path)!r}: {exc}") from None
        if not key_secret:
            raise ValueError("[auth] secret_file: no token key is configured")
        return cls(clock, secret=key_secret, **common)

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; TokenError (never quoting the token) otherwise."""
        if not token:
            raise TokenError(MISSING_TOKEN)
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError(MALFORMED_TOKEN, "not three segments")
        header = _json_object(_segment(parts[0]), "header")
        claims = _json_object(_segment(parts[1]), "payload")
        _segment(parts[2])
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        subject = _string_claim(claims, "sub")
        issuer = _string_claim(claims, "iss")
        audience = _audience(claims)

        try:
            if self._key is not None:
                self._jws.decode_complete(token, self._key, algorithms=list(self.algorithms))
            else:
                self._verify_with_set(token, header)
        except TokenError:
            raise
        except jwt.InvalidAlgorithmError:
            raise TokenError(INVALID_TOKEN, "algorithm not allowed for the key") from None
        except jwt.InvalidSignatureError:
            raise TokenError(INVALID_TOKEN, "bad signature") from None
        except Exception:  # any other refusal by pyjwt; its text may quote the header
            raise TokenError(INVALID_TOKEN, "cannot be verified") from None

        # The order of Go's refusal(): a token from the wrong issuer is invalid even when it
        # has also expired, since a fresh one would not help.
        if self._issuer:
            if not issuer:
                raise TokenError(INVALID_TOKEN, "iss claim missing")
            if issuer != self._issuer:
                raise TokenError(INVALID_TOKEN, "wrong issuer")
        if self._audience:
            if not audience:
                raise TokenError(INVALID_TOKEN, "aud claim missing")
            if self._audience not in audience:
                raise TokenError(INVALID_TOKEN, "wrong audience")
        if exp is None:
            raise TokenError(INVALID_TOKEN, "exp claim missing")
        now = self._seconds()
        if now >= exp + self._leeway:
            raise TokenError(TOKEN_EXPIRED)
        if nbf is not None and now < nbf - self._leeway:
            raise TokenError(INVALID_TOKEN, "not valid yet")
        if iat is not None and now < iat - self._leeway:
            raise TokenError(INVALID_TOKEN, "issued in the future")
        if not subject:
            raise TokenError(INVALID_TOKEN, "sub claim missing")
        return Claims(
            subject=subject, expires_at=exp, symbols=_symbols(claims), scopes=_scopes(claims)
        )

    def _verify_with_set(self, token: str, header: dict[str, Any]) -> None:
        assert self.keyset is not None
        keys = self.keyset.keys
        if keys is None:
            raise TokenError(INVALID_TOKEN, "no JWK Set loaded")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError(MALFORMED_TOKEN, "kid header is not a string")
        alg = header.get("alg")
        candidates = keys.candidates(kid)
        if candidates is None:
            raise UnknownKeyError()
        fitting = [k for k in candidates if alg in k.algorithms]
        if not fitting:
            raise TokenError(INVALID_TOKEN, "algorithm not allowed for the key")
        for key in fitting:
            try:
                self._jws.decode_complete(token, key.key, algorithms=list(key.algorithms))
                return
            except jwt.InvalidSignatureError:
                continue
        raise TokenError(INVALID_TOKEN, "bad signature")

    def verify_deferred(self, token: str) -> Deferred[Claims]:
        """verify(), waiting for a JWK Set fetch when the token's kid is unknown (at most one
        fetch per 10 s; when none is allowed, the token is refused at once). The Deferred has
        its result already unless a fetch is needed; it fails with TokenError only."""
        try:
            return succeed(self.verify(token))
        except UnknownKeyError:
            pass
        except TokenError as e:
            return fail(e)
        assert self.keyset is not None
        fetch = self.keyset.refresh_for_unknown_kid()
        if fetch is None:
            return fail(TokenError(INVALID_TOKEN, "unknown key id"))
        result: Deferred[Claims] = Deferred()

        def again(_: object) -> None:
            try:
                result.callback(self.verify(token))
            except TokenError as e:
                result.errback(e)

        fetch.addBoth(again)
        return result
