"""Bulk per-domain statistics of one host: one ``virConnectGetAllDomainStats`` call.

One round trip returns CPU time, balloon (memory), block and interface counters of every
running domain of the host; the records are parsed by
:func:`kvmfleet.domain.vmstats.parse_domain_stats`. Blocks like every libvirt call:
callers run it in the host's threads with a deadline.
"""

from __future__ import annotations

import libvirt

from kvmfleet.domain.vmstats import DomainStats, parse_domain_stats
from kvmfleet.virt.connection import LibvirtConnection
from kvmfleet.virt.errors import libvirt_errors

STATS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)
"""The groups read: cpu.*, balloon.*, block.*, net.* (not per-vCPU or perf events)."""


def all_domain_stats(connection: LibvirtConnection) -> list[DomainStats]:
    """The statistics of every running domain of the host (one libvirt call)."""
    with libvirt_errors(f"{connection.label}: domain statistics"):
        records = connection.conn.getAllDomainStats(
            STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        )
        return [parse_domain_stats(str(domain.name()), record) for domain, record in records]
