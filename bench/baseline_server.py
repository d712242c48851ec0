"""The baseline of bench/run: quoted whose write path is Autobahn's own sendMessage.

Everything else is quoted's (handshake, hub, encode-once operations, conflation),
so the side-by-side ratio isolates what the hand-written write path saves over
a plain Autobahn broadcast that calls ``sendMessage`` for every connection.
Run by bench/run as ``python bench/baseline_server.py --listen ENDPOINT``.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from quoted.server.app import build
from quoted.server.config import load_config
from quoted.server.protocol import QuoteProtocol


def send_with_autobahn(self: QuoteProtocol, payload: bytes) -> int:
    """QuoteProtocol.send_patch through Autobahn's sendMessage; the bytes of the frame, as the
    hub counts them (a server frame's header is 2, 4 or 10 bytes)."""
    if self.state != self.STATE_OPEN:
        return 0
    self.sendMessage(payload)
    n = len(payload)
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    args = ap.parse_args()
    QuoteProtocol.send_patch = send_with_autobahn  # type: ignore[method-assign,assignment]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = build(load_config(None, listen=args.listen), reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
