"""The wheel operators install: quoted's modules and the twistd plugin, and nothing of Twisted's.

The wheel is built from a copy of the source tree (setuptools builds in-tree and would write
build/ and *.egg-info into the working tree other people use), installed with the tested
versions (constraints.txt) into a fresh venv, and asked what twistd sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted(str(p.relative_to(REPO / "quoted")) for p in (REPO / "quoted").rglob("*.py"))
IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "dropin.cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    "_trial_temp",
    "tmp",
)

pytestmark = pytest.mark.slow


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    r = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert r.returncode == 0, f"{argv} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)
    out = work / "tmp"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, ".", cwd=src)
    (whl,) = out.glob("quoted-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel alone; its dependencies are this interpreter's, at the
    tested versions (constraints.txt), read through a .pth line: installing them again from
    the package index took most of this file's time. A .pth line adds the directory without
    reading the .pth files in it, so the repository's editable install stays out of sight
    (test_installed_quoted_is_the_wheel_not_the_source_tree). That the wheel's requirements
    are met by those versions is test_the_tested_versions_satisfy_the_wheels_requirements."""
    env = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", env)
    (site,) = (env / "lib").glob("python*/site-packages")
    (site / "tested_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        env / "bin" / "python",
        "install",
        "-q",
        "--no-deps",
        wheel,
        timeout=600,
    )
    return env


def twistd(env: Path, *args: str) -> str:
    """The venv's twistd: Twisted's console script is this interpreter's, so run its entry
    point with the venv's Python."""
    return run(
        env / "bin" / "python",
        "-c",
        "from twisted.scripts.twistd import run; run()",
        *args,
        cwd=env,
    )


def test_the_tested_versions_satisfy_the_wheels_requirements(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    requires = [
        Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = [r for r in requires if r.marker is None]
    assert {r.name.lower() for r in runtime} >= {"twisted", "autobahn", "pyjwt", "txredisapi"}
    for req in runtime:
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (str(req), installed)


def test_wheel_holds_the_plugin_and_every_module_and_no_twisted_package_files(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "twisted/plugins/quoted_plugin.py" in names
    assert len(MODULES) > 10
    for module in MODULES:
        assert f"quoted/{module}" in names, module
    # the typed faces and the browser board
    assert {"quoted/py.typed", "quoted/client/py.typed", "quoted/static/board.js"} <= names
    # these belong to Twisted: a wheel shipping them would overwrite Twisted's own on install
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [
        n for n in names if n.startswith("twisted/") and n != "twisted/plugins/quoted_plugin.py"
    ], sorted(names)
    assert not [n for n in names if n.startswith("tests/")]


def test_installed_twistd_lists_quoted(venv: Path) -> None:
    out = twistd(venv, "--help")
    commands = out.partition("Commands:")[2]
    assert commands, out
    assert any(line.split()[:1] == ["quoted"] for line in commands.splitlines()), out


def test_installed_twistd_quoted_help_shows_its_options(venv: Path) -> None:
    out = twistd(venv, "quoted", "--help")
    assert "Usage: twistd [options] quoted" in out, out
    for option in ("--config", "--dev", "--listen"):
        assert option in out, out


def test_installed_quoted_is_the_wheel_not_the_source_tree(venv: Path) -> None:
    """The checks above must not pass through the repository's editable install."""
    out = run(
        venv / "bin" / "python",
        "-c",
        "import quoted, twisted.plugins.quoted_plugin as p; print(quoted.__file__); "
        "print(p.__file__)",
        cwd=venv,
    )
    for path in out.split():
        assert path.startswith(str(venv)), out
