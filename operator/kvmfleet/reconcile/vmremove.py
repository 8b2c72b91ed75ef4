"""Removal of a VirtualNode (rmvm [-f] [-p]): shut down, undefine, and purge disks by policy.

The disks to delete are recomputed from the spec and the host's storage pools, never
taken from status. Disks go only with reclaimPolicy Delete, only when their owner record
names this VirtualNode (namespace, name and uid), only from one of the host's storage
pools, never a block device, and never an image that another image names as its backing
file. A host that does not answer is waited for up to `delete_host_unreachable_timeout`,
then the object goes with an Event that lists what was left behind on the host. Any other
failure keeps the finalizer (condition DeletionBlocked and an Event) until it is fixed or
the user sets the annotation ``kvmfleet.io/orphan: "true"``: then disks are left untouched,
and the object is released even when a step fails, with an Event listing what was left.
"""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime
from typing import Any

from kvmfleet import metrics
from kvmfleet.domain import conditions as cond
from kvmfleet.domain.authorization import HostGrant, storage_refusal
from kvmfleet.domain.conditions import parse_rfc3339
from kvmfleet.domain.diskstate import OWNER_SUFFIX, Existence, Owner
from kvmfleet.domain.specs import ReclaimPolicy, VirtualNodeSpec
from kvmfleet.domain.storage_urls import DiskLocation, DiskSourceType
from kvmfleet.errors import KvmfleetError, NotFoundError, TemporaryError
from kvmfleet.reconcile import fleetindex, imagefiles, vmdisks
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostaccess import PlacedHost, open_host
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.ssh import hostcmds, nfsdirect
from kvmfleet.virt.guest import PowerState

ORPHAN_ANNOTATION = "kvmfleet.io/orphan"
DELETION_BLOCKED = "DeletionBlocked"
BLOCKED_RETRY = 30.0


def orphaning(node: Resource) -> bool:
    """The user asked to leave the disks (and whatever cannot be removed) behind."""
    return node.annotations.get(ORPHAN_ANNOTATION, "").lower() == "true"


class _BlockedError(KvmfleetError):
    """A disk whose state or ownership could not be established: nothing is deleted."""


async def remove(ctx: Context, node: Resource) -> Outcome:
    """One pass of the deletion; requeues until done, given up, or orphaned by the user."""
    left: list[str] = [f"domain {node.name}"]
    try:
        return await _remove(ctx, node, left)
    except TemporaryError:
        raise
    except KvmfleetError as error:
        return _blocked(node, error.message, left)


def _blocked(node: Resource, why: str, left: list[str], outcome: Outcome | None = None) -> Outcome:
    """Keep the finalizer and say why; with kvmfleet.io/orphan, release and list what stays."""
    outcome = outcome or Outcome()
    host = node.status.get("host")
    if orphaning(node):
        outcome.warn(
            "Orphaned",
            f"{ORPHAN_ANNOTATION} is set: released although {why}; left on KvmHost {host}: "
            + ", ".join(left),
        )
        return outcome
    message = (
        f"deletion blocked: {why}; still on KvmHost {host}: {', '.join(left)}. Fix the cause, "
        f'or set the annotation {ORPHAN_ANNOTATION}="true" to leave them and let the object go'
    )
    outcome.status["phase"] = "Terminating"
    outcome.conditions = cond.summary(ready=False, reason=DELETION_BLOCKED, message=message)
    before: dict[str, Any] = next(
        (c for c in node.status.get("conditions") or [] if c.get("type") == cond.READY), {}
    )
    if before.get("message") != message:
        outcome.warn(DELETION_BLOCKED, message)
    outcome.requeue_after, outcome.retry_message = BLOCKED_RETRY, message
    return outcome


