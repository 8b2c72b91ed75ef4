"""The KvmHost probe's guest CPU trials: which ``<cpu>`` configurations start a guest there.

Each candidate of :func:`kvmfleet.domain.guestcpu.candidates` is started as a throwaway
transient guest (no disk, no NIC, firmware only) for a moment and destroyed. The result
goes to ``status.guestCpu`` and is reused until what it depends on changes (libvirt or
QEMU version, host CPU, KVM or not), so the trials run once per host, not every probe.
A result in which no trial guest started is not reused: failed starts are quick, and
what made them fail (a /dev/kvm that QEMU may not open, say) can be fixed on the host
without anything in the signature changing.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from kvmfleet.domain.domainxml.build import build_trial_xml
from kvmfleet.domain.guestcpu import HostCpu, Trial, candidates, probe_signature
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
        return previous, False
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
    made = HostCpu(wanted, tuple(trials))
    return made, previous is None or _verdicts(previous) != _verdicts(made)


def _verdicts(host_cpu: HostCpu) -> list[tuple[str, bool]]:
    return [(t.choice.label, t.works) for t in host_cpu.trials]
