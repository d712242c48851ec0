"""Feed plugins: found in a plugin folder on the path, chosen by [feed] source, refused when
they cannot be used; the example plugin (examples/ndjson_tcp) over real sockets in a real
quoted, and its flow control in memory.

Each test that installs a plugin copies its folder under tmp_path and puts it on sys.path and
twisted.plugins.__path__ (what pluginPackagePaths gives at import), so Twisted's dropin.cache
is written there; both paths and the imported modules are restored after.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.plugin import pluginPackagePaths

import twisted.plugins
from quoted.server.app import build
from quoted.server.config import Config, ConfigError, load_config
from quoted.server.feeds.plugins import FeedOptionError, installed_feeds
from quoted.server.feeds.sink import BrokerUnavailable, PublishResult, Rejected
from tests.harness import SECRET, QuotedServer, eventually

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ndjson_tcp"
ENV = {"JWT_SECRET": SECRET.decode()}
LISTEN = "tcp:0:interface=127.0.0.1"

# a plugin module of the tests' own: NAME and MAKE are replaced
FAKE = """
from twisted.application.service import Service
from twisted.plugin import IPlugin
from zope.interface import implementer
from quoted.server.feeds.plugins import IFeedMaker

@implementer(IPlugin, IFeedMaker)
class Maker:
    name = NAME
    description = "a test feed"

    def makeFeed(self, options, sink, reactor):
        return MAKE

