"""The domains of a KvmHost and their power states: one batched read per host per interval.

A sync of an unchanged VirtualNode needs one fact from its host: does the domain of
that name still carry the VM's UUID, in the power state its status shows? Asking each
VM's host separately costs a connection, a Secret read and libvirt calls per VM per
interval. Instead one inventory per host (``virConnectGetAllDomainStats``, one libvirt
call) serves every VM of that host for ``vm_sync_interval``: the first pass that needs it
reads it, passes that come meanwhile wait for that read and share it. The per-VM statistics
poll (:mod:`kvmfleet.reconcile.vmstats`) reads the same call every ``vm_stats_interval``
and refreshes the inventory with it (:func:`refresh`); while it does, an inventory counts
as fresh for one and a half sync intervals, so a steady host gets one libvirt call per
interval, not two.

A full pass that has just observed or changed a domain writes what it saw back
(:func:`observed`), so the next sync does not mistake its own change for drift.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kvmfleet import metrics
from kvmfleet.domain.specs import KvmHostSpec
from kvmfleet.reconcile import fleetindex
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostaccess import connect_host
from kvmfleet.virt.guest import PowerState
from kvmfleet.virt.host import Host


@dataclass
class Inventory:
    """One host's domains, by name: (UUID, power state), and when they were read."""

    read_at: float
    domains: dict[str, tuple[str, PowerState]] = field(default_factory=dict)


def _entry(ctx: Context, host: str) -> Inventory | None:
    found = ctx.inventories.get(host)
    return found if isinstance(found, Inventory) else None


async def read(ctx: Context, host: str) -> Inventory:
    """The host's inventory, at most ``vm_sync_interval`` old (read now when older).

    Raises what connecting or libvirt raised (classified): the caller then does a full
    pass, which reports the host's state as it always has.
    """
    max_age = _max_age(ctx, host)
    cached = _entry(ctx, host)
    if cached is not None and time.monotonic() - cached.read_at < max_age:
        return cached
    async with ctx.lock(f"inventory/{host}"):
        cached = _entry(ctx, host)
        if cached is not None and time.monotonic() - cached.read_at < max_age:
            return cached  # read by the pass this one waited for
        obj = await fleetindex.kvmhost(ctx, host)
        spec = KvmHostSpec.from_dict(obj.get("spec") or {})
        placed = await connect_host(ctx, host, spec, dict(obj.get("status") or {}))
        connection = await placed.session.libvirt()
        started = time.monotonic()
        domains = await ctx.blocking(Host(connection).inventory)
        metrics.HOST_INVENTORY_READS.labels(host).inc()
        fresh = Inventory(started, domains)
        ctx.inventories[host] = fresh
        return fresh


def _max_age(ctx: Context, host: str) -> float:
    """How old an inventory may be: one sync interval, half more while the statistics poll
    refreshes it (so a poll a moment late does not cost a read of its own)."""
    sync = ctx.settings.vm_sync_interval
    fed = host in ctx.stats_targets and ctx.settings.vm_stats_interval <= sync
    return sync * 1.5 if fed else sync


def refresh(
    ctx: Context, host: str, read_at: float, domains: dict[str, tuple[str, PowerState]]
) -> None:
    """The statistics poll read the host's domains (started at ``read_at``)."""
    cached = _entry(ctx, host)
    if cached is None or cached.read_at < read_at:
        ctx.inventories[host] = Inventory(read_at, dict(domains))


def observed(ctx: Context, host: str, name: str, uuid: str | None, state: str | None) -> None:
    """A full pass saw (or made) this state of a domain: the inventory shows it too."""
    cached = _entry(ctx, host)
    if cached is None:
        return
    if uuid is None or state is None:
        cached.domains.pop(name, None)
        return
    try:
        cached.domains[name] = (uuid, PowerState(state))
    except ValueError:
        cached.domains.pop(name, None)


def forget(ctx: Context, host: str) -> None:
    """Drop the host's inventory (the host is gone, or its connection was replaced)."""
    ctx.inventories.pop(host, None)
