"""The server's TLS: the endpoint of an ``ssl:`` listen string, built by quoted so that the
``[server] tls_*`` settings apply, with the memory and handshake choices BENCHMARKS.md
measures (wss-idle, storm).

Twisted's own ``ssl:`` parser builds ``CertificateOptions`` with its defaults: no session
tickets (every reconnect a full handshake) and OpenSSL's read and write buffers kept on
every idle connection. quoted reads the same endpoint arguments (``privateKey``,
``certKey``, ``extraCertChain``, ``dhParameters``, ``interface``, ``backlog``) and builds the
options itself:

- **protocols** from ``[server] tls_protocols`` (TLS 1.2 and 1.3 by default; 1.0 and 1.1
  are not offered at all);
- **ciphers** for TLS 1.2 from ``[server] tls_ciphers`` (forward-secret AEAD only by
  default; TLS 1.3's suites are all safe and left to OpenSSL);
- **session tickets** from ``[server] tls_session_tickets`` (on by default), so a reconnect
  storm after a deploy resumes instead of signing a full handshake per client (the ticket
  key lives in the process: a restart, or another instance, means one full handshake);
- ``SSL_MODE_RELEASE_BUFFERS``, always: OpenSSL frees a connection's 16 KB-plus read and
  write buffers while it is idle, which is most of a market-data connection's life.

Files are read when the listener starts (twistd's privileged start, as Twisted's own parser
does), never on the reactor afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, cast

from quoted.server.edge import endpoint_arguments

__all__ = [
    "DEFAULT_CIPHERS",
    "TLSProblem",
    "check_ciphers",
    "server_endpoint",
    "tls_options",
]

DEFAULT_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2's suites by default: ECDHE key exchange (forward secrecy), AEAD ciphers only."""

_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class TLSProblem(ValueError):
    """A TLS setting or file that cannot serve; ``str()`` is one line naming the setting."""


def check_ciphers(ciphers: str) -> None:
    """TLSProblem unless OpenSSL knows at least one cipher of ``ciphers``."""
    from OpenSSL import SSL  # noqa: PLC0415 (only a server that serves TLS loads OpenSSL)

    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise TLSProblem(f"[server] tls_ciphers: no cipher OpenSSL knows in {ciphers!r}") from None


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSProblem(f"[server] listen: {what} {path}: {e.strerror or e}") from None


def tls_options(
    endpoint_kw: dict[str, str],
    protocols: Sequence[str],
    ciphers: str,
    session_tickets: bool,
) -> Any:
    """``CertificateOptions`` for an ``ssl:`` endpoint's keyword arguments and the settings.

    TLSProblem (one line) for a file that cannot be read or does not hold what it should.
    """
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from OpenSSL import SSL  # noqa: PLC0415
    from twisted.internet import ssl  # noqa: PLC0415

    if "sslmethod" in endpoint_kw:
        raise TLSProblem(
            "[server] listen: sslmethod= is not read; [server] tls_protocols names the versions"
        )
    check_ciphers(ciphers)
    key_file = endpoint_kw.get("privateKey", "server.pem")
    cert_file = endpoint_kw.get("certKey", key_file)
    key_pem = _read(key_file, "privateKey=")
    cert_pem = _read(cert_file, "certKey=")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TLSProblem(f"[server] listen: certKey={cert_file}: no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise TLSProblem(
            f"[server] listen: privateKey={key_file}: no unencrypted PEM private key"
        ) from None
    # a certKey holding the whole chain (leaf first, as certbot's fullchain.pem): the rest is
    # sent after the leaf, before extraCertChain's
    chain = [x509.load_pem_x509_certificate(pem) for pem in _CERTIFICATE.findall(cert_pem)[1:]]
    if "extraCertChain" in endpoint_kw:
        path = endpoint_kw["extraCertChain"]
        found = _CERTIFICATE.findall(_read(path, "extraCertChain="))
        if not found:
            raise TLSProblem(f"[server] listen: extraCertChain={path}: no PEM certificate")
        chain += [x509.load_pem_x509_certificate(pem) for pem in found]
    dh = None
    if "dhParameters" in endpoint_kw:
        from twisted.python.filepath import FilePath  # noqa: PLC0415

        _read(endpoint_kw["dhParameters"], "dhParameters=")
        dh = ssl.DiffieHellmanParameters.fromFile(FilePath(endpoint_kw["dhParameters"]))
    versions = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
    # cryptography's objects, which pyOpenSSL prefers (its PKey is deprecated); Twisted's hints
    # still name pyOpenSSL's types, and Twisted hands them to pyOpenSSL unchanged
    options = ssl.CertificateOptions(
        privateKey=cast(Any, key),
        certificate=cast(Any, certificate),
        extraCertChain=cast(Any, chain or None),
        dhParameters=dh,
        raiseMinimumTo=versions[protocols[0]],
        lowerMaximumSecurityTo=versions[protocols[-1]],
        # TLS 1.3's suites are not set by a cipher list: OpenSSL's defaults (all AEAD)
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(
            "TLS13-AES-256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES-128-GCM-SHA256:"
            + ciphers
        ),
        enableSessionTickets=session_tickets,
    )
    context = options.getContext()  # made once and shared by every connection
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return options


def server_endpoint(
    reactor: Any,
    description: str,
    protocols: Sequence[str],
    ciphers: str,
    session_tickets: bool,
) -> Any:
    """The endpoint ``description`` names: quoted's own for ``ssl:`` (the settings applied),
    Twisted's ``serverFromString`` for every other type."""
    from twisted.internet.endpoints import (  # noqa: PLC0415
        SSL4ServerEndpoint,
        serverFromString,
    )

    kind, args, kw, _ = endpoint_arguments(description)
    if kind != "ssl":
        return serverFromString(reactor, description)
    port = int(args[0]) if args else int(kw.pop("port"))
    options = tls_options(kw, protocols, ciphers, session_tickets)
    return SSL4ServerEndpoint(
        reactor,
        port,
        options,
        backlog=int(kw.get("backlog", 50)),
        interface=kw.get("interface", ""),
    )
