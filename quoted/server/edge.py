"""What Autobahn keeps per connection that quoted drops once the WebSocket is open.

Autobahn copies its options and the opening handshake onto every protocol instance and
sets ~30 flags and unset timers per instance: at 10,000 connections that is ~50 MB.
``trim`` drops the handshake leftovers and every attribute still at a value the class
holds too, then rebuilds the instance dict compact (BENCHMARKS.md: 12.8 -> 7.5 KB a
connection with the options moved to a per-factory class, see QuoteFactory).
"""

from __future__ import annotations

from typing import Any

# Autobahn's per-connection copies of the opening handshake, unused once open
HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_headers",
    "http_response_data",
    "http_request_params",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "_wskey",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
    "_transport_details",
    # never used by us: a shared, empty one is on the class (we send no sync or
    # chopped frames, the only users of the queue; traffic statistics are not read)
    "send_queue",
    "trafficStats",
)
# per-connection attributes Autobahn sets to these (immutable) values; while an
# instance holds the same value, the class attribute serves instead
CLASS_DEFAULTS: dict[str, object] = {
    name: value
    for names, value in (
        (
            (
                "wasServingFlashSocketPolicyFile",
                "wasServerConnectionDropTimeout",
                "wasOpenHandshakeTimeout",
                "wasMaxMessagePayloadSizeExceeded",
                "wasMaxFramePayloadSizeExceeded",
                "wasCloseHandshakeTimeout",
                "wasClean",
                "triggered",
                "inside_message",
                "failedByMe",
                "droppedByMe",
                "closedByMe",
            ),
            False,
        ),
        (
            (
                "websocket_protocol_in_use",
                "wasNotCleanReason",
                "trackedTimings",
                "remoteCloseReason",
                "remoteCloseCode",
                "openHandshakeTimeoutCall",
                "localCloseReason",
                "localCloseCode",
                "current_frame",
                "closeHandshakeTimeoutCall",
                "autoPingTimeoutCall",
                "autoPingPendingSent",
                "autoPingPendingCall",
                "autoPingPending",
                "_perMessageCompress",
            ),
            None,
        ),
    )
    for name in names
}


def trim(obj: Any) -> None:
    """Drop ``obj``'s handshake leftovers and defaults; rebuild its instance dict compact."""
    d = obj.__dict__
    for name in HANDSHAKE_LEFTOVERS:
        d.pop(name, None)
    for name, default in CLASS_DEFAULTS.items():
        if name in d and d[name] is default:
            del d[name]
    obj.__dict__ = dict(d)
