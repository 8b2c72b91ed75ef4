"""SshCredentials and SshTarget: key formats, passphrases, and no secret in reprs or errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmfleet.errors import InvalidSpecError, PermanentError
from kvmfleet.ssh.errors import InvalidPrivateKeyError
from kvmfleet.ssh.session import SshCredentials, SshTarget


def keygen(
    tmp_path: Path, key_type: str, fmt: str | None = None, passphrase: str = ""
) -> tuple[bytes, str]:
    path = tmp_path / f"id_{key_type}_{fmt or 'openssh'}_{bool(passphrase)}"
    extra = ["-b", "2048"] if key_type == "rsa" else []
    if fmt:
        extra += ["-m", fmt]
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, *extra, "-N", passphrase, "-C", "", "-f", str(path)],
        check=True,
    )
    public = " ".join(path.with_suffix(".pub").read_text().split()[:2])
    return path.read_bytes(), public


@pytest.mark.parametrize(
    ("key_type", "fmt"),
    [
        ("ed25519", None),
        ("ecdsa", None),
        ("rsa", None),
        ("ecdsa", "PEM"),
        ("rsa", "PEM"),
        ("rsa", "PKCS8"),
        ("ed25519", "PKCS8"),
    ],
)
def test_reads_openssh_pem_and_pkcs8_keys(tmp_path: Path, key_type: str, fmt: str | None) -> None:
    private, public = keygen(tmp_path, key_type, fmt)
    credentials = SshCredentials(private)
    assert credentials.public_key == public
    assert credentials.fingerprint.startswith("SHA256:")


@pytest.mark.parametrize("fmt", [None, "PEM"])
def test_encrypted_keys_need_the_right_passphrase(tmp_path: Path, fmt: str | None) -> None:
    private, public = keygen(tmp_path, "ecdsa", fmt, passphrase="s3cret-phrase")
    assert SshCredentials(private, b"s3cret-phrase").public_key == public
    with pytest.raises(InvalidPrivateKeyError, match="no passphrase"):
        SshCredentials(private)
    with pytest.raises(InvalidPrivateKeyError, match="wrong passphrase") as caught:
        SshCredentials(private, b"wrong")
    assert "s3cret" not in str(caught.value) and "wrong" not in caught.value.message.split("(")[0]


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"   \n",
        b"not a key",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    ],
)
def test_garbage_is_an_invalid_key(garbage: bytes) -> None:
    with pytest.raises(InvalidPrivateKeyError) as caught:
        SshCredentials(garbage)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "InvalidSSHKey"


def test_no_key_material_in_repr_str_or_errors(tmp_path: Path) -> None:
    private, _ = keygen(tmp_path, "ed25519")
    credentials = SshCredentials(private, b"unused-passphrase")
    body = b"".join(private.splitlines()[1:-1]).decode()
    chunks = [body[i : i + 16] for i in range(0, len(body), 16)]
    for text in (repr(credentials), str(credentials), f"{credentials!r}"):
        assert not any(chunk in text for chunk in chunks)
        assert "unused-passphrase" not in text
        assert "SHA256:" in text
    damaged = private.replace(body[40:60].encode(), b"A" * 20)
    try:
        SshCredentials(damaged)
    except InvalidPrivateKeyError as error:
        assert not any(chunk in str(error) for chunk in chunks)
        assert error.__cause__ is None and error.__suppress_context__


def test_target_is_validated_and_canonical() -> None:
    target = SshTarget("KVMHOST1.Example.org", 2222, "root")
    assert target.address == "kvmhost1.example.org"
    assert str(target) == "root@kvmhost1.example.org:2222"
    assert SshTarget("[fd00::1]").host_port == "[fd00::1]:22"
    assert SshTarget("10.77.0.11") == SshTarget("10.77.0.11", 22, "root")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": "host;reboot"},
        {"address": "-oProxyCommand=x"},
        {"address": "a b"},
        {"address": "10.0.0.1", "port": 0},
        {"address": "10.0.0.1", "port": 70000},
        {"address": "10.0.0.1", "user": "root;id"},
        {"address": "10.0.0.1", "user": "-l"},
    ],
)
def test_target_refuses_unsafe_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidSpecError):
        SshTarget(**kwargs)  # type: ignore[arg-type]
