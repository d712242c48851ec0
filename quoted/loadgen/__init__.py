"""quoted-load: a WebSocket load generator for any server of docs/protocol.md. It keeps each
connection's document, measures latency from ``last_updated`` into HDR histograms and checks
every document against ``/v1/quotes`` at the end. It imports only :mod:`quoted.wire` of quoted.
"""

from quoted.loadgen.cli import main
from quoted.loadgen.run import Options, Runner, Unreachable, run

__all__ = ["Options", "Runner", "Unreachable", "main", "run"]
