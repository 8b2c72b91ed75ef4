"""kvmfleet.domain.diskuse: one image, one running VM across KvmHosts (tables)."""

from __future__ import annotations

from typing import Any

from kvmfleet.domain.diskuse import identities, source_key, users_elsewhere
from kvmfleet.domain.storage_urls import NfsAccess, disk_location, mount_path, parse_storage_url

NFS = parse_storage_url("nfs://10.0.0.1/srv/vms")
ROOT = "/var/lib/kvmfleet/pools"
DIRECT = disk_location(NFS, "vm1", "hda", nfs_access=NfsAccess.DIRECT, mount_root=ROOT)
MOUNTED = disk_location(NFS, "vm1", "hda", nfs_access=NfsAccess.MOUNT, mount_root=ROOT)
LOCAL = disk_location(
    parse_storage_url("dir:///var/lib/kvmfleet/images"), "vm1", "hda", nfs_access=NfsAccess.DIRECT
)
DIRECT_NAME = "nfs://10.0.0.1/srv/vms/vm1.hda.qcow2"
MOUNT_NAME = f"{mount_path(NFS, ROOT)}/vm1.hda.qcow2"


def host(name: str, *domains: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"domains": list(domains)}}


def test_an_nfs_disk_is_known_by_both_access_modes() -> None:
    assert identities(DIRECT, ROOT) == {DIRECT_NAME, MOUNT_NAME}
    assert identities(MOUNTED, ROOT) == {DIRECT_NAME, MOUNT_NAME}
    assert identities(LOCAL, ROOT) == frozenset()  # local to each host


def test_source_keys() -> None:
    assert source_key("network", "/srv/vms/a.qcow2", "10.0.0.1", "nfs") == (
        "nfs://10.0.0.1/srv/vms/a.qcow2"
    )
    assert source_key("file", "/x/a.qcow2", None, None) == "/x/a.qcow2"
    assert source_key("network", None, "10.0.0.1", "nfs") == ""


def test_users_elsewhere() -> None:
    running_direct = {"name": "vm1", "state": "On", "disks": [DIRECT_NAME]}
    paused_mounted = {"name": "old", "state": "Paused", "disks": [MOUNT_NAME]}
    off = {"name": "vm1", "state": "Off"}
    other = {"name": "x", "state": "On", "disks": ["nfs://10.0.0.1/srv/vms/x.hda.qcow2"]}
    hosts = [
        host("kvmhost1", running_direct),
        host("kvmhost2", running_direct),  # this host itself: libvirt/QEMU see to that
        host("kvmhost3", paused_mounted, off, other),
        {"metadata": {"name": "kvmhost4"}},  # never probed
    ]
    found = users_elsewhere("kvmhost2", [DIRECT], hosts, ROOT)
    assert len(found) == 2
    assert "vm1 on KvmHost kvmhost1 (On)" in found[0]
    assert "old on KvmHost kvmhost3 (Paused)" in found[1]
    assert users_elsewhere("kvmhost2", [LOCAL], hosts, ROOT) == []
    assert users_elsewhere("kvmhost1", [DIRECT], [host("kvmhost3", off, other)], ROOT) == []