maker = Maker()
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``plugins()`` installs a copy of the example; ``plugins(name=..., make=...)`` a test
    plugin; each call a new folder on the path. Everything is undone after the test."""
    before = set(sys.modules)
    folders: list[Path] = []

    def install(name: str | None = None, make: str = "Service()") -> Path:
        root = tmp_path / f"path{len(folders)}"
        if name is None:
            shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", "*.cache"))
        else:
            (root / "twisted" / "plugins").mkdir(parents=True)
            code = FAKE.replace("NAME", repr(name)).replace("MAKE", make)
            (root / "twisted" / "plugins" / f"test_feed_{len(folders)}.py").write_text(code)
        folders.append(root)
        monkeypatch.syspath_prepend(str(root))
        extra = [p for p in pluginPackagePaths(twisted.plugins.__name__) if p.startswith(str(root))]
        monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, *extra])
        return root

    yield install
    for name in set(sys.modules) - before:  # the plugin modules and the feed's
        module = sys.modules.pop(name)
        if any(str(getattr(module, "__file__", "")).startswith(str(f)) for f in folders):
            if name.startswith("twisted.plugins."):
                vars(twisted.plugins).pop(name.rpartition(".")[2], None)
        else:
            sys.modules[name] = module


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "quoted.conf"
    path.write_text(text)
    return str(path)


def plugin_config(tmp_path: Path, **options: str) -> Config:
    lines = "".join(f"{k} = {v}\n" for k, v in {"listen": LISTEN, **options}.items())
    text = f"[feed]\nsource = ndjson_tcp\n\n[feed:ndjson_tcp]\n{lines}"
    return load_config(write_config(tmp_path, text), ENV, listen=LISTEN)


# -- finding and choosing -----------------------------------------------------------------------


def test_the_example_is_found_on_the_path(plugins: Callable[..., Path]) -> None:
    assert "ndjson_tcp" not in installed_feeds()
    root = plugins()
    assert not (root / "twisted" / "__init__.py").exists()
    assert not (root / "twisted" / "plugins" / "__init__.py").exists()
    maker = installed_feeds()["ndjson_tcp"]
    assert maker.name == "ndjson_tcp" and maker.description
    assert "ndjson_tcp" not in sys.modules  # the scan imports the plugin, not the feed
    assert (root / "twisted" / "plugins" / "dropin.cache").exists()  # written here


def test_config_accepts_the_plugin_only_when_installed(
    plugins: Callable[..., Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as e:
        plugin_config(tmp_path)
    assert "[feed] source = 'ndjson_tcp': no such source" in str(e.value)
    assert "installed plugin feeds: none" in str(e.value)
    plugins(name="other_feed")
    with pytest.raises(ConfigError) as e:
        plugin_config(tmp_path)
    assert "installed plugin feeds: other_feed" in str(e.value)
    plugins()
    config = plugin_config(tmp_path, max_line="100")
    assert config.feed.source == "ndjson_tcp"
    assert dict(config.feed_options) == {"listen": LISTEN, "max_line": "100"}


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"listen": ""}, "listen: required"),
        ({"listen": "tcp:port"}, "listen: 'tcp:port' is not a server endpoint string"),
        ({"listen": "nosuch:1"}, "listen: 'nosuch:1' is not a server endpoint string"),
        ({"max_line": "64k"}, "max_line: '64k' is not an integer"),
        ({"max_line": "0"}, "max_line: 0 is out of range"),
        ({"max_clients": "100000"}, "max_clients: 100000 is out of range"),
        ({"max_lines": "10"}, "max_lines: unknown option; accepted: listen, max_line"),
    ],
)
def test_a_bad_option_stops_the_build_naming_it(
    plugins: Callable[..., Path], tmp_path: Path, options: dict[str, str], problem: str
) -> None:
    plugins()
    config = plugin_config(tmp_path, **options)
    with pytest.raises(ValueError) as e:
        build(config, reactor, manage_gc=False)
    assert str(e.value).startswith(f"[feed:ndjson_tcp] {problem}")


def test_make_feed_raises_feed_option_error(plugins: Callable[..., Path]) -> None:
    plugins()
    with pytest.raises(FeedOptionError) as e:
        installed_feeds()["ndjson_tcp"].makeFeed({"listen": LISTEN, "x": "1"}, None, reactor)
    assert e.value.key == "x"


def test_a_feed_that_is_no_service_is_refused(plugins: Callable[..., Path], tmp_path: Path) -> None:
    plugins(name="lazy", make="object()")
    config = load_config(write_config(tmp_path, "[feed]\nsource = lazy\n"), ENV, listen=LISTEN)
    with pytest.raises(ValueError, match=r"feed plugin lazy: makeFeed returned .*not an IService"):
        build(config, reactor, manage_gc=False)


def test_two_plugins_of_one_name_are_refused(plugins: Callable[..., Path], tmp_path: Path) -> None:
    plugins(name="twin")
    plugins(name="twin")
    with pytest.raises(ValueError, match="two feed plugins are named 'twin'"):
        installed_feeds()
    with pytest.raises(ConfigError, match="two feed plugins are named 'twin'"):
        load_config(write_config(tmp_path, "[feed]\nsource = twin\n"), ENV, listen=LISTEN)


def test_a_plugin_named_like_a_built_in_is_refused(
    plugins: Callable[..., Path], tmp_path: Path
) -> None:
    plugins(name="replay")
    plugins()
    with pytest.raises(ValueError, match="is named 'replay', like a built-in source"):
        installed_feeds()
    with pytest.raises(ConfigError, match="like a built-in source"):
        plugin_config(tmp_path)


# -- the example in a running quoted ------------------------------------------------------------


class Producer(Protocol):
    """A feed's producer: writes lines, keeps what it is answered, notes the close."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def send(self, *items: object) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"".join(i if isinstance(i, bytes) else json.dumps(i).encode() + b"\n" for i in items)
        )

    def answers(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.received.splitlines()]


@pytest_twisted.async_yield_fixture
async def quoted(
    plugins: Callable[..., Path], tmp_path: Path, start_config: Callable[..., Any]
) -> AsyncIterator[Any]:
    """``await quoted(**options)``: a started quoted fed by the example; stopped after."""
    plugins()

    async def start(**options: str) -> QuotedServer:
        server: QuotedServer = await start_config(plugin_config(tmp_path, **options))
        return server

    yield start


def feed_port(server: QuotedServer) -> int:
    port = server.parts.feed.port
    assert port is not None
    return int(port.getHost().port)


