"""Reload: SIGHUP re-reads the configuration and applies what can change without a restart.

:meth:`Reloader.reload` reads the file again with :func:`~quoted.server.config.load_config`
(the same path, environment, ``--dev`` and ``--listen`` as at start), and the instruments
file with :func:`~quoted.server.instruments.load_instruments`. Everything new is built first
(the instruments, the token verifier): a file with any error is refused whole, with the
checker's own lines, and the running configuration is kept. Then :func:`plan` names what
changed, split into what changes live (:data:`FIXED` aside, every setting) and what needs a
restart; the live part is applied, the rest kept and named in one warning line.

Live, without dropping a client:

* ``[log]`` level and format (every observer quoted made, quoted.server.logs.reconfigure);
* ``[websocket]`` limits and timers, ``[server]`` allowed_origins, trusted_proxies,
  max_connections_per_ip and shutdown_timeout, ``[publish]`` limits: new handshakes, requests
  and messages see them; a connection open beyond a lowered limit stays open;
* ``[auth]`` token keys and claims checks (the secret file read again, the public key file,
  the JWKS URL): the one verifier every part holds adopts the new one;
* ``[feed]`` update_interval, oscillation_percent, mode (the simulator's next tick);
* the instruments (``instruments_file``, ``synthetic_symbols``): new symbols are served at
  their base price; a symbol no longer listed is retired: refused to new subscriptions and
  REST, and removed (a JSON Patch ``remove``, in sequence) from every connection holding it.
  A symbol kept whose description changed keeps the running one (named in the warning).

SIGHUP only schedules the reload on the reactor (:func:`install`), as buildbot's does.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from quoted.server import logs
from quoted.server.auth import TokenVerifier
from quoted.server.checks import check_config
from quoted.server.config import Config, ConfigError, load_config
from quoted.server.instruments import Instrument, InstrumentError, load_instruments
from quoted.server.jwks import KeySetService

if TYPE_CHECKING:
    from quoted.server.app import QuotedService

__all__ = ["FIXED", "Plan", "Reloader", "install", "plan"]

_log = Logger()

FIXED: frozenset[str] = frozenset(
    {
        "[server] listen",
        *(f"[server] tls_{key}" for key in ("protocols", "ciphers", "session_tickets")),
        "[feed] source",
        "[feed] replay_file",
        "[feed] replay_speed",
        "[feed] replay_loop",
        "[feed] stream",
        *(f"[history] {key}" for key in ("enabled", "ticks", "bars_1s", "bars_1m")),
        "[history] bars_5m",
        "[history] bars_1h",
        *(f"[redis] {key}" for key in ("enabled", "url", "prefix", "lease_ttl")),
    }
)
"""Settings a reload cannot change: the listening port and its TLS, the price source and its own
settings, the history's bounds, Redis. Also fixed: a plugin feed's ``[feed:NAME]`` section."""

_SIMULATOR = ("[feed] update_interval", "[feed] oscillation_percent", "[feed] mode")


def _sections(config: Config) -> list[str]:
    """Config's fields that are sections."""
    return [f.name for f in fields(config) if is_dataclass(getattr(config, f.name))]


def _key(f: Field[Any]) -> str:
    """A section field's key in the file (``secret`` is ``secret_file``)."""
    return getattr(f.metadata.get("quoted.setting"), "key", "") or f.name


def _names(config: Config) -> dict[str, Any]:
    """Every setting's ``[section] key`` and value."""
    out: dict[str, Any] = {}
    for section in _sections(config):
        part = getattr(config, section)
        for f in fields(part):
            out[f"[{section}] {_key(f)}"] = getattr(part, f.name)
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """What a reload changes: ``live`` is applied, ``fixed`` kept until a restart."""

    live: tuple[str, ...]
    fixed: tuple[str, ...]
    added: tuple[Instrument, ...] = ()
    retired: tuple[str, ...] = ()
    described: tuple[str, ...] = ()  # symbols kept whose description changed (kept as running)

    @property
    def changed(self) -> bool:
        return bool(self.live or self.fixed or self.added or self.retired or self.described)


