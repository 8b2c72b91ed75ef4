"""A VirtualNode's disks (mkvm -s): made once with qemu-img, grown on request, never shrunk."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmfleet.domain.devicenames import target_devs
from kvmfleet.domain.specs import DiskSpec, KvmHostSpec, VirtualNodeSpec
from kvmfleet.domain.storage_urls import DiskLocation, DiskSourceType, disk_location
from kvmfleet.errors import InvalidSpecError, KvmfleetError, TemporaryError
from kvmfleet.reconcile.hostaccess import PlacedHost
from kvmfleet.ssh import facts, hostcmds


@dataclass
class DiskReport:
    """Where every disk is and what it looks like; what happened; what is wrong."""

    locations: list[DiskLocation] = field(default_factory=list)
    status: list[dict[str, object]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def locate(
    vm: str, spec: VirtualNodeSpec, host_spec: KvmHostSpec, mount_root: str
) -> list[DiskLocation]:
    """Where each disk of the spec lives on its host (pure; raises InvalidSpecError)."""
    result = []
    for disk in spec.disks:
        storage = disk.storage or host_spec.default_storage
        if storage is None:
            raise InvalidSpecError(
                f"disk {disk.name}: no storage given and the host has no storage pool for files"
            )
        result.append(
            disk_location(
                storage, vm, disk.name, nfs_access=host_spec.nfs_access, mount_root=mount_root
            )
        )
    return result


async def ensure(
    host: PlacedHost, vm: str, spec: VirtualNodeSpec, mount_root: str, *, running: bool
) -> DiskReport:
    """Create missing images, grow smaller ones, report each (idempotent).

    A running VM's disk is grown through libvirt (block resize), a stopped one's with
    qemu-img; a smaller size in the spec is refused, never applied.
    """
    report = DiskReport(locations=locate(vm, spec, host.spec, mount_root))
    targets = target_devs([(d.name, str(d.bus)) for d in spec.disks])
    for disk, where, dev in zip(spec.disks, report.locations, targets, strict=True):
        try:
            entry = await _ensure_one(host, disk, where, report, vm if running else None, dev)
        except TemporaryError:
            raise  # the host stopped answering: the whole pass stops, nothing is concluded
        except KvmfleetError as error:
            report.problems.append(f"disk {disk.name}: {error.message}")
            continue
        report.status.append(entry)
    return report


async def _ensure_one(  # noqa: PLR0917 - one disk's whole context
    host: PlacedHost,
    disk: DiskSpec,
    where: DiskLocation,
    report: DiskReport,
    running_vm: str | None,
    dev: str,
) -> dict[str, object]:
    target = where.qemu_img_target
    entry: dict[str, object] = {"name": disk.name, "url": str(where.storage), "path": target}
    if where.source_type is DiskSourceType.BLOCK:
        found = await host.session.run(hostcmds.test_block_device(where.path), check=False)
        if not found.ok:
            raise KvmfleetError(f"block device {where.path} does not exist on {host.name}")
        entry["format"] = "raw"
        return entry
    info = await host.session.run(hostcmds.qemu_img_info(target), check=False)
    if not info.ok:
        if disk.size_bytes is None:
            raise KvmfleetError("has no size and no image exists yet")
        await host.session.run(hostcmds.qemu_img_create(target, disk.size_bytes))
        report.created.append(target)
        info = await host.session.run(hostcmds.qemu_img_info(target))
    image = facts.parse_qemu_img_info(info.stdout)
    if disk.size_bytes is not None and image.virtual_size < disk.size_bytes:
        if running_vm is not None:
            guests = await host.guests()
            await host.session.ctx.blocking(guests.block_resize, running_vm, dev, disk.size_bytes)
        else:
            await host.session.run(hostcmds.qemu_img_resize(target, disk.size_bytes, image.format))
        report.grown.append(target)
        image = facts.parse_qemu_img_info(
            (await host.session.run(hostcmds.qemu_img_info(target))).stdout
        )
    elif disk.size_bytes is not None and image.virtual_size > disk.size_bytes:
        report.problems.append(
            f"disk {disk.name}: shrinking from {image.virtual_size} to {disk.size_bytes} bytes "
            "is refused (it would destroy data); the image keeps its size"
        )
    entry["format"] = image.format
    entry["virtualSizeBytes"] = image.virtual_size
    if image.backing_filename:
        entry["backingFile"] = image.backing_filename
    return entry
