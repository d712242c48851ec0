"""twistd entry point: ``twistd quoted [--config PATH] [--dev] [--listen ENDPOINT]``.

With or without ``--logger=quoted.logs.observer``, twistd logs through quoted's observer
(:class:`LoggedRoot`): every line redacted, control characters escaped, ``[log]`` honoured.
"""

from __future__ import annotations

import secrets
import signal
import sys
from collections.abc import Sequence
from typing import IO, Any, NoReturn

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from quoted import __version__
from quoted.server import logs, reload
from quoted.server.app import build
from quoted.server.checks import EXIT_REFUSED, load_and_check
from quoted.server.config import DEFAULT_CONFIG_PATH
from quoted.server.edge import clear_exit_signal
from quoted.server.instruments import InstrumentError
from quoted.server.listener import Listener, ListenError
from quoted.wire.tokens import mint_token

DEMO_TTL = 24 * 3600
_log = Logger()
DEMO_SYMBOLS = "AAPL,GOOGL"


class Options(usage.Options):
    synopsis = "[--config PATH] [--dev] [--listen ENDPOINT]"
    longdesc = (
        "quoted: real-time quotes over WebSocket as RFC 6902 JSON Patch. "
        "Settings come from the INI file, then QUOTED_<SECTION>_<KEY> environment variables."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            f"the configuration file [default: {DEFAULT_CONFIG_PATH}, if present]",
        ],
        ["listen", "l", None, "a Twisted server endpoint; overrides [server] listen"],
    ]
    optFlags = [
        ["dev", None, "development mode: a random token secret and a printed demo token"],
    ]

    def opt_version(self) -> None:
        """Print quoted's version and exit (``twistd --version`` prints Twisted's)."""
        print(f"quoted {__version__}")
        sys.exit(0)


def http_base(listen: str) -> str:
    """A URL for the banner from a tcp:/ssl: endpoint string (best effort)."""
    parts = listen.split(":")
    kind = parts[0]
    port = next((p for p in parts[1:] if p.isdigit()), "8080")
    host = next((p.split("=", 1)[1] for p in parts if p.startswith("interface=")), "localhost")
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}"


def dev_banner(secret: bytes, listen: str, now: float, publish: bool = False) -> str:
    """The development-mode banner; with ``publish`` ([feed] source = publish) also a
    publisher token (scope quotes:publish) and a curl line posting a price."""
    token = mint_token(secret, "demo", now=now, ttl=DEMO_TTL)
    base = http_base(listen)
    ws = base.replace("http", "ws", 1)
    publisher = ""
    if publish:
        pub = mint_token(secret, "demo-feed", now=now, ttl=DEMO_TTL, scope="quotes:publish")
        publisher = (
            f'\nPublisher token (sub "demo-feed", scope quotes:publish, valid 24h):\n  {pub}\n\n'
            f"Publish:\n  curl -H 'Authorization: Bearer {pub}' "
            "-H 'Content-Type: application/json' "
            f"""'{base}/v1/quotes' -d '{{"quotes":[{{"symbol":"AAPL","price":151.25}}]}}'\n"""
        )
    return (
        "quoted development mode: no token key is configured, so tokens are signed\n"
        "with a random secret that lives as long as this process.\n\n"
        f'Demo token (sub "demo", valid 24h):\n  {token}\n\n'
        f"WebSocket:\n  {ws}/ws/quotes?symbols={DEMO_SYMBOLS}&token={token}\n\n"
        f"Browser board:\n  {base}/?token={token}\n\n"
        f"REST:\n  curl -H 'Authorization: Bearer {token}' "
        f"'{base}/v1/quotes?symbols={DEMO_SYMBOLS}'\n"
        f"{publisher}"
    )


def refuse(lines: Sequence[str], stderr: IO[str] | None = None) -> NoReturn:
    """End a start that cannot succeed: each line on stderr (the terminal's or journald's, not
    the log), exit status 1 (EXIT_REFUSED), no traceback."""
    out = sys.stderr if stderr is None else stderr
    for line in lines:
        out.write(f"{line}\n")
    out.flush()
    raise SystemExit(EXIT_REFUSED)


