"""The checks the start runs on a loaded configuration that need no network, shared with
``python -m quoted.config``: one function, so the checker and twistd say the same line.

:func:`quoted.server.config.load_config` checks each value alone (an endpoint's type and
argument names among them, quoted.server.settingkinds); :func:`check_config` then reads what
the values name: an ssl endpoint's key and certificate (loaded and matched), the endpoint as
Twisted builds it (on a reactor that binds nothing), the instruments file, the replay file and a
plugin feed's options. Each problem is one line naming ``[section] key``; the start prints them
on stderr and exits 1, as does the checker (:func:`main`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock

from quoted.server.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from quoted.server.edge import endpoint_arguments
from quoted.server.feeds.plugins import BUILTIN_SOURCES, FeedOptionError, installed_feeds
from quoted.server.feeds.replay import SAMPLE_FILE, ReplayError, read_ticks
from quoted.server.instruments import InstrumentError, load_instruments

__all__ = ["EXIT_REFUSED", "check_config", "check_endpoint", "main"]

EXIT_REFUSED = 1
"""The exit status of a refused start and of the checker finding a problem (systemd's
``RestartPreventExitStatus=1`` stops the restart loop on it)."""


def check_config(config: Config) -> list[str]:
    """Every problem of ``config`` found by reading the files it names; empty when it starts."""
    problems = check_endpoint("[server] listen", config.server.listen)
    feed = config.feed
    try:
        load_instruments(feed.instruments_file, feed.synthetic_symbols)
    except InstrumentError as e:
        problems.append(f"[feed] instruments_file: {e}")
    if feed.source == "replay":
        try:
            read_ticks(feed.replay_file or SAMPLE_FILE)
        except ReplayError as e:
            problems.append(f"[feed] replay_file: {e}")
    elif feed.source not in BUILTIN_SOURCES:
        problems += _check_plugin_feed(feed.source, config.feed_options)
    return problems


def check_endpoint(name: str, description: str) -> list[str]:
    """An endpoint string's files (ssl: the key and certificate) and Twisted's own build of it,
    on a reactor that binds nothing. A systemd endpoint is not built: the descriptors it names
    exist only in the process systemd starts."""
    try:
        kind, _, kw, _ = endpoint_arguments(description)
    except ValueError as e:  # load_config already refused it
        return [f"{name} = {description!r}: {e}"]
    if kind == "systemd":
        return []
    if kind == "ssl":
        problems = _check_tls(name, kw)
        if problems:
            return problems
    try:
        serverFromString(MemoryReactorClock(), description)
    except Exception as e:
        return [f"{name} = {description!r}: {type(e).__name__}: {e}"]
    return []


def _read(name: str, arg: str, path: str) -> tuple[bytes | None, list[str]]:
    try:
        with open(path, "rb") as f:
            return f.read(), []
    except OSError as e:
        return None, [f"{name}: {arg}={path}: cannot read the file: {e.strerror or e}"]


def _check_tls(name: str, kw: Mapping[str, str]) -> list[str]:
    """The private key and certificate of an ssl endpoint: read, parsed and matched, as
    Twisted's ssl parser reads them (certKey defaults to privateKey, itself to server.pem)."""
    key_path = kw.get("privateKey", "server.pem")
    cert_path = kw.get("certKey") or key_path
    key_pem, problems = _read(name, "privateKey", key_path)
    cert_pem, cert_problems = _read(name, "certKey", cert_path)
    problems += cert_problems
    key: Any = None
    cert: x509.Certificate | None = None
    if key_pem is not None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:  # encrypted: Twisted's ssl endpoint asks no passphrase
            problems.append(f"{name}: privateKey={key_path}: an encrypted key (no passphrase)")
        except ValueError:
            problems.append(f"{name}: privateKey={key_path}: not a PEM private key")
    if cert_pem is not None:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            problems.append(f"{name}: certKey={cert_path}: not a PEM certificate")
    if key is not None and cert is not None and _public(key) != _public(cert):
        problems.append(
            f"{name}: privateKey={key_path} is not the key of the certificate certKey={cert_path}"
        )
    return problems


def _public(holder: Any) -> bytes:
    """The public key of a private key or a certificate, as DER."""
    return bytes(
        holder.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class _RefusingSink:
    """The sink a plugin feed is checked with: its service is built, never started."""

    def publish(self, items: Sequence[object], *, symbols: object = None) -> Deferred[Any]:
        return fail(RuntimeError("a feed being checked cannot publish"))


def _check_plugin_feed(source: str, options: Mapping[str, str]) -> list[str]:
    """A plugin feed's ``[feed:NAME]`` options, by building its service (IFeedMaker.makeFeed
    only builds: it is given a sink that refuses everything and a reactor that runs nothing)."""
    maker = installed_feeds().get(source)
    if maker is None:  # load_config already refused it
        return []
    try:
        maker.makeFeed(options, _RefusingSink(), MemoryReactorClock())
    except FeedOptionError as e:
        return [f"[feed:{source}] {e.key}: {e.message}"]
    except ValueError as e:
        return [f"[feed:{source}]: {e}"]
    return []


def load_and_check(
    path: str | None, *, dev: bool = False, listen: str | None = None
) -> tuple[Config | None, list[str]]:
    """The configuration and its problems, as the start reads it: load_config's, then
    check_config's (run only on a configuration that loaded)."""
    try:
        config = load_config(path, dev=dev, listen=listen)
    except ConfigError as e:
        return None, list(e.problems)
    return config, check_config(config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quoted.config``: check a configuration as twistd would read it."""
    parser = argparse.ArgumentParser(
        prog="python -m quoted.config",
        description="Check a quoted configuration file (and the environment) as twistd would.",
    )
    parser.add_argument("path", nargs="?", help=f"the file (default: {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--dev", action="store_true", help="allow no token key")
    parser.add_argument("--listen", help="endpoint overriding [server] listen")
    args = parser.parse_args(argv)
    config, problems = load_and_check(args.path, dev=args.dev, listen=args.listen)
    if problems or config is None:
        for line in problems:
            print(line, file=sys.stderr)
        return EXIT_REFUSED
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("ok")
    return 0
