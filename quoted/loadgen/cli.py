"""quoted-load: open many WebSocket connections to a quoted, check them, measure latency.

    quoted-load --url ws://127.0.0.1:8080 --secret "$JWT_SECRET" --conns 2000 --duration 30s

Connection i subscribes to K symbols of the first P of /v1/instruments ((i*K + j) % P, or a
seeded sample), keeps its document by applying every quotes_patch (quoted.loadgen.conn) and
records arrival time minus each update's last_updated, so quoted-load and the server must
share a clock. --duration counts from when the initial connections have all answered.
With --publish-rate N it also publishes: N times a second it POSTs --publish-symbols
prices of the pool to /v1/quotes (a server with [feed] source = publish) with a token of
scope quotes:publish (minted from --secret, or --publish-token), and counts the accepted
items and the rejected ones by code (quoted.loadgen.publish); it stops before the check,
which then waits until the subscribers have read everything the server sent. --conns 0
publishes only; --catch-up makes a run with subscribers only wait the same way (for a
publisher in another process, stopping before this run's check: a publisher sharing a
process with thousands of subscribers posts late when their messages keep the process
busy).
At the end, every document is compared with GET /v1/quotes, symbol by symbol, where
last_updated is the same in both.
With --url wss://host:port every connection, and every REST call (over https), is TLS
(quoted.loadgen.tls): the certificate checked against --ca (PEM) or the system's trust
store, for --server-name (default the URL's host, also sent as SNI); --resume reconnects
with the previous connection's TLS session. --storm-at 20s closes every normal connection
20 s into the window (a clean close 1000, with --storm-drop a TCP reset) and reconnects them
all at once (quoted.loadgen.storm); a fresh connection starts a fresh document at seq 1.
With --json the last line of stdout is the summary.
Exit status: 0 when the run completed (failures are in the numbers), 1 when the server
could not be reached at the start, 2 on a bad command line. Ctrl-C ends the load early
and still checks and reports; a second Ctrl-C kills the process.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, task

from quoted.loadgen.run import Options, Runner, Unreachable, run
from quoted.loadgen.tls import load_trust
from quoted.wire import durations

__all__ = ["Options", "Unreachable", "build_parser", "main", "parse_args", "run"]

MAX_SOURCE_IPS = 4096


def parse_duration(text: str) -> float:
    """--duration, --settle, --timeout: seconds, in the settings' grammar (quoted.wire.durations),
    so a bare number is refused ("missing unit") rather than taken as seconds."""
    try:
        return durations.parse_duration(text)
    except ValueError as e:
        reason = f"{text!r}: {e}; such as 60s, 500ms, 2m or 1m30s"
        raise argparse.ArgumentTypeError(reason) from None


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network of client addresses, such as 10.0.0.0/16 (its hosts, in order)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if net.num_addresses < 2:
        raise argparse.ArgumentTypeError(f"{text!r} holds no host addresses")
    return net


def parse_source_ips(text: str) -> tuple[str, ...]:
    """'127.0.0.2-127.0.0.9' or '10.0.0.1,10.0.0.2' (each entry may be a range)."""
    out: list[str] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            lo = ipaddress.ip_address(first.strip())
            hi = ipaddress.ip_address(last.strip()) if last else lo
            if hi.version != lo.version or int(hi) < int(lo):
                raise ValueError(f"bad range {part!r}")
            if len(out) + int(hi) - int(lo) + 1 > MAX_SOURCE_IPS:
                raise ValueError(f"more than {MAX_SOURCE_IPS} addresses")
            out += [str(ipaddress.ip_address(n)) for n in range(int(lo), int(hi) + 1)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return tuple(out)


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quoted-load", description="Load generator and conformance check for quoted."
    )
    a = p.add_argument
    a("--url", default="ws://127.0.0.1:8080", help="ws://host:port or wss://host:port")
    auth = p.add_mutually_exclusive_group(required=True)
    auth.add_argument("--secret", help="HS256 secret: mint a token per connection (sub load-N)")
    auth.add_argument("--token", help="one token for every connection")
    a("--conns", type=_count, default=100, help="normal connections (default 100)")
    a("--symbols-per-conn", type=_positive_int, default=5, help="K symbols per connection")
    a("--symbols-pool", type=_positive_int, default=50, help="the first P instruments")
    a("--duration", type=parse_duration, default=30.0, help="60s, 500ms, 2m (default 30s)")
    a("--rate", type=float, default=0.0, help="handshakes per second (0: as fast as possible)")
    a("--source-ips", type=parse_source_ips, default=(), help="127.0.0.2-127.0.0.9 or a,b,c")
    a(
        "--forwarded-for",
        type=parse_network,
        default=None,
        help="10.0.0.0/16: each connection sends X-Forwarded-For with its own client address "
        "of it, as from behind a proxy (the server must name the source in trusted_proxies)",
    )
    a("--slow", type=_count, default=0, help="extra connections that stop reading")
    a("--churn", type=_count, default=0, help="connections closed and reopened per second")
    a("--compress", action="store_true", help="offer permessage-deflate")
    a("--json", action="store_true", help="the last line of stdout is a JSON summary")
    a("--settle", type=parse_duration, default=1.0, help="wait before the final check (1s)")
    a("--seed", type=int, default=None, help="pick symbols by a seeded random sample")
    a("--timeout", type=parse_duration, default=10.0, help="handshake/REST timeout (10s)")
    a("--publish-rate", type=float, default=0.0, help="POST /v1/quotes N times a second (0)")
    a("--publish-symbols", type=_positive_int, default=50, help="symbols per post (default 50)")
    a("--publish-token", help="the publisher's token (default: minted from --secret)")
    a("--catch-up", action="store_true", help="wait for quiet before the final check")
    a("--ca", help="wss: PEM certificate(s) to trust (default: the system's trust store)")
    a("--server-name", help="wss: the name to verify and send as SNI (default: the URL's host)")
    a("--resume", action="store_true", help="wss: reconnect with the last TLS session")
    a("--storm-at", type=parse_duration, default=None, help="reconnect every connection then")
    a("--storm-drop", action="store_true", help="the storm resets TCP instead of closing")
    return p


def parse_args(argv: list[str] | None = None) -> Options:
    """The command line as Options; a bad one exits 2 (argparse)."""
    p = build_parser()
    ns = p.parse_args(argv)
    u = urlsplit(ns.url)
    if u.scheme not in ("ws", "wss"):
        p.error(f"--url: the scheme must be ws:// or wss://, got {ns.url!r}")
    tls = u.scheme == "wss"
    try:
        host, port = u.hostname, u.port or (443 if tls else 80)
    except ValueError as e:
        p.error(f"--url: {e}")
    if not host or u.path.rstrip("/") not in ("", "/ws/quotes") or u.query:
        p.error(f"--url: want ws://host:port or wss://host:port, got {ns.url!r}")
    wss_only = (("--ca", ns.ca), ("--server-name", ns.server_name), ("--resume", ns.resume))
    for name, given in wss_only:
        if given and not tls:
            p.error(f"{name} needs a wss:// --url, got {ns.url!r}")
    if ns.ca:
        try:
            load_trust(ns.ca)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            p.error(f"--ca {ns.ca}: {reason}")
    if ns.storm_at is not None and not 0 < ns.storm_at < ns.duration:
        p.error("--storm-at must be above 0 and before the end of --duration")
    if ns.storm_drop and ns.storm_at is None:
        p.error("--storm-drop needs --storm-at")
    if ns.rate < 0 or ns.duration <= 0 or ns.timeout <= 0:
        p.error("--rate must not be negative; --duration and --timeout must be above 0")
    if ns.symbols_per_conn > ns.symbols_pool:
        p.error("--symbols-per-conn must not exceed --symbols-pool")
    if ns.churn > ns.conns:
        p.error("--churn must not exceed --conns")
    if not ns.publish_rate >= 0 or ns.publish_rate == float("inf"):
        p.error("--publish-rate must be a number of posts a second, 0 or more")
    if ns.conns == 0 and not ns.publish_rate:
        p.error("--conns 0 only with --publish-rate (a run that only publishes)")
    if ns.publish_rate and not (ns.secret or ns.publish_token):
        p.error("--publish-rate needs --secret or --publish-token (a quotes:publish token)")
    return Options(
        url=ns.url,
        host=host,
        port=port,
        secret=ns.secret or "",
        token=ns.token or "",
        conns=ns.conns,
        symbols_per_conn=ns.symbols_per_conn,
        symbols_pool=ns.symbols_pool,
        duration=ns.duration,
        rate=ns.rate,
        source_ips=ns.source_ips,
        forwarded_for=ns.forwarded_for,
        slow=ns.slow,
        churn=ns.churn,
        compress=ns.compress,
        json=ns.json,
        settle=ns.settle,
        seed=ns.seed,
        timeout=ns.timeout,
        publish_rate=ns.publish_rate,
        publish_symbols=ns.publish_symbols,
        publish_token=ns.publish_token or "",
        catch_up=ns.catch_up,
        tls=tls,
        ca=str(Path(ns.ca).resolve()) if ns.ca else "",
        server_name=ns.server_name or "",
        resume=ns.resume,
        storm_at=ns.storm_at,
        storm_drop=ns.storm_drop,
    )


def format_summary(s: dict[str, Any]) -> str:
    lat, con = s["latency_ms"], s["connect_ms"]
    return "\n".join(
        [
            f"connections  connected {s['connected']}  failed {s['failed']}"
            + (f" {s['failed_by']}" if s["failed_by"] else ""),
            f"connect      p50 {con['p50']}ms  p99 {con['p99']}ms",
            f"received     {s['messages']} messages  {s['updates']} updates  {s['bytes']} bytes"
            f" in {s['duration_s']}s",
            f"latency      p50 {lat['p50']}ms  p95 {lat['p95']}ms  p99 {lat['p99']}ms"
            f"  max {lat['max']}ms",
            f"check        {s['verified']} verified  {s['mismatches']} mismatches"
            f"  {s['inconclusive']} inconclusive"
            + (f"  (after {s['catch_up_s']}s catching up)" if s.get("catch_up_s") else ""),
            f"errors       seq gaps {s['seq_gaps']}  patch mismatches {s['patch_mismatches']}"
            f"  patch errors {s['patch_errors']}  stale updates {s['stale_updates']}"
            f"  protocol errors {s['protocol_errors']}",
            f"server closes {s['closed'] or 'none'}",
            f"slow         opened {s['slow']['opened']}  closed {s['slow']['closed']}"
            f" {s['slow']['codes'] or ''}",
            f"churn        opened {s['churn']['opened']}  closed {s['churn']['closed']}",
            f"own CPU      {s['cpu_s']}s over {s['elapsed_s']}s",
            *([format_publish(s["publish"])] if s.get("publish") else []),
            *([format_tls(s["tls"])] if s.get("tls") else []),
            *([format_storm(s["storm"])] if s.get("storm") else []),
        ]
    )


def format_tls(t: dict[str, Any]) -> str:
    return (
        f"tls          {t['version']} {t['cipher']}  handshakes full {t['full']}"
        f"  resumed {t['resumed']}"
    )


def format_storm(st: dict[str, Any]) -> str:
    return (
        f"storm        {st['clients']} clients  back {st['back']}  failed {st['failed']}"
        + (f" {st['failed_by']}" if st["failed_by"] else "")
        + f"  all back in {st['all_back_s']}s  back p50 {st['back_p50_ms']}ms"
        f" p99 {st['back_p99_ms']}ms  resumed {st['resumed']}"
    )


def format_publish(p: dict[str, Any]) -> str:
    post = p["post_ms"]
    return (
        f"publish      {p['posts']} posts of {p['symbols_per_post']}  accepted {p['accepted']}"
        f"  rejected {p['rejected']}"
        + (f" {p['rejected_by']}" if p["rejected_by"] else "")
        + f"  non-200 {p['non_200']}"
        + (f" {p['statuses']}" if p["non_200"] else "")
        + (f"  errors {p['errors']}" if p["errors"] else "")
        + (f"  skipped {p['skipped']}" if p["skipped"] else "")
        + (f"  post p50 {post['p50']}ms p99 {post['p99']}ms" if post["p50"] is not None else "")
    )


async def _main(reactor: Any, opts: Options) -> None:
    runner = Runner(opts, reactor, sys.stderr)

    def on_sigint(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C kills
        reactor.callFromThread(runner.interrupt)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        summary = await runner.run()
    except Unreachable as e:
        print(f"quoted-load: server unreachable: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if opts.json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        print(format_summary(summary))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    opts = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        from twisted.internet import epollreactor  # noqa: PLC0415 (Linux only; install before use)

        epollreactor.install()
    except Exception:  # not Linux, or a reactor is already installed
        pass
    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, opts)))
