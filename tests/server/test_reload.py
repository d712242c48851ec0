"""Reload (quoted.server.reload): the plan of a new configuration, and what applying it sets.

In-process, on a MemoryReactorClock: the service is built, not started (no port). The
process-level tests (SIGHUP to a real twistd) are in test_reload_process.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import jsonpatch
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent, globalLogPublisher

from quoted.server import logs
from quoted.server.app import QuotedService, build
from quoted.server.auth import TokenError
from quoted.server.config import Config, ConfigError, LogConfig, settings_table
from quoted.server.instruments import builtin_instruments
from quoted.server.reload import FIXED, Reloader, plan
from quoted.wire.tokens import mint_token
from tests.harness import SECRET, make_config

T0 = 1_796_000_000.0


class Conn:
    """A hub connection that records its messages."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []

    def send_patch(self, payload: bytes) -> int:
        self.raw.append(payload)
        return len(payload) + 2

    def slow_consumer(self) -> None:
        pass

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for p in self.raw:
            doc = jsonpatch.apply_patch(doc, json.loads(p)["operations"])
        return doc


class Events:
    """The events quoted logs while the test runs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def ids(self) -> list[str]:
        return [e.get("log_id", "") for e in self.events]

    def text(self, log_id: str) -> str:
        return "\n".join(formatEvent(e) for e in self.events if e.get("log_id") == log_id)


@pytest.fixture
def events() -> Any:
    seen = Events()
    globalLogPublisher.addObserver(seen)
    yield seen
    globalLogPublisher.removeObserver(seen)


def world(config: Config) -> tuple[QuotedService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    reactor.advance(T0)
    return build(config, reactor, manage_gc=False), reactor


def reloader(
    service: QuotedService, config: Config, reactor: Any, *new: Config | Exception
) -> Reloader:
    """A reloader whose loads return ``new`` in turn (or raise it)."""
    queue = list(new)

    def load(path: str | None, **kw: Any) -> Config:
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return Reloader(service, config, reactor, path=None, dev=False, listen=None, load=load)


def reloads(service: QuotedService) -> dict[str, float]:
    out = {}
    for metric in service.parts.metrics.config_reloads.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                out[s.labels["result"]] = s.value
    return out


# -- the plan ---------------------------------------------------------------------------------


def test_plan_names_live_and_fixed_settings_never_values() -> None:
    old = make_config()
    new = make_config(
        websocket={"max_symbols": 3},
        server={"listen": "tcp:9999", "allowed_origins": ("https://a.example",)},
        redis={"url": "redis://user:hunter2@db/0"},
        auth={"secret": b"another-secret-of-32-bytes-long-xx"},
    )
    p = plan(old, new)
    assert set(p.live) == {
        "[websocket] max_symbols",
        "[server] allowed_origins",
        "[auth] secret_file",
    }
    assert set(p.fixed) == {"[server] listen", "[redis] url"}
    assert "hunter2" not in repr(p) and "another-secret" not in repr(p)


def test_plan_of_the_same_config_changes_nothing() -> None:
    assert not plan(
        make_config(), make_config(), builtin_instruments(), builtin_instruments()
    ).changed


def test_plan_instruments_added_retired_and_described_anew() -> None:
    running = builtin_instruments()
    wanted = [i for i in running if i.symbol != "AAPL"]
    wanted[0] = dataclasses.replace(wanted[0], name="Renamed")
    extra = dataclasses.replace(running[0], symbol="ZZZZ")
    p = plan(make_config(), make_config(), running, [*wanted, extra])
    assert p.retired == ("AAPL",)
    assert [i.symbol for i in p.added] == ["ZZZZ"]
    assert p.described == (wanted[0].symbol,)


def test_simulator_settings_are_fixed_under_another_source() -> None:
    old = make_config(feed={"source": "publish"})
    new = make_config(feed={"source": "publish", "update_interval": 1.0})
    assert plan(old, new).fixed == ("[feed] update_interval",)


def test_every_fixed_name_is_a_setting() -> None:
    names = {f"[{section}] {key}" for section, key, _, _ in settings_table()}
    assert names >= FIXED


# -- applying ---------------------------------------------------------------------------------


def test_limits_apply_to_the_running_parts(events: Events) -> None:
    old = make_config()
    service, reactor = world(old)
    new = make_config(
        websocket={
            "max_symbols": 3,
            "max_connections": 7,
            "circuit_breaker_threshold": 9,
            "message_rate": 2.0,
            "handshake_rate_per_ip": 1.0,
        },
        server={
            "allowed_origins": ("https://a.example",),
            "max_connections_per_ip": 4,
            "shutdown_timeout": 1.0,
        },
        publish={"max_body": 4096},
        auth={"leeway": 5.0},
    )
    r = reloader(service, old, reactor, new)
    assert r.reload() == "applied"
    parts = service.parts
    assert parts.sink.future_ms == 5000  # a published item's time: at most the new leeway ahead
    assert parts.factory.config.max_symbols == 3
    assert parts.gate is not None and parts.gate.config.max_symbols == 3
    assert parts.gate.server.allowed_origins == ("https://a.example",)
    assert parts.pool._config.max_connections == 7
    assert parts.hub._threshold == 9
    assert parts.gate.limiter._rate == 1.0
    assert parts.site is not None and parts.site.max_body == 4096
    assert parts.site.peers.limit == 4
    assert service.shutdown_timeout == 1.0
    line = events.text("quoted.reload.applied")
    assert "[websocket] max_symbols" in line and "[publish] max_body" in line
    assert reloads(service) == {"applied": 1.0}
    assert r.config == new


def test_the_same_file_is_unchanged_and_counted(events: Events) -> None:
    old = make_config()
    service, reactor = world(old)
    assert reloader(service, old, reactor, make_config()).reload() == "unchanged"
    assert "quoted.reload.unchanged" in events.ids()
    assert reloads(service) == {"unchanged": 1.0}


def test_a_bad_file_is_refused_whole_with_the_checkers_lines(events: Events) -> None:
    old = make_config()
    service, reactor = world(old)
    error = ConfigError(
        [
            "[websocket] max_symbols = 'lots': not an integer; accepted: 1..10000",
            "[redis] nope: unknown key",
        ]
    )
    r = reloader(service, old, reactor, error)
    assert r.reload() == "refused"
    assert r.config is old
    line = events.text("quoted.reload.refused")
    assert "[websocket] max_symbols = 'lots'" in line and "[redis] nope: unknown key" in line
    assert "kept" in line
    assert reloads(service) == {"refused": 1.0}


def test_an_unreadable_instruments_file_is_refused(tmp_path: Path, events: Events) -> None:
    old = make_config()
    service, reactor = world(old)
    bad = tmp_path / "i.csv"
    bad.write_text("symbol,name\nAAPL\n")
    r = reloader(service, old, reactor, make_config(feed={"instruments_file": str(bad)}))
    assert r.reload() == "refused"
    assert len(service.parts.store) == len(builtin_instruments())
    assert "quoted.reload.refused" in events.ids()


def test_a_fixed_setting_is_named_in_one_warning_and_kept(events: Events) -> None:
    old = make_config()
    service, reactor = world(old)
    new = make_config(
        server={"listen": "tcp:9999"}, redis={"prefix": "other:"}, websocket={"max_symbols": 5}
    )
    r = reloader(service, old, reactor, new)
    assert r.reload() == "applied"
    kept = [e for e in events.events if e.get("log_id") == "quoted.reload.kept"]
    assert len(kept) == 1
    assert "[server] listen" in events.text("quoted.reload.kept")
    assert "[redis] prefix" in events.text("quoted.reload.kept")
    assert r.config.server.listen == old.server.listen  # the running value
    assert r.config.redis.prefix == old.redis.prefix
    assert r.config.websocket.max_symbols == 5
    # a second reload of the same file changes nothing live, and warns again
    r2 = reloader(service, r.config, reactor, new)
    assert r2.reload() == "unchanged"
    assert events.ids().count("quoted.reload.kept") == 2


def test_feed_tick_changes_the_oscillator() -> None:
    old = make_config()
    service, reactor = world(old)
    osc = service.parts.oscillator
    assert osc is not None
    new = make_config(feed={"update_interval": 0.5, "oscillation_percent": 3.0, "mode": "all"})
    assert reloader(service, old, reactor, new).reload() == "applied"
    assert (osc._interval, osc.step, osc._fraction, osc._mode) == (0.5, 0.5, 3.0, "all")


def test_token_secret_swapped_in_the_verifier_every_part_holds() -> None:
    old = make_config()
    service, reactor = world(old)
    verifier = service.parts.verifier
    other = b"a-different-secret-at-least-32-bytes!!"
    new = make_config(auth={"secret": other})
    assert reloader(service, old, reactor, new).reload() == "applied"
    assert service.parts.gate is not None and service.parts.gate.verifier is verifier
    now = reactor.seconds()
    assert verifier.verify(mint_token(other, "u", now=now, ttl=60)).subject == "u"
    with pytest.raises(TokenError):
        verifier.verify(mint_token(SECRET, "u", now=now, ttl=60))


def test_an_unreadable_public_key_is_refused_and_the_secret_kept(tmp_path: Path) -> None:
    old = make_config()
    service, reactor = world(old)
    pem = tmp_path / "key.pem"
    pem.write_text("not a key")
    new = make_config(auth={"secret": None, "public_key_file": str(pem)})
    assert reloader(service, old, reactor, new).reload() == "refused"
    now = reactor.seconds()
    assert service.parts.verifier.verify(mint_token(SECRET, "u", now=now, ttl=60))


def test_instruments_added_and_retired_consistently(tmp_path: Path, events: Events) -> None:
    old = make_config()
    service, reactor = world(old)
    parts = service.parts
    conn = Conn()
    sub = parts.hub.open(conn)
    aapl, msft = parts.store.lookup("AAPL"), parts.store.lookup("MSFT")
    assert aapl is not None and msft is not None
    parts.hub.snapshot(sub, [aapl, msft], [], [])
    assert set(conn.document()["quotes"]) == {"AAPL", "MSFT"}
    csv = tmp_path / "i.csv"
    rows = [i for i in builtin_instruments() if i.symbol != "AAPL"]
    lines = ["symbol,name,type,base_price,volume,market_cap"]
    lines += [
        f'{i.symbol},"{i.name}",{i.type},{i.base_price},{i.volume},{i.market_cap}' for i in rows
    ]
    lines.append("NEWCO,New Company,stock,12.5,1000,0")
    csv.write_text("\n".join(lines) + "\n")
    new = make_config(feed={"instruments_file": str(csv)})
    assert reloader(service, old, reactor, new).reload() == "applied", events.text(
        "quoted.reload.refused"
    )
    assert parts.store.lookup("AAPL") is None
    assert parts.store.lookup("NEWCO") is not None
    assert "AAPL" not in {e.symbol for e in parts.store.entries}
    # the connection got AAPL's remove, in sequence, and keeps MSFT
    assert set(conn.document()["quotes"]) == {"MSFT"}
    seqs = [json.loads(p)["seq"] for p in conn.raw]
    assert seqs == [1, 2]
    line = events.text("quoted.reload.applied")
    assert "instruments added: NEWCO" in line and "instruments retired: AAPL" in line


def test_log_level_and_format_change_every_observer() -> None:
    stream = io.StringIO()
    observer = logs.make_observer(stream, level="info")
    log = Logger(observer=observer)
    log.debug("hidden")
    logs.reconfigure(LogConfig(level="debug", format="json"))
    try:
        log.debug("shown")
    finally:
        logs.reconfigure(LogConfig(level="info", format="text"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["level"] == "debug"


def test_public_key_file_swapped_for_the_secret(tmp_path: Path) -> None:
    old = make_config()
    service, reactor = world(old)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    new = make_config(auth={"secret": None, "public_key_file": str(pem)})
    assert reloader(service, old, reactor, new).reload() == "applied"
    now = reactor.seconds()
    token = jwt.encode({"sub": "k", "iat": int(now), "exp": int(now) + 60}, private, "EdDSA")
    assert service.parts.verifier.verify(token).subject == "k"
    with pytest.raises(TokenError):
        service.parts.verifier.verify(mint_token(SECRET, "u", now=now, ttl=60))


def test_jwks_url_starts_a_key_set_and_a_secret_again_stops_it() -> None:
    old = make_config()
    service, reactor = world(old)
    verifier = service.parts.verifier
    with_set = make_config(auth={"secret": None, "jwks_url": "https://idp.example/jwks.json"})
    r = reloader(service, old, reactor, with_set, old)
    assert r.reload() == "applied"
    keyset = verifier.keyset
    assert keyset is not None and keyset.parent is service
    assert not verifier.ready  # nothing fetched: tokens are refused until the set loads
    assert r.reload() == "applied"
    assert verifier.keyset is None and keyset.parent is None
    assert verifier.verify(mint_token(SECRET, "u", now=reactor.seconds(), ttl=60))
