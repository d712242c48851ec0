"""The sdist and the wheel operators install: quoted's modules, the twistd plugin, the example
configuration and the systemd units, and nothing of Twisted's.

The sdist is built from a copy of the source tree (setuptools builds in-tree and would write
build/ and *.egg-info into the working tree other people use), and the wheel from the unpacked
sdist, so the wheel proves the sdist complete; both by setuptools' PEP 517 hooks in the test
venv (no download of a build environment, no ``build`` package), their whole output checked
for warnings. It is installed into a fresh venv
whose dependencies are the test venv's own, already installed with the tested versions
(constraints.txt): a ``.pth`` line puts that site-packages after the fresh one, the wheel goes in
with ``--no-deps``, and ``pip check`` proves the wheel's requirements are met by them. Then the
fresh venv is asked what twistd sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
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


# the documented install step that writes twisted/plugins/dropin.cache (README.rst, Installing)
REBUILD_CACHE = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"


def run(
    *argv: str | Path,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    stderr: bool = False,
) -> str:
    r = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        env=env,
    )
    assert r.returncode == 0, f"{argv} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr if stderr else r.stdout


def build(hook: str, src: Path, out: Path) -> tuple[Path, str]:
    """Run setuptools' PEP 517 ``hook`` in ``src``; the artifact and everything it printed."""
    # byte-compiling is the installer's business; with it disabled (PYTHONDONTWRITEBYTECODE)
    # setuptools says so in a warning line of its own
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = f"from setuptools import build_meta; print('built', build_meta.{hook}({str(out)!r}))"
    output = run(sys.executable, "-c", code, cwd=src, env=env, stderr=True)
    (name,) = (line[6:] for line in output.splitlines() if line.startswith("built "))
    return out / name, output


def warnings_in(output: str) -> list[str]:
    """setuptools' warnings: distutils' ``warning:`` lines and the ``!!`` boxes of its
    deprecation warnings (e.g. ``quoted.static is absent from the packages configuration``)."""
    return [
        line for line in output.splitlines() if "warning" in line.lower() or line.strip() == "!!"
    ]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("sdist")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)
    return build("build_sdist", src, work / "dist")


