"""How SSH failures are classified at the adapter boundary: retry later, or needs a user.

==========================  ==================  =============================================
class                       kind                when
==========================  ==================  =============================================
HostUnreachableError        temporary           refused, timed out, no route, reset, the
                                                transport died, the SSH handshake broke off
CommandTimeoutError         temporary           a remote command outlived its timeout (it is
                                                killed on the host by ``timeout``)
ChannelRefusedError         temporary           the host refused a new channel (sshd's
                                                MaxSessions) or did not open one in time;
                                                nothing was sent, the connection stays
HostBusyError               temporary           no channel to the host became free in time
OutputTooLargeError         permanent           a command printed more than the bound
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


class ChannelRefusedError(TemporaryError):
    """The host refused to open a channel on a live connection, or did not open it in time.

    Nothing was sent; the connection stays usable for the commands already running on it
    (sshd refuses channels beyond its MaxSessions with "administratively prohibited").
    """

    reason = "HostBusy"


class HostBusyError(TemporaryError):
    """Every channel the adapter may open to the host stayed busy for the queue timeout."""

    reason = "HostBusy"


class OutputTooLargeError(PermanentError):
    """A remote command printed more than the adapter keeps; it was stopped."""

    reason = "OutputTooLarge"


class CommandTimeoutError(TemporaryError):
    """A remote command did not finish within its timeout (killed on the host, channel closed)."""

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