def plan(
    old: Config,
    new: Config,
    running: Sequence[Instrument] = (),
    wanted: Sequence[Instrument] = (),
) -> Plan:
    """The settings that differ between ``old`` and ``new`` (names only, never values), and
    the instruments to add and retire to go from ``running`` to ``wanted``."""
    before, after = _names(old), _names(new)
    changed = [name for name in after if before[name] != after[name]]
    fixed = [name for name in changed if name in FIXED]
    if old.feed.source != "simulator":  # no oscillator to tell
        fixed += [name for name in changed if name in _SIMULATOR]
    if old.feed_options != new.feed_options:
        fixed.append(f"[feed:{old.feed.source}]")
    live = [name for name in changed if name not in fixed]
    have = {i.symbol: i for i in running}
    want = {i.symbol: i for i in wanted}
    return Plan(
        live=tuple(live),
        fixed=tuple(fixed),
        added=tuple(i for s, i in want.items() if s not in have),
        retired=tuple(s for s in have if s not in want),
        described=tuple(s for s, i in want.items() if s in have and have[s] != i),
    )


class Reloader:
    """Reloads ``service``'s configuration: the file ``path`` with ``dev`` and ``listen`` as
    given at start. ``secret`` is development mode's random secret, kept while no key is set."""

    def __init__(
        self,
        service: QuotedService,
        config: Config,
        reactor: Any,
        *,
        path: str | None,
        dev: bool,
        listen: str | None,
        secret: bytes | None = None,
        load: Callable[..., Config] = load_config,
    ) -> None:
        self.service = service
        self.config = config
        self.reactor = reactor
        self.path = path
        self.dev = dev
        self.listen = listen
        self.secret = secret
        self._load = load

    def reload(self) -> str:
        """Read and apply the configuration; the result counted: applied, unchanged, refused."""
        result = self._reload()
        self.service.parts.metrics.config_reloads.labels(result=result).inc()
        return result

    def _reload(self) -> str:
        parts = self.service.parts
        try:
            new = self._load(self.path, dev=self.dev, listen=self.listen)
            problems = check_config(new)  # the start's and python -m quoted.config's checks
            if problems:
                return self._refused(problems)
            wanted = load_instruments(new.feed.instruments_file, new.feed.synthetic_symbols)
            for inst in wanted:
                inst.validate()
        except (ConfigError, InstrumentError, ValueError) as e:
            return self._refused(str(e).splitlines())
        old = self.config
        running = [e.instrument for e in parts.store.entries]
        change = plan(old, new, running, wanted)
        keyset = parts.verifier.keyset
        verifier: TokenVerifier | None = None
        if any(name.startswith("[auth] ") for name in change.live):
            try:
                verifier = self._verifier(new, keyset)
            except ValueError as e:
                return self._refused([str(e)])
        for warning in new.warnings:
            _log.warn("configuration: {warning}", warning=warning, log_id="quoted.config.warning")
        self._apply(new, change, verifier)
        self.config = _keep_fixed(old, new, change)
        what = [*change.live]
        if change.added:
            what.append(f"instruments added: {', '.join(i.symbol for i in change.added)}")
        if change.retired:
            what.append(f"instruments retired: {', '.join(change.retired)}")
        if what:
            _log.info(
                "configuration reloaded: {changed}",
                changed="; ".join(what),
                log_id="quoted.reload.applied",
            )
        else:
            _log.info(
                "configuration reloaded: nothing changes live", log_id="quoted.reload.unchanged"
            )
        kept = [*change.fixed]
        if change.described:
            kept.append(f"instruments described anew: {', '.join(change.described)}")
        if kept:
            _log.warn(
                "configuration reload: a restart is needed to change {kept}; "
                "the running values are kept",
                kept=", ".join(kept),
                log_id="quoted.reload.kept",
            )
        return "applied" if what else "unchanged"

    def _refused(self, problems: list[str]) -> str:
        _log.error(
            "configuration reload refused, the running configuration is kept: {problems}",
            problems="; ".join(problems),
            log_id="quoted.reload.refused",
        )
        return "refused"

    def _verifier(self, new: Config, keyset: KeySetService | None) -> TokenVerifier:
        """The verifier of ``new``'s ``[auth]``, built (files read) before anything applies."""
        auth = new.auth
        secret = None
        if new.dev and auth.secret is None and not auth.public_key_file and not auth.jwks_url:
            secret = self.secret
        candidate = keyset
        if auth.jwks_url and candidate is None:
            candidate = KeySetService(self.reactor, auth.jwks_url)
        return TokenVerifier.from_config(auth, self.reactor, secret, candidate)

    def _apply(self, new: Config, change: Plan, verifier: TokenVerifier | None) -> None:
        service, parts = self.service, self.service.parts
        live = set(change.live)
        if live & {"[log] level", "[log] format"}:
            logs.reconfigure(new.log)
        ws = new.websocket
        parts.pool.reconfigure(ws)
        parts.factory.config = ws
        parts.hub.set_threshold(ws.circuit_breaker_threshold)
        service.shutdown_timeout = new.server.shutdown_timeout
        if parts.gate is not None:
            parts.gate.config = ws
            parts.gate.server = new.server
            if "[websocket] handshake_rate_per_ip" in live:
                parts.gate.limiter.set_rate(ws.handshake_rate_per_ip)
        if parts.site is not None:
            parts.site.max_body = new.publish.max_body
            peers = parts.site.peers
            peers.limit = new.server.max_connections_per_ip
            peers.trusted = new.server.trusted_proxies
        if parts.publish is not None:
            parts.publish.max_items = new.publish.max_items
        # how far ahead a published item's time may be: [auth] leeway, as at start (app.build)
        parts.sink.future_ms = int(new.auth.leeway * 1000)
        if parts.oscillator is not None and live.intersection(_SIMULATOR):
            f = new.feed
            parts.oscillator.set_tick(f.update_interval, f.oscillation_percent, f.mode)
        if verifier is not None:
            self._swap_keys(new, verifier)
        now_ms = int(self.reactor.seconds() * 1000)
        for inst in change.added:
            parts.store.add(inst, now_ms)
        retired = [e for e in map(parts.store.retire, change.retired) if e is not None]
        if retired:
            parts.hub.retire(retired)

    def _swap_keys(self, new: Config, verifier: TokenVerifier) -> None:
        service, current = self.service, self.service.parts.verifier
        old_set, new_set = current.keyset, verifier.keyset
        if new_set is not None and new_set is not old_set:
            new_set.setServiceParent(service)  # starts fetching now
        elif new_set is not None and new.auth.jwks_url != self.config.auth.jwks_url:
            new_set.set_url(new.auth.jwks_url)
        current.adopt(verifier)
        if old_set is not None and old_set is not new_set:
            old_set.disownServiceParent()