async def produce(server: QuotedServer) -> Producer:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", feed_port(server))
    return await connectProtocol(endpoint, Producer())


def price(client: Any, symbol: str) -> float | None:
    return client.quotes().get(symbol, {}).get("current_price")  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_lines_reach_rest_and_subscribers(quoted: Any) -> None:
    server = await quoted()
    assert server.parts.oscillator is None
    ws = await server.connect("symbols=AAPL,MSFT")
    await ws.wait_type("quotes_patch")
    producer = await produce(server)
    producer.send(
        {"symbol": "AAPL", "price": 151.25, "volume": 1200},
        {"symbol": "msft", "price": 401.5, "reference_price": 400},
    )
    await eventually(lambda: price(ws, "AAPL") == 151.25 and price(ws, "MSFT") == 401.5)
    rest = await server.rest_quotes(["AAPL", "MSFT"])
    assert rest == ws.quotes()
    assert rest["AAPL"]["volume"] == 1200
    assert rest["MSFT"]["base_price"] == 400 and rest["MSFT"]["change"] == 1.5
    assert producer.received == b""  # accepted lines are not answered
    assert ws.seqs == list(range(1, len(ws.seqs) + 1))


@pytest_twisted.ensureDeferred
async def test_bad_lines_answered_with_their_code_good_ones_applied(quoted: Any) -> None:
    server = await quoted()
    ws = await server.connect("symbols=AAPL,MSFT")
    await ws.wait_type("quotes_patch")
    producer = await produce(server)
    producer.send(
        {"symbol": "AAPL", "price": 152},
        {"symbol": "NOPE", "price": 1},
        b"{not json\n",
        {"symbol": "MSFT", "price": -3},
        b"\r\n",  # blank: skipped, but counted
        {"symbol": "MSFT", "price": 402, "colour": "red"},
        {"symbol": "MSFT", "price": 403},
    )
    await eventually(lambda: len(producer.answers()) == 4)
    assert [(a["index"], a["code"]) for a in producer.answers()] == [
        (1, "unknown_symbol"),
        (2, "bad_item"),
        (3, "bad_price"),
        (5, "bad_item"),
    ]
    assert producer.answers()[1]["message"].startswith("the line is not JSON")
    assert producer.answers()[0]["symbol"] == "NOPE"
    await eventually(lambda: price(ws, "AAPL") == 152 and price(ws, "MSFT") == 403)
    # the next batch's index goes on counting the connection's lines
    producer.send({"symbol": "AAPL", "price": 151, "time": "2000-01-01T00:00:00Z"})
    await eventually(lambda: len(producer.answers()) == 5)
    assert producer.answers()[4]["index"] == 7 and producer.answers()[4]["code"] == "stale"
    assert (await server.rest_quotes(["AAPL"]))["AAPL"]["current_price"] == 152


@pytest_twisted.ensureDeferred
async def test_an_over_long_line_closes_that_connection(quoted: Any) -> None:
    server = await quoted(max_line="1024")
    ws = await server.connect("symbols=AAPL,TSLA")
    await ws.wait_type("quotes_patch")
    calm = await produce(server)
    producer = await produce(server)
    producer.send({"symbol": "AAPL", "price": 160}, {"symbol": "NOPE", "price": 1})
    producer.send(b'{"symbol": "AAPL", "price": 1' + b" " * 2000 + b"}\n")
    await producer.closed
    answers = producer.answers()
    assert [a["code"] for a in answers] == ["unknown_symbol", "line_too_long"]
    assert answers[1]["message"] == "a line is longer than 1024 bytes (max_line); closing"
    await eventually(lambda: price(ws, "AAPL") == 160)
    # an unfinished line over the limit too, and other connections are not touched
    unfinished = await produce(server)
    unfinished.send(b"x" * 1500)
    await unfinished.closed
    assert [a["code"] for a in unfinished.answers()] == ["line_too_long"]
    calm.send({"symbol": "TSLA", "price": 251})
    await eventually(lambda: price(ws, "TSLA") == 251)
    assert not calm.closed.called


