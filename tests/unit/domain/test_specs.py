"""Spec models from the plain dicts Kubernetes gives: defaults, validation, all problems."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kvmfleet.domain.quantities import GIB
from kvmfleet.domain.specs import (
    BootDevice,
    BridgeSpec,
    CloneMode,
    DiskBus,
    DiskSpec,
    HostKeyPolicy,
    KvmHostSpec,
    NfsAccess,
    NicModel,
    NicSpec,
    Overcommit,
    ReclaimPolicy,
    RunStrategy,
    SecretKeyRef,
    SerialSpec,
    SourceSpec,
    StoragePoolSpec,
    VirtualNodeSpec,
    VmMasterSpec,
    VncSpec,
)
from kvmfleet.domain.storage_urls import parse_storage_url
from kvmfleet.domain.validation import validate_libvirt_uri
from kvmfleet.errors import InvalidSpecError

_BLOB = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + bytes(36)
HOST_KEY = "ssh-ed25519 " + base64.b64encode(_BLOB).decode()


def problems(error: InvalidSpecError) -> list[str]:
    return error.message.split("; ")


# --- VirtualNode -------------------------------------------------------------------------


@pytest.mark.parametrize("data", [{}, None])
def test_virtualnode_defaults(data: object) -> None:
    spec = VirtualNodeSpec.from_dict(data)
    assert spec == VirtualNodeSpec()
    assert spec.host_ref is None
    assert spec.cpus == 1
    assert spec.memory_bytes == GIB
    assert spec.memory_mib == 1024
    assert spec.memory_kib == 1024 * 1024
    assert spec.nics == () and spec.disks == ()
    assert spec.boot_order == (BootDevice.NETWORK, BootDevice.HD)
    assert spec.serial == SerialSpec(port=0, speed=115200)
    assert spec.vnc == VncSpec(enabled=True)
    assert spec.run_strategy is RunStrategy.ALWAYS
    assert spec.reclaim_policy is ReclaimPolicy.RETAIN
    assert spec.shutdown_grace_period_seconds == 60


def test_virtualnode_xcat_kvm1() -> None:
    spec = VirtualNodeSpec.from_dict(
        {
            "hostRef": "kvmhost1",
            "cpus": 2,
            "memory": "1Gi",
            "nics": [{"bridge": "br0"}],
            "disks": [{"name": "hda", "size": "20Gi", "storage": "dir:///var/lib/vms"}],
            "serial": {"port": 0, "speed": 115200},
            "vnc": {"enabled": True},
            "os": "rhels6",
            "arch": "x86_64",
            "profile": "compute",
        }
    )
    assert spec.host_ref == "kvmhost1"
    assert spec.cpus == 2
    assert spec.nics == (NicSpec(bridge="br0", model=NicModel.VIRTIO, mac=None),)
    assert spec.disks == (
        DiskSpec(
            name="hda",
            size_bytes=20 * GIB,
            storage=parse_storage_url("dir:///var/lib/vms"),
            bus=DiskBus.VIRTIO,
        ),
    )
    assert spec.disk_targets == ["vda"]
    assert spec.bridges == frozenset({"br0"})
    assert (spec.os, spec.arch, spec.profile) == ("rhels6", "x86_64", "compute")


def test_virtualnode_all_fields() -> None:
    spec = VirtualNodeSpec.from_dict(
        {
            "cpus": 4,
            "memory": 3221225472,
            "nics": [
                {"bridge": "br0", "model": "e1000", "mac": "52:54:00:AA:BB:CC"},
                {"bridge": "br1", "model": "rtl8139"},
            ],
            "disks": [
                {"name": "hda", "storage": "nfs://10.0.0.1/srv/vms", "bus": "scsi"},
                {"name": "hdb", "size": "1G", "bus": "ide"},
            ],
            "source": {"vmMaster": "kvmm", "mode": "Detached"},
            "bootOrder": ["hd", "cdrom", "network"],
            "serial": {"port": 1, "speed": 9600},
            "vnc": {"enabled": False},
            "runStrategy": "Manual",
            "reclaimPolicy": "Delete",
            "shutdownGracePeriodSeconds": 0,
            "unknownField": "ignored",
        }
    )
    assert spec.memory_mib == 3072
    assert spec.nics[0] == NicSpec("br0", NicModel.E1000, "52:54:00:aa:bb:cc")
    assert spec.nics[1] == NicSpec("br1", NicModel.RTL8139, None)
    assert spec.disks[0].size_bytes is None
    assert spec.disks[0].bus is DiskBus.SCSI
    assert spec.disks[1].storage is None
    assert spec.disk_targets == ["sda", "hdb"]
    assert spec.source == SourceSpec("kvmm", CloneMode.DETACHED)
    assert spec.boot_order == (BootDevice.HD, BootDevice.CDROM, BootDevice.NETWORK)
    assert spec.serial == SerialSpec(1, 9600)
    assert not spec.vnc.enabled
    assert spec.run_strategy is RunStrategy.MANUAL
    assert spec.reclaim_policy is ReclaimPolicy.DELETE
    assert spec.shutdown_grace_period_seconds == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cpus": 0}, ["spec.cpus: must be >= 1 (got 0)"]),
        ({"cpus": "2"}, ["spec.cpus: must be an integer, not '2'"]),
        ({"cpus": True}, ["spec.cpus: must be an integer, not True"]),
        ({"memory": "1GB"}, ["spec.memory: '1GB' is not a quantity"]),
        ({"memory": "512Ki"}, ["spec.memory: must be at least 1Mi (got '512Ki')"]),
        ({"hostRef": "KVMHost1"}, ["spec.hostRef: 'KVMHost1' is not a DNS-1123 subdomain"]),
        ({"nics": {"bridge": "br0"}}, ["spec.nics: must be a list, not dict"]),
        (
            {"nics": ["br0"]},
            ["spec.nics[0]: must be an object, not str", "spec.nics[0].bridge: is required"],
        ),
        ({"nics": [{}]}, ["spec.nics[0].bridge: is required"]),
        (
            {"nics": [{"bridge": "br0;reboot"}]},
            ["spec.nics[0].bridge: 'br0;reboot' is not a valid interface name"],
        ),
        (
            {"nics": [{"bridge": "br0", "model": "ne2k"}]},
            ["spec.nics[0].model: must be one of virtio, e1000, rtl8139 (got 'ne2k')"],
        ),
        (
            {"nics": [{"bridge": "br0", "mac": "01:00:5e:00:00:01"}]},
            ["spec.nics[0].mac: '01:00:5e:00:00:01' is a multicast address"],
        ),
        (
            {
                "nics": [
                    {"bridge": "br0", "mac": "52:54:00:00:00:01"},
                    {"bridge": "br1", "mac": "52:54:00:00:00:01"},
                ]
            },
            ["spec.nics[1].mac: 52:54:00:00:00:01 is used twice"],
        ),
        ({"disks": [{"size": "1Gi"}]}, ["spec.disks[0].name: is required"]),
        (
            {"disks": [{"name": "hda"}]},
            ["spec.disks[0].size: is required unless spec.source is set"],
        ),
        (
            {"disks": [{"name": "hda", "size": 0}]},
            ["spec.disks[0].size: must be greater than zero"],
        ),
        (
            {"disks": [{"name": "hda", "size": "-1Gi"}]},
            ["spec.disks[0].size: '-1Gi' must not be negative"],
        ),
        (
            {"disks": [{"name": "HDA", "size": "1Gi"}]},
            ["spec.disks[0].name: 'HDA' is not a DNS-1123 label"],
        ),
        (
            {"disks": [{"name": "hda", "size": "1Gi", "storage": "s3://bucket"}]},
            ["spec.disks[0].storage: 's3://bucket' is not a storage URL"],
        ),
        (
            {"disks": [{"name": "hda", "size": "1Gi", "bus": "usb"}]},
            ["spec.disks[0].bus: must be one of virtio, scsi, ide (got 'usb')"],
        ),
        (
            {"disks": [{"name": "hda", "size": "1Gi"}, {"name": "hda", "size": "1Gi"}]},
            ["spec.disks[1].name: 'hda' is used twice"],
        ),
        (
            {"disks": [{"name": "hda", "size": "1Gi"}, {"name": "vda", "size": "1Gi"}]},
            ["spec.disks[1].name: disks 'hda' and 'vda' would both be the guest device vda"],
        ),
        ({"source": {"mode": "Attached"}}, ["spec.source.vmMaster: is required"]),
        (
            {"source": {"vmMaster": "kvmm", "mode": "Linked"}},
            ["spec.source.mode: must be one of Attached, Detached (got 'Linked')"],
        ),
        ({"bootOrder": []}, ["spec.bootOrder: must list at least one device"]),
        (
            {"bootOrder": ["pxe"]},
            ["spec.bootOrder[0]: must be one of network, hd, cdrom (got 'pxe')"],
        ),
        ({"bootOrder": ["hd", "hd"]}, ["spec.bootOrder[1]: 'hd' is listed twice"]),
        ({"serial": {"port": 4}}, ["spec.serial.port: must be <= 3 (got 4)"]),
        (
            {"serial": {"speed": 115201}},
            ["spec.serial.speed: must be one of 9600, 19200, 38400, 57600, 115200 (got 115201)"],
        ),
        ({"vnc": {"enabled": "yes"}}, ["spec.vnc.enabled: must be true or false, not 'yes'"]),
        ({"vnc": True}, ["spec.vnc: must be an object, not bool"]),
        (
            {"runStrategy": "always"},
            ["spec.runStrategy: must be one of Always, Halted, Manual (got 'always')"],
        ),
        (
            {"reclaimPolicy": "Purge"},
            ["spec.reclaimPolicy: must be one of Retain, Delete (got 'Purge')"],
        ),
        (
            {"shutdownGracePeriodSeconds": -1},
            ["spec.shutdownGracePeriodSeconds: must be >= 0 (got -1)"],
        ),
        ({"os": "rhel\n6"}, ["spec.os: must not contain control characters"]),
    ],
)
def test_virtualnode_rejects(data: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        VirtualNodeSpec.from_dict(data)
    found = problems(caught.value)
    assert len(found) == len(expected), found
    for message, fragment in zip(found, expected, strict=True):
        assert message.startswith(fragment), (message, fragment)


def test_virtualnode_reports_every_problem_at_once() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        VirtualNodeSpec.from_dict(
            {
                "cpus": 0,
                "memory": "lots",
                "nics": [{"bridge": "br0", "mac": "nope"}, {"model": "virtio"}],
                "disks": [{"name": "hda", "size": "1Gi", "storage": "dir://relative"}],
                "runStrategy": "Sometimes",
            }
        )
    found = problems(caught.value)
    assert [message.split(": ")[0] for message in found] == [
        "spec.cpus",
        "spec.memory",
        "spec.nics[0].mac",
        "spec.nics[1].bridge",
        "spec.disks[0].storage",
        "spec.runStrategy",
    ]
    assert caught.value.reason == "InvalidSpec"


def test_virtualnode_path_prefix_is_configurable() -> None:
    with pytest.raises(InvalidSpecError, match=r"^template\.spec\.cpus: "):
        VirtualNodeSpec.from_dict({"cpus": 0}, path="template.spec")


def test_virtualnode_spec_is_frozen() -> None:
    spec = VirtualNodeSpec()
    with pytest.raises(AttributeError):
        spec.cpus = 2  # type: ignore[misc]


# --- KvmHost -----------------------------------------------------------------------------

MINIMAL_HOST: dict[str, Any] = {
    "address": "10.77.0.11",
    "sshKeySecretRef": {"name": "kvmhost1-ssh", "namespace": "kvmfleet-system"},
    "hostKey": HOST_KEY,
}


def test_kvmhost_defaults() -> None:
    spec = KvmHostSpec.from_dict(MINIMAL_HOST)
    assert spec == KvmHostSpec(
        address="10.77.0.11",
        ssh_key_secret_ref=SecretKeyRef("kvmhost1-ssh", "kvmfleet-system", "ssh-privatekey"),
        host_key=HOST_KEY,
    )
    assert spec.port == 22
    assert spec.user == "root"
    assert spec.host_key_policy is HostKeyPolicy.STRICT
    assert spec.nfs_access is NfsAccess.MOUNT
    assert spec.overcommit == Overcommit(cpu=4.0, memory=1.0)
    assert not spec.maintenance
    assert spec.effective_libvirt_uri == "qemu+ssh://root@10.77.0.11:22/system"
    assert spec.default_storage is None
    assert spec.allows_namespace("anything")


def test_kvmhost_all_fields() -> None:
    spec = KvmHostSpec.from_dict(
        {
            "address": "fd00::11",
            "port": 2222,
            "user": "kvm",
            "sshKeySecretRef": {"name": "k", "namespace": "ns", "key": "id_ed25519"},
            "hostKeyPolicy": "TrustOnFirstUse",
            "bridges": [{"name": "br0", "interface": "eth0"}, {"name": "br1"}],
            "storagePools": [
                {"name": "vms", "url": "nfs://10.0.0.1/srv/vms"},
                {"name": "local", "url": "dir:///var/lib/libvirt/images"},
            ],
            "nfsAccess": "Direct",
            "maintenance": True,
            "allowedNamespaces": ["team-a", "team-b"],
            "overcommit": {"cpu": 8, "memory": 1.5},
        }
    )
    assert spec.host_key is None
    assert spec.host_key_policy is HostKeyPolicy.TRUST_ON_FIRST_USE
    assert spec.bridges == (BridgeSpec("br0", "eth0"), BridgeSpec("br1", None))
    assert spec.storage_pools[0] == StoragePoolSpec(
        "vms", parse_storage_url("nfs://10.0.0.1/srv/vms")
    )
    assert spec.default_storage == parse_storage_url("nfs://10.0.0.1/srv/vms")
    assert spec.nfs_access is NfsAccess.DIRECT
    assert spec.maintenance
    assert spec.allows_namespace("team-a") and not spec.allows_namespace("team-c")
    assert spec.overcommit == Overcommit(8.0, 1.5)
    assert spec.effective_libvirt_uri == "qemu+ssh://kvm@[fd00::11]:2222/system"
    assert spec.ssh_key_secret_ref.key == "id_ed25519"


def test_kvmhost_bad_policy_does_not_also_demand_a_host_key() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        KvmHostSpec.from_dict({**MINIMAL_HOST, "hostKey": None, "hostKeyPolicy": "AcceptAny"})
    assert problems(caught.value) == [
        "spec.hostKeyPolicy: must be one of Strict, TrustOnFirstUse (got 'AcceptAny')"
    ]


def test_kvmhost_libvirt_uri_override() -> None:
    uri = "qemu+libssh2://root@10.77.0.11:2222/system?sshauth=privkey"
    spec = KvmHostSpec.from_dict({**MINIMAL_HOST, "libvirtURI": uri})
    assert spec.effective_libvirt_uri == uri


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"address": None}, ["spec.address: is required"]),
        (
            {"address": "-oProxyCommand=x"},
            ["spec.address: '-oProxyCommand=x' is not a valid host name"],
        ),
        ({"sshKeySecretRef": None}, ["spec.sshKeySecretRef: is required"]),
        ({"sshKeySecretRef": {"name": "k"}}, ["spec.sshKeySecretRef.namespace: is required"]),
        (
            {"sshKeySecretRef": {"name": "k", "namespace": "n", "key": "a/b"}},
            ["spec.sshKeySecretRef.key: 'a/b' is not a valid Secret key"],
        ),
        ({"port": 0}, ["spec.port: must be between 1 and 65535 (got 0)"]),
        ({"user": "root;id"}, ["spec.user: 'root;id' is not a valid user name"]),
        ({"hostKey": None}, ["spec.hostKey: is required when hostKeyPolicy is Strict"]),
        ({"hostKey": "ssh-ed25519 !!"}, ["spec.hostKey: the key is not valid base64"]),
        (
            {"hostKeyPolicy": "Yolo"},
            ["spec.hostKeyPolicy: must be one of Strict, TrustOnFirstUse (got 'Yolo')"],
        ),
        (
            {"libvirtURI": "qemu+ext:///system?command=/bin/sh"},
            ["spec.libvirtURI: 'qemu+ext:///system?command=/bin/sh' must start with one of"],
        ),
        (
            {"bridges": [{"name": "br0"}, {"name": "br0"}]},
            ["spec.bridges[1].name: 'br0' is listed twice"],
        ),
        (
            {"bridges": [{"name": "br0", "interface": "eth 0"}]},
            ["spec.bridges[0].interface: 'eth 0' is not a valid interface name"],
        ),
        (
            {"storagePools": [{"name": "p", "url": "phy:/dev/../sdb"}]},
            ["spec.storagePools[0].url:"],
        ),
        ({"storagePools": [{"url": "dir:///a"}]}, ["spec.storagePools[0].name: is required"]),
        (
            {"storagePools": [{"name": "a", "url": "dir:///a"}, {"name": "b", "url": "dir:///a/"}]},
            ["spec.storagePools[1].url: dir:///a is listed twice"],
        ),
        (
            {"storagePools": [{"name": "a", "url": "dir:///a"}, {"name": "a", "url": "dir:///b"}]},
            ["spec.storagePools[1].name: 'a' is listed twice"],
        ),
        ({"nfsAccess": "mount"}, ["spec.nfsAccess: must be one of Mount, Direct (got 'mount')"]),
        ({"maintenance": "true"}, ["spec.maintenance: must be true or false, not 'true'"]),
        (
            {"allowedNamespaces": ["Team"]},
            ["spec.allowedNamespaces[0]: 'Team' is not a DNS-1123 label"],
        ),
        ({"allowedNamespaces": ["a", "a"]}, ["spec.allowedNamespaces[1]: is listed twice"]),
        ({"overcommit": {"cpu": 0}}, ["spec.overcommit.cpu: must be between 0.1 and 64 (got 0)"]),
        ({"overcommit": {"memory": "2"}}, ["spec.overcommit.memory: must be a number, not '2'"]),
    ],
)
def test_kvmhost_rejects(changes: dict[str, Any], expected: list[str]) -> None:
    data = {key: value for key, value in {**MINIMAL_HOST, **changes}.items() if value is not None}
    with pytest.raises(InvalidSpecError) as caught:
        KvmHostSpec.from_dict(data)
    found = problems(caught.value)
    assert len(found) == len(expected), found
    for message, fragment in zip(found, expected, strict=True):
        assert message.startswith(fragment), (message, fragment)


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ssh://kvmhost1/system",
        "qemu+ssh://root@kvmhost1/system",
        "qemu+ssh://root@10.77.0.11:2222/system",
        "qemu+ssh://root@[fd00::1]:2222/system",
        "qemu+libssh://kvm@h.lab/system?sshauth=privkey",
        "qemu+libssh2://root@h/system?sshauth=privkey&no_tty=1",
        "qemu+ssh://h/system?mode=direct&proxy=native",
    ],
)
def test_libvirt_uri_accepts(uri: str) -> None:
    assert validate_libvirt_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        (
            "qemu+ext:///system?command=/bin/sh",
            "must start with one of qemu+ssh://, qemu+libssh://, qemu+libssh2://",
        ),
        ("qemu+unix:///system", "must start with"),
        ("qemu+tcp://h/system", "must start with"),
        ("qemu://h/system", "must start with"),
        ("xen+ssh://h/system", "must start with"),
        ("qemu+ssh:/h/system", "must start with"),
        ("qemu+ssh://h/session", "must name the system instance"),
        ("qemu+ssh://h/", "must name the system instance"),
        ("qemu+ssh://h", "must name the system instance"),
        ("qemu+ssh://h/system/extra", "must name the system instance"),
        ("qemu+ssh:///system", "must not be empty"),
        ("qemu+ssh://h;id/system", "not a valid host name"),
        ("qemu+ssh://-oProxyCommand=id/system", "not a valid host name"),
        ("qemu+ssh://Root@h/system", "not a valid user name"),
        ("qemu+ssh://a b@h/system", "not a valid user name"),
        ("qemu+ssh://h:22x/system", "the port must be a number"),
        ("qemu+ssh://h:0/system", "between 1 and 65535"),
        ("qemu+ssh://h:99999/system", "between 1 and 65535"),
        ("qemu+ssh://[fd00::1]x/system", "the port must be a number"),
        ("qemu+ssh://h/system?", "empty query"),
        ("qemu+ssh://h/system?netcat=nc", "'netcat' is not allowed"),
        ("qemu+ssh://h/system?command=/bin/sh", "'command' is not allowed"),
        ("qemu+ssh://h/system?socket=/x", "'socket' is not allowed"),
        ("qemu+ssh://h/system?keyfile=/k", "'keyfile' is not allowed"),
        ("qemu+ssh://h/system?known_hosts=/k", "'known_hosts' is not allowed"),
        ("qemu+ssh://h/system?no_verify=1", "'no_verify' is not allowed"),
        ("qemu+ssh://h/system?mode=$(id)", "'mode' has unsafe characters"),
        ("qemu+ssh://h/system?mode=a b", "'mode' has unsafe characters"),
    ],
)
def test_libvirt_uri_rejects(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        validate_libvirt_uri(uri, "spec.libvirtURI")
    assert caught.value.message.startswith("spec.libvirtURI: ")
    assert fragment in caught.value.message


def test_overcommit_from_dict() -> None:
    assert Overcommit.from_dict({}) == Overcommit()
    assert Overcommit.from_dict({"cpu": 2}) == Overcommit(cpu=2.0, memory=1.0)
    with pytest.raises(InvalidSpecError, match=r"^spec\.overcommit\.memory: "):
        Overcommit.from_dict({"memory": -1})


# --- VmMaster ----------------------------------------------------------------------------


def test_vmmaster() -> None:
    assert VmMasterSpec.from_dict({"sourceNode": "kvm2"}) == VmMasterSpec("kvm2")
    spec = VmMasterSpec.from_dict(
        {"sourceNode": "kvm2", "mode": "Detached", "storage": "nfs://10.0.0.1/srv/masters"}
    )
    assert spec.mode is CloneMode.DETACHED
    assert spec.storage == parse_storage_url("nfs://10.0.0.1/srv/masters")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, ["spec.sourceNode: is required"]),
        (None, ["spec.sourceNode: is required"]),
        ({"sourceNode": "Kvm2"}, ["spec.sourceNode: 'Kvm2' is not a DNS-1123 subdomain"]),
        ({"sourceNode": "kvm2", "mode": "Copy"}, ["spec.mode: must be one of Attached, Detached"]),
        (
            {"sourceNode": "kvm2", "storage": "phy:/dev/sdb"},
            ["spec.storage: phy:/dev/sdb is a single block device"],
        ),
        ([], ["spec: must be an object, not list", "spec.sourceNode: is required"]),
    ],
)
def test_vmmaster_rejects(data: object, expected: list[str]) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        VmMasterSpec.from_dict(data)
    found = problems(caught.value)
    assert len(found) == len(expected), found
    for message, fragment in zip(found, expected, strict=True):
        assert message.startswith(fragment), (message, fragment)


def test_phy_pool_is_accepted_but_never_the_default_storage() -> None:
    spec = KvmHostSpec.from_dict(
        {
            "address": "h1",
            "sshKeySecretRef": {"name": "k", "namespace": "ns"},
            "hostKeyPolicy": "TrustOnFirstUse",
            "storagePools": [
                {"name": "disk", "url": "phy:/dev/sdb"},
                {"name": "vms", "url": "dir:///var/lib/vms"},
            ],
        }
    )
    assert spec.storage_pools[0].url.kind.value == "phy"
    assert str(spec.default_storage) == "dir:///var/lib/vms"
