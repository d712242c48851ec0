"""The wheel operators install: quoted's modules and the twistd plugin, and nothing of Twisted's.

The wheel is built from a copy of the source tree (setuptools builds in-tree and would write
build/ and *.egg-info into the working tree other people use), with the test venv's setuptools
(``--no-build-isolation``: no download of a build environment). It is installed into a fresh venv
whose dependencies are the test venv's own, already installed with the tested versions
(constraints.txt): a ``.pth`` line puts that site-packages after the fresh one, the wheel goes in
with ``--no-deps``, and ``pip check`` proves the wheel's requirements are met by them. Then the
fresh venv is asked what twistd sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

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
    "node_modules",
)
# twistd as the console script Twisted installs would run it (Twisted lives in the shared
# site-packages, so the fresh venv has no bin/twistd of its own)
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

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
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        out,
        ".",
        cwd=src,
    )
    (whl,) = out.glob("quoted-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel; its dependencies are the test venv's, at the tested versions."""
    env = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    fresh = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    shared = sysconfig.get_paths()["purelib"]
    # a plain path line: the shared site-packages' own .pth files (the editable quoted) stay off
    (Path(fresh.strip()) / "_shared_dependencies.pth").write_text(shared + "\n")
    pip = (sys.executable, "-m", "pip", "--python", python)
    run(*pip, "install", "-q", "--no-deps", "--no-index", wheel)
    run(*pip, "check")
    return env


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
    out = run(venv / "bin" / "python", "-c", TWISTD, "--help", cwd=venv)
    commands = out.partition("Commands:")[2]
    assert commands, out
    assert any(line.split()[:1] == ["quoted"] for line in commands.splitlines()), out


def test_installed_twistd_quoted_help_shows_its_options(venv: Path) -> None:
    out = run(venv / "bin" / "python", "-c", TWISTD, "quoted", "--help", cwd=venv)
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
