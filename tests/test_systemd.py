"""The units of systemd/: parsed for their wiring, and checked by ``systemd-analyze verify``.

The wiring is what issue 20 found broken: a socket that activates a service which does not
take it, a credential no setting points at, a restart loop on a configuration error, no
reload. ``systemd-analyze`` runs on the unit files alone (no running systemd needed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quoted.server.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
SERVICES = ("quoted.service", "quoted@.service", "quoted-socket.service", "quoted-socket@.service")
SOCKET_SERVICES = ("quoted-socket.service", "quoted-socket@.service")
HARDENING = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "RemoveIPC",
    "RestrictAddressFamilies",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "UMask",
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value in order (systemd keys repeat, so
    configparser itself does not fit); comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{lineno}: a setting before any section"
        assert not line.endswith("\\"), f"{path.name}:{lineno}: continuation lines not expected"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{lineno}: not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit["Service"].get("Environment", []):
        name, _, text = value.partition("=")
        env[name] = text
    return env


def test_every_shipped_unit_is_tested() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted((*SERVICES, "quoted.socket"))


def test_the_socket_is_loopback_and_names_the_service_that_takes_it() -> None:
    socket = parse_unit(UNITS / "quoted.socket")
    listen = one(socket, "Socket", "ListenStream")
    assert listen.startswith("127.0.0.1:"), listen
    assert one(socket, "Socket", "Accept") == "no"
    name = one(socket, "Socket", "FileDescriptorName")
    service_name = one(socket, "Socket", "Service")
    assert service_name == "quoted-socket.service"
    # quoted.service (the name systemd would pick without Service=) does not take the socket
    assert "Sockets" not in parse_unit(UNITS / "quoted.service")["Service"]
    for file in SOCKET_SERVICES:
        service = parse_unit(UNITS / file)
        assert one(service, "Service", "Sockets") == "quoted.socket", file
        assert "quoted.socket" in one(service, "Unit", "Requires").split(), file
        assert "quoted.socket" in one(service, "Unit", "After").split(), file
        # quoted adopts the descriptor by the socket's FileDescriptorName
        assert environment(service)["QUOTED_SERVER_LISTEN"] == f"systemd:domain=INET:name={name}"


def test_the_other_services_listen_on_loopback() -> None:
    template = parse_unit(UNITS / "quoted@.service")
    assert environment(template)["QUOTED_SERVER_LISTEN"] == "tcp:%i:interface=127.0.0.1"
    # quoted.service listens on [server] listen, whose default is loopback
    assert "QUOTED_SERVER_LISTEN" not in environment(parse_unit(UNITS / "quoted.service"))
    shipped = str(ROOT / "etc" / "quoted.conf")
    assert load_config(shipped, {}, dev=True).server.listen == "tcp:8080:interface=127.0.0.1"
    # the two that share a default port do not run together
    assert one(parse_unit(UNITS / "quoted.service"), "Unit", "Conflicts") == "quoted-socket.service"
    assert one(parse_unit(UNITS / "quoted-socket.service"), "Unit", "Conflicts") == "quoted.service"


@pytest.mark.parametrize("file", SERVICES)
def test_service_wiring(file: str) -> None:
    unit = parse_unit(UNITS / file)
    service = unit["Service"]
    credential = one(unit, "Service", "LoadCredential")
    assert credential == "jwt-secret:/etc/quoted/jwt-secret"
    assert environment(unit)["QUOTED_AUTH_SECRET_FILE"] == "%d/jwt-secret"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartPreventExitStatus") == "1"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    exec_start = one(unit, "Service", "ExecStart")
    assert "--nodaemon" in exec_start and "--pidfile= " in exec_start
    assert exec_start.endswith("quoted --config /etc/quoted/quoted.conf")
    assert service["User"] == ["quoted"] and service["Group"] == ["quoted"]
    missing = [key for key in HARDENING if key not in service]
    assert not missing, f"{file}: hardening lost: {missing}"
    assert service["CapabilityBoundingSet"] == [""] and service["AmbientCapabilities"] == [""]
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]


def test_the_environment_names_are_quoted_settings() -> None:
    """Every QUOTED_ variable the units set is one the configuration accepts, and the shipped
    (all commented) quoted.conf starts with the credential the units hand it."""
    names = {
        name
        for file in SERVICES
        for name in environment(parse_unit(UNITS / file))
        if name.startswith("QUOTED_")
    }
    assert names == {
        "QUOTED_AUTH_SECRET_FILE",
        "QUOTED_SERVER_LISTEN",
        "QUOTED_REDIS_ENABLED",
    }
    with pytest.raises(ConfigError, match=r"\[auth\] secret_file: no token key"):
        load_config(str(ROOT / "etc" / "quoted.conf"), {})


def test_shipped_config_starts_with_the_credential(tmp_path: Path) -> None:
    secret = tmp_path / "jwt-secret"
    secret.write_bytes(b"0123456789abcdefghijklmnopqrstuvwxyz")
    secret.chmod(0o600)
    config = load_config(
        str(ROOT / "etc" / "quoted.conf"), {"QUOTED_AUTH_SECRET_FILE": str(secret)}
    )
    assert config.auth.secret == secret.read_bytes()


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The units as shipped, ExecStart pointed at this virtualenv's twistd (verify checks that
    the binary exists), template instances named as the README names them."""
    bindir = Path(sys.executable).parent
    assert (bindir / "twistd").exists()
    for path in UNITS.iterdir():
        text = path.read_text().replace("/opt/quoted/bin/", f"{bindir}/")
        (tmp_path / path.name).write_text(text)
    names = ["quoted.socket", "quoted.service", "quoted-socket.service"]
    for template, instance in (("quoted@.service", "8081"), ("quoted-socket@.service", "1")):
        (tmp_path / template.replace("@", f"@{instance}")).symlink_to(tmp_path / template)
        names.append(template.replace("@", f"@{instance}"))
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(f"./{name}" for name in names)],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # systemd-analyze also reports units it loads as dependencies (network-online.target...):
    # only lines about our own files count
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if re.search(r"quoted[-@.\w]*\.(service|socket)", line)
    ]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr
