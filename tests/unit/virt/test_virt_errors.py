"""Classification of libvirt errors: real ones from the test driver, and constructed ones."""

from __future__ import annotations

import libvirt
import pytest
from virt_testdriver import domain_xml

from kvmfleet.errors import NotFoundError, PermanentError, TemporaryError
from kvmfleet.virt.errors import (
    LibvirtAuthError,
    LibvirtHostKeyError,
    LibvirtNotFoundError,
    LibvirtPermanentError,
    LibvirtTemporaryError,
    LibvirtUnavailableError,
    OperationInvalidError,
    StartFailedError,
    classify,
    classify_start,
    libvirt_errors,
)


def made(code: int, message: str, domain: int = libvirt.VIR_FROM_QEMU) -> libvirt.libvirtError:
    """A libvirtError as libvirt-python builds it, with the given error record."""
    error = libvirt.libvirtError(message)
    error.err = (code, domain, message, 2, None, None, None, 0, 0)
    return error


def test_real_no_domain_is_not_found(connection) -> None:
    with pytest.raises(LibvirtNotFoundError) as caught, libvirt_errors("lookup vm1"):
        connection.conn.lookupByName("vm1")
    error = caught.value
    assert isinstance(error, NotFoundError)
    assert error.code == libvirt.VIR_ERR_NO_DOMAIN
    assert error.message.startswith("lookup vm1: Domain not found")
    assert isinstance(error.__cause__, libvirt.libvirtError)


def test_real_no_pool_and_no_volume_are_not_found(connection) -> None:
    with pytest.raises(NotFoundError), libvirt_errors("pool"):
        connection.conn.storagePoolLookupByName("nope")
    with pytest.raises(NotFoundError), libvirt_errors("volume"):
        connection.conn.storageVolLookupByPath("/nope/x.qcow2")


def test_real_destroy_of_a_stopped_domain_is_operation_invalid(connection) -> None:
    domain = connection.conn.defineXML(domain_xml("vm1"))
    with pytest.raises(OperationInvalidError) as caught, libvirt_errors("destroy"):
        domain.destroy()
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "OperationInvalid"
    assert "not running" in caught.value.message


def test_real_xml_error_is_permanent_with_libvirts_message(connection) -> None:
    with pytest.raises(LibvirtPermanentError) as caught, libvirt_errors("define"):
        connection.conn.defineXML("<domain type='test'><name>x</name>")
    assert not isinstance(caught.value, TemporaryError)
    assert caught.value.libvirt_message in caught.value.message


@pytest.mark.parametrize(
    ("code", "domain", "message", "kind", "reason"),
    [
        (
            libvirt.VIR_ERR_NO_STORAGE_VOL,
            libvirt.VIR_FROM_STORAGE,
            "no vol",
            LibvirtNotFoundError,
            "NotFound",
        ),
        (
            libvirt.VIR_ERR_NO_DOMAIN_METADATA,
            libvirt.VIR_FROM_DOMAIN,
            "none",
            LibvirtNotFoundError,
            "NotFound",
        ),
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            libvirt.VIR_FROM_RPC,
            "Cannot recv data: Connection reset by peer",
            LibvirtUnavailableError,
            "LibvirtUnavailable",
        ),
        (
            libvirt.VIR_ERR_RPC,
            libvirt.VIR_FROM_RPC,
            "rpc failed",
            LibvirtUnavailableError,
            "LibvirtUnavailable",
        ),
        (
            libvirt.VIR_ERR_NO_CONNECT,
            libvirt.VIR_FROM_REMOTE,
            "no connection driver",
            LibvirtUnavailableError,
            "LibvirtUnavailable",
        ),
        (
            libvirt.VIR_ERR_OPERATION_TIMEOUT,
            libvirt.VIR_FROM_QEMU,
            "cannot acquire state change lock",
            LibvirtUnavailableError,
            "LibvirtUnavailable",
        ),
        (
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
            libvirt.VIR_FROM_QEMU,
            "agent",
            LibvirtUnavailableError,
            "LibvirtUnavailable",
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_RPC,
            "internal error: client socket is closed",
            LibvirtUnavailableError,
            "LibvirtUnavailable",
        ),
        (
            libvirt.VIR_ERR_XML_ERROR,
            libvirt.VIR_FROM_DOMAIN,
            "XML error",
            LibvirtPermanentError,
            "LibvirtRefused",
        ),
        (
            libvirt.VIR_ERR_INVALID_ARG,
            libvirt.VIR_FROM_DOMAIN,
            "bad arg",
            LibvirtPermanentError,
            "LibvirtRefused",
        ),
        (
            libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
            libvirt.VIR_FROM_QEMU,
            "unsupported configuration: KVM is not supported",
            LibvirtPermanentError,
            "LibvirtRefused",
        ),
        (
            libvirt.VIR_ERR_OPERATION_INVALID,
            libvirt.VIR_FROM_DOMAIN,
            "domain is not running",
            OperationInvalidError,
            "OperationInvalid",
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_QEMU,
            "process exited while connecting to monitor",
            LibvirtTemporaryError,
            "LibvirtError",
        ),
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            libvirt.VIR_FROM_RPC,
            "Cannot recv data: Host key verification failed.: Connection reset by peer",
            LibvirtHostKeyError,
            "HostKeyMismatch",
        ),
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            libvirt.VIR_FROM_RPC,
            "Cannot recv data: No ED25519 host key is known for 10.0.0.1 and you have requested strict checking.",
            LibvirtHostKeyError,
            "HostKeyMismatch",
        ),
        (
            libvirt.VIR_ERR_AUTH_FAILED,
            libvirt.VIR_FROM_LIBSSH,
            "authentication failed: !!! SSH HOST KEY VERIFICATION FAILED !!!: Identity of host differs from stored identity",
            LibvirtHostKeyError,
            "HostKeyMismatch",
        ),
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            libvirt.VIR_FROM_RPC,
            "Cannot recv data: root@10.0.0.1: Permission denied (publickey,password).: Connection reset by peer",
            LibvirtAuthError,
            "AuthenticationFailed",
        ),
        (
            libvirt.VIR_ERR_AUTH_FAILED,
            libvirt.VIR_FROM_LIBSSH,
            "authentication failed: no auth method succeeded",
            LibvirtAuthError,
            "AuthenticationFailed",
        ),
    ],
)
def test_classification_table(
    code: int, domain: int, message: str, kind: type, reason: str
) -> None:
    error = classify(made(code, message, domain), "ctx")
    assert type(error) is kind
    assert error.reason == reason
    assert error.message == f"ctx: {message}"
    assert (error.code, error.domain, error.libvirt_message) == (code, domain, message)  # type: ignore[attr-defined]