async def _remove(ctx: Context, node: Resource, left: list[str]) -> Outcome:
    outcome = Outcome()
    host_name = node.status.get("host")
    if not host_name:
        return outcome  # nothing was ever made on a host
    now = datetime.now(UTC).replace(microsecond=0)
    deletion = dict(node.status.get("deletion") or {})
    started = parse_rfc3339(deletion.get("startedAt")) or now
    deletion["startedAt"] = cond.rfc3339(started)
    outcome.status["phase"] = "Terminating"
    try:
        host = await open_host(ctx, str(host_name))
        guests = await host.guests()
        state = await ctx.blocking(guests.state, node.name)
    except NotFoundError as error:
        if "domain" in error.message:
            state = PowerState.OFF  # the domain is already gone
            host = await open_host(ctx, str(host_name))
            guests = await host.guests()
        else:
            return _give_up_or_wait(ctx, node, outcome, deletion, started, now, error)
    except KvmfleetError as error:
        return _give_up_or_wait(ctx, node, outcome, deletion, started, now, error)

    left.extend(f"disk {target}" for target in _targets(ctx, node, host))
    grace = _grace(node)
    if state in (PowerState.ON, PowerState.PAUSED):
        shutdown_at = parse_rfc3339(deletion.get("shutdownAt"))
        if grace > 0 and shutdown_at is None:
            with metrics.operation("shutdown"):
                await ctx.blocking(guests.shutdown, node.name)
            deletion["shutdownAt"] = cond.rfc3339(now)
            outcome.note("ShuttingDown", f"ACPI shutdown sent; hard stop after {grace} s")
            return _again(outcome, deletion, 2.0, "waiting for the guest to shut down")
        if shutdown_at is not None and (now - shutdown_at).total_seconds() < grace:
            return _again(outcome, deletion, 2.0, "waiting for the guest to shut down")
        with metrics.operation("destroy"):
            await ctx.blocking(guests.destroy, node.name)
        if grace > 0:
            outcome.warn("ForcedOff", f"the guest did not shut down within {grace} s")
    with metrics.operation("undefine"):
        undefined = await ctx.blocking(guests.undefine, node.name)
    if undefined:
        outcome.note("Undefined", f"domain {node.name} removed from {host.name} (rmvm)")
    left.remove(f"domain {node.name}")
    blocked = await _disks(ctx, node, host, outcome, left)
    if blocked:
        outcome.status["deletion"] = deletion
        return _blocked(node, blocked, left, outcome)
    return outcome


def _targets(ctx: Context, node: Resource, host: PlacedHost) -> list[str]:
    """The disk images of the spec on this host (for messages; [] if it cannot tell)."""
    try:
        spec = VirtualNodeSpec.from_dict(node.spec)
        locations = vmdisks.locate(node.name, spec, host.spec, ctx.settings.mount_root)
    except KvmfleetError:
        return []
    return [where.qemu_img_target for where in locations]


def _grace(node: Resource) -> int:
    try:
        return VirtualNodeSpec.from_dict(node.spec).shutdown_grace_period_seconds
    except KvmfleetError:
        return 0


def _again(outcome: Outcome, deletion: dict[str, Any], delay: float, why: str) -> Outcome:
    outcome.status["deletion"] = deletion
    outcome.requeue_after, outcome.retry_message = delay, why
    return outcome


def _give_up_or_wait(  # noqa: PLR0917 - the deletion's whole context
    ctx: Context,
    node: Resource,
    outcome: Outcome,
    deletion: dict[str, Any],
    started: datetime,
    now: datetime,
    error: KvmfleetError,
) -> Outcome:
    limit = ctx.settings.delete_host_unreachable_timeout
    waited = (now - started).total_seconds()
    if orphaning(node):
        return _blocked(node, error.message, [f"domain {node.name}", "its disks"])
    if waited < limit:
        if "startedAt" not in (node.status.get("deletion") or {}):
            outcome.warn(
                "HostUnreachable",
                f"cannot reach KvmHost {node.status.get('host')} ({error.message}); "
                f"retrying for up to {int(limit)} s before letting go",
            )
        return _again(outcome, deletion, min(10.0, max(1.0, limit - waited)), error.message)
    disks = [str(d.get("path")) for d in node.status.get("disks") or []]
    outcome.warn(
        "LeftBehind",
        f"gave up after {int(waited)} s: KvmHost {node.status.get('host')} did not answer "
        f"({error.message}); left behind: domain {node.name}"
        + (f", disks {', '.join(disks)}" if disks else ""),
    )
    return outcome


async def _disks(
    ctx: Context, node: Resource, host: PlacedHost, outcome: Outcome, left: list[str]
) -> str:
    """Delete (reclaimPolicy Delete) or keep each disk of the spec, on the host's pools only.

    Returns why some disk could not be decided on ("" when all were).
    """
    spec = VirtualNodeSpec.from_dict(node.spec)
    mount_root = ctx.settings.mount_root
    locations = vmdisks.locate(node.name, spec, host.spec, mount_root)
    targets = [where.qemu_img_target for where in locations]
    if not locations:
        return ""
    if orphaning(node):
        there = [
            t for w, t in zip(locations, targets, strict=True) if await _may_exist(ctx, host, w)
        ]
        what = ", ".join(there) if there else "nothing (no disk image exists)"
        outcome.warn("Orphaned", f"{ORPHAN_ANNOTATION} is set: left {what}")
        left.clear()
        return ""
    if spec.reclaim_policy is ReclaimPolicy.RETAIN:
        outcome.note("DisksRetained", f"reclaimPolicy Retain kept: {', '.join(targets)}")
        left.clear()
        return ""
    me = Owner(node.namespace or "", node.name, node.uid)
    pools = {str(pool.url) for pool in host.spec.storage_pools}
    backing = await _backing_files(ctx, node)
    grant = HostGrant.of(host.name, host.spec)
    deleted, kept, blocked = [], [], []
    for where in locations:
        target = where.qemu_img_target
        refused = storage_refusal(str(where.storage), grant)
        why = (
            f"refused: {refused.message}"
            if refused is not None
            else await _keep_reason(host, where, me, pools, backing, mount_root)
        )
        if why is None:
            await _delete(host, where)
            deleted.append(target)
        elif isinstance(why, _BlockedError):
            blocked.append(f"{target}: {why.message}")
            continue
        else:
            kept.append(f"{target} ({why})")
        left.remove(f"disk {target}")
    if deleted:
        outcome.note("DisksDeleted", f"reclaimPolicy Delete removed: {', '.join(deleted)}")
    if kept:
        outcome.warn("DisksKept", f"not deleted: {'; '.join(kept)}")
    return "; ".join(blocked)


