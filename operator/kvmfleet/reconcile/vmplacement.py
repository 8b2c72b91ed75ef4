"""Placement of a VirtualNode and its MACs: decided once, persisted before anything is made.

The decision (host and MACs) is written to status right away, so an operator killed at
any later line finds it again and never creates a second copy elsewhere. Placement and
MAC allocation for all VMs are serialised by one lock, held only while deciding (no I/O
under it): the lists are read before, the decision is persisted after; the in-memory
reservations cover the moment between a decision and the API server showing it in a list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvmfleet.domain.allocation import Resources
from kvmfleet.domain.authorization import REASON as NOT_ALLOWED
from kvmfleet.domain.authorization import HostGrant, authorize, summary
from kvmfleet.domain.macs import allocate_mac, normalize_mac
from kvmfleet.domain.placement import HostSnapshot, PlacementRequest, check_host, choose_host
from kvmfleet.domain.quantities import bytes_to_mib, parse_bytes
from kvmfleet.domain.specs import KvmHostSpec, VirtualNodeSpec
from kvmfleet.domain.storage_urls import StorageURL, parse_storage_url
from kvmfleet.errors import KvmfleetError, PermanentError
from kvmfleet.reconcile import fleetindex
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import HOST_LABEL


@dataclass(frozen=True)
class Placement:
    """Where a VM lives and the MAC of each of its NICs."""

    host: str
    macs: tuple[str, ...]


class UnschedulableError(KvmfleetError):
    """No host can take the VM now (a condition, retried: hosts change)."""

    reason = "Unschedulable"


def requests_of(node: Mapping[str, Any]) -> Resources:
    """The CPUs and memory (MiB) a VirtualNode object asks for (unreadable memory: 0)."""
    spec = node.get("spec") or {}
    try:
        memory = bytes_to_mib(parse_bytes(spec.get("memory", "1Gi")))
    except KvmfleetError:
        memory = 0
    return Resources(int(spec.get("cpus", 1)), memory)


def _macs_of(node: Mapping[str, Any]) -> set[str]:
    found = set()
    for nic in (node.get("spec") or {}).get("nics") or []:
        if nic.get("mac"):
            found.add(str(nic["mac"]).lower())
    for nic in (node.get("status") or {}).get("nics") or []:
        if nic.get("mac"):
            found.add(str(nic["mac"]).lower())
    return found


def host_snapshot(obj: Mapping[str, Any], allocated: Resources) -> HostSnapshot | None:
    """Placement's view of a KvmHost object (None when it cannot be read)."""
    try:
        spec = KvmHostSpec.from_dict(obj.get("spec") or {})
    except KvmfleetError:
        return None
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    caps = status.get("capabilities") or {}
    storage = (
        tuple(pool.url for pool in spec.storage_pools)
        if conditions.get("StorageReady") == "True"
        else ()
    )
    available: dict[StorageURL, int] = {}
    for pool in status.get("storagePools") or []:
        if pool.get("availableBytes") is None:
            continue
        try:
            available[parse_storage_url(pool.get("url"))] = int(pool["availableBytes"])
        except (KvmfleetError, TypeError, ValueError):
            continue
    return HostSnapshot(
        name=obj["metadata"]["name"],
        ready=conditions.get("Ready") == "True",
        cpus=int(caps.get("cpus", 0)),
        memory_mib=int(caps.get("memoryMiB", 0)),
        maintenance=spec.maintenance,
        allowed_namespaces=frozenset(spec.allowed_namespaces),
        bridges=frozenset(b["name"] for b in status.get("bridges") or [] if b.get("ready")),
        storage=storage,
        allocated_cpus=allocated.cpus,
        allocated_memory_mib=allocated.memory_mib,
        overcommit=spec.overcommit,
        grant=HostGrant.of(obj["metadata"]["name"], spec),
        available_bytes=available,
    )


