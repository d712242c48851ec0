"""The protocol of docs/protocol.md as pure code, shared by the server, the client and the load
generator: symbols and JSON Pointer escaping, client and control messages with their error codes,
close codes and what a client does after each, RFC 6455/7692 frames, the RFC 6902 fast path,
token minting and the duration grammar.

It imports nothing else of quoted and nothing of Twisted; every other part may import it.
"""

__all__ = ["closecodes", "durations", "frames", "messages", "patch", "symbols", "tokens"]
