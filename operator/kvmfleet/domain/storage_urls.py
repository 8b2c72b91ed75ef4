"""Storage URLs (``nfs://``, ``dir://``, ``phy:``) and where a disk image lives on them.

The three forms of api.md:

* ``nfs://server/abs/path`` - an NFS export directory. With ``nfsAccess: Mount`` the host
  mounts it (a libvirt netfs pool) under ``<mount root>/<storage id>``, like xCAT's
  ``/var/lib/xcat/pools/<uuid>``; with ``Direct`` QEMU and qemu-img reach it through
  libnfs (``nfs://server/path/file``) and disks are libvirt network disks.
* ``dir:///abs/path`` - a directory on the host (a libvirt dir pool).
* ``phy:/dev/xxx`` - one block device on the host, used whole as one disk; holds no files.

Everything here is computed from strings; nothing is looked up on a host.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from kvmfleet.domain.validation import (
    fail,
    host_for_uri,
    show,
    validate_absolute_path,
    validate_dns1123_label,
    validate_domain_name,
    validate_host_address,
)

DEFAULT_MOUNT_ROOT = "/var/lib/kvmfleet/pools"
"""Where a host mounts NFS storage in Mount mode: ``<root>/<storage id>``."""

POOL_NAME_PREFIX = "kvmfleet-"
DISK_IMAGE_SUFFIX = ".qcow2"


class StorageKind(StrEnum):
    """The scheme of a storage URL."""

    NFS = "nfs"
    DIR = "dir"
    PHY = "phy"


class NfsAccess(StrEnum):
    """How a host reaches NFS storage (KvmHost ``spec.nfsAccess``)."""

    MOUNT = "Mount"
    DIRECT = "Direct"


class DiskSourceType(StrEnum):
    """The libvirt ``<disk type=...>`` a disk location needs."""

    FILE = "file"
    NETWORK = "network"
    BLOCK = "block"


@dataclass(frozen=True)
class StorageURL:
    """A parsed, canonical storage URL; ``str(url)`` gives the canonical text back.

    ``server`` is set for ``nfs`` only (a host name in lower case or a bare IP address);
    ``path`` is the normalized absolute path (the export directory, the host directory or
    the block device).
    """

    kind: StorageKind
    path: str
    server: str | None = None

    def __str__(self) -> str:
        if self.kind is StorageKind.NFS:
            return f"nfs://{host_for_uri(self.server or '')}{self.path}"
        if self.kind is StorageKind.DIR:
            return f"dir://{self.path}"
        return f"phy:{self.path}"

    @property
    def url(self) -> str:
        """The canonical URL text (same as ``str(self)``)."""
        return str(self)

    @property
    def holds_files(self) -> bool:
        """True for storage that holds image files (nfs, dir); False for a phy: device."""
        return self.kind is not StorageKind.PHY

    @property
    def storage_id(self) -> str:
        """A stable 12-hex-digit id of this storage (a hash of the canonical URL)."""
        return hashlib.sha256(str(self).encode("utf-8")).hexdigest()[:12]

    @property
    def pool_name(self) -> str:
        """A stable libvirt storage pool name for this storage: ``kvmfleet-<storage id>``."""
        return POOL_NAME_PREFIX + self.storage_id


def parse_storage_url(value: object, field: str = "url") -> StorageURL:
    """Parse and validate ``nfs://server/path``, ``dir:///path`` or ``phy:/dev/xxx``.

    Raises InvalidSpecError ``"<field>: ..."`` naming what is wrong.
    """
    if not isinstance(value, str):
        fail(field, f"must be a storage URL string, not {type(value).__name__}")
    if value.startswith("nfs://"):
        return _parse_nfs(value, field)
    if value.startswith("dir://"):
        rest = value[len("dir://") :]
        if not rest.startswith("/"):
            fail(field, f"{show(value)}: a dir URL has no host part (write dir:///abs/path)")
        return StorageURL(StorageKind.DIR, validate_absolute_path(rest, field))
    if value.startswith("phy:"):
        rest = value[len("phy:") :]
        if not rest.startswith("/dev/"):
            fail(field, f"{show(value)}: a phy URL names a block device: phy:/dev/xxx")
        device = validate_absolute_path(rest, field)
        if not device.startswith("/dev/"):
            fail(field, f"{show(value)}: a phy URL names a block device: phy:/dev/xxx")
        return StorageURL(StorageKind.PHY, device)
    fail(
        field,
        f"{show(value)} is not a storage URL: expected nfs://server/path, dir:///path "
        "or phy:/dev/xxx",
    )


def _parse_nfs(value: str, field: str) -> StorageURL:
    rest = value[len("nfs://") :]
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            fail(field, f"{show(value)}: unterminated '[' in the server address")
        server_text, path = rest[: end + 1], rest[end + 1 :]
    else:
        slash = rest.find("/")
        server_text, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if not server_text:
        fail(field, f"{show(value)}: the NFS server is missing (nfs://server/path)")
    if "@" in server_text or (":" in server_text and not server_text.startswith("[")):
        fail(field, f"{show(value)}: user names and ports are not supported in NFS URLs")
    if not path.startswith("/"):
        fail(field, f"{show(value)}: the export path is missing (nfs://server/path)")
    server = validate_host_address(server_text, field)
    return StorageURL(StorageKind.NFS, validate_absolute_path(path, field), server)


def disk_file_name(vm: str, disk: str) -> str:
    """The image file name of a VM's disk: ``<vm>.<disk>.qcow2`` (both names validated)."""
    validate_domain_name(vm, "vm name")
    validate_dns1123_label(disk, "disk name")
    return f"{vm}.{disk}{DISK_IMAGE_SUFFIX}"


