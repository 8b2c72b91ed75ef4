"""Bulk per-domain statistics of one host: one ``virConnectGetAllDomainStats`` call.

One round trip returns the state of every domain of the host (name, UUID, power state:
the host's inventory) and CPU time, balloon (memory), block and interface counters of the
active ones; the counters are parsed by :func:`kvmfleet.domain.vmstats.parse_domain_stats`.
Blocks like every libvirt call: callers run it in the host's threads with a deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from kvmfleet.domain.vmstats import DomainStats, parse_domain_stats
from kvmfleet.virt.connection import LibvirtConnection
from kvmfleet.virt.errors import libvirt_errors
from kvmfleet.virt.guest import PowerState, inventory_entry

STATS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_STATE
)
"""The groups read: state.*, cpu.*, balloon.*, block.*, net.* (not per-vCPU or perf events)."""


@dataclass(frozen=True)
class HostDomainStats:
    """One read of a host: every domain's (UUID, power state) and the active ones' usage."""

    states: dict[str, tuple[str, PowerState]]
    active: list[DomainStats]


def all_domain_stats(connection: LibvirtConnection) -> HostDomainStats:
    """Every domain's state and the statistics of the active ones (one libvirt call)."""
    with libvirt_errors(f"{connection.label}: domain statistics"):
        records = connection.conn.getAllDomainStats(STATS, 0)
        states: dict[str, tuple[str, PowerState]] = {}
        active = []
        for domain, record in records:
            name = str(domain.name())
            states[name] = inventory_entry(domain, record)
            if record.get("state.state") != libvirt.VIR_DOMAIN_SHUTOFF:
                active.append(parse_domain_stats(name, record))
        return HostDomainStats(states, active)
