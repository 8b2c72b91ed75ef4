"""The XML device classes, one element family at a time, and the builder's argument checks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kvmfleet.domain.domainxml.build import build_domain_config, build_domain_xml
from kvmfleet.domain.domainxml.disk import BlockDisk, DiskIdentity, FileDisk, NetworkDisk
from kvmfleet.domain.domainxml.domain import Controller, DomainConfig, LifecycleAction, VirtType
from kvmfleet.domain.domainxml.graphics import VncGraphics, format_valid_to
from kvmfleet.domain.domainxml.interface import BridgeInterface
from kvmfleet.domain.domainxml.metadata import XMLNS, DiskMetadata, NodeMetadata
from kvmfleet.domain.domainxml.serial import SerialConsole
from kvmfleet.domain.guestcpu import HYPERVISOR_DEFAULT
from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.domain.storage_urls import NfsAccess, disk_location, parse_storage_url
from kvmfleet.errors import InvalidSpecError


def text(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode")


@pytest.mark.parametrize(
    ("device", "xml"),
    [
        (
            FileDisk("/var/lib/vms/kvm1.hda.qcow2", "vda"),
            '<disk type="file" device="disk"><driver name="qemu" type="qcow2" cache="none" />'
            '<source file="/var/lib/vms/kvm1.hda.qcow2" /><target dev="vda" bus="virtio" /></disk>',
        ),
        (
            FileDisk("/v/a.qcow2", "hda", bus="ide"),
            '<disk type="file" device="disk"><driver name="qemu" type="qcow2" cache="none" />'
            '<source file="/v/a.qcow2" /><target dev="hda" bus="ide" /></disk>',
        ),
        (
            NetworkDisk("/srv/vms/kvm1.hda.qcow2", "10.0.0.1", "vda"),
            '<disk type="network" device="disk"><driver name="qemu" type="qcow2" cache="none" />'
            '<source protocol="nfs" name="/srv/vms/kvm1.hda.qcow2"><host name="10.0.0.1" />'
            '<identity user="root" group="root" /></source><target dev="vda" bus="virtio" />'
            "</disk>",
        ),
        (
            NetworkDisk("/srv/a.qcow2", "nfs1", "sda", bus="scsi", identity=None),
            '<disk type="network" device="disk"><driver name="qemu" type="qcow2" cache="none" />'
            '<source protocol="nfs" name="/srv/a.qcow2"><host name="nfs1" /></source>'
            '<target dev="sda" bus="scsi" /></disk>',
        ),
        (
            NetworkDisk(
                "/srv/a.qcow2", "nfs1", "vda", identity=DiskIdentity("libvirt-qemu", "kvm")
            ),
            '<disk type="network" device="disk"><driver name="qemu" type="qcow2" cache="none" />'
            '<source protocol="nfs" name="/srv/a.qcow2"><host name="nfs1" />'
            '<identity user="libvirt-qemu" group="kvm" /></source>'
            '<target dev="vda" bus="virtio" /></disk>',
        ),
        (
            BlockDisk("/dev/sdb", "vdb"),
            '<disk type="block" device="disk"><driver name="qemu" type="raw" cache="none" />'
            '<source dev="/dev/sdb" /><target dev="vdb" bus="virtio" /></disk>',
        ),
        (
            BridgeInterface("br0", "52:54:00:00:00:01"),
            '<interface type="bridge"><mac address="52:54:00:00:00:01" />'
            '<source bridge="br0" /><model type="virtio" /></interface>',
        ),
        (
            BridgeInterface("br1", "52:54:00:00:00:02", model="rtl8139"),
            '<interface type="bridge"><mac address="52:54:00:00:00:02" />'
            '<source bridge="br1" /><model type="rtl8139" /></interface>',
        ),
        (
            VncGraphics(),
            '<graphics type="vnc" port="-1" autoport="yes" listen="0.0.0.0">'
            '<listen type="address" address="0.0.0.0" /></graphics>',
        ),
        (
            VncGraphics(listen="127.0.0.1", port=5905, password="p&'<\""),
            '<graphics type="vnc" port="5905" autoport="no" listen="127.0.0.1" '
            'passwd="p&amp;\'&lt;&quot;"><listen type="address" address="127.0.0.1" /></graphics>',
        ),
        (
            VncGraphics(password_valid_to=datetime(2030, 1, 1, tzinfo=UTC)),
            '<graphics type="vnc" port="-1" autoport="yes" listen="0.0.0.0">'
            '<listen type="address" address="0.0.0.0" /></graphics>',
        ),
        (
            Controller("scsi", "virtio-scsi"),
            '<controller type="scsi" index="0" model="virtio-scsi" />',
        ),
        (Controller("usb", index=1), '<controller type="usb" index="1" />'),
        (
            NodeMetadata("u", "ns", "vm"),
            f'<metadata><kvmfleet:node xmlns:kvmfleet="{XMLNS}" uid="u" namespace="ns" '
            'name="vm" /></metadata>',
        ),
        (
            NodeMetadata("u", "ns", "vm", 2, 1, 9600, (DiskMetadata("hda", "vda"),)),
            f'<metadata><kvmfleet:node xmlns:kvmfleet="{XMLNS}" uid="u" namespace="ns" '
            'name="vm" generation="2"><kvmfleet:serial port="1" speed="9600" />'
            '<kvmfleet:disk name="hda" target="vda" /></kvmfleet:node></metadata>',
        ),
    ],
)
def test_device_elements(device: Any, xml: str) -> None:
    assert text(device.to_element()) == xml


def test_serial_console_pair() -> None:
    serial, console = SerialConsole(port=1).to_elements()
    assert text(serial) == '<serial type="pty"><target port="1" /></serial>'
    assert text(console) == '<console type="pty"><target type="serial" port="1" /></console>'


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "2030-01-02T03:04:05"),
        (datetime(2030, 1, 2, 3, 4, 5, 999999, tzinfo=UTC), "2030-01-02T03:04:05"),
        (datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))), "2030-01-02T03:04:05"),
    ],
)
def test_valid_to_is_utc(moment: datetime, expected: str) -> None:
    assert format_valid_to(moment) == expected


def test_valid_to_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_valid_to(datetime(2030, 1, 1))


def test_metadata_round_trip() -> None:
    meta = NodeMetadata("u", "ns", "vm", 5, 0, 115200, (DiskMetadata("hda", "vda"),))
    assert NodeMetadata.from_metadata(ET.fromstring(text(meta.to_element()))) == meta
    assert NodeMetadata.from_metadata(None) is None
    assert NodeMetadata.from_metadata(ET.fromstring("<metadata><other/></metadata>")) is None


def test_domain_config_options() -> None:
    config = DomainConfig(
        virt_type=VirtType.QEMU,
        name="x",
        memory_kib=1024,
        vcpus=1,
        machine="q35",
        emulator="/usr/bin/qemu-system-x86_64",
        boot=("hd",),
        on_poweroff=LifecycleAction.PRESERVE,
    )
    xml = config.to_xml()
    assert '<type machine="q35">hvm</type>' in xml
    assert "<emulator>/usr/bin/qemu-system-x86_64</emulator>" in xml
    assert "<on_poweroff>preserve</on_poweroff>" in xml
    assert "<cpu" not in xml and "<uuid>" not in xml and "<metadata>" not in xml
    assert xml.endswith("</domain>\n")


SPEC = VirtualNodeSpec.from_dict(
    {"nics": [{"bridge": "br0"}], "disks": [{"name": "hda", "size": "1Gi"}]}
)
LOCATIONS = [
    disk_location(parse_storage_url("dir:///vms"), "kvm1", "hda", nfs_access=NfsAccess.MOUNT)
]
GOOD: dict[str, Any] = {
    "name": "kvm1",
    "uid": "u1",
    "namespace": "default",
    "virt_type": "kvm",
    "disks": LOCATIONS,
    "macs": ["52:54:00:00:00:01"],
}


@pytest.mark.parametrize(
    ("changes", "error", "fragment"),
    [
        ({"disks": []}, ValueError, "1 disks in the spec but 0 locations"),
        ({"macs": []}, ValueError, "1 NICs in the spec but 0 MACs"),
        ({"macs": ["nope"]}, InvalidSpecError, "macs[0]: 'nope' is not a MAC address"),
        ({"virt_type": "xen"}, ValueError, "'xen' is not a valid VirtType"),
        ({"name": "Kvm1"}, InvalidSpecError, "name: 'Kvm1' is not a DNS-1123 subdomain"),
        ({"namespace": "a.b"}, InvalidSpecError, "namespace: 'a.b' is not a DNS-1123 label"),
        ({"uid": ""}, InvalidSpecError, "uid: must not be empty"),
        ({"domain_name": "kvm 1"}, InvalidSpecError, "domain name: 'kvm 1' is not a valid"),
        ({"uuid": "x"}, InvalidSpecError, "uuid: 'x' is not a valid UUID"),
        ({"arch": "x86_64;id"}, InvalidSpecError, "arch: 'x86_64;id' must be"),
        ({"machine": "pc q35"}, InvalidSpecError, "machine: 'pc q35' must be"),
        ({"vnc_listen": "0.0.0.0 "}, InvalidSpecError, "vnc listen address"),
        (
            {"vnc_password": "p", "vnc_valid_to": datetime(2030, 1, 1)},
            ValueError,
            "timezone-aware",
        ),
    ],
)
def test_build_rejects_bad_inputs(
    changes: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        build_domain_xml(SPEC, **{**GOOD, **changes})
    assert fragment in str(caught.value)


def test_build_rejects_duplicate_macs() -> None:
    spec = replace(SPEC, nics=SPEC.nics * 2)
    with pytest.raises(ValueError, match="same MAC"):
        build_domain_xml(spec, **{**GOOD, "macs": ["52:54:00:00:00:01", "52:54:00:00:00:01"]})


def test_build_domain_name_and_normalization() -> None:
    config = build_domain_config(
        SPEC,
        **{
            **GOOD,
            "domain_name": "default_kvm1",
            "macs": ["52-54-00-AA-BB-CC"],
            "uuid": "6F1C9C1E-4F4E-4A43-9A43-0C3F7C5E7D11",
            "virt_type": VirtType.QEMU,
        },
    )
    assert config.name == "default_kvm1"
    assert config.metadata is not None and config.metadata.name == "kvm1"
    assert config.interfaces[0].mac == "52:54:00:aa:bb:cc"
    assert config.uuid == "6f1c9c1e-4f4e-4a43-9a43-0c3f7c5e7d11"
    assert config.cpu == HYPERVISOR_DEFAULT  # nothing asked for: no <cpu> element
    assert "<cpu" not in config.to_xml()


def test_vnc_password_ignored_when_vnc_is_off() -> None:
    spec = VirtualNodeSpec.from_dict(
        {
            "nics": [{"bridge": "br0"}],
            "disks": [{"name": "hda", "size": "1Gi"}],
            "vnc": {"enabled": False},
        }
    )
    xml = build_domain_xml(spec, **GOOD, vnc_password="secret")
    assert "graphics" not in xml and "secret" not in xml


def test_vnc_valid_to_without_password_is_not_written() -> None:
    xml = build_domain_xml(SPEC, **GOOD, vnc_valid_to=datetime(2030, 1, 1, tzinfo=UTC))
    assert "passwdValidTo" not in xml
