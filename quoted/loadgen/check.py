"""quoted-load's final check: every live document against GET /v1/quotes, symbol by symbol.

A symbol whose ``last_updated`` is the same in both is verified (equal) or a mismatch; one
whose ``last_updated`` differs moved between the two and is inconclusive. The symbols in
use are asked for in chunks below the REST limits.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TextIO
from urllib.parse import quote

from quoted.loadgen.conn import OPEN, LoadConnection

__all__ = ["DocumentCheck"]

REST_CHUNK = 1000  # the REST limit of symbols per request
REST_URL_BYTES = 7000  # below the server's 8 KiB URL limit


class DocumentCheck:
    """The check's counts, and the first few mismatches as lines."""

    def __init__(self) -> None:
        self.mismatches = self.inconclusive = self.verified = 0
        self.mismatch_lines: list[str] = []

    async def run(
        self,
        http_base: str,
        conns: list[LoadConnection],
        get: Callable[[str], Awaitable[tuple[int, bytes]]],
        err: TextIO,
    ) -> None:
        """Compare the documents of ``conns`` with REST, ``get`` answering each URL."""
        in_use = sorted({s for c in conns for s in c.symbols})
        chunk: list[str] = []
        size = 0
        for sym in [*in_use, None]:
            q = quote(sym, safe="") if sym is not None else ""
            if sym is None or len(chunk) == REST_CHUNK or size + len(q) > REST_URL_BYTES:
                if chunk:
                    await self.chunk(http_base, conns, chunk, get, err)
                chunk, size = [], 0
            if sym is not None:
                chunk.append(sym)
                size += len(q) + 1

    async def chunk(
        self,
        http_base: str,
        conns: list[LoadConnection],
        symbols: list[str],
        get: Callable[[str], Awaitable[tuple[int, bytes]]],
        err: TextIO,
    ) -> None:
        url = http_base + "/v1/quotes?symbols=" + ",".join(quote(s, safe="") for s in symbols)
        try:
            status, body = await get(url)
        except Exception as e:
            print(f"quoted-load: final check: GET /v1/quotes: {e}", file=err)
            return
        if status != 200:
            print(f"quoted-load: final check: GET /v1/quotes: {status}", file=err)
            return
        rest: dict[str, Any] = json.loads(body)["quotes"]
        wanted = set(symbols)
        for conn in [c for c in conns if c.state == OPEN]:
            quotes = conn.doc.get("quotes") or {}
            for sym in conn.symbols:
                if sym not in wanted or sym not in rest:
                    continue
                mine, theirs = quotes.get(sym), rest[sym]
                if mine is None:
                    self.mismatch(conn, sym, mine, theirs)
                elif mine.get("last_updated") != theirs.get("last_updated"):
                    self.inconclusive += 1
                elif mine != theirs:
                    self.mismatch(conn, sym, mine, theirs)
                else:
                    self.verified += 1

    def mismatch(self, conn: LoadConnection, sym: str, mine: Any, theirs: Any) -> None:
        self.mismatches += 1
        if len(self.mismatch_lines) < 3:
            self.mismatch_lines.append(f"connection {conn.index} {sym}: {mine} != REST {theirs}")