async def ensure_placed(ctx: Context, node: Resource, spec: VirtualNodeSpec) -> Placement:
    """The VM's host and MACs: from status when decided, else decided now and persisted."""
    status_nics = node.status.get("nics") or []
    host = node.status.get("host")
    if host and len(status_nics) == len(spec.nics):
        return Placement(str(host), tuple(str(n["mac"]) for n in status_nics))
    nodes = await fleetindex.virtualnodes(ctx)
    hosts = [] if host else await fleetindex.kvmhosts(ctx)
    async with ctx.lock("placement"):  # decide only: reservations cover newer decisions
        if not host:
            host = _choose(ctx, node, spec, nodes, hosts)
        macs = _allocate_macs(ctx, node, spec, nodes, status_nics)
        ctx.reservations[node.uid] = (host, requests_of({"spec": dict(node.spec)}), set(macs))
    nics = [
        {"bridge": nic.bridge, "model": str(nic.model), "mac": mac}
        for nic, mac in zip(spec.nics, macs, strict=True)
    ]
    assert node.namespace is not None
    await ctx.blocking(
        ctx.kube.patch_status,
        "virtualnodes",
        node.name,
        node.namespace,
        {"host": host, "nics": nics},
    )
    await ctx.blocking(
        ctx.kube.patch_labels, "virtualnodes", node.name, node.namespace, {HOST_LABEL: host}
    )
    return Placement(host, tuple(macs))


def snapshots_without(
    ctx: Context,
    node: Resource,
    nodes: Sequence[Mapping[str, Any]],
    hosts: Sequence[Mapping[str, Any]],
) -> list[HostSnapshot]:
    """Placement's view of every readable host, their allocation not counting ``node``."""
    used: dict[str, Resources] = {}
    seen: set[str] = set()
    for other in nodes:
        uid = other["metadata"]["uid"]
        where = (other.get("status") or {}).get("host")
        if uid == node.uid or not where:
            continue
        seen.add(uid)
        used[where] = used.get(where, Resources(0, 0)) + requests_of(other)
    for uid, (where, resources, _) in ctx.reservations.items():
        if uid != node.uid and uid not in seen:
            used[where] = used.get(where, Resources(0, 0)) + resources
    return [
        snap
        for obj in hosts
        if (snap := host_snapshot(obj, used.get(obj["metadata"]["name"], Resources(0, 0))))
    ]


def _choose(
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    nodes: Sequence[Mapping[str, Any]],
    hosts: Sequence[Mapping[str, Any]],
) -> str:
    snapshots = snapshots_without(ctx, node, nodes, hosts)
    assert node.namespace is not None
    request = PlacementRequest.for_spec(spec, node.namespace, ctx.settings.storage_min_free_bytes)
    if spec.host_ref:
        pinned = next((s for s in snapshots if s.name == spec.host_ref), None)
        if pinned is None:
            raise UnschedulableError(
                f"KvmHost {spec.host_ref} does not exist", reason="HostNotFound"
            )
        if pinned.grant is not None and (refusals := authorize(node.namespace, spec, pinned.grant)):
            raise UnschedulableError(
                f"KvmHost {spec.host_ref} does not allow this VM: {summary(refusals)}",
                reason=NOT_ALLOWED,
            )
        rejected = check_host(request, pinned)
        if rejected is not None:
            raise UnschedulableError(
                f"KvmHost {spec.host_ref} cannot take this VM: {rejected.detail}",
                reason=f"Host{rejected.code}",
            )
        return spec.host_ref
    decision = choose_host(request, snapshots)
    if decision.host is None:
        raise UnschedulableError(decision.message, reason=str(decision.reason))
    return decision.host


def _allocate_macs(
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    nodes: Sequence[Mapping[str, Any]],
    status_nics: Sequence[Mapping[str, Any]],
) -> list[str]:
    in_use: set[str] = set()
    for other in nodes:
        if other["metadata"]["uid"] != node.uid:
            in_use |= _macs_of(other)
    for uid, (_, _, macs) in ctx.reservations.items():
        if uid != node.uid:
            in_use |= macs
    result: list[str] = []
    for index, nic in enumerate(spec.nics):
        if nic.mac:
            mac = normalize_mac(nic.mac, f"spec.nics[{index}].mac")
            if mac in in_use:
                raise PermanentError(
                    f"spec.nics[{index}].mac: {mac} is already used by another VirtualNode",
                    reason="MacInUse",
                )
        elif index < len(status_nics) and status_nics[index].get("mac"):
            mac = str(status_nics[index]["mac"])  # recorded: stable for the VM's life
        else:
            mac = allocate_mac(node.uid, index, in_use | set(result))
        result.append(mac)
    return result
