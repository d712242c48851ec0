"""docs/asyncapi.yaml: valid for the official AsyncAPI parser, and every kind of message a running
quoted sends (snapshot, update, subscribed, authenticated, error, pong, and an HTTP refusal)
validates against its JSON Schema, as do the client messages the protocol documents."""

from __future__ import annotations

import json
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_twisted

from tests.harness import QuotedServer
from tests.test_browser import node_tools

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "asyncapi.yaml"
BROWSER_DIR = ROOT / "tests" / "browser"


def parse(*paths: Path) -> tuple[int, list[dict[str, Any]]]:
    """The parser's verdict on ``paths``, in one node run: (exit code, a JSON report per file)."""
    node = node_tools()
    run = subprocess.run(
        [node, str(BROWSER_DIR / "asyncapi.mjs"), *map(str, paths)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        out = json.loads(run.stdout)
    except ValueError:
        return run.returncode, [{"valid": False, "errors": [run.stderr[-2000:]]}] * len(paths)
    return run.returncode, out if len(paths) > 1 else [out]


def broken_copy(directory: Path) -> Path:
    """docs/asyncapi.yaml with one operation's action misspelt."""
    broken = directory / "broken.yaml"
    broken.write_text(SPEC.read_text().replace("action: send", "action: sned", 1))
    return broken


@cache
def verdicts() -> tuple[int, dict[str, Any], dict[str, Any]]:
    """One parser run over the real file and a broken copy: (exit code, the file's report, the
    copy's report). The parser's start-up is most of its cost, and every test here needs it."""
    with tempfile.TemporaryDirectory() as tmp:
        code, (report, broken) = parse(SPEC, broken_copy(Path(tmp)))
    return code, report, broken


@cache
def spec() -> dict[str, Any]:
    _, report, _ = verdicts()
    assert report["valid"], report["errors"]
    return report["document"]  # type: ignore[no-any-return]


def validate(schema: str, message: Any) -> None:
    """Check ``message`` against components/schemas/``schema``, $refs resolved in the file."""
    root = dict(spec())
    root["$ref"] = f"#/components/schemas/{schema}"
    jsonschema.Draft7Validator(root).validate(message)


def test_the_parser_accepts_the_file() -> None:
    _, report, _ = verdicts()
    assert report["valid"], report["errors"]
    assert report["version"] == "3.0.0"
    assert report["channels"] == ["/ws/quotes"]
    assert set(report["messages"]) == {
        "quotes_patch",
        "subscribed",
        "authenticated",
        "error",
        "pong",
        "subscribe",
        "unsubscribe",
        "auth",
        "ping",
    }
    assert report["warnings"] == []
    doc = report["document"]
    query = doc["channels"]["quotes"]["bindings"]["ws"]["query"]["properties"]
    assert set(query) == {"symbols", "token"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "scheme": "bearer", "bearerFormat": "JWT"}
    description = doc["info"]["description"]
    for code_ in (1001, 1002, 1003, 1007, 1008, 1009, 1011, 1013, 4001, 4008, 4029):
        assert str(code_) in description


def test_the_parser_rejects_a_broken_file() -> None:
    code, good, broken = verdicts()
    assert code != 0  # the exit code tells: one of the files is broken
    assert good["valid"] and not broken["valid"]
    assert any(e["path"].endswith("/action") for e in broken["errors"]), broken["errors"]


def test_the_schemas_refuse_what_the_server_never_sends() -> None:
    quote = {
        "symbol": "AAPL",
        "name": "Apple Inc.",
        "type": "STOCK",
        "current_price": 175.5,
        "base_price": 175.5,
        "change": 0,
        "change_percent": 0,
        "last_updated": "2026-11-28T17:06:11.780Z",
        "volume": 52000000,
    }
    good = {
        "type": "quotes_patch",
        "seq": 2,
        "operations": [{"op": "replace", "path": "/quotes/AAPL", "value": quote}],
    }
    validate("quotesPatch", good)
    for bad in (
        {**good, "seq": 0},
        {**good, "operations": []},
        {**good, "operations": [{"op": "move", "from": "/quotes/A", "path": "/quotes/B"}]},
        {
            **good,
            "operations": [
                {"op": "replace", "path": "/quotes/AAPL", "value": {**quote, "type": "BOND"}}
            ],
        },
        {**good, "operations": [{"op": "replace", "path": "/quotes/AAPL/name", "value": "x"}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate("quotesPatch", bad)


@pytest_twisted.ensureDeferred
async def test_captured_messages_match_the_schemas(server: QuotedServer) -> None:
    ws = await server.connect("symbols=AAPL,MSFT,nope")
    try:
        snapshot = await ws.wait_type("quotes_patch")
        assert snapshot["seq"] == 1 and snapshot["invalid_symbols"] == ["NOPE"]
        update = await ws.wait_for(lambda m: m.get("type") == "quotes_patch" and m["seq"] >= 2)
        ws.send_json({"type": "subscribe", "id": "s1", "symbols": ["spy", "nope"]})
        subscribed = await ws.wait_type("subscribed")
        ws.send_json({"type": "unsubscribe", "id": 2, "symbols": ["AAPL"]})
        unsubscribed = await ws.wait_for(lambda m: m.get("id") == 2)
        ws.send_json({"type": "ping", "id": 42})
        pong = await ws.wait_type("pong")
        ws.send_json({"type": "auth", "id": "r1", "token": server.token(ttl=600)})
        authenticated = await ws.wait_type("authenticated")
        ws.send_json({"type": "hello", "id": 7})
        error = await ws.wait_type("error")
        ws.send_json({"type": "auth", "id": "r2", "token": "garbage"})
        token_error = await ws.wait_for(lambda m: m.get("id") == "r2")
        later = await ws.wait_for(
            lambda m: m.get("type") == "quotes_patch" and m["seq"] > 3, start=len(ws.messages)
        )
    finally:
        ws.sendClose(1000)
        await ws.closed

    validate("quotesPatch", snapshot)
    validate("quotesPatch", update)
    validate("quotesPatch", later)
    validate("subscribed", subscribed)
    validate("subscribed", unsubscribed)
    validate("pong", pong)
    validate("authenticated", authenticated)
    validate("error", error)
    validate("error", token_error)
    for message in ws.messages:  # everything else that came, by its type
        name = {"quotes_patch": "quotesPatch"}.get(message["type"], message["type"])
        validate(name, message)
    # both update encodings: whole quotes and field replaces
    ops = [op for m in ws.messages if m["type"] == "quotes_patch" for op in m["operations"]]
    assert any(op["path"].count("/") == 2 and op["op"] == "replace" for op in ops)

    refused = await server.get("/v1/quotes?symbols=AAPL", "not-a-token")
    assert refused.status == 401
    validate("httpError", refused.json())


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("subscribe", {"type": "subscribe", "id": "sub-1", "symbols": ["tsla", "nope"]}),
        ("unsubscribe", {"type": "unsubscribe", "id": "sub-2", "symbols": ["AAPL"]}),
        ("ping", {"type": "ping", "id": 42}),
        ("auth", {"type": "auth", "id": "r1", "token": "eyJ..."}),
    ],
)
def test_documented_client_messages_match(schema: str, message: dict[str, Any]) -> None:
    validate(schema, message)
