"""SSH host keys: known_hosts form, OpenSSH fingerprints, and Strict / TrustOnFirstUse checks.

A host key is written as in known_hosts without the host name: ``ssh-ed25519 AAAA...``.
Verification runs inside paramiko's handshake, right after key exchange and before any
authentication: paramiko calls the policy's ``missing_host_key`` (no key is ever loaded
into the client's own host key store, so every key reaches the policy), and a policy
that raises aborts the connection before a single command could be sent. paramiko's
``AutoAddPolicy`` / ``WarningPolicy`` are never used.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import paramiko

from kvmfleet.domain.specs import HostKeyPolicy
from kvmfleet.domain.validation import validate_host_public_key
from kvmfleet.ssh.errors import HostKeyMismatchError, HostKeyUnknownError

RSA_SIGNATURE_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
"""Host key algorithms that prove an ``ssh-rsa`` key, strongest first."""


@dataclass(frozen=True)
class HostKey:
    """A public host key: its type name and the raw SSH wire blob."""

    key_type: str
    blob: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: object, field: str = "hostKey") -> HostKey:
        """Parse ``"<type> <base64> [comment]"``; raises InvalidSpecError naming ``field``."""
        key_type, encoded = validate_host_public_key(text, field).split(" ")
        return cls(key_type, base64.b64decode(encoded))

    @classmethod
    def from_paramiko(cls, key: paramiko.PKey) -> HostKey:
        """The key a server presented in the handshake."""
        blob = key.asbytes()
        length = int.from_bytes(blob[:4], "big")
        return cls(blob[4 : 4 + length].decode("ascii", "replace"), blob)

    @property
    def line(self) -> str:
        """known_hosts form without host name: ``ssh-ed25519 AAAA...``."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint as OpenSSH prints it: ``SHA256:<base64, no padding>``."""
        return fingerprint_of_blob(self.blob)

    def __str__(self) -> str:
        return self.line


def fingerprint_of_blob(blob: bytes) -> str:
    """``SHA256:<base64 of sha256(blob), no padding>`` (what ``ssh-keygen -lf`` prints)."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fingerprint(host_key: str) -> str:
    """The SHA256 fingerprint of a host key in known_hosts form."""
    return HostKey.parse(host_key).fingerprint


def normalize_host_key(host_key: str, field: str = "hostKey") -> str:
    """The canonical ``"<type> <base64>"`` form (comment dropped); InvalidSpecError if bad."""
    return HostKey.parse(host_key, field).line


@dataclass(frozen=True)
class HostKeyCheck:
    """What a connection expects of the host's key: a policy and the key known so far.

    ``expected`` is the canonical known_hosts form: ``spec.hostKey`` for Strict, the key
    recorded in status for TrustOnFirstUse (None before the first connection). Hashable:
    it is part of the session pool's key.
    """

    policy: HostKeyPolicy
    expected: str | None = None

    def __post_init__(self) -> None:
        if self.expected is not None:
            object.__setattr__(self, "expected", normalize_host_key(self.expected))

    @classmethod
    def strict(cls, host_key: str | None) -> HostKeyCheck:
        """Accept only ``host_key`` (None: refuse every host, HostKeyMissing)."""
        return cls(HostKeyPolicy.STRICT, host_key)

    @classmethod
    def trust_on_first_use(cls, recorded: str | None = None) -> HostKeyCheck:
        """Accept the first key if none is recorded yet; afterwards only the recorded one."""
        return cls(HostKeyPolicy.TRUST_ON_FIRST_USE, recorded)

    @property
    def expected_key(self) -> HostKey | None:
        """The expected key, parsed."""
        return None if self.expected is None else HostKey.parse(self.expected)

    def preferred_algorithms(self) -> tuple[str, ...]:
        """Host key algorithms to ask the server for first (those that prove the key)."""
        expected = self.expected_key
        if expected is None:
            return ()
        if expected.key_type == "ssh-rsa":
            return RSA_SIGNATURE_ALGORITHMS
        return (expected.key_type,)

    def require_verifiable(self, host: str) -> None:
        """Raise HostKeyUnknownError if this check can accept no key at all (Strict, no key)."""
        if self.policy is HostKeyPolicy.STRICT and self.expected is None:
            raise HostKeyUnknownError(
                f"{host}: hostKeyPolicy is Strict but no hostKey is given; set spec.hostKey "
                "(ssh-keyscan the host, or read /etc/ssh/ssh_host_ed25519_key.pub on it) "
                "or use hostKeyPolicy: TrustOnFirstUse"
            )


def verify_host_key(check: HostKeyCheck, seen: HostKey, host: str) -> None:
    """Accept ``seen`` under ``check`` or raise HostKeyMismatchError / HostKeyUnknownError."""
    check.require_verifiable(host)
    expected = check.expected_key
    if expected is None:
        return  # TrustOnFirstUse, nothing recorded yet: the caller records ``seen``.
    if seen.blob != expected.blob:
        raise HostKeyMismatchError(
            f"{host}: the host key does not match: expected {expected.fingerprint} "
            f"({expected.key_type}), the host presented {seen.fingerprint} ({seen.key_type}); "
            "nothing was sent to the host. If the host was reinstalled on purpose, update "
            "the expected key",
            expected=expected.fingerprint,
            seen=seen.fingerprint,
        )


class _VerifyingPolicy(paramiko.MissingHostKeyPolicy):
    """Base of the two policies: verify in the handshake, remember what was seen."""

    def __init__(self, check: HostKeyCheck) -> None:
        self.check = check
        self.seen: HostKey | None = None

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        seen = HostKey.from_paramiko(key)
        self.seen = seen
        verify_host_key(self.check, seen, hostname)
        self._accepted(seen)

    def _accepted(self, seen: HostKey) -> None:
        """Hook called after a key was accepted."""


class StrictHostKeyPolicy(_VerifyingPolicy):
    """Accept exactly the expected key; refuse any other, and refuse all if none is given."""

    def __init__(self, expected: str | None) -> None:
        super().__init__(HostKeyCheck.strict(expected))


class TrustOnFirstUsePolicy(_VerifyingPolicy):
    """Accept the first key when none is recorded and record it; refuse any other later.

    ``recorded`` is what the caller persists (KvmHost ``status``); the policy updates its
    own copy on first use so that one policy object refuses a second, different key.
    """

    def __init__(self, recorded: str | None = None) -> None:
        super().__init__(HostKeyCheck.trust_on_first_use(recorded))

    @property
    def recorded(self) -> str | None:
        """The key trusted so far (known_hosts form), None before the first connection."""
        return self.check.expected

    def _accepted(self, seen: HostKey) -> None:
        if self.check.expected is None:
            self.check = HostKeyCheck.trust_on_first_use(seen.line)


def policy_for(check: HostKeyCheck) -> StrictHostKeyPolicy | TrustOnFirstUsePolicy:
    """A fresh paramiko policy object implementing ``check``."""
    if check.policy is HostKeyPolicy.STRICT:
        return StrictHostKeyPolicy(check.expected)
    return TrustOnFirstUsePolicy(check.expected)
