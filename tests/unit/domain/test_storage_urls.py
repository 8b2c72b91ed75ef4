"""Storage URLs and where disk images live on them."""

from __future__ import annotations

import pytest

from kvmfleet.domain.storage_urls import (
    DEFAULT_MOUNT_ROOT,
    DiskSourceType,
    NfsAccess,
    StorageKind,
    StorageURL,
    disk_file_name,
    disk_location,
    file_location,
    mount_path,
    parse_storage_url,
    storage_directory,
)
from kvmfleet.errors import InvalidSpecError


@pytest.mark.parametrize(
    ("text", "kind", "server", "path", "canonical"),
    [
        ("nfs://10.0.0.1/srv/vms", StorageKind.NFS, "10.0.0.1", "/srv/vms", None),
        ("nfs://nfs1/srv/vms/", StorageKind.NFS, "nfs1", "/srv/vms", "nfs://nfs1/srv/vms"),
        (
            "nfs://NFS1.Lab/srv//vms",
            StorageKind.NFS,
            "nfs1.lab",
            "/srv/vms",
            "nfs://nfs1.lab/srv/vms",
        ),
        ("nfs://[fd00::1]/export", StorageKind.NFS, "fd00::1", "/export", None),
        ("nfs://10.0.0.1/", StorageKind.NFS, "10.0.0.1", "/", None),
        ("dir:///var/lib/libvirt/images", StorageKind.DIR, None, "/var/lib/libvirt/images", None),
        ("dir:///data/vms/./", StorageKind.DIR, None, "/data/vms", "dir:///data/vms"),
        ("phy:/dev/sdb", StorageKind.PHY, None, "/dev/sdb", None),
        ("phy:/dev/vg0/kvm1", StorageKind.PHY, None, "/dev/vg0/kvm1", None),
        (
            "phy:/dev/disk/by-id/wwn-0x5000c5",
            StorageKind.PHY,
            None,
            "/dev/disk/by-id/wwn-0x5000c5",
            None,
        ),
    ],
)
def test_parse(
    text: str, kind: StorageKind, server: str | None, path: str, canonical: str | None
) -> None:
    url = parse_storage_url(text)
    assert (url.kind, url.server, url.path) == (kind, server, path)
    assert str(url) == url.url == (canonical or text)
    assert parse_storage_url(str(url)) == url


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "must be a storage URL string"),
        ("", "is not a storage URL"),
        ("/srv/vms", "is not a storage URL"),
        ("file:///srv/vms", "is not a storage URL"),
        ("NFS://server/srv", "is not a storage URL"),
        ("nfs://", "server is missing"),
        ("nfs:///srv/vms", "server is missing"),
        ("nfs://server", "export path is missing"),
        ("nfs://user@server/srv", "user names and ports"),
        ("nfs://server:2049/srv", "user names and ports"),
        ("nfs://[fd00::1/srv", "unterminated"),
        ("nfs://bad_host/srv", "not a valid host name"),
        ("nfs://server/srv/../etc", "'..' segments"),
        ("nfs://server/srv;reboot", "metacharacter"),
        ("nfs://server/srv vms", "whitespace"),
        ("nfs://server/srv?x=1", "metacharacter '?'"),
        ("dir://host/srv", "no host part"),
        ("dir://", "no host part"),
        ("dir:///srv/$(id)", "metacharacter '$'"),
        ("phy:sdb", "names a block device"),
        ("phy:/etc/passwd", "names a block device"),
        ("phy:/dev/../etc/passwd", "'..' segments"),
        ("phy:/dev", "names a block device"),
    ],
)
def test_parse_rejects(text: object, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_storage_url(text, "spec.disks[0].storage")
    assert caught.value.message.startswith("spec.disks[0].storage: ")
    assert fragment in caught.value.message


def test_storage_id_and_pool_name_are_stable_and_canonical() -> None:
    a = parse_storage_url("nfs://NFS1/srv/vms/")
    b = parse_storage_url("nfs://nfs1/srv//vms")
    c = parse_storage_url("nfs://nfs1/srv/other")
    assert a.storage_id == b.storage_id != c.storage_id
    assert len(a.storage_id) == 12
    assert a.pool_name == "kvmfleet-" + a.storage_id
    # Pinned: pool names must not change between operator versions.
    assert parse_storage_url("dir:///var/lib/libvirt/images").storage_id == "578442d3f432"
    assert parse_storage_url("nfs://10.0.0.1/srv/vms").pool_name == "kvmfleet-b086b41c92c8"


@pytest.mark.parametrize(
    ("vm", "disk", "name"),
    [("kvm1", "hda", "kvm1.hda.qcow2"), ("web-01", "data", "web-01.data.qcow2")],
)
def test_disk_file_name(vm: str, disk: str, name: str) -> None:
    assert disk_file_name(vm, disk) == name


@pytest.mark.parametrize(("vm", "disk"), [("kvm/1", "hda"), ("kvm1", "hd.a"), ("kvm1", "../x")])
def test_disk_file_name_rejects(vm: str, disk: str) -> None:
    with pytest.raises(InvalidSpecError):
        disk_file_name(vm, disk)


NFS = parse_storage_url("nfs://10.0.0.1/srv/vms")
DIR = parse_storage_url("dir:///var/lib/libvirt/images")
PHY = parse_storage_url("phy:/dev/sdb")


@pytest.mark.parametrize(
    ("storage", "access", "source_type", "path", "host", "qemu_img", "file_name"),
    [
        (
            NFS,
            NfsAccess.DIRECT,
            DiskSourceType.NETWORK,
            "/srv/vms/kvm1.hda.qcow2",
            "10.0.0.1",
            "nfs://10.0.0.1/srv/vms/kvm1.hda.qcow2",
            "kvm1.hda.qcow2",
        ),
        (
            NFS,
            NfsAccess.MOUNT,
            DiskSourceType.FILE,
            f"{DEFAULT_MOUNT_ROOT}/{NFS.storage_id}/kvm1.hda.qcow2",
            None,
            f"{DEFAULT_MOUNT_ROOT}/{NFS.storage_id}/kvm1.hda.qcow2",
            "kvm1.hda.qcow2",
        ),
        (
            DIR,
            NfsAccess.DIRECT,
            DiskSourceType.FILE,
            "/var/lib/libvirt/images/kvm1.hda.qcow2",
            None,
            "/var/lib/libvirt/images/kvm1.hda.qcow2",
            "kvm1.hda.qcow2",
        ),
        (PHY, NfsAccess.MOUNT, DiskSourceType.BLOCK, "/dev/sdb", None, "/dev/sdb", None),
    ],
)
def test_disk_location(
    storage: StorageURL,
    access: NfsAccess,
    source_type: DiskSourceType,
    path: str,
    host: str | None,
    qemu_img: str,
    file_name: str | None,
) -> None:
    location = disk_location(storage, "kvm1", "hda", nfs_access=access)
    assert location.source_type is source_type
    assert location.path == path
    assert location.host == host
    assert location.protocol == ("nfs" if source_type is DiskSourceType.NETWORK else None)
    assert location.qemu_img_target == qemu_img
    assert location.file_name == file_name
    assert location.storage == storage


def test_nfs_direct_on_ipv6_server_brackets_the_qemu_url() -> None:
    storage = parse_storage_url("nfs://[fd00::1]/srv")
    location = disk_location(storage, "kvm1", "hda", nfs_access=NfsAccess.DIRECT)
    assert location.host == "fd00::1"
    assert location.qemu_img_target == "nfs://[fd00::1]/srv/kvm1.hda.qcow2"


def test_mount_root_is_configurable() -> None:
    assert mount_path(NFS, "/var/lib/xcat/pools/") == f"/var/lib/xcat/pools/{NFS.storage_id}"
    location = disk_location(
        NFS, "kvm1", "hda", nfs_access=NfsAccess.MOUNT, mount_root="/mnt/pools"
    )
    assert location.path == f"/mnt/pools/{NFS.storage_id}/kvm1.hda.qcow2"


def test_mount_root_must_be_safe() -> None:
    with pytest.raises(InvalidSpecError):
        mount_path(NFS, "/mnt/$(id)")
    with pytest.raises(ValueError, match="only NFS"):
        mount_path(DIR)


@pytest.mark.parametrize(
    ("storage", "access", "directory"),
    [
        (DIR, NfsAccess.MOUNT, "/var/lib/libvirt/images"),
        (NFS, NfsAccess.MOUNT, f"{DEFAULT_MOUNT_ROOT}/{NFS.storage_id}"),
        (NFS, NfsAccess.DIRECT, None),
        (PHY, NfsAccess.MOUNT, None),
    ],
)
def test_storage_directory(storage: StorageURL, access: NfsAccess, directory: str | None) -> None:
    assert storage_directory(storage, nfs_access=access) == directory


def test_file_location_for_master_images() -> None:
    location = file_location(NFS, "kvmm.hda.qcow2", nfs_access=NfsAccess.DIRECT)
    assert location.qemu_img_target == "nfs://10.0.0.1/srv/vms/kvmm.hda.qcow2"
    with pytest.raises(InvalidSpecError, match="block device"):
        file_location(PHY, "kvmm.hda.qcow2", nfs_access=NfsAccess.MOUNT)
    with pytest.raises(ValueError, match="plain file name"):
        file_location(DIR, "../x.qcow2", nfs_access=NfsAccess.MOUNT)


def test_holds_files() -> None:
    assert NFS.holds_files and DIR.holds_files and not PHY.holds_files
