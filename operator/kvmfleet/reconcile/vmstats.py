"""Per-VM usage for the metrics: one bulk libvirt statistics call per host per interval.

A background task (:func:`poll`, started with the operator) reads every watched host's
domain statistics with one ``virConnectGetAllDomainStats`` call
(:func:`kvmfleet.virt.stats.all_domain_stats`) every ``vm_stats_interval`` seconds, on
the host's own threads and within the libvirt call deadline, and hands them to
:data:`kvmfleet.metrics.VM_STATS`. A Prometheus scrape reads that cache only: it never
waits for a host. A host is watched once its probe reached its libvirtd
(:func:`watch`), skipped while its last probe failed, and forgotten when the KvmHost is
deleted (:func:`unwatch`). The same call reads every domain's state, which refreshes the
host's inventory (:mod:`kvmfleet.reconcile.inventory`): VM syncs then need no libvirt
call of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kvmfleet import metrics
from kvmfleet.errors import KvmfleetError
from kvmfleet.reconcile import inventory
from kvmfleet.reconcile.context import Context
from kvmfleet.virt.connection import LibvirtPool, LibvirtTarget
from kvmfleet.virt.stats import HostDomainStats, all_domain_stats

log = logging.getLogger(__name__)


def watch(ctx: Context, host: str, target: LibvirtTarget) -> None:
    """Read this host's domain statistics from now on (its libvirtd, as the probe reached it)."""
    ctx.stats_targets[host] = target


def unwatch(ctx: Context, host: str) -> None:
    """The KvmHost is deleted: stop reading it."""
    ctx.stats_targets.pop(host, None)


def _read(pool: LibvirtPool, target: LibvirtTarget) -> HostDomainStats:
    return all_domain_stats(pool.connection(target))


async def collect(ctx: Context, host: str) -> None:
    """Read one host's statistics now (one libvirt call) into the metrics cache."""
    target = ctx.stats_targets.get(host)
    if target is None:
        return
    started = time.monotonic()
    try:
        domains = await ctx.on_host(
            host, ctx.settings.libvirt_call_timeout, _read, ctx.libvirt, target
        )
    except KvmfleetError as error:
        metrics.VM_STATS_ERRORS.labels(host).inc()
        log.debug("domain statistics of %s: %s", host, error.message)
        return
    metrics.VM_STATS_DURATION.labels(host).set(time.monotonic() - started)
    metrics.VM_STATS.update(host, domains.active)
    inventory.refresh(ctx, host, started, domains.states)


def _due(ctx: Context) -> list[str]:
    """Watched hosts whose last probe did not fail (an unreachable host is not asked)."""
    return [h for h in ctx.stats_targets if ctx.last_probe.get(h, (0.0, True))[1]]


async def poll(ctx: Context) -> None:
    """Read every watched host's statistics each ``vm_stats_interval`` seconds, forever."""
    interval = ctx.settings.vm_stats_interval
    metrics.VM_STATS.max_age = max(3 * interval, interval + ctx.settings.libvirt_call_timeout)
    while True:
        started = time.monotonic()
        hosts = _due(ctx)
        if hosts:
            await asyncio.gather(*(collect(ctx, host) for host in hosts))
        await asyncio.sleep(max(1.0, interval - (time.monotonic() - started)))
