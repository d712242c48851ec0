"""Native TLS: ``[server] listen = ssl:...`` serves wss and https (pyOpenSSL through Twisted's
ssl endpoint); clients verify the certificate against its own CA."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
from twisted.web.http_headers import Headers

from tests.certs import self_signed, tls_files
from tests.harness import QuotedServer, WSClient, make_config

ensure = pytest_twisted.ensureDeferred


async def tls_server() -> tuple[QuotedServer, bytes]:
    server = QuotedServer(make_config(tls=True, feed={"update_interval": 0.05, "mode": "all"}))
    await server.start()
    return server, tls_files().cert_pem


@ensure
async def test_wss_snapshot_and_https_rest() -> None:
    server, cert_pem = await tls_server()
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

        answer = await raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", tls=False)
        assert b"HTTP/1.1 200" not in answer
    finally:
        await server.stop()


@ensure
async def test_untrusted_certificate_is_refused() -> None:
    server, _ = await tls_server()
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