def _keep_fixed(old: Config, new: Config, change: Plan) -> Config:
    """``new``, but with the sections of the settings that need a restart as they run."""
    if not change.fixed:
        return new
    kept = {name.split("]")[0][1:] for name in change.fixed if not name.startswith("[feed:")}
    values: dict[str, Any] = {section: getattr(new, section) for section in _sections(new)}
    for section in kept:
        values[section] = _merge(getattr(old, section), getattr(new, section), section, change)
    return Config(
        **values,
        dev=new.dev,
        feed_options=old.feed_options,
        warnings=new.warnings,
    )


def _merge(old: Any, new: Any, section: str, change: Plan) -> Any:
    """``new``'s section with the fields named in ``change.fixed`` as in ``old``."""
    keep = {name.split("] ", 1)[1] for name in change.fixed if name.startswith(f"[{section}] ")}
    values = {}
    for f in fields(new):
        values[f.name] = getattr(old if _key(f) in keep else new, f.name)
    return type(new)(**values)


def install(reactor: Any, reloader: Reloader) -> None:
    """SIGHUP schedules :meth:`Reloader.reload` on the reactor (the handler does nothing else);
    the reactor's own handlers do not touch SIGHUP."""
    threads: Any = reactor

    def later(signum: int, frame: object) -> None:
        threads.callFromThread(_safely, reloader)

    signal.signal(signal.SIGHUP, later)


def _safely(reloader: Reloader) -> None:
    try:
        reloader.reload()
    except Exception:
        _log.failure("configuration reload failed", log_id="quoted.reload.failed")
        reloader.service.parts.metrics.config_reloads.labels(result="failed").inc()
