"""A VirtualNode's disks (mkvm -s): made once with qemu-img, grown on request, never shrunk.

Made only when a probe finds them definitively absent, used only when their owner record
names this VirtualNode (or it adopts them), and only after their backing chain validated
(see :mod:`kvmfleet.domain.diskstate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kvmfleet.domain.devicenames import target_devs
from kvmfleet.domain.diskstate import (
    BACKING_CHAIN_INVALID,
    DISK_UNREADABLE,
    OWNER_RECORD_MAX_BYTES,
    OWNER_SUFFIX,
    SHRINK_REFUSED,
    Action,
    ChainLink,
    Existence,
    Owner,
    Verdict,
    chain_problem,
    decide_ownership,
    judge_probe,
)
from kvmfleet.domain.specs import DiskSpec, KvmHostSpec, VirtualNodeSpec
from kvmfleet.domain.storage_urls import (
    DiskLocation,
    DiskSourceType,
    StorageKind,
    disk_location,
    storage_directory,
)
from kvmfleet.errors import InvalidSpecError, KvmfleetError, NotFoundError, TemporaryError
from kvmfleet.reconcile import imagefiles
from kvmfleet.reconcile.hostaccess import PlacedHost
from kvmfleet.ssh import diskprobe, facts, hostcmds, nfsdirect


@dataclass(frozen=True)
class Problem:
    """Why a disk is not ready: a condition reason and a message naming the disk."""

    reason: str
    message: str


@dataclass
class DiskReport:
    """Where every disk is and what it looks like; what happened; what is wrong."""

    locations: list[DiskLocation] = field(default_factory=list)
    status: list[dict[str, object]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def messages(self) -> str:
        """Every problem, one sentence each."""
        return "; ".join(problem.message for problem in self.problems)


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
    host: PlacedHost,
    me: Owner,
    spec: VirtualNodeSpec,
    mount_root: str,
    *,
    running: bool,
    clone: Mapping[str, imagefiles.CloneImage] | None = None,
) -> DiskReport:
    """Create absent images, grow smaller ones, report each (idempotent).

    Only a definitive "absent" (in a pool the same probe found ready) leads to a create;
    an image of unknown state, owned by another VirtualNode, or whose backing chain does
    not validate is reported and left untouched. A running VM's disk is grown through
    libvirt (block resize), a stopped one's with qemu-img; shrinking is refused. A disk
    named in ``clone`` (a VirtualNode with spec.source) is made from its master image
    instead of blank (see :mod:`kvmfleet.reconcile.imagefiles`).
    """
    vm = me.name
    report = DiskReport(locations=locate(vm, spec, host.spec, mount_root))
    targets = target_devs([(d.name, str(d.bus)) for d in spec.disks])
    for disk, where, dev in zip(spec.disks, report.locations, targets, strict=True):
        try:
            source = (clone or {}).get(disk.name)
            entry = await _ensure_one(host, me, disk, where, report, running, dev, source)
        except TemporaryError:
            raise  # the host stopped answering: the whole pass stops, nothing is concluded
        except RefusedError as refused:
            report.problems.append(Problem(refused.reason, f"disk {disk.name}: {refused.text}"))
            continue
        except KvmfleetError as error:
            report.problems.append(Problem(_DISK_PROBLEM, f"disk {disk.name}: {error.message}"))
            continue
        report.status.append(entry)
    return report


_DISK_PROBLEM = "DiskProblem"


class RefusedError(Exception):
    """This disk is left untouched, for a reason of docs/conditions.md."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason, self.text = reason, text


def pool_directory(where: DiskLocation, host_spec: KvmHostSpec, mount_root: str) -> str | None:
    """The directory a FILE disk's pool keeps its files in (None for network/block disks)."""
    if where.source_type is not DiskSourceType.FILE:
        return None
    return storage_directory(where.storage, nfs_access=host_spec.nfs_access, mount_root=mount_root)


async def probe(host: PlacedHost, where: DiskLocation, mount_root: str) -> Verdict:
    """Present, absent or unknown (with why), and the owner record: one SSH command."""
    assert where.file_name is not None
    if where.source_type is DiskSourceType.NETWORK:
        argv = nfsdirect.probe_argv(where.storage, where.file_name, OWNER_RECORD_MAX_BYTES)
        pool = str(where.storage)
    else:
        pool = pool_directory(where, host.spec, mount_root) or ""
        argv = diskprobe.probe_argv(pool, where.path, where.path + OWNER_SUFFIX)
    result = await host.session.run(argv, check=False)
    data = diskprobe.parse(result.stdout)
    if not result.ok and not data.get("error"):
        data = {"error": result.stderr.strip()[-300:] or f"exit status {result.exit_status}"}
    return judge_probe(
        data,
        image=where.qemu_img_target,
        pool=pool,
        nfs_mount=where.storage.kind is StorageKind.NFS
        and where.source_type is DiskSourceType.FILE,
    )