@pytest.fixture(scope="module")
def unpacked(sdist: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(sdist[0]) as t:
        t.extractall(work, filter="data")
    (root,) = work.iterdir()
    return root


@pytest.fixture(scope="module")
def built_wheel(unpacked: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    src = tmp_path_factory.mktemp("wheelsrc") / "src"
    shutil.copytree(unpacked, src)
    return build("build_wheel", src, src.parent / "dist")


@pytest.fixture(scope="module")
def wheel(built_wheel: tuple[Path, str]) -> Path:
    return built_wheel[0]


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


def tracked_files() -> set[str]:
    """The files a release holds: git's, in a checkout; else (an unpacked sdist) the tree's."""
    if (REPO / ".git").exists():
        out = run("git", "ls-files", "-z", cwd=REPO)
        names = set(filter(None, out.split("\0")))
    else:
        names = {
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file() and not IGNORE(str(p.parent), [p.name]) and "egg-info" not in str(p)
        }
        names -= {"PKG-INFO", "MANIFEST.in"}
    # CI's own scripts and git's own file are not part of a release
    return {n for n in names if not n.startswith(".")}


def test_build_output_has_no_setuptools_warning(
    sdist: tuple[Path, str], built_wheel: tuple[Path, str]
) -> None:
    for _, output in (sdist, built_wheel):
        assert "Traceback" not in output, output
        assert warnings_in(output) == [], output


def test_wheel_metadata_names_quoted_server_and_carries_the_license(wheel: Path) -> None:
    """quoted-server: "quoted" on PyPI is another project's; the version is quoted's own."""
    from quoted import __version__

    assert wheel.name.startswith(f"quoted_server-{__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"quoted_server-{__version__}.dist-info/METADATA").decode()
        license_text = z.read(f"quoted_server-{__version__}.dist-info/licenses/LICENSE")
    assert "\nName: quoted-server\n" in meta
    assert f"\nVersion: {__version__}\n" in meta
    assert "\nLicense: MIT\n" in meta
    assert license_text == (REPO / "LICENSE").read_bytes()
    assert b"MIT License" in license_text


def test_wheel_carries_the_example_config_and_every_systemd_unit(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        assert z.read("quoted/data/etc/quoted.conf") == (REPO / "etc/quoted.conf").read_bytes()
        units = sorted(p.name for p in (REPO / "systemd").iterdir())
        assert units
        for unit in units:
            assert z.read(f"quoted/data/systemd/{unit}") == (REPO / "systemd" / unit).read_bytes()


def test_sdist_holds_every_released_file(sdist: tuple[Path, str], unpacked: Path) -> None:
    held = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()}
    missing = tracked_files() - held
    assert not missing, sorted(missing)
    # nothing of a working tree: no byte code, no plugin cache
    assert not [n for n in held if "__pycache__" in n or n.endswith("dropin.cache")], held
    for test_support in ("tests/conftest.py", "tests/harness.py", "tests/memory.py"):
        assert test_support in held


def test_sdist_tests_run_from_the_sdist(unpacked: Path) -> None:
    """The whole suite collects from the unpacked sdist (every conftest, helper and data file
    it imports is there) and a few quick files pass there (the layout, the documents, two
    of the protocol's), importing the sdist's quoted."""
    pytest_ = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-q")
    out = run(*pytest_, "--collect-only", cwd=unpacked)
    assert " tests collected" in out or "tests collected" in out, out
    quick = ("tests/test_layout.py", "tests/test_docs.py", "tests/wire/test_closecodes.py")
    out = run(*pytest_, *quick, "tests/wire/test_tokens.py", cwd=unpacked)
    assert " passed" in out and "failed" not in out, out
    where = run(sys.executable, "-c", "import quoted; print(quoted.__file__)", cwd=unpacked).strip()
    assert where.startswith(str(unpacked)), where


def test_installed_twistd_quoted_version_prints_the_package_version(venv: Path) -> None:
    from quoted import __version__

    out = run(venv / "bin" / "python", "-c", TWISTD, "quoted", "--version", cwd=venv)
    assert out == f"quoted {__version__}\n"


def test_installed_install_files_writes_config_and_units_and_keeps_existing_ones(
    venv: Path, tmp_path: Path
) -> None:
    python = venv / "bin" / "python"
    dest = tmp_path / "root"
    expected = {Path("etc/quoted/quoted.conf"): REPO / "etc/quoted.conf"} | {
        Path("etc/systemd/system") / p.name: p for p in sorted((REPO / "systemd").iterdir())
    }
    out = run(python, "-m", "quoted.install_files", dest, cwd=venv)
    assert out.splitlines() == [f"wrote {dest / rel}" for rel in expected], out
    written = {p.relative_to(dest) for p in dest.rglob("*") if p.is_file()}
    assert written == set(expected)
    for rel, source in expected.items():
        assert (dest / rel).read_bytes() == source.read_bytes(), rel
        assert (dest / rel).stat().st_mode & 0o777 == 0o644, rel

    conf = dest / "etc/quoted/quoted.conf"
    conf.write_text("[server]\nlisten = tcp:8099:interface=127.0.0.1\n")
    out = run(python, "-m", "quoted.install_files", dest, cwd=venv)
    assert f"kept {conf} (exists; --force overwrites it)" in out.splitlines(), out
    assert "wrote" not in out, out
    assert conf.read_text().startswith("[server]\nlisten = tcp:8099")

    out = run(python, "-m", "quoted.install_files", "--force", dest, cwd=venv)
    assert f"wrote {conf}" in out.splitlines(), out
    assert conf.read_bytes() == (REPO / "etc/quoted.conf").read_bytes()
    assert not [p for p in conf.parent.iterdir() if p.name.startswith(".")]


def test_installed_plugin_cache_is_written_by_the_install_step_and_not_again_by_twistd(
    venv: Path,
) -> None:
    """The documented root install step writes twisted/plugins/dropin.cache next to the
    plugin; twistd then finds it current and writes nothing, so a user who may not write
    there (a root-owned venv) gets no dropin.cache permission error."""
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cache = Path(purelib.strip()) / "twisted" / "plugins" / "dropin.cache"
    # as a fresh install has it (the twistd runs above wrote one, being allowed to)
    cache.unlink(missing_ok=True)
    run(python, "-c", REBUILD_CACHE, cwd=venv)
    assert b"quoted_plugin" in cache.read_bytes()
    before = cache.stat()
    out = run(python, "-c", TWISTD, "quoted", "--version", cwd=venv, stderr=True)
    assert "dropin" not in out, out
    after = cache.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