@pytest_twisted.ensureDeferred
async def test_max_clients(quoted: Any) -> None:
    server = await quoted(max_clients="1")
    first = await produce(server)
    second = await produce(server)
    await second.closed
    assert second.answers()[0]["code"] == "too_many_clients"
    first.transport.loseConnection()  # type: ignore[union-attr]
    await first.closed
    await eventually(lambda: not server.parts.feed.factory.connections)
    third = await produce(server)
    third.send({"symbol": "AAPL", "price": 170})
    await eventually(lambda: server.parts.store.lookup("AAPL").latest.current_price == 170)
    assert not third.closed.called


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_port_and_every_connection(quoted: Any) -> None:
    server = await quoted()
    port = feed_port(server)
    producer = await produce(server)
    factory = server.parts.feed.factory
    await eventually(lambda: len(factory.connections) == 1)
    await server.stop()
    assert not factory.connections  # the stop waited for the connection to go
    await producer.closed.addTimeout(5, reactor)
    with pytest.raises(ConnectionRefusedError):
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Producer())


# -- flow control, in memory --------------------------------------------------------------------


class SlowSink:
    """A sink that answers when told (as a Redis-backed one does)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[object], defer.Deferred[PublishResult]]] = []

    def publish(self, items: list[object], **_: Any) -> defer.Deferred[PublishResult]:
        d: defer.Deferred[PublishResult] = defer.Deferred()
        self.calls.append((list(items), d))
        return d


def connection(plugins: Callable[..., Path], sink: Any, **options: str) -> Any:
    plugins()
    feed = installed_feeds()["ndjson_tcp"].makeFeed({"listen": LISTEN, **options}, sink, reactor)
    proto = feed.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_one_batch_at_a_time_and_answers_push_back(plugins: Callable[..., Path]) -> None:
    sink = SlowSink()
    proto, transport = connection(plugins, sink)
    assert transport.producer is proto  # our answers push back on our reading
    proto.dataReceived(b'{"symbol": "AAPL", "price": 1}\n{"symbol": "X", "price": 1}\n')
    assert transport.producerState == "paused"  # not read while the sink works
    items, d = sink.calls[0]
    assert [i["symbol"] for i in items] == ["AAPL", "X"]  # type: ignore[index]
    d.callback(PublishResult(1, (Rejected(1, "X", "unknown_symbol", "no"),)))
    assert transport.producerState == "producing"
    assert json.loads(transport.value()) == {
        "index": 1,
        "symbol": "X",
        "code": "unknown_symbol",
        "message": "no",
    }
    proto.pauseProducing()  # the producer does not read its answers
    assert transport.producerState == "paused"
    proto.resumeProducing()
    assert transport.producerState == "producing"


def test_a_failed_sink_answers_every_item(plugins: Callable[..., Path]) -> None:
    sink = SlowSink()
    proto, transport = connection(plugins, sink)
    proto.dataReceived(b'{"symbol": "AAPL", "price": 1}\nnope\n{"symbol": "MSFT", "price": 2}\n')
    sink.calls[0][1].errback(BrokerUnavailable())
    answers = [json.loads(line) for line in transport.value().splitlines()]
    assert [(a["index"], a["code"]) for a in answers] == [
        (0, "broker_unavailable"),
        (1, "bad_item"),
        (2, "broker_unavailable"),
    ]
    assert transport.producerState == "producing" and not transport.disconnecting


def test_a_line_split_across_reads(plugins: Callable[..., Path]) -> None:
    sink = SlowSink()
    proto, _ = connection(plugins, sink, max_line="40")
    proto.dataReceived(b'{"symbol": "AAPL",')
    assert sink.calls == []
    proto.dataReceived(b' "price": 1}\n{"symbol"')
    assert sink.calls[0][0] == [{"symbol": "AAPL", "price": 1}]