async def write_owner(host: PlacedHost, where: DiskLocation, owner: Owner) -> None:
    """Write the owner record next to the image, atomically."""
    assert where.file_name is not None
    text = owner.to_json().encode()
    if where.source_type is DiskSourceType.NETWORK:
        argv = nfsdirect.write_argv(where.storage, where.file_name + OWNER_SUFFIX)
    else:
        argv = diskprobe.write_argv(where.path + OWNER_SUFFIX)
    result = await host.session.run(argv, input=text, check=False)
    if not result.ok or not diskprobe.parse(result.stdout).get("ok"):
        raise KvmfleetError(
            f"cannot write the owner record of {where.qemu_img_target}: "
            f"{(result.stderr or result.stdout).strip()[-300:]}"
        )


async def read_chain(host: PlacedHost, target: str) -> list[facts.ImageInfo]:
    """``qemu-img info -f qcow2 --backing-chain``, validated; RefusedError if not usable."""
    info = await host.session.run(hostcmds.qemu_img_info(target, backing_chain=True), check=False)
    if not info.ok:
        why = (info.stderr or info.stdout).strip()[-300:]
        raise RefusedError(DISK_UNREADABLE, f"qemu-img cannot read {target} as qcow2: {why}")
    images = facts.parse_qemu_img_chain(info.stdout)
    chain = [ChainLink(i.filename, i.format, i.backing_filename, i.backing_format) for i in images]
    problem = chain_problem(chain)
    if problem is not None:
        raise RefusedError(BACKING_CHAIN_INVALID, problem)
    return images


async def _our_domain(host: PlacedHost, me: Owner) -> bool:
    """The domain of this name on the host carries this VirtualNode's uid."""
    guests = await host.guests()
    try:
        summary = await host.session.ctx.blocking(guests.lookup, me.name)
    except NotFoundError:
        return False
    return summary.uid == me.uid


async def _ensure_one(  # noqa: PLR0917 - one disk's whole context
    host: PlacedHost,
    me: Owner,
    disk: DiskSpec,
    where: DiskLocation,
    report: DiskReport,
    running: bool,
    dev: str,
    clone: imagefiles.CloneImage | None = None,
) -> dict[str, object]:
    target = where.qemu_img_target
    entry: dict[str, object] = {"name": disk.name, "url": str(where.storage), "path": target}
    if where.source_type is DiskSourceType.BLOCK:
        found = await host.session.run(hostcmds.test_block_device(where.path), check=False)
        if not found.ok:
            raise KvmfleetError(f"block device {where.path} does not exist on {host.name}")
        entry["format"] = "raw"
        return entry
    verdict = await probe(host, where, host.session.ctx.settings.mount_root)
    if verdict.existence is Existence.UNKNOWN:
        raise RefusedError(verdict.reason, f"{verdict.message}; nothing is created or changed")
    ours = verdict.existence is Existence.PRESENT and verdict.owner is None
    decision = decide_ownership(
        verdict.existence,
        verdict.owner,
        me,
        adopt=disk.adopt,
        our_domain_uses_it=ours and await _our_domain(host, me),
    )
    if decision.action is Action.REFUSE:
        raise RefusedError(decision.reason, decision.message)
    if decision.action is Action.CREATE:
        if disk.size_bytes is None and clone is None:
            raise KvmfleetError("has no size and no image exists yet")
        await write_owner(host, where, me)  # first: a crash leaves a record of ours, no orphan
        if clone is not None:
            await imagefiles.make_clone(host, where, clone)
        else:
            assert disk.size_bytes is not None
            await host.session.run(hostcmds.qemu_img_create(target, disk.size_bytes))
        report.created.append(target)
    chain = await read_chain(host, target)
    if decision.action is Action.CLAIM:
        await write_owner(host, where, me)
        report.claimed.append(target)
    image = chain[0]
    if disk.size_bytes is not None and image.virtual_size < disk.size_bytes:
        if running:
            guests = await host.guests()
            await host.session.ctx.blocking(guests.block_resize, me.name, dev, disk.size_bytes)
        else:
            await host.session.run(hostcmds.qemu_img_resize(target, disk.size_bytes, image.format))
        report.grown.append(target)
        image = (await read_chain(host, target))[0]
    elif disk.size_bytes is not None and image.virtual_size > disk.size_bytes:
        report.problems.append(
            Problem(
                SHRINK_REFUSED,
                f"disk {disk.name}: shrinking from {image.virtual_size} to {disk.size_bytes} "
                "bytes is refused (it would destroy data); the image keeps its size",
            )
        )
    entry["format"] = image.format
    entry["virtualSizeBytes"] = image.virtual_size
    if chain[0].backing_filename:
        entry["backingFile"] = chain[0].backing_filename
    return entry
