"""Reading back live domain XML: identity, size, NICs, disks, consoles."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmfleet.domain.domainxml.metadata import DiskMetadata, NodeMetadata
from kvmfleet.domain.domainxml.parse import LiveDisk, LiveNic, parse_domain
from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.errors import PermanentError

from .golden_cases import CASES, UID, UUID

LIVE = (Path(__file__).parent / "fixtures" / "live-kvm1-running.xml").read_text()


def test_parse_running_domain_as_libvirt_writes_it() -> None:
    info = parse_domain(LIVE)
    assert info.name == "kvm1"
    assert info.uuid == UUID
    assert info.virt_type == "kvm"
    assert info.vcpus == 2
    assert info.memory_kib == 2 * 1024 * 1024
    assert info.node == NodeMetadata(
        uid=UID,
        namespace="default",
        name="kvm1",
        generation=4,
        serial_port=0,
        serial_speed=115200,
        disks=(DiskMetadata("hda", "vda"), DiskMetadata("hdb", "vdb")),
    )
    assert (info.uid, info.namespace, info.node_name) == (UID, "default", "kvm1")
    assert info.nics == (
        LiveNic(mac="52:54:00:4a:1c:07", bridge="br0", model="virtio", type="bridge"),
        LiveNic(mac="52:54:00:99:88:77", bridge="virbr0", model="e1000", type="network"),
    )
    assert info.macs == ("52:54:00:4a:1c:07", "52:54:00:99:88:77")
    assert info.disks == (
        LiveDisk(
            target="vda",
            bus="virtio",
            source_type="network",
            source="/srv/vms/kvm1.hda.qcow2",
            protocol="nfs",
            host="10.77.0.1",
            driver_type="qcow2",
            name="hda",
        ),
        LiveDisk(
            target="vdb",
            bus="virtio",
            source_type="file",
            source="/var/lib/kvmfleet/pools/b086b41c92c8/kvm1.hdb.qcow2",
            driver_type="qcow2",
            name="hdb",
        ),
        LiveDisk(target="hdc", bus="ide", device="cdrom", source_type="file", driver_type="raw"),
    )
    assert info.serial_pty == "/dev/pts/3"
    assert info.vnc_port == 5901
    assert info.vnc_listen == "0.0.0.0"
    assert info.boot == ("network", "hd")


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_reads_back_what_build_wrote(case: str) -> None:
    golden = CASES[case]
    spec = VirtualNodeSpec.from_dict(golden.spec)
    info = parse_domain(golden.build())
    assert info.name == golden.name
    assert info.virt_type == golden.virt_type
    assert info.vcpus == spec.cpus
    assert info.memory_kib == spec.memory_kib
    assert info.uid == UID
    assert info.namespace == "default"
    assert info.node_name == golden.name
    assert info.node is not None and info.node.serial_speed == spec.serial.speed
    assert [(nic.mac, nic.bridge, nic.model) for nic in info.nics] == [
        (mac, nic.bridge, nic.model.value) for mac, nic in zip(golden.macs, spec.nics, strict=True)
    ]
    assert [(disk.name, disk.target, disk.bus) for disk in info.disks] == [
        (disk.name, target, disk.bus.value)
        for disk, target in zip(spec.disks, spec.disk_targets, strict=True)
    ]
    assert info.boot == tuple(device.value for device in spec.boot_order)
    assert info.serial_pty is None  # only a running domain has a pty
    assert info.vnc_port is None  # autoport: no port until it runs


def test_parse_foreign_domain_without_metadata() -> None:
    info = parse_domain(
        "<domain type='qemu'><name>legacy</name><memory unit='MiB'>512</memory>"
        "<vcpu>1</vcpu><devices><console type='pty' tty='/dev/pts/9'/>"
        "<graphics type='spice' port='5930'/></devices></domain>"
    )
    assert info.name == "legacy"
    assert info.uuid is None
    assert info.node is None
    assert (info.uid, info.namespace, info.node_name) == (None, None, None)
    assert info.memory_kib == 512 * 1024
    assert info.vcpus == 1
    assert info.nics == () and info.disks == ()
    assert info.serial_pty == "/dev/pts/9"
    assert info.vnc_port is None


def test_parse_minimal_domain() -> None:
    info = parse_domain("<domain><name> x </name></domain>")
    assert info.name == "x"
    assert (info.vcpus, info.memory_kib, info.virt_type) == (None, None, None)


@pytest.mark.parametrize(
    ("memory", "kib"),
    [
        ("<memory>1024</memory>", 1024),
        ("<memory unit='KiB'>1048576</memory>", 1048576),
        ("<memory unit='k'>2048</memory>", 2048),
        ("<memory unit='b'>1048576</memory>", 1024),
        ("<memory unit='bytes'>2048</memory>", 2),
        ("<memory unit='KB'>1024</memory>", 1000),
        ("<memory unit='M'>2</memory>", 2048),
        ("<memory unit='MiB'>2</memory>", 2048),
        ("<memory unit='MB'>1</memory>", 976),
        ("<memory unit='G'>1</memory>", 1048576),
        ("<memory unit='GiB'>4</memory>", 4194304),
        ("<memory unit='GB'>1</memory>", 976562),
        ("<memory unit='TiB'>1</memory>", 1024**3),
        ("<memory unit='parsecs'>1</memory>", None),
        ("<memory>lots</memory>", None),
    ],
)
def test_memory_units(memory: str, kib: int | None) -> None:
    assert parse_domain(f"<domain><name>m</name>{memory}</domain>").memory_kib == kib


@pytest.mark.parametrize(
    ("graphics", "port"),
    [
        ("<graphics type='vnc' port='5900'/>", 5900),
        ("<graphics type='vnc' port='-1' autoport='yes'/>", None),
        ("<graphics type='vnc'/>", None),
        ("<graphics type='spice' port='5901'/><graphics type='vnc' port='5902'/>", 5902),
    ],
)
def test_vnc_port(graphics: str, port: int | None) -> None:
    xml = f"<domain><name>g</name><devices>{graphics}</devices></domain>"
    assert parse_domain(xml).vnc_port == port


@pytest.mark.parametrize(
    ("xml", "fragment"),
    [
        ("", "cannot parse domain XML"),
        ("<domain><name>x</domain>", "cannot parse domain XML"),
        ("not xml", "cannot parse domain XML"),
        ("<network><name>default</name></network>", "not a domain XML document"),
    ],
)
def test_parse_rejects_garbage(xml: str, fragment: str) -> None:
    with pytest.raises(PermanentError) as caught:
        parse_domain(xml)
    assert fragment in caught.value.message
    assert caught.value.reason == "InvalidDomainXML"


def test_parse_does_not_expand_external_entities() -> None:
    xml = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<domain><name>&x;</name></domain>"
    )
    with pytest.raises(PermanentError):
        parse_domain(xml)
