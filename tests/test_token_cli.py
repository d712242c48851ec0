"""quoted-token (quoted/server/tokencli.py): what it mints verifies with quoted's own verifier,
it refuses what it should, and neither the key nor anything but the token reaches stdout."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from twisted.internet.task import Clock

from quoted.server.auth import TokenVerifier
from quoted.server.tokencli import main

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"k3y-0f-the-0perat0r-never-printed-Zq9!"
ISSUER = "https://issuer.example"
AUDIENCE = "quoted-prod"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


def header_of(token: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(token.partition(".")[0] + "==")
    )
    return decoded


def clock_now() -> Clock:
    clock = Clock()
    clock.advance(time.time())
    return clock


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt-secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def config_file(tmp_path: Path, secret_file: Path) -> Path:
    path = tmp_path / "quoted.conf"
    path.write_text(
        f"[auth]\nsecret_file = {secret_file}\nissuer = {ISSUER}\naudience = {AUDIENCE}\n"
    )
    return path


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JWT_SECRET", "QUOTED_AUTH_SECRET_FILE", "QUOTED_AUTH_PUBLIC_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


def assert_no_key(key_text: bytes, *outputs: str) -> None:
    for output in outputs:
        assert key_text.decode() not in output
        assert base64.b64encode(key_text).decode() not in output


def test_hs256_from_the_config_verifies_with_the_servers_verifier(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code, out, err = run(
        capsys,
        *("-c", str(config_file), "--sub", "risk-desk", "--symbols", "aapl, MSFT"),
        *("--scope", "quotes:publish", "--ttl", "30d"),
    )
    assert (code, err) == (0, "")
    assert out.endswith("\n") and out.count("\n") == 1
    token = out.strip()
    claims = TokenVerifier(clock_now(), secret=SECRET, issuer=ISSUER, audience=AUDIENCE).verify(
        token
    )
    assert claims.subject == "risk-desk"
    assert claims.entitled("AAPL") and claims.entitled("MSFT") and not claims.entitled("IBM")
    raw = claims_of(token)
    assert raw["iss"] == ISSUER and raw["aud"] == AUDIENCE and raw["scope"] == "quotes:publish"
    assert raw["symbols"] == ["AAPL", "MSFT"]
    assert raw["exp"] - raw["iat"] == 30 * 24 * 3600  # type: ignore[operator]
    assert header_of(token)["alg"] == "HS256"
    assert_no_key(SECRET, out, err)


def test_secret_file_alone_and_every_symbol(
    capsys: pytest.CaptureFixture[str], secret_file: Path
) -> None:
    code, out, err = run(
        capsys, "--secret-file", str(secret_file), "--sub", "svc", "--symbols", "*", "--ttl", "15m"
    )
    assert (code, err) == (0, "")
    token = out.strip()
    claims = TokenVerifier(clock_now(), secret=SECRET).verify(token)
    assert claims.entitled("ANYTHING")
    raw = claims_of(token)
    assert "symbols" not in raw and "iss" not in raw and "aud" not in raw
    assert raw["exp"] - raw["iat"] == 900  # type: ignore[operator]


def test_command_line_iss_and_aud_override_the_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, secret_file: Path
) -> None:
    config = tmp_path / "plain.conf"
    config.write_text(f"[auth]\nsecret_file = {secret_file}\n")
    code, out, _ = run(
        capsys, "-c", str(config), "--sub", "t", "--symbols", "A", "--iss", "me", "--aud", "you"
    )
    assert code == 0
    assert claims_of(out.strip())["iss"] == "me" and claims_of(out.strip())["aud"] == "you"


def _pem_pair(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
    ids=["Ed25519", "ES256"],
)
def test_private_key_tokens_verify_with_the_configured_public_key(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    make_key: object,
    alg: str,
) -> None:
    assert callable(make_key)
    private, public = _pem_pair(make_key())
    (tmp_path / "issuer.pem").write_bytes(private)
    (tmp_path / "issuer.pub").write_bytes(public)
    config = tmp_path / "quoted.conf"
    config.write_text(
        f"[auth]\npublic_key_file = {tmp_path / 'issuer.pub'}\naudience = {AUDIENCE}\n"
    )
    code, out, err = run(
        capsys,
        *("-c", str(config), "--private-key", str(tmp_path / "issuer.pem")),
        *("--sub", "feed-1", "--symbols", "EUR/USD", "--kid", "k1"),
    )
    assert (code, err) == (0, "")
    token = out.strip()
    assert header_of(token) == {"alg": alg, "kid": "k1", "typ": "JWT"}
    verifier = TokenVerifier(clock_now(), public_key_pem=public, audience=AUDIENCE)
    claims = verifier.verify(token)
    assert claims.subject == "feed-1" and claims.entitled("EUR/USD")
    body = b"".join(private.splitlines()[1:-1]).decode()
    assert body not in out + err


def test_rsa_key_defaults_to_rs256_and_takes_ps256(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for extra, alg in (((), "RS256"), (("--alg", "PS256"), "PS256")):
        code, out, _ = run(
            capsys, "--private-key", str(pem), "--sub", "s", "--symbols", "A", *extra
        )
        assert code == 0
        assert header_of(out.strip())["alg"] == alg
        TokenVerifier(clock_now(), public_key_pem=public).verify(out.strip())


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == "", (code, out, err)
    assert err.startswith("quoted-token: ") and err.count("\n") == 1, err
    assert_no_key(SECRET, err)
    return err


def test_refuses_a_development_config(capsys: pytest.CaptureFixture[str]) -> None:
    """etc/quoted.conf as shipped (every line commented) configures no key: refused, not a
    token signed with nothing or with a secret of its own."""
    err = refusal(capsys, "-c", str(ROOT / "etc" / "quoted.conf"), "--sub", "s", "--symbols", "*")
    assert "no token key is configured" in err and "development" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "no key: give -c FILE, --secret-file FILE or --private-key FILE"),
        (("--secret-file", "{secret}", "--private-key", "{secret}"), "give one key, not both"),
        (("--secret-file", "{secret}", "--alg", "RS256"), "--alg RS256: a secret signs HS256"),
        (("--secret-file", "{secret}", "--ttl", "0"), "want at least 1s"),
        (("--secret-file", "{secret}", "--ttl", "400d"), "at most 366d"),
        (("--secret-file", "{secret}", "--ttl", "10"), "missing unit"),
        (("--secret-file", "{secret}", "--kid", "x"), "--kid: only with --private-key"),
        (("--secret-file", "{short}"), "--secret-file"),
        (("--secret-file", "{missing}"), "no such file"),
        (("--private-key", "{secret}"), "not a PEM private key"),
        (("--private-key", "{public}"), "not a PEM private key"),
        (("--private-key", "{ed25519}", "--alg", "ES256"), "--alg ES256: this key signs EdDSA"),
        (("-c", "{config}", "--private-key", "{ed25519}"), "does not verify with the [auth] key"),
        (("-c", "{pubconfig}"), "give --private-key FILE"),
        (("-c", "{pubconfig}", "--private-key", "{other}"), "does not verify with the [auth]"),
        (("-c", "{missing}"), "-c "),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40] or "no key",
)
def test_refusals(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    secret_file: Path,
    config_file: Path,
    argv: tuple[str, ...],
    message: str,
) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    short.chmod(0o600)
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = _pem_pair(key)
    (tmp_path / "ed.pem").write_bytes(private)
    (tmp_path / "ed.pub").write_bytes(public)
    (tmp_path / "other.pem").write_bytes(_pem_pair(ed25519.Ed25519PrivateKey.generate())[0])
    pubconfig = tmp_path / "pub.conf"
    pubconfig.write_text(f"[auth]\npublic_key_file = {tmp_path / 'ed.pub'}\n")
    paths = {
        "secret": secret_file,
        "short": short,
        "missing": tmp_path / "missing",
        "public": tmp_path / "ed.pub",
        "ed25519": tmp_path / "ed.pem",
        "other": tmp_path / "other.pem",
        "config": config_file,
        "pubconfig": pubconfig,
    }
    filled = [arg.format(**{k: str(v) for k, v in paths.items()}) for arg in argv]
    err = refusal(capsys, *filled, "--sub", "s", "--symbols", "A")
    assert message in err
    body = b"".join(private.splitlines()[1:-1]).decode()
    assert body not in err


@pytest.mark.parametrize(
    ("symbols", "message"), [("", "empty"), ("AAPL,*", "'*'"), ("-X", "'-X'"), (",,", "empty")]
)
def test_bad_symbols_are_refused(
    capsys: pytest.CaptureFixture[str], secret_file: Path, symbols: str, message: str
) -> None:
    err = refusal(capsys, "--secret-file", str(secret_file), "--sub", "s", f"--symbols={symbols}")
    assert "--symbols" in err and message in err


def test_sub_and_symbols_are_required(
    capsys: pytest.CaptureFixture[str], secret_file: Path
) -> None:
    """No silent "every symbol" default: an operator says ``--symbols '*'``."""
    with pytest.raises(SystemExit) as exit_:
        main(["--secret-file", str(secret_file), "--sub", "s"])
    assert exit_.value.code == 2
    assert "--symbols" in capsys.readouterr().err


def test_the_console_script(tmp_path: Path, secret_file: Path) -> None:
    """The installed ``quoted-token`` (setup.cfg's console_scripts) prints one line."""
    script = shutil.which("quoted-token", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("quoted-token is not installed in this environment (make install-test)")
    result = subprocess.run(
        [script, "--secret-file", str(secret_file), "--sub", "ci", "--symbols", "*"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    TokenVerifier(clock_now(), secret=SECRET).verify(result.stdout.strip())