async def _may_exist(ctx: Context, host: PlacedHost, where: DiskLocation) -> bool:
    """False only for an image definitively absent (to list exactly what is left)."""
    if where.source_type is DiskSourceType.BLOCK:
        return True
    verdict = await vmdisks.probe(host, where, ctx.settings.mount_root)
    return verdict.existence is not Existence.ABSENT


async def _keep_reason(  # noqa: PLR0917 - one rule per line
    host: PlacedHost,
    where: DiskLocation,
    me: Owner,
    pools: set[str],
    backing: set[str],
    mount_root: str,
) -> str | _BlockedError | None:
    """None: delete it. A text: keep it, and why. _BlockedError: cannot tell, retry."""
    if where.source_type is DiskSourceType.BLOCK:
        return "a block device is never wiped"
    if str(where.storage) not in pools:
        return f"{where.storage} is not a storage pool of KvmHost {host.name}; refused"
    verdict = await vmdisks.probe(host, where, mount_root)
    if verdict.existence is Existence.UNKNOWN:
        return _BlockedError(verdict.message, reason=verdict.reason)
    owner = verdict.owner
    if verdict.existence is Existence.ABSENT:
        if owner == me:
            await _delete_owner_record(host, where)
        return "already gone"
    if owner is None:
        return "no owner record: not made by this VirtualNode"
    if owner != me:
        return f"owned by {owner}"
    target = where.qemu_img_target
    if target in backing or (where.file_name or "") in backing:
        return "backing file of another VirtualNode's disk"
    users = await _backed_by_in_pool(host, where, mount_root)
    if isinstance(users, _BlockedError) or users:
        return users if isinstance(users, _BlockedError) else f"backing file of {', '.join(users)}"
    return None


async def _backed_by_in_pool(
    host: PlacedHost, where: DiskLocation, mount_root: str
) -> list[str] | _BlockedError:
    """The images of the same pool directory whose qcow2 header names this file as backing.

    Only for pools the host sees as a directory (dir, NFS Mount); NFS Direct pools are
    covered by the VirtualNodes' status only (see docs/security.md).
    """
    directory = vmdisks.pool_directory(where, host.spec, mount_root)
    if directory is None:
        return []
    scan = await imagefiles.backed_by(host, directory, where.path)
    return _BlockedError(scan.error) if scan.error else scan.users


async def _backing_files(ctx: Context, node: Resource) -> set[str]:
    """Every image another VirtualNode's disk is an overlay of (as their status says)."""
    found: set[str] = set()
    for other in await fleetindex.virtualnodes(ctx):
        if other["metadata"]["uid"] == node.uid:
            continue
        for disk in (other.get("status") or {}).get("disks") or []:
            if disk.get("backingFile"):
                found.add(str(disk["backingFile"]))
                found.add(posixpath.basename(str(disk["backingFile"])))
    return found


async def _delete(host: PlacedHost, where: DiskLocation) -> None:
    """Remove the image, then its owner record (a crash in between leaves only ours)."""
    await _unlink(host, where, where.file_name or "")
    await _delete_owner_record(host, where)


async def _delete_owner_record(host: PlacedHost, where: DiskLocation) -> None:
    await _unlink(host, where, (where.file_name or "") + OWNER_SUFFIX)


async def _unlink(host: PlacedHost, where: DiskLocation, file_name: str) -> None:
    if where.source_type is DiskSourceType.NETWORK:
        argv = nfsdirect.unlink_argv(where.storage, file_name)
        result = nfsdirect.parse((await host.session.run(argv, check=False)).stdout)
        if not result.ok:
            raise KvmfleetError(f"cannot remove {where.storage}/{file_name}: {result.error}")
    else:
        directory = posixpath.dirname(where.path)
        await host.session.run(hostcmds.rm_file(f"{directory}/{file_name}"))
