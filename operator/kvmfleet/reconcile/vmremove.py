"""Removal of a VirtualNode (rmvm [-f] [-p]): shut down, undefine, and purge disks by policy.

Never blocks forever: a host that does not answer is waited for up to
`delete_host_unreachable_timeout`, then the object goes with an Event that lists what was
left behind on the host. Disks go only with reclaimPolicy Delete, and never a disk that
another disk uses as its backing file, nor a block device.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.authorization import HostGrant, storage_refusal
from kvmfleet.domain.conditions import parse_rfc3339
from kvmfleet.domain.specs import ReclaimPolicy, VirtualNodeSpec
from kvmfleet.domain.storage_urls import parse_storage_url
from kvmfleet.errors import KvmfleetError, NotFoundError
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostaccess import PlacedHost, open_host
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.ssh import hostcmds, nfsdirect
from kvmfleet.virt.guest import PowerState


async def remove(ctx: Context, node: Resource) -> Outcome:
    """One pass of the deletion; requeues until done or given up."""
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

    grace = _grace(node)
    if state in (PowerState.ON, PowerState.PAUSED):
        shutdown_at = parse_rfc3339(deletion.get("shutdownAt"))
        if grace > 0 and shutdown_at is None:
            await ctx.blocking(guests.shutdown, node.name)
            deletion["shutdownAt"] = cond.rfc3339(now)
            outcome.note("ShuttingDown", f"ACPI shutdown sent; hard stop after {grace} s")
            return _again(outcome, deletion, 2.0, "waiting for the guest to shut down")
        if shutdown_at is not None and (now - shutdown_at).total_seconds() < grace:
            return _again(outcome, deletion, 2.0, "waiting for the guest to shut down")
        await ctx.blocking(guests.destroy, node.name)
        if grace > 0:
            outcome.warn("ForcedOff", f"the guest did not shut down within {grace} s")
    if await ctx.blocking(guests.undefine, node.name):
        outcome.note("Undefined", f"domain {node.name} removed from {host.name} (rmvm)")
    await _disks(ctx, node, host, outcome)
    return outcome


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


async def _disks(ctx: Context, node: Resource, host: PlacedHost, outcome: Outcome) -> None:
    disks = [d for d in node.status.get("disks") or [] if d.get("path")]
    if not disks:
        return
    try:
        policy = VirtualNodeSpec.from_dict(node.spec).reclaim_policy
    except KvmfleetError:
        policy = ReclaimPolicy.RETAIN
    paths = [str(d["path"]) for d in disks]
    if policy is ReclaimPolicy.RETAIN:
        outcome.note("DisksRetained", f"reclaimPolicy Retain kept: {', '.join(paths)}")
        return
    backing = await _backing_files(ctx, node)
    grant = HostGrant.of(host.name, host.spec)
    deleted, kept = [], []
    for disk in disks:
        path = str(disk["path"])
        refused = storage_refusal(str(disk.get("url") or ""), grant)
        if refused is not None:
            kept.append(f"{path} ({refused.message})")
        elif disk.get("format") == "raw" and path.startswith("/dev/"):
            kept.append(f"{path} (a block device is never wiped)")
        elif path in backing or path.rsplit("/", 1)[-1] in backing:
            kept.append(f"{path} (backing file of another disk)")
        else:
            await _delete(host, disk)
            deleted.append(path)
    if deleted:
        outcome.note("DisksDeleted", f"reclaimPolicy Delete removed: {', '.join(deleted)}")
    if kept:
        outcome.warn("DisksKept", f"not deleted: {'; '.join(kept)}")


async def _backing_files(ctx: Context, node: Resource) -> set[str]:
    """Every image another VirtualNode's disk is an overlay of."""
    found: set[str] = set()
    for other in await ctx.blocking(ctx.kube.list_cluster_objects, "virtualnodes"):
        if other["metadata"]["uid"] == node.uid:
            continue
        for disk in (other.get("status") or {}).get("disks") or []:
            if disk.get("backingFile"):
                found.add(str(disk["backingFile"]))
    return found


async def _delete(host: PlacedHost, disk: dict[str, Any]) -> None:
    path = str(disk["path"])
    if path.startswith("nfs://"):
        storage = parse_storage_url(str(disk["url"]))
        result = nfsdirect.parse(
            (
                await host.session.run(
                    nfsdirect.unlink_argv(storage, path.rsplit("/", 1)[-1]), check=False
                )
            ).stdout
        )
        if not result.ok:
            raise KvmfleetError(f"cannot remove {path}: {result.error}")
    else:
        await host.session.run(hostcmds.rm_file(path))
