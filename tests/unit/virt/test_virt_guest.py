"""Guests: domain operations on libvirt's test driver; VNC device XML."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import libvirt
import pytest
from virt_testdriver import domain_xml

from kvmfleet.errors import NotFoundError, PermanentError
from kvmfleet.virt.errors import OperationInvalidError
from kvmfleet.virt.guest import (
    Guests,
    PauseReason,
    PowerState,
    _vnc_graphics_xml,
    pause_of,
    power_state,
    vnc_password_expiry,
)


@pytest.fixture
def guests(connection) -> Guests:
    return Guests(connection)


def test_define_lookup_and_state(guests) -> None:
    uuid = guests.define(domain_xml("vm1"))
    summary = guests.lookup("vm1")
    assert (summary.name, summary.uuid, summary.state) == ("vm1", uuid, PowerState.OFF)
    assert summary.uid == "0b0c1d2e-1111-2222-3333-444455556666"
    assert guests.lookup(uuid).name == "vm1"
    assert guests.lookup(uuid.upper()).name == "vm1"
    assert guests.state("vm1") is PowerState.OFF
    assert guests.exists("vm1") and not guests.exists("vm2")
    assert "<name>vm1</name>" in guests.xml("vm1") and "<name>vm1</name>" in guests.xml(
        "vm1", live=False
    )
    assert guests.info("vm1").uid == summary.uid


def test_redefine_keeps_the_uuid(guests) -> None:
    assert guests.define(domain_xml("vm1")) == guests.define(domain_xml("vm1"))


def test_power_cycle_is_idempotent(guests) -> None:
    guests.define(domain_xml("vm1"))
    assert guests.start("vm1") is True
    assert guests.start("vm1") is False
    assert guests.state("vm1") is PowerState.ON
    guests.reboot("vm1")
    guests.reset("vm1")
    assert guests.shutdown("vm1") is True
    assert guests.state("vm1") is PowerState.OFF
    assert guests.shutdown("vm1") is False
    assert guests.destroy("vm1") is False
    guests.start("vm1")
    assert guests.destroy("vm1") is True
    assert guests.destroy("vm1") is False


def test_reboot_and_reset_of_a_stopped_domain_are_operation_invalid(guests) -> None:
    guests.define(domain_xml("vm1"))
    for action in (guests.reboot, guests.reset):
        with pytest.raises(OperationInvalidError):
            action("vm1")


def test_undefine_twice_is_success(guests) -> None:
    guests.define(domain_xml("vm1"))
    assert guests.undefine("vm1") is True
    assert guests.undefine("vm1") is False
    with pytest.raises(NotFoundError):
        guests.state("vm1")


def test_missing_domains_are_not_found(guests) -> None:
    for action in (guests.state, guests.start, guests.destroy, guests.lookup, guests.xml):
        with pytest.raises(NotFoundError):
            action("nope")


def test_bad_xml_is_permanent(guests) -> None:
    with pytest.raises(PermanentError):
        guests.define("<domain type='test'><name>x</name></domain>")
    with pytest.raises(PermanentError, match=r"invalid domain XML"):
        guests.define("<domain")


def test_power_state_mapping() -> None:
    assert power_state(1) is PowerState.ON  # running
    assert power_state(3) is PowerState.PAUSED
    assert power_state(5) is PowerState.OFF
    assert power_state(6) is PowerState.CRASHED
    assert power_state(0) is PowerState.UNKNOWN
    assert power_state(99) is PowerState.UNKNOWN


LIVE = """<domain type='kvm'><name>vm1</name><devices>
<graphics type='spice' autoport='yes'/>
<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>
</devices></domain>"""


def test_vnc_device_xml_keeps_the_device_and_sets_the_password() -> None:
    until = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    xml = _vnc_graphics_xml(LIVE, "pa'ss<&>", until)
    assert xml.startswith('<graphics type="vnc" port="5901"')
    assert 'passwd="pa\'ss&lt;&amp;&gt;"' in xml
    assert 'passwdValidTo="2030-01-02T01:04:05"' in xml
    assert '<listen type="address" address="127.0.0.1"' in xml
    assert "passwdValidTo" not in _vnc_graphics_xml(LIVE, "x", None)


def test_a_domain_without_vnc() -> None:
    with pytest.raises(PermanentError) as caught:
        _vnc_graphics_xml("<domain><name>vm1</name><devices/></domain>", "secret", None)
    assert caught.value.reason == "NoVncConsole"
    assert "secret" not in caught.value.message


def test_expiry_needs_a_timezone() -> None:
    assert vnc_password_expiry(datetime(2030, 1, 1, tzinfo=UTC)) == "2030-01-01T00:00:00"
    with pytest.raises(ValueError):
        vnc_password_expiry(datetime(2030, 1, 1))


@pytest.mark.parametrize("password", ["", "tab\there", "ünï", "new\nline"])
def test_unusable_vnc_passwords(guests, password: str) -> None:
    guests.define(domain_xml("vm1"))
    with pytest.raises(ValueError):
        guests.set_vnc_password("vm1", password)


def test_a_paused_domain_says_why(guests) -> None:
    guests.define(domain_xml("vm1"))
    guests.start("vm1")
    assert guests.pause("vm1") is None
    guests._domain("vm1").suspend()
    pause = guests.pause("vm1")
    assert pause is not None and pause.reason is PauseReason.USER
    assert not pause.reason.transient
    assert "libvirt reason: User" in pause.message


@pytest.mark.parametrize(
    ("state", "reason", "errors", "expected", "words"),
    [
        (libvirt.VIR_DOMAIN_RUNNING, 1, {}, None, ""),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, {}, PauseReason.USER, ""),
        (
            libvirt.VIR_DOMAIN_PAUSED,
            libvirt.VIR_DOMAIN_PAUSED_IOERROR,
            {"vda": libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE},
            PauseReason.NO_SPACE,
            "disk vda: no space left on its storage",
        ),
        (
            libvirt.VIR_DOMAIN_PAUSED,
            libvirt.VIR_DOMAIN_PAUSED_IOERROR,
            {"vda": libvirt.VIR_DOMAIN_DISK_ERROR_UNSPEC, "vdb": 0},
            PauseReason.IO_ERROR,
            "disk vda: I/O error",
        ),
        (
            libvirt.VIR_DOMAIN_PAUSED,
            libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
            {},
            PauseReason.MIGRATION,
            "",
        ),
        (libvirt.VIR_DOMAIN_PAUSED, 999, {}, PauseReason.UNKNOWN, ""),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, {}, PauseReason.GUEST_SUSPENDED, ""),
    ],
)
def test_pause_of(state, reason, errors, expected, words) -> None:
    pause = pause_of(state, reason, errors)
    assert (pause.reason if pause else None) is expected
    if pause is not None:
        assert words in pause.message
        assert "vdb" not in pause.message
    assert PauseReason.MIGRATION.transient and not PauseReason.NO_SPACE.transient
