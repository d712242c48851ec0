"""Certificates for tests: a self-signed one on demand, and the one certificate every
server started with ``make_config(tls=True)`` serves (written once per test process)."""

from __future__ import annotations

import atexit
import datetime
import functools
import ipaddress
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(name: str, ip: str | None = None) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``name`` (and ``ip``), and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(name)]
    if ip is not None:
        alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class TLSFiles(NamedTuple):
    key: Path
    cert: Path
    cert_pem: bytes


@functools.cache
def tls_files() -> TLSFiles:
    """A certificate for localhost and 127.0.0.1 and its key, in a directory of this process's
    own, removed when the process exits."""
    cert_pem, key_pem = self_signed("localhost", "127.0.0.1")
    where = Path(tempfile.mkdtemp(prefix="quoted-tests-tls-"))
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    (where / "key.pem").write_bytes(key_pem)
    (where / "cert.pem").write_bytes(cert_pem)
    return TLSFiles(where / "key.pem", where / "cert.pem", cert_pem)
