"""libvirt errors classified where libvirt is called: not found, temporary or permanent.

=====================================  =======================  =========================
libvirt error                          kvmfleet error           meaning for the caller
=====================================  =======================  =========================
NO_DOMAIN, NO_STORAGE_POOL,            LibvirtNotFoundError     already gone: success for
NO_STORAGE_VOL, NO_DOMAIN_METADATA...  (NotFoundError)          deletes
OPERATION_INVALID                      OperationInvalidError    wrong state ("domain is
                                       (PermanentError)         not running"): callers
                                                                may treat as done
host key refused by ssh / libssh       LibvirtHostKeyError      HostKeyMismatch
AUTH_FAILED, "Permission denied"       LibvirtAuthError         AuthenticationFailed
XML_ERROR, INVALID_ARG,                LibvirtPermanentError    the request is wrong;
CONFIG_UNSUPPORTED, DOM_EXIST...                                libvirt's message says why
SYSTEM_ERROR, RPC, NO_CONNECT,         LibvirtUnavailableError  LibvirtUnavailable: retry
OPERATION_TIMEOUT, AGENT_*...          (TemporaryError)
anything else (INTERNAL_ERROR,         LibvirtTemporaryError    retried, slower
OPERATION_FAILED...)                   (TemporaryError)
=====================================  =======================  =========================

A domain start that libvirt answered with a failure (QEMU did not start: ``/dev/kvm`` not
openable, an emulator argument refused, a disk it cannot open, KVM not available) is not
an unavailable host:
:func:`classify_start` makes it a :class:`StartFailedError` (reason ``StartFailed``) unless
the failure is the connection's own (RPC, keepalive, SSH transport).

Use :func:`libvirt_errors` around every libvirt call, or :func:`classify` on a caught
``libvirt.libvirtError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt

from kvmfleet.errors import KvmfleetError, NotFoundError, PermanentError, TemporaryError

NOT_FOUND_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_DOMAIN_METADATA,
        libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_SECRET,
        libvirt.VIR_ERR_NO_INTERFACE,
        libvirt.VIR_ERR_NO_NODE_DEVICE,
    }
)

UNAVAILABLE_CODES = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_AGENT_UNSYNCED,
        libvirt.VIR_ERR_RESOURCE_BUSY,
        libvirt.VIR_ERR_NO_SERVER,
        libvirt.VIR_ERR_NO_CLIENT,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_ERR_SSH,
        libvirt.VIR_ERR_LIBSSH,
    }
)

PERMANENT_CODES = frozenset(
    {
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_ERR_XML_INVALID_SCHEMA,
        libvirt.VIR_ERR_INVALID_ARG,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_DOM_EXIST,
        libvirt.VIR_ERR_STORAGE_VOL_EXIST,
        libvirt.VIR_ERR_OPERATION_DENIED,
        libvirt.VIR_ERR_ACCESS_DENIED,
        libvirt.VIR_ERR_CPU_INCOMPATIBLE,
        libvirt.VIR_ERR_MIGRATE_UNSAFE,
        libvirt.VIR_ERR_INVALID_MAC,
        libvirt.VIR_ERR_OS_TYPE,
        libvirt.VIR_ERR_NO_OS,
        libvirt.VIR_ERR_NO_SOURCE,
        libvirt.VIR_ERR_NO_TARGET,
        libvirt.VIR_ERR_NO_NAME,
        libvirt.VIR_ERR_INVALID_DOMAIN,
        libvirt.VIR_ERR_INVALID_STORAGE_POOL,
        libvirt.VIR_ERR_INVALID_STORAGE_VOL,
    }
)

CONNECTION_ERROR_DOMAINS = frozenset(
    {
        libvirt.VIR_FROM_RPC,
        libvirt.VIR_FROM_REMOTE,
        libvirt.VIR_FROM_SSH,
        libvirt.VIR_FROM_LIBSSH,
    }
)
"""libvirt error domains of the connection itself (an INTERNAL_ERROR there is transient)."""

_HOST_KEY_REFUSED = re.compile(
    r"host key verification failed|remote host identification has changed"
    r"|host key is known for|can't verify the session host key|differs from stored identity",
    re.IGNORECASE,
)
_AUTH_REFUSED = re.compile(r"permission denied \((publickey|password|keyboard)", re.IGNORECASE)

UNAVAILABLE_DELAY = 15.0
OTHER_DELAY = 60.0


class LibvirtErrorDetails:
    """What libvirt said: its error code, error domain and message (mixed into the errors)."""

    code: int | None = None
    domain: int | None = None
    libvirt_message: str = ""


class LibvirtNotFoundError(LibvirtErrorDetails, NotFoundError):
    """The domain / pool / volume does not exist (for deletes: already gone)."""


class LibvirtUnavailableError(LibvirtErrorDetails, TemporaryError):
    """libvirt cannot be reached or did not answer in time; try again later."""

    reason = "LibvirtUnavailable"


class LibvirtTemporaryError(LibvirtErrorDetails, TemporaryError):
    """A libvirt failure that is not known to be permanent (retried, more slowly)."""

    reason = "LibvirtError"


class StartFailedError(LibvirtErrorDetails, TemporaryError):
    """libvirt answered a domain start with a failure: QEMU did not start (its message says
    why). The host is reachable; the domain stays off; retried with a backoff."""

    reason = "StartFailed"


class LibvirtPermanentError(LibvirtErrorDetails, PermanentError):
    """libvirt refused the request itself (bad XML, unsupported configuration...)."""

    reason = "LibvirtRefused"


class OperationInvalidError(LibvirtPermanentError):
    """The operation does not fit the object's state, e.g. destroying a domain that is off."""

    reason = "OperationInvalid"


