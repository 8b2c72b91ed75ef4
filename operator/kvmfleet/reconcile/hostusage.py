"""A KvmHost's allocation and VM count, kept current between probes.

The probe (reconcile/hosts.py) recomputes `status.allocated` and the domain list every
interval. In between, the VirtualNode use-cases publish what they just changed, so that
`kubectl get kh` follows at once: a placement adds the VM's CPUs and memory, a domain
defined by kvmfleet is added to `status.domains` / `domainCount`, a removal takes both
away. Publishing never lists every VirtualNode: it reads the KvmHost, and the VirtualNodes
labelled with that host (`kvmfleet.io/host`) from the watch-fed index (see fleetindex),
plus this operator's in-memory placements (reservations) that the watch may not show yet.
A failed publish changes nothing: the next probe writes the same numbers.

A probe lists the host's domains over several seconds and Kopf writes its status after it
returns; a publish in between is fresher than the probe's numbers. Each publish bumps the
host's epoch (`ctx.usage_epochs`), and a probe that ends with another epoch than it began
with leaves these fields to the publish (`USAGE_FIELDS`, see `stale`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from kvmfleet import metrics
from kvmfleet.domain.allocation import Resources
from kvmfleet.errors import KvmfleetError
from kvmfleet.reconcile import fleetindex
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.vmplacement import requests_of
from kvmfleet.settings import HOST_LABEL

log = logging.getLogger(__name__)

Reservations = Mapping[str, tuple[str, Resources, set[str]]]

USAGE_FIELDS = ("allocated", "cpuSummary", "memorySummary", "domains", "domainCount")
"""The KvmHost status fields both the probe and a publish write."""


def epoch(ctx: Context, host: str) -> int:
    """How many publishes this process has made for host (compare with `stale`)."""
    return ctx.usage_epochs.get(host, 0)


def stale(ctx: Context, host: str, since: int) -> bool:
    """Whether a publish for host happened after `epoch()` returned `since`."""
    return epoch(ctx, host) != since


def allocated_on(
    host: str,
    nodes: Sequence[Mapping[str, Any]],
    reservations: Reservations | None = None,
    released: Collection[str] = (),
) -> Resources:
    """CPUs and memory of the VirtualNodes placed on `host` (status.host).

    A VM this process placed but the list does not show placed yet counts through its
    reservation; a VM whose removal finished (`released`) no longer counts, even while
    its object still exists. A VM pinned by spec.hostRef counts once it is placed.
    """
    reservations = reservations or {}
    total = Resources(0, 0)
    seen: set[str] = set()
    for node in nodes:
        uid = str((node.get("metadata") or {}).get("uid", ""))
        where = (node.get("status") or {}).get("host")
        if uid in released or not where:
            continue
        seen.add(uid)
        if where == host:
            total += requests_of(node)
    for uid, (where, resources, _) in reservations.items():
        if where == host and uid not in seen and uid not in released:
            total += resources
    return total


def usage_patch(
    host: str,
    status: Mapping[str, Any],
    used: Resources,
    *,
    added: tuple[str, str] | None = None,
    removed: str | None = None,
) -> dict[str, Any]:
    """The KvmHost status fields that change: allocation (when the probe has recorded what is
    allocatable) and the domain list with an added (name, state) or a removed domain."""
    patch: dict[str, Any] = {}
    capacity = status.get("allocatable")
    if capacity:
        fields = {
            "allocated": {"cpus": used.cpus, "memoryMiB": used.memory_mib},
            "cpuSummary": f"{used.cpus}/{capacity.get('cpus', 0)}",
            "memorySummary": f"{used.memory_mib}/{capacity.get('memoryMiB', 0)}Mi",
        }
        patch.update({k: v for k, v in fields.items() if status.get(k) != v})
    if added or removed:
        domains = [dict(d) for d in status.get("domains") or []]
        if added and all(d.get("name") != added[0] for d in domains):
            domains.append({"name": added[0], "state": added[1]})
        if removed:
            domains = [d for d in domains if d.get("name") != removed]
        if domains != list(status.get("domains") or []):
            patch["domains"] = domains
        if status.get("domainCount") != len(domains):
            patch["domainCount"] = len(domains)
    return patch


async def publish(
    ctx: Context,
    host: str,
    *,
    added: tuple[str, str] | None = None,
    removed: str | None = None,
) -> None:
    """Write host's allocation now (and a domain that was just defined or removed)."""
    try:
        async with ctx.lock(f"kh-usage/{host}"):
            ctx.usage_epochs[host] = epoch(ctx, host) + 1
            # Read, not from the index: the domain list must include what the last
            # publish (maybe a moment ago) wrote, or this patch would drop it.
            obj = await ctx.blocking(ctx.kube.get_object, "kvmhosts", host)
            nodes = await fleetindex.virtualnodes(ctx, (HOST_LABEL, host))
            status = obj.get("status") or {}
            used = allocated_on(host, nodes, ctx.reservations, ctx.released)
            patch = usage_patch(host, status, used, added=added, removed=removed)
            if patch:
                await ctx.blocking(ctx.kube.patch_status, "kvmhosts", host, None, patch)
    except KvmfleetError as error:
        log.info("KvmHost %s: allocation not published (the next probe will): %s", host, error)
        return
    if "allocated" in patch:
        metrics.HOST_CPUS.labels(host, "allocated").set(used.cpus)
        metrics.HOST_MEMORY.labels(host, "allocated").set(used.memory_mib * 1024 * 1024)
    if "domainCount" in patch:
        metrics.HOST_DOMAINS.labels(host).set(patch["domainCount"])
