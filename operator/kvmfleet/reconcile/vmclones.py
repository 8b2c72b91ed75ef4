"""Clones (``clonevm <node> -b <master> [-d]``): a VirtualNode with ``spec.source``.

A clone waits until its VmMaster is Ready (``WaitingForMaster``), is placed only on a host
that reaches the master's storage (a ``dir://`` master pins it to the master's host; an
NFS master needs a host listing that export), and gets each disk named like one of the
master's from the master image: a qcow2 overlay whose backing file is the master image
(Attached) or a full copy (Detached), then grown if the clone asks for more (never
shrunk). MACs, the domain UUID and the VNC Secret are the clone's own, as for any
VirtualNode. Every pass checks again that its host reaches the master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmfleet.domain.specs import CloneMode, KvmHostSpec, VirtualNodeSpec
from kvmfleet.domain.storage_urls import parse_storage_url
from kvmfleet.domain.vmmaster import (
    MASTER_DISK_MISSING,
    MASTER_UNREACHABLE,
    WAITING_FOR_MASTER,
    MasterDisk,
    disk_plan,
    placement_spec,
    reach_refusal,
)
from kvmfleet.errors import KvmfleetError, NotFoundError, PermanentError, TemporaryError
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostaccess import read_host
from kvmfleet.reconcile.imagefiles import CloneImage
from kvmfleet.reconcile.resource import Resource
from kvmfleet.reconcile.vmmasters import master_location, read_master


@dataclass(frozen=True)
class Clone:
    """A Ready master, as a clone needs it."""

    master: str
    mode: CloneMode
    host: str
    disks: tuple[MasterDisk, ...]
    plan: dict[str, MasterDisk]

    def placement_spec(self, spec: VirtualNodeSpec) -> VirtualNodeSpec:
        """The spec placement judges (see :func:`kvmfleet.domain.vmmaster.placement_spec`)."""
        judged, refusal = placement_spec(spec, self.master, self.host, self.disks)
        if refusal is not None:
            raise PermanentError(refusal, reason=MASTER_UNREACHABLE)
        return judged

    def check_reach(self, host: str, host_spec: KvmHostSpec) -> None:
        """PermanentError(MasterUnreachable) if ``host`` cannot use the master's images."""
        pools = [pool.url for pool in host_spec.storage_pools]
        for disk in self.disks:
            why = reach_refusal(host, pools, self.host, disk.storage)
            if why is not None:
                raise PermanentError(f"VmMaster {self.master}: {why}", reason=MASTER_UNREACHABLE)

    def images(
        self, namespace: str, host_spec: KvmHostSpec, mount_root: str
    ) -> dict[str, CloneImage]:
        """The master image each clone disk is made from, as the clone's host names it."""
        return {
            name: CloneImage(
                master_location(
                    namespace,
                    self.master,
                    name,
                    disk.storage,
                    host=host_spec,
                    mount_root=mount_root,
                ).qemu_img_target,
                attached=self.mode is CloneMode.ATTACHED,
            )
            for name, disk in self.plan.items()
        }


async def resolve(ctx: Context, node: Resource, spec: VirtualNodeSpec) -> Clone | None:
    """The clone's master, captured; TemporaryError(WaitingForMaster) until it is.

    None for a clone already placed whose master is gone (a detached clone's disks no
    longer need it; an attached clone's master cannot be deleted while it exists). A
    master being deleted takes no new clone.
    """
    assert spec.source is not None
    name = spec.source.vm_master
    placed = bool(node.status.get("host"))
    obj = await read_master(ctx, node.namespace or "", name)
    if obj is None:
        if placed:
            return None
        raise TemporaryError(
            f"VmMaster {node.namespace}/{name} does not exist (yet); nothing is made",
            reason=WAITING_FOR_MASTER,
        )
    status: dict[str, Any] = obj.get("status") or {}
    if (obj.get("metadata") or {}).get("deletionTimestamp") and not placed:
        raise TemporaryError(
            f"VmMaster {name} is being deleted: it takes no new clone", reason=WAITING_FOR_MASTER
        )
    if not status.get("vintage") or not status.get("host"):  # vintage: set once captured
        raise TemporaryError(
            f"VmMaster {name} is not Ready (phase {status.get('phase') or 'Pending'}); "
            "nothing is made until it is",
            reason=WAITING_FOR_MASTER,
        )
    try:
        disks = tuple(
            MasterDisk(
                str(d["name"]), parse_storage_url(d["url"]), int(d.get("virtualSizeBytes") or 0)
            )
            for d in status.get("disks") or []
        )
    except (KeyError, TypeError, ValueError, KvmfleetError) as error:
        raise PermanentError(
            f"VmMaster {name}: unreadable status.disks ({error})", reason=MASTER_DISK_MISSING
        ) from None
    plan, problems = disk_plan(spec, name, disks)
    if problems:
        raise PermanentError("; ".join(problems), reason=MASTER_DISK_MISSING)
    return Clone(name, spec.source.mode, str(status["host"]), disks, plan)


async def check_pinned(ctx: Context, node: Resource, clone: Clone, spec: VirtualNodeSpec) -> None:
    """Before placement: a pinned hostRef that cannot reach the master is refused with why."""
    if node.status.get("host") or not spec.host_ref:
        return
    try:
        host_spec, _ = await read_host(ctx, spec.host_ref)
    except NotFoundError:
        return  # placement says HostNotFound
    clone.check_reach(spec.host_ref, host_spec)
