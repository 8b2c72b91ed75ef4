"""Error classes every layer raises: temporary (retry later) or permanent (needs a user)."""

from __future__ import annotations


class KvmfleetError(Exception):
    """Base of every error kvmfleet raises on purpose."""

    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class TemporaryError(KvmfleetError):
    """Something that may succeed if tried again later (host unreachable, timeout, busy)."""

    reason = "TemporaryFailure"

    def __init__(self, message: str, *, reason: str | None = None, delay: float = 15.0) -> None:
        super().__init__(message, reason=reason)
        self.delay = delay


class PermanentError(KvmfleetError):
    """Something that will fail the same way until the spec or the world changes."""

    reason = "PermanentFailure"


class InvalidSpecError(PermanentError):
    """The object's spec asks for something invalid (bad name, unsafe path, ...)."""

    reason = "InvalidSpec"


class NotFoundError(KvmfleetError):
    """The thing asked for does not exist (for deletes: already gone, i.e. success)."""

    reason = "NotFound"
