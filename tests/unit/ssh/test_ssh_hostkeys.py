"""Host keys: known_hosts form, fingerprints like ssh-keygen, Strict and TrustOnFirstUse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from kvmfleet.domain.specs import HostKeyPolicy
from kvmfleet.errors import InvalidSpecError, PermanentError
from kvmfleet.ssh.errors import HostKeyMismatchError, HostKeyUnknownError
from kvmfleet.ssh.hostkeys import (
    HostKey,
    HostKeyCheck,
    StrictHostKeyPolicy,
    TrustOnFirstUsePolicy,
    fingerprint,
    normalize_host_key,
    policy_for,
    verify_host_key,
)


def keygen(directory: Path, name: str, key_type: str = "ed25519") -> tuple[Path, str]:
    path = directory / name
    extra = ["-b", "2048"] if key_type == "rsa" else []
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            key_type,
            *extra,
            "-N",
            "",
            "-C",
            f"root@{name}",
            "-f",
            str(path),
        ],
        check=True,
    )
    return path, path.with_suffix(".pub").read_text().strip()


def paramiko_key(path: Path) -> paramiko.PKey:
    return paramiko.PKey.from_path(path)


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, key_type: str) -> None:
    path, public = keygen(tmp_path, f"k-{key_type}", key_type)
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]
    assert fingerprint(public) == listed
    assert HostKey.from_paramiko(paramiko_key(path)).fingerprint == listed


def test_known_hosts_form_drops_the_comment(tmp_path: Path) -> None:
    _, public = keygen(tmp_path, "k")
    key_type, blob, comment = public.split()
    assert comment == "root@k"
    assert normalize_host_key(public) == f"{key_type} {blob}"
    assert HostKey.parse(public).line == f"{key_type} {blob}"


@pytest.mark.parametrize(
    "bad",
    ["", "ssh-ed25519", "ssh-ed25519 !!!notbase64", "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBCL", 42],
)
def test_bad_host_keys_are_refused(bad: object) -> None:
    with pytest.raises(InvalidSpecError):
        HostKey.parse(bad)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[paramiko.PKey, str]]:
    result = {}
    for name in ("a", "b"):
        path, public = keygen(tmp_path, name)
        result[name] = (paramiko_key(path), public)
    return result


def test_strict_accepts_only_the_expected_key(keys) -> None:
    (key_a, public_a), (key_b, _) = keys["a"], keys["b"]
    policy = StrictHostKeyPolicy(public_a)
    policy.missing_host_key(None, "10.0.0.1", key_a)  # type: ignore[arg-type]
    assert policy.seen is not None and policy.seen.line == normalize_host_key(public_a)
    with pytest.raises(HostKeyMismatchError) as caught:
        policy.missing_host_key(None, "10.0.0.1", key_b)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, PermanentError)
    assert error.reason == "HostKeyMismatch"
    assert error.expected_fingerprint == fingerprint(public_a)
    assert error.seen_fingerprint == HostKey.from_paramiko(key_b).fingerprint
    assert error.expected_fingerprint in error.message and error.seen_fingerprint in error.message


def test_strict_without_a_key_refuses_every_host(keys) -> None:
    policy = StrictHostKeyPolicy(None)
    with pytest.raises(HostKeyUnknownError) as caught:
        policy.missing_host_key(None, "10.0.0.1", keys["a"][0])  # type: ignore[arg-type]
    assert caught.value.reason == "HostKeyMissing"


def test_trust_on_first_use_records_the_first_key_and_refuses_others(keys) -> None:
    (key_a, public_a), (key_b, _) = keys["a"], keys["b"]
    policy = TrustOnFirstUsePolicy()
    assert policy.recorded is None
    policy.missing_host_key(None, "h", key_a)  # type: ignore[arg-type]
    assert policy.recorded == normalize_host_key(public_a)
    policy.missing_host_key(None, "h", key_a)  # type: ignore[arg-type]
    with pytest.raises(HostKeyMismatchError):
        policy.missing_host_key(None, "h", key_b)  # type: ignore[arg-type]
    assert policy.recorded == normalize_host_key(public_a)


def test_trust_on_first_use_with_a_recorded_key_is_strict(keys) -> None:
    (key_a, public_a), (key_b, _) = keys["a"], keys["b"]
    policy = TrustOnFirstUsePolicy(public_a)
    policy.missing_host_key(None, "h", key_a)  # type: ignore[arg-type]
    with pytest.raises(HostKeyMismatchError):
        policy.missing_host_key(None, "h", key_b)  # type: ignore[arg-type]


def test_policies_are_never_paramikos_auto_add(keys) -> None:
    for check in (HostKeyCheck.strict(keys["a"][1]), HostKeyCheck.trust_on_first_use()):
        policy = policy_for(check)
        assert not isinstance(policy, paramiko.AutoAddPolicy | paramiko.WarningPolicy)


def test_check_is_hashable_and_canonical(keys) -> None:
    public = keys["a"][1]
    assert HostKeyCheck.strict(public) == HostKeyCheck(HostKeyPolicy.STRICT, public + " comment")
    assert len({HostKeyCheck.strict(public), HostKeyCheck.strict(public)}) == 1
    assert HostKeyCheck.strict(public).preferred_algorithms() == ("ssh-ed25519",)
    assert HostKeyCheck.trust_on_first_use().preferred_algorithms() == ()


def test_rsa_is_asked_for_with_sha2_signatures(tmp_path: Path) -> None:
    _, public = keygen(tmp_path, "r", "rsa")
    assert HostKeyCheck.strict(public).preferred_algorithms()[0] == "rsa-sha2-512"


def test_verify_host_key_is_pure(keys) -> None:
    seen = HostKey.from_paramiko(keys["a"][0])
    verify_host_key(HostKeyCheck.strict(keys["a"][1]), seen, "h")
    verify_host_key(HostKeyCheck.trust_on_first_use(), seen, "h")
    with pytest.raises(HostKeyMismatchError):
        verify_host_key(HostKeyCheck.strict(keys["b"][1]), seen, "h")
