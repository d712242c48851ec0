"""Native TLS: ``[server] listen = ssl:...`` serves wss and https (pyOpenSSL through Twisted's
ssl endpoint); clients verify the certificate against its own CA."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
from twisted.web.http_headers import Headers

from tests.harness import QuotedServer, WSClient, make_config

ensure = pytest_twisted.ensureDeferred


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


async def tls_server(tmp_path: Path) -> tuple[QuotedServer, bytes]:
    cert_pem, key_pem = self_signed("localhost", "127.0.0.1")
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    config = make_config(feed={"update_interval": 0.05, "mode": "all"})
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen=listen))
    server = QuotedServer(config)
    await server.start()
    return server, cert_pem


@ensure
async def test_wss_snapshot_and_https_rest(tmp_path: Path) -> None:
    server, cert_pem = await tls_server(tmp_path)
    try:
        trust = ssl.Certificate.loadPEM(cert_pem)
        tls = ssl.optionsForClientTLS("localhost", trustRoot=trust)
        url = f"wss://localhost:{server.port}/ws/quotes?symbols=AAPL"
        factory = WebSocketClientFactory(
            url, headers={"Authorization": f"Bearer {server.token()}"}, reactor=reactor
        )
        factory.protocol = WSClient
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", server.port))
        client: WSClient = await (await endpoint.connect(factory)).opened
        snapshot = await client.wait_type("quotes_patch")
        assert snapshot["seq"] == 1 and "AAPL" in client.quotes()
        client.sendClose(1000)
        await client.closed

        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
        response: Any = await agent.request(
            b"GET",
            f"https://localhost:{server.port}/v1/quotes?symbols=AAPL".encode(),
            Headers({b"Authorization": [f"Bearer {server.token()}".encode()]}),
        )
        body = json.loads(await readBody(response))
        assert response.code == 200 and list(body["quotes"]) == ["AAPL"]

        # plain HTTP to the TLS port gets no answer in clear text
        from tests.harness import raw

        answer = await raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1 200" not in answer
    finally:
        await server.stop()


@ensure
async def test_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    server, _ = await tls_server(tmp_path)
    try:
        other, _ = self_signed("localhost")
        agent = Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(other)),
        )
        failed = False
        try:
            await agent.request(b"GET", f"https://localhost:{server.port}/healthz".encode())
        except Exception:
            failed = True
        assert failed
    finally:
        await server.stop()