class LibvirtHostKeyError(LibvirtPermanentError):
    """The SSH transport refused the host's key (it is not the expected one)."""

    reason = "HostKeyMismatch"


class LibvirtAuthError(LibvirtPermanentError):
    """The host refused the SSH key of the libvirt connection."""

    reason = "AuthenticationFailed"


def error_details(error: Any) -> tuple[int | None, int | None, str]:
    """``(code, domain, message)`` of a ``libvirt.libvirtError`` (message never None)."""
    code = error.get_error_code()
    domain = error.get_error_domain()
    message = error.get_error_message() or str(error) or "unknown libvirt error"
    return code, domain, " ".join(str(message).split())


def _kind(code: int | None, domain: int | None, message: str) -> type[KvmfleetError]:
    if _HOST_KEY_REFUSED.search(message):
        return LibvirtHostKeyError
    if code == libvirt.VIR_ERR_AUTH_FAILED or _AUTH_REFUSED.search(message):
        return LibvirtAuthError
    if code in NOT_FOUND_CODES:
        return LibvirtNotFoundError
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return OperationInvalidError
    if code in PERMANENT_CODES:
        return LibvirtPermanentError
    if code in UNAVAILABLE_CODES or domain in CONNECTION_ERROR_DOMAINS:
        return LibvirtUnavailableError
    return LibvirtTemporaryError


def classify(error: Any, context: str = "", detail: str = "") -> KvmfleetError:
    """The kvmfleet error for a ``libvirt.libvirtError`` (not raised: returned).

    ``context`` says what was attempted (``"domain 'vm1': start"``) and prefixes the
    message, which otherwise is libvirt's own; ``detail`` (e.g. what the ssh client said)
    is appended and taken into account.
    """
    code, domain, message = error_details(error)
    if detail:
        message = f"{message} (ssh: {' '.join(detail.split())})"
    kind = _kind(code, domain, message)
    text = f"{context}: {message}" if context else message
    if issubclass(kind, TemporaryError):
        delay = UNAVAILABLE_DELAY if kind is LibvirtUnavailableError else OTHER_DELAY
        result: KvmfleetError = kind(text, delay=delay)
    else:
        result = kind(text)
    assert isinstance(result, LibvirtErrorDetails)
    result.code, result.domain, result.libvirt_message = code, domain, message
    return result


def classify_start(error: Any, context: str = "") -> KvmfleetError:
    """:func:`classify` for a failed domain start: a failure libvirt reports about the
    domain itself (not about the connection) is a :class:`StartFailedError`.

    That includes a refusal at start time ("Domain requires KVM, but it is not
    available"): the definition was accepted, so what is missing is on the host, and
    the retry finds out when it is back. "Already running" (OPERATION_INVALID), a
    refused host key or SSH key keep their own classes.
    """
    result = classify(error, context)
    code = getattr(result, "code", None)
    domain = getattr(result, "domain", None)
    of_connection = domain in CONNECTION_ERROR_DOMAINS or (
        code in UNAVAILABLE_CODES and code != libvirt.VIR_ERR_SYSTEM_ERROR
    )
    started_types = (LibvirtTemporaryError, LibvirtUnavailableError, LibvirtPermanentError)
    if type(result) not in started_types or of_connection:
        return result
    assert isinstance(result, LibvirtErrorDetails)
    started = StartFailedError(result.message, delay=UNAVAILABLE_DELAY)
    started.code, started.domain, started.libvirt_message = code, domain, result.libvirt_message
    return started


@contextmanager
def libvirt_errors(context: str) -> Iterator[None]:
    """Translate any ``libvirt.libvirtError`` raised inside into :func:`classify`'s error."""
    try:
        yield
    except libvirt.libvirtError as error:
        raise classify(error, context) from error


def is_not_found(error: BaseException) -> bool:
    """True for a classified not-found error (the thing is already gone)."""
    return isinstance(error, NotFoundError)
