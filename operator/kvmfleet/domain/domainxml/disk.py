"""Disk devices: a qcow2 file, an NFS network disk (libnfs) and a whole block device.

* :class:`FileDisk` - ``<disk type='file'>``: an image on dir storage or mounted NFS.
* :class:`NetworkDisk` - ``<disk type='network'>`` with ``protocol='nfs'``, a ``<host>``
  and an optional ``<identity user= group=/>``: QEMU opens the image through libnfs with
  that identity (NFS Direct). libvirt treats such a disk as shared storage, so it
  live-migrates without any "unsafe" opt-in.
* :class:`BlockDisk` - ``<disk type='block'>``: a ``phy:`` device, raw.

Every disk has ``<driver name='qemu' type=... cache='none'/>``: no host page cache, which
is also what makes shared-storage migration safe.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kvmfleet.domain.domainxml.xmlutil import child, element


@dataclass(frozen=True)
class DiskIdentity:
    """The user and group QEMU presents to the NFS server for a network disk."""

    user: str = "root"
    group: str = "root"


DEFAULT_NFS_IDENTITY = DiskIdentity()


def _disk(source_type: str, driver_type: str, cache: str) -> ET.Element:
    disk = element("disk", {"type": source_type, "device": "disk"})
    child(disk, "driver", {"name": "qemu", "type": driver_type, "cache": cache})
    return disk


def _target(disk: ET.Element, target_dev: str, bus: str) -> None:
    child(disk, "target", {"dev": target_dev, "bus": bus})


@dataclass(frozen=True)
class FileDisk:
    """An image file on the host (``<source file=...>``)."""

    path: str
    target_dev: str
    bus: str = "virtio"
    driver_type: str = "qcow2"
    cache: str = "none"

    def to_element(self) -> ET.Element:
        """The ``<disk>`` element."""
        disk = _disk("file", self.driver_type, self.cache)
        child(disk, "source", {"file": self.path})
        _target(disk, self.target_dev, self.bus)
        return disk


@dataclass(frozen=True)
class NetworkDisk:
    """An image QEMU reaches over the network itself (``<source protocol=... name=...>``)."""

    name: str
    host: str
    target_dev: str
    bus: str = "virtio"
    protocol: str = "nfs"
    identity: DiskIdentity | None = DEFAULT_NFS_IDENTITY
    driver_type: str = "qcow2"
    cache: str = "none"

    def to_element(self) -> ET.Element:
        """The ``<disk>`` element."""
        disk = _disk("network", self.driver_type, self.cache)
        source = child(disk, "source", {"protocol": self.protocol, "name": self.name})
        child(source, "host", {"name": self.host})
        if self.identity is not None:
            child(source, "identity", {"user": self.identity.user, "group": self.identity.group})
        _target(disk, self.target_dev, self.bus)
        return disk


@dataclass(frozen=True)
class BlockDisk:
    """A whole block device of the host (``<source dev=...>``), raw."""

    dev: str
    target_dev: str
    bus: str = "virtio"
    cache: str = "none"

    def to_element(self) -> ET.Element:
        """The ``<disk>`` element."""
        disk = _disk("block", "raw", self.cache)
        child(disk, "source", {"dev": self.dev})
        _target(disk, self.target_dev, self.bus)
        return disk


Disk = FileDisk | NetworkDisk | BlockDisk
"""Any of the disk device classes."""