def mount_path(storage: StorageURL, mount_root: str = DEFAULT_MOUNT_ROOT) -> str:
    """Where a host mounts NFS storage in Mount mode: ``<mount_root>/<storage id>``."""
    if storage.kind is not StorageKind.NFS:
        raise ValueError(f"only NFS storage is mounted, not {storage}")
    root = validate_absolute_path(mount_root, "mount root")
    return f"{root.rstrip('/')}/{storage.storage_id}"


def storage_directory(
    storage: StorageURL, *, nfs_access: NfsAccess, mount_root: str = DEFAULT_MOUNT_ROOT
) -> str | None:
    """The directory on the host that holds this storage's files.

    ``dir``: its path; ``nfs`` Mount: the mount path; ``nfs`` Direct: None (the host has
    no such directory, QEMU reaches the export itself); ``phy``: None (no files).
    """
    if storage.kind is StorageKind.DIR:
        return storage.path
    if storage.kind is StorageKind.NFS and nfs_access is NfsAccess.MOUNT:
        return mount_path(storage, mount_root)
    return None


@dataclass(frozen=True)
class DiskLocation:
    """Where one disk image (or device) lives, as libvirt and qemu-img need it.

    * ``FILE``: ``path`` is the image file on the host (dir, or NFS mounted).
    * ``NETWORK``: ``path`` is the file's path on the NFS server (the libvirt source
      ``name``), ``host`` the server, ``protocol`` ``"nfs"``.
    * ``BLOCK``: ``path`` is the block device.
    """

    storage: StorageURL
    source_type: DiskSourceType
    path: str
    host: str | None = None
    protocol: str | None = None

    @property
    def qemu_img_target(self) -> str:
        """The name qemu-img takes: the file/device path, or ``nfs://server/path/file``."""
        if self.source_type is DiskSourceType.NETWORK:
            return f"{self.protocol}://{host_for_uri(self.host or '')}{self.path}"
        return self.path

    @property
    def file_name(self) -> str | None:
        """The image's file name, or None for a block device."""
        if self.source_type is DiskSourceType.BLOCK:
            return None
        return self.path.rsplit("/", 1)[-1]


def file_location(
    storage: StorageURL,
    file_name: str,
    *,
    nfs_access: NfsAccess,
    mount_root: str = DEFAULT_MOUNT_ROOT,
) -> DiskLocation:
    """Where an image file called ``file_name`` lives on ``storage`` (not for phy:)."""
    if "/" in file_name or file_name in {"", ".", ".."}:
        raise ValueError(f"not a plain file name: {file_name!r}")
    if storage.kind is StorageKind.PHY:
        fail("storage", f"{storage} is a block device and cannot hold the file {file_name}")
    if storage.kind is StorageKind.NFS and nfs_access is NfsAccess.DIRECT:
        return DiskLocation(
            storage,
            DiskSourceType.NETWORK,
            _join(storage.path, file_name),
            host=storage.server,
            protocol="nfs",
        )
    directory = storage_directory(storage, nfs_access=nfs_access, mount_root=mount_root)
    assert directory is not None
    return DiskLocation(storage, DiskSourceType.FILE, _join(directory, file_name))


def disk_location(
    storage: StorageURL,
    vm: str,
    disk: str,
    *,
    nfs_access: NfsAccess,
    mount_root: str = DEFAULT_MOUNT_ROOT,
) -> DiskLocation:
    """Where disk ``disk`` of VM ``vm`` lives: ``<vm>.<disk>.qcow2`` on the storage.

    For ``phy:`` storage the disk is the device itself (a BLOCK location).
    """
    if storage.kind is StorageKind.PHY:
        return DiskLocation(storage, DiskSourceType.BLOCK, storage.path)
    return file_location(
        storage, disk_file_name(vm, disk), nfs_access=nfs_access, mount_root=mount_root
    )


def _join(directory: str, file_name: str) -> str:
    return f"{directory.rstrip('/')}/{file_name}"