def test_temporary_delays_differ() -> None:
    unavailable = classify(made(libvirt.VIR_ERR_RPC, "x", libvirt.VIR_FROM_RPC))
    other = classify(made(libvirt.VIR_ERR_INTERNAL_ERROR, "x"))
    assert isinstance(unavailable, TemporaryError) and isinstance(other, TemporaryError)
    assert unavailable.delay < other.delay


def test_an_error_without_a_record_is_temporary() -> None:
    raw = libvirt.libvirtError("virConnectOpen() failed")
    raw.err = None
    error = classify(raw)
    assert isinstance(error, TemporaryError)
    assert "virConnectOpen" in error.message


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), libvirt_errors("ctx"):
        raise KeyError("x")


@pytest.mark.parametrize(
    ("code", "domain", "message", "expected"),
    [
        # QEMU did not start: the host answered, the domain is off.
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_QEMU,
            "internal error: qemu unexpectedly closed the monitor: Could not access KVM "
            "kernel module: Permission denied",
            StartFailedError,
        ),
        (
            libvirt.VIR_ERR_OPERATION_FAILED,
            libvirt.VIR_FROM_QEMU,
            "operation failed: process exited while connecting to monitor: "
            "qemu-system-x86_64: -machine foo: unsupported machine type",
            StartFailedError,
        ),
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            libvirt.VIR_FROM_STORAGE,
            "Cannot access storage file '/nope.qcow2': No such file or directory",
            StartFailedError,
        ),
        # The connection's own failures stay "unavailable" (the state is unknown).
        (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, "connection reset", None),
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "Cannot recv data", None),
        (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_FROM_QEMU, "cannot acquire job", None),
        # Refusals and "already running" keep their classes.
        (
            libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
            libvirt.VIR_FROM_QEMU,
            "unsupported configuration: Domain requires KVM, but it is not available",
            StartFailedError,
        ),
        (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_FROM_SSH, "authentication failed", None),
        (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, "already active", None),
    ],
)
def test_a_failed_start_is_start_failed_unless_the_connection_failed(
    code: int, domain: int, message: str, expected: type | None
) -> None:
    error = classify_start(made(code, message, domain), "kvmhost1: domain 'vm1': start")
    plain = classify(made(code, message, domain), "kvmhost1: domain 'vm1': start")
    if expected is None:
        assert type(error) is type(plain)
    else:
        assert type(error) is expected
        assert isinstance(error, TemporaryError) and error.reason == "StartFailed"
        assert message in error.message and error.libvirt_message == message
        assert error.code == code
