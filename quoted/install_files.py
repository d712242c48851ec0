"""``python -m quoted.install_files DEST``: the example configuration and the systemd units.

The wheel carries etc/quoted.conf and systemd/* as package data (quoted/data/); this writes
them under DEST as a root directory would hold them::

    DEST/etc/quoted/quoted.conf
    DEST/etc/systemd/system/quoted.service, quoted.socket, quoted@.service, ...

so ``python -m quoted.install_files /`` installs them in place. A file already there is kept
(an operator's edited configuration is never overwritten) unless ``--force`` is given. From a
source checkout (an editable install) the files are read from etc/ and systemd/ themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

# package data directory (under quoted/data/ in the wheel, the checkout's own directory in an
# editable install) -> where it goes under DEST
TARGETS = {"etc": Path("etc/quoted"), "systemd": Path("etc/systemd/system")}


def _source(kind: str) -> Traversable:
    packaged = resources.files("quoted") / "data" / kind
    if packaged.is_dir():
        return packaged
    return resources.files("quoted") / ".." / kind


def files() -> Iterator[tuple[Traversable, Path]]:
    """Every shipped file with its path relative to DEST, in a stable order."""
    for kind, target in TARGETS.items():
        source = _source(kind)
        if not source.is_dir():
            raise FileNotFoundError(f"quoted's {kind} files are not installed (looked in {source})")
        for item in sorted(source.iterdir(), key=lambda t: t.name):
            if item.is_file() and not item.name.startswith((".", "_")):
                yield item, target / item.name


def _write(path: Path, data: bytes, force: bool) -> bool:
    """Write ``data`` to ``path`` (mode 0644); False if it exists and ``force`` is not set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    # replaced whole, never half-written
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def install(dest: Path, force: bool = False) -> list[tuple[Path, bool]]:
    """Write every shipped file under ``dest``; each path with whether it was written."""
    return [(dest / rel, _write(dest / rel, item.read_bytes(), force)) for item, rel in files()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quoted.install_files",
        description="Write quoted's example configuration (DEST/etc/quoted/) and systemd units "
        "(DEST/etc/systemd/system/). Existing files are kept unless --force.",
    )
    parser.add_argument("dest", type=Path, metavar="DEST", help="the root to write under, e.g. /")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    args = parser.parse_args(argv)
    try:
        results = install(args.dest, force=args.force)
    except OSError as e:
        print(f"quoted.install_files: {e}", file=sys.stderr)
        return 1
    for path, written in results:
        print(f"wrote {path}" if written else f"kept {path} (exists; --force overwrites it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
