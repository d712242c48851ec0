"""The layout of quoted/ (README.rst, "Project layout"): who may import whom.

Read from the source with ``ast``, imports inside functions and under TYPE_CHECKING included,
so a new arrow shows here before it shows as an import circle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "quoted"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute names (``from a import b`` gives a.b when
    a.b is a module of quoted, else a)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                out.add(name if name in MODULES else node.module)
    return out


GRAPH: dict[str, set[str]] = {
    name: {dep for dep in _imports(path) if dep in MODULES and dep != name}
    for name, path in MODULES.items()
}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_packages_are_there() -> None:
    for package in ("wire", "server", "server.cluster", "server.feeds", "client", "loadgen"):
        assert f"quoted.{package}" in MODULES, package


def test_no_import_circle() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("quoted.wire")))
def test_wire_imports_no_twisted_and_nothing_else_of_quoted(name: str) -> None:
    imported = _imports(MODULES[name])
    assert not {m for m in imported if m.split(".")[0] in ("twisted", "autobahn", "txredisapi")}
    assert {m for m in imported if m.startswith("quoted")} <= {
        m for m in MODULES if m.startswith("quoted.wire")
    }


@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if n.startswith(("quoted.client", "quoted.loadgen")))
)
def test_client_and_loadgen_never_import_the_server(name: str) -> None:
    assert not {m for m in GRAPH[name] if m.startswith("quoted.server")}


def test_txredisapi_only_in_the_cluster_package() -> None:
    users = {n for n, p in MODULES.items() if any(m.startswith("txredisapi") for m in _imports(p))}
    assert users, "nothing imports txredisapi: the test no longer looks at the right name"
    assert {n for n in users if not n.startswith("quoted.server.cluster")} == set()


def test_the_cluster_package_is_imported_only_by_the_wiring() -> None:
    importers = {
        n
        for n, deps in GRAPH.items()
        if not n.startswith("quoted.server.cluster")
        for d in deps
        if d.startswith("quoted.server.cluster")
    }
    assert importers == {"quoted.server.app"}


def test_no_module_much_over_500_lines() -> None:
    long = {
        n: lines
        for n, p in MODULES.items()
        if (lines := len(p.read_text(encoding="utf-8").splitlines())) > 550
    }
    assert long == {}


@pytest.mark.parametrize(
    "name",
    # the top package holds only the version and the two old addresses (config, logs)
    sorted(n for n, p in MODULES.items() if p.name == "__init__.py" and n != "quoted"),
)
def test_every_package_names_its_public_api(name: str) -> None:
    """Each package's __init__ has an ``__all__``; every name in it is a submodule or an
    attribute the package defines or imports."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    declared = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]
    ]
    assert declared, f"{name} has no __all__"
    names = ast.literal_eval(declared[0])
    bound = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    for item in names:
        assert item in bound or f"{name}.{item}" in MODULES, (name, item)
