"""README.rst against the code: its settings table is ``settings_table()``, row for row, every
key of etc/quoted.conf is in it, and its metrics table names exactly the ``quoted_*`` families.

README.rst is parsed by hand (docutils is not a dependency): the tables are ``list-table``
directives whose cells are single-line or indented continuation lines, literals in double
backquotes.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from quoted.server.config import settings_table
from quoted.server.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
SHIPPED_CONF = ROOT / "etc" / "quoted.conf"

_LITERAL = re.compile(r"^``(.*)``$")


def cell_text(lines: list[str]) -> str:
    """A cell's text: its lines joined by spaces, a whole-cell ``literal`` unwrapped."""
    text = " ".join(line.strip() for line in lines).strip()
    literal = _LITERAL.match(text)
    return literal[1] if literal else text


def list_table(text: str, title: str) -> list[list[str]]:
    """The rows (header included) of the first ``list-table`` whose directive line starts with
    ``title``; empty when there is none."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(title)), None)
    if start is None:
        return []
    rows: list[list[str]] = []
    cell: list[str] | None = None
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):  # back at the left margin: the table ended
            break
        if line.startswith("   * -"):
            rows.append([])
            cell = [line[len("   * -") :]]
            rows[-1].append("")
        elif line.startswith("     -"):
            if not rows:
                raise AssertionError(f"a cell before any row: {line!r}")
            cell = [line[len("     -") :]]
            rows[-1].append("")
        elif line.startswith("       ") and cell is not None:
            cell.append(line)
        elif line.strip().startswith(":") or not line.strip():
            if not line.strip() and rows:
                cell = None
            continue
        else:
            raise AssertionError(f"unexpected line in the table {title!r}: {line!r}")
        rows[-1][-1] = cell_text(cell)
    return rows


def readme_settings() -> list[tuple[str, str, str, str]]:
    rows = list_table(README.read_text(encoding="utf-8"), ".. list-table:: Settings")
    assert rows, "README.rst has no '.. list-table:: Settings'"
    assert rows[0] == ["section", "key", "default", "meaning"]
    for row in rows[1:]:
        assert len(row) == 4, row
    return [(r[0], r[1], r[2], r[3]) for r in rows[1:]]


def shipped_keys() -> list[tuple[str, str]]:
    """(section, key) of every setting line of etc/quoted.conf, commented out or not."""
    keys: list[tuple[str, str]] = []
    section = None
    for line in SHIPPED_CONF.read_text(encoding="utf-8").splitlines():
        header = re.match(r"^\[(\w+)\]\s*$", line)
        if header:
            section = header[1]
            continue
        setting = re.match(r"^#? ?([a-z][a-z0-9_]*) =", line)
        if setting and section is not None:
            keys.append((section, setting[1]))
    return keys


def metrics_rows() -> list[list[str]]:
    """The rows of README.rst's metrics table (the list-table headed metric, type, meaning)."""
    tables = README.read_text(encoding="utf-8").split("\n.. list-table::")
    for table in tables[1:]:
        rows = list_table(".. list-table::" + table, ".. list-table::")
        if rows and rows[0] == ["metric", "type", "meaning"]:
            return rows[1:]
    raise AssertionError("no metrics table in README.rst")


def test_list_table_parser() -> None:
    text = (
        "intro\n\n"
        ".. list-table:: Settings\n"
        "   :header-rows: 1\n\n"
        "   * - a\n     - b\n"
        "   * - ``x``\n     -\n     - long text\n       continued\n\n"
        "after\n"
    )
    assert list_table(text, ".. list-table:: Settings") == [
        ["a", "b"],
        ["x", "", "long text continued"],
    ]
    assert list_table(text, ".. list-table:: Other") == []


def test_readme_settings_table_is_settings_table() -> None:
    assert readme_settings() == settings_table()


def test_every_key_of_the_shipped_conf_is_in_the_readme_table() -> None:
    documented = {(section, key) for section, key, _, _ in readme_settings()}
    keys = shipped_keys()
    assert len(keys) >= len(settings_table())  # the parser found the settings
    assert set(keys) <= documented


def test_readme_metrics_table_names_every_quoted_family() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    exposed = set()
    for family in registry.collect():
        if family.name.startswith("quoted_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            exposed.add((name, family.type))
    documented = {(re.sub(r"\{.*\}$", "", row[0]), row[1]) for row in metrics_rows()}
    assert documented == exposed
