"""The twistd plugin: ``twistd quoted``. Imports nothing of quoted until used."""

from twisted.application.service import ServiceMaker

quoted = ServiceMaker(
    "quoted",
    "quoted.server.tap",
    "Real-time market data over WebSocket (JSON Patch quote streams)",
    "quoted",
)
