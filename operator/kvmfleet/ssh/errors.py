"""How SSH failures are classified at the adapter boundary: retry later, or needs a user.

==========================  ==================  =============================================
class                       kind                when
==========================  ==================  =============================================
HostUnreachableError        temporary           refused, timed out, no route, reset, the
                                                transport died, the SSH handshake broke off
CommandTimeoutError         temporary           a remote command outlived its timeout
HostKeyMismatchError        permanent           the host showed another key than expected
HostKeyUnknownError         permanent           Strict policy without an expected key
AuthenticationError         permanent           the host refused our key
InvalidPrivateKeyError      permanent           the private key cannot be read
CommandError                caller decides      a remote command exited non-zero
==========================  ==================  =============================================

No message here ever contains private key material.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmfleet.errors import KvmfleetError, PermanentError, TemporaryError


class HostUnreachableError(TemporaryError):
    """The host cannot be reached over SSH now (refused, timeout, no route, reset)."""

    reason = "HostUnreachable"


class SessionClosedError(HostUnreachableError):
    """The session's transport is gone; nothing was started on the host.

    Raised before a command is sent, so retrying on a new session is always safe.
    """

    reason = "HostUnreachable"


class CommandTimeoutError(TemporaryError):
    """A remote command did not finish within its timeout (its channel was closed)."""

    reason = "CommandTimeout"

    def __init__(self, message: str, *, argv: Sequence[str], timeout: float) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.timeout = timeout


class HostKeyMismatchError(PermanentError):
    """The host presented a key other than the expected one; nothing was sent to it."""

    reason = "HostKeyMismatch"

    def __init__(self, message: str, *, expected: str, seen: str) -> None:
        super().__init__(message)
        self.expected_fingerprint = expected
        self.seen_fingerprint = seen


class HostKeyUnknownError(PermanentError):
    """Strict host key checking was asked for, but no host key is known to check against."""

    reason = "HostKeyMissing"


class AuthenticationError(PermanentError):
    """The host did not accept the private key for the user."""

    reason = "AuthenticationFailed"


class InvalidPrivateKeyError(PermanentError):
    """The private key cannot be used: not an ed25519/ecdsa/rsa key, or a wrong passphrase."""

    reason = "InvalidSSHKey"


class CommandError(KvmfleetError):
    """A remote command exited non-zero. Neither temporary nor permanent: callers decide."""

    reason = "CommandFailed"

    def __init__(
        self, message: str, *, argv: Sequence[str], exit_status: int, stderr: str, stdout: str = ""
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.exit_status = exit_status
        self.stderr = stderr
        self.stdout = stdout
