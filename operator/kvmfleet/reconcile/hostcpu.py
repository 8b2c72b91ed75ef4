"""The KvmHost probe's guest CPU trials: which ``<cpu>`` configurations start a guest there.

Each candidate of :func:`kvmfleet.domain.guestcpu.candidates` is started as a throwaway
transient guest (no disk, no NIC, firmware only) for a moment and destroyed. The result
goes to ``status.guestCpu`` and is reused until what it depends on changes (libvirt or
QEMU version, host CPU, KVM or not), so the trials run once per host, not every probe.
A result in which no trial guest started is not reused: failed starts are quick, and
what made them fail (a /dev/kvm that QEMU may not open, say) can be fixed on the host
without anything in the signature changing.

A host of a migration group (``spec.migrationGroup``) also gets the group's baseline CPU
(:mod:`kvmfleet.domain.cpugroup`), recomputed every probe from the members' recorded CPUs
(a libvirt call, no guest) and proven by one more trial guest whenever it changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from kvmfleet.domain import cpugroup
from kvmfleet.domain.domainxml.build import build_trial_xml
from kvmfleet.domain.guestcpu import GroupCpu, HostCpu, Trial, candidates, probe_signature
from kvmfleet.errors import PermanentError
from kvmfleet.reconcile.hostsession import HostSession
from kvmfleet.virt.host import Host, HostFacts

SETTLE_SECONDS = 2.0
"""How long a trial guest must stay running to count as started."""


def signature(host_facts: HostFacts, kvm: bool) -> str:
    """What the trials of this host depend on."""
    return probe_signature(
        virtualization="kvm" if kvm else "emulated",
        libvirt=host_facts.libvirt_version,
        qemu=host_facts.qemu_version,
        host_cpu=host_facts.cpu_model or "unknown",
    )


async def ensure(
    session: HostSession, recorded: Mapping[str, Any] | None, host_facts: HostFacts, *, kvm: bool
) -> tuple[HostCpu, bool]:
    """The host's trials: the recorded ones while still valid, else new ones.

    Returns the trials and whether their verdicts are new (made now, and not the same
    verdicts as recorded). A lost connection raises
    (classified TemporaryError); a guest QEMU refuses or that stops is a failed trial.
    """
    wanted = signature(host_facts, kvm)
    previous = HostCpu.from_status(recorded)
    if previous is not None and previous.probed_for == wanted and previous.preferred is not None:
        return replace(previous, own=host_facts.cpu), False
    host = Host(await session.libvirt())
    trials = []
    for choice in candidates(kvm):
        xml = build_trial_xml(
            choice,
            virt_type="kvm" if kvm else "qemu",
            suffix=secrets.token_hex(4),
            arch=host_facts.arch or None,
        )
        result = await session.ctx.blocking(host.trial_start, xml, SETTLE_SECONDS)
        trials.append(Trial(choice, result.started, result.message))
    made = HostCpu(
        wanted, tuple(trials), host_facts.cpu, previous.group if previous is not None else None
    )
    return made, previous is None or _verdicts(previous) != _verdicts(made)


async def ensure_group(
    session: HostSession,
    host_cpu: HostCpu,
    *,
    group: str | None,
    host_name: str,
    hosts: Iterable[Mapping[str, Any]],
    kvm: bool,
) -> tuple[HostCpu, bool]:
    """``host_cpu`` with its group's baseline (None without a group, KVM or a known CPU).

    The baseline is asked of this host's libvirt over the members' CPUs (``hosts``: the
    KvmHost objects as the watch has them). A baseline not proven here before is started
    as a trial guest; one that libvirt cannot compute (vendors differ, say) is recorded
    with libvirt's message and no choice. Returns the result and whether it is news.
    """
    if not group or not kvm or host_cpu.own is None:
        return replace(host_cpu, group=None), host_cpu.group is not None
    found = cpugroup.members(group, host_name, host_cpu.own, hosts)
    names = tuple(found)
    host = Host(await session.libvirt())
    previous = host_cpu.group
    try:
        xml = await session.ctx.blocking(
            host.baseline_cpu, [cpugroup.host_cpu_xml(cpu) for cpu in found.values()]
        )
        choice = cpugroup.parse_baseline(xml)
    except PermanentError as error:
        made = GroupCpu(group, names, None, False, error.message)
        return replace(host_cpu, group=made), previous != made
    if previous is not None and previous.choice == choice and previous.works:
        made = GroupCpu(group, names, choice, True)
        return replace(host_cpu, group=made), previous.members != names
    trial = await session.ctx.blocking(
        host.trial_start,
        build_trial_xml(
            choice, virt_type="kvm", suffix=secrets.token_hex(4), arch=host_cpu.own.arch
        ),
        SETTLE_SECONDS,
    )
    made = GroupCpu(group, names, choice, trial.started, trial.message)
    return replace(host_cpu, group=made), True


def _verdicts(host_cpu: HostCpu) -> list[tuple[str, bool]]:
    return [(t.choice.label, t.works) for t in host_cpu.trials]