class LoggedRoot(MultiService):
    """The service twistd runs: quoted's, under a root that makes twistd log through quoted's
    observer (redaction, control characters escaped, ``[log]`` level and format) when it is
    started without ``--logger``.

    twistd consults its application's ``ILogObserver`` component when no ``--logger`` is
    given (twisted.application.app.AppLogger.start, the way a .tac file customises logging);
    a plugin never sees the application, but its service is given it as its parent.

    twistd opens the port in ``privilegedStartService``, after its logging has begun and
    before the reactor runs; a port that cannot be opened (:class:`ListenError`) ends the
    start there with its one line on the stderr twistd was started with.
    """

    def __init__(self, service: IService, observer: ILogObserver | None) -> None:
        super().__init__()
        self.observer = observer
        self.stderr = sys.stderr  # before twistd's logging replaces sys.stderr
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if (
            self.observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            refuse([str(e)], self.stderr)


def twistd_options(options: Any) -> dict[str, Any]:
    """twistd's own options (``--logfile``, ``--nodaemon``, ``--syslog``, ``--logger``): the
    parent of the plugin's (usage.Options sets it); empty when the plugin is used alone."""
    parent = getattr(options, "parent", None)
    return dict(parent) if parent is not None else {}


def makeService(options: dict[str, Any]) -> IService:
    from twisted.internet import reactor  # noqa: PLC0415 (the one place that touches the global reactor)

    config, problems = load_and_check(
        options["config"], dev=bool(options["dev"]), listen=options["listen"]
    )
    if problems or config is None:  # the lines of python -m quoted.config, and its status
        refuse(problems)
    logs.configure(config.log)
    twistd = twistd_options(options)
    if twistd.get("syslog") and not twistd.get("logger"):
        raise SystemExit(
            "quoted: --syslog is not supported: quoted writes its own (redacted) lines to "
            "stdout (journald) or --logfile"
        )
    observer = None
    if not twistd.get("logger"):  # else twistd calls that factory (quoted.logs.observer)
        observer = logs.twistd_observer(
            config.log, str(twistd.get("logfile") or ""), bool(twistd.get("nodaemon", True))
        )
    for warning in config.warnings:
        _log.warn("configuration: {warning}", warning=warning, log_id="quoted.config.warning")
    secret = None
    auth = config.auth
    if config.dev and auth.secret is None and not auth.public_key_file and not auth.jwks_url:
        secret = secrets.token_bytes(32)
    # twistd re-raises the signal that stopped it, so a clean SIGTERM would end
    # the process "killed by signal 15"; after an orderly drain we exit 0
    reactor.addSystemEventTrigger("after", "shutdown", clear_exit_signal, reactor)
    # the listener opens while twistd starts the services, before the reactor
    # installs its own signal handlers: a SIGTERM in that window must still be a
    # clean stop, not the default death by signal
    threads: Any = reactor
    signal.signal(signal.SIGTERM, lambda signum, frame: threads.callFromThread(reactor.stop))
    try:
        service = build(config, reactor, secret=secret)
    except (InstrumentError, ValueError, OSError) as e:
        refuse([str(e)])
    # SIGHUP: read the same file again, apply what can change live (quoted.server.reload)
    reload.install(
        reactor,
        reload.Reloader(
            service,
            config,
            reactor,
            path=options["config"],
            dev=bool(options["dev"]),
            listen=options["listen"],
            secret=secret,
        ),
    )
    if secret is not None:
        # once the port listens (a start that fails prints no token for nothing), straight
        # to the terminal twistd was started from (sys.stdout now: later, twistd's logging
        # replaces it), never into the logs
        terminal = sys.stdout
        publish = config.feed.source == "publish"
        listen = config.server.listen

        key = secret

        def show(port: object) -> None:
            terminal.write(dev_banner(key, listen, reactor.seconds(), publish))
            terminal.flush()

        listener = service.getServiceNamed("listener")
        assert isinstance(listener, Listener)
        listener.listening().addCallbacks(show, lambda failure: None)  # its own line: above
    return LoggedRoot(service, observer)
