"""One image, one running VM: which running domains of other hosts use a disk (pure).

A disk on NFS storage is the same file whichever host opens it, by either access mode:
``nfs://server/export/file`` (Direct, a libvirt network disk) or
``<mount root>/<storage id>/file`` (Mount). :func:`identities` names both;
:func:`users_elsewhere` finds them in the hosts' domain inventories (KvmHost
``status.domains[].disks``, the sources of each running domain). Files on ``dir://``
storage and ``phy:`` devices are local to each host and never shared between hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kvmfleet.domain.storage_urls import (
    DEFAULT_MOUNT_ROOT,
    DiskLocation,
    DiskSourceType,
    StorageKind,
    mount_path,
)
from kvmfleet.domain.validation import host_for_uri

ACTIVE_STATES = frozenset({"On", "Paused"})
"""Domain states that hold an image open."""


def source_key(source_type: str, source: str | None, host: str | None, protocol: str | None) -> str:
    """How a domain's disk source is named in an inventory: a path, or ``nfs://host/name``."""
    if source_type == "network" and host and source:
        return f"{protocol or 'nfs'}://{host_for_uri(host)}{source}"
    return source or ""


def identities(location: DiskLocation, mount_root: str = DEFAULT_MOUNT_ROOT) -> frozenset[str]:
    """Every name another host's domain may use for this disk (empty: not shared storage)."""
    if location.storage.kind is not StorageKind.NFS or location.file_name is None:
        return frozenset()
    storage = location.storage
    direct = f"nfs://{host_for_uri(storage.server or '')}{storage.path.rstrip('/')}/"
    mounted = f"{mount_path(storage, mount_root)}/"
    names = {direct + location.file_name, mounted + location.file_name}
    if location.source_type is DiskSourceType.NETWORK:
        names.add(location.qemu_img_target)
    return frozenset(names)


def users_elsewhere(
    here: str,
    locations: Sequence[DiskLocation],
    hosts: Iterable[Mapping[str, Any]],
    mount_root: str = DEFAULT_MOUNT_ROOT,
) -> list[str]:
    """ "domain D on host H (state) uses X" for each running domain of another KvmHost that
    has one of these disks, from the KvmHost objects' last inventories."""
    wanted: dict[str, str] = {}
    for location in locations:
        for name in identities(location, mount_root):
            wanted[name] = location.qemu_img_target
    found = []
    for host in hosts:
        name = str((host.get("metadata") or {}).get("name", ""))
        if name == here or not wanted:
            continue
        for domain in (host.get("status") or {}).get("domains") or []:
            if domain.get("state") not in ACTIVE_STATES:
                continue
            for disk in domain.get("disks") or []:
                if disk in wanted:
                    found.append(
                        f"domain {domain.get('name')} on KvmHost {name} "
                        f"({domain.get('state')}) uses {wanted[disk]}"
                    )
    return found
