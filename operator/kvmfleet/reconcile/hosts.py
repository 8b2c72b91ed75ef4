"""KvmHost use-cases: reach the host over SSH, check it, prepare bridges and storage, probe.

One probe (`converge`) does it all, idempotently: it observes first and only changes
what differs from the spec, so it serves creation, spec edits and the periodic drift
check alike. A host that cannot be reached is reported `Reachable=False` and its other
conditions `Unknown`: nothing is ever deleted or recreated because a host is silent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from kvmfleet import metrics
from kvmfleet.domain import conditions as cond
from kvmfleet.domain.allocation import allocatable
from kvmfleet.domain.conditions import Condition, Status
from kvmfleet.domain.guestcpu import GroupCpu
from kvmfleet.domain.specs import HostKeyPolicy, KvmHostSpec
from kvmfleet.errors import KvmfleetError, NotFoundError, PermanentError, TemporaryError
from kvmfleet.reconcile import fleetindex, hostcpu, hostnetwork, hoststorage, hostusage, vmstats
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostsession import HostSession, connect
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import HOST_LABEL
from kvmfleet.ssh import facts, hostcmds
from kvmfleet.ssh.errors import (
    AuthenticationError,
    HostKeyMismatchError,
    HostKeyUnknownError,
    HostUnreachableError,
)
from kvmfleet.virt.host import Host, HostFacts

log = logging.getLogger(__name__)

REACHABLE = "Reachable"
HOST_KEY_VERIFIED = "HostKeyVerified"
VIRTUALIZATION_CAPABLE = "VirtualizationCapable"
LIBVIRT_READY = "LibvirtReady"
BRIDGES_READY = "BridgesReady"
STORAGE_READY = "StorageReady"
HOST_CONDITIONS = (
    REACHABLE,
    HOST_KEY_VERIFIED,
    VIRTUALIZATION_CAPABLE,
    LIBVIRT_READY,
    BRIDGES_READY,
    STORAGE_READY,
)
NOT_READY_RETRY = 10.0
"""Seconds between probes of a host that is not Ready (capped by the probe interval)."""
HEARTBEAT_FACTOR = 10
"""status.lastProbeTime is refreshed at least every this many probe intervals."""


async def reconcile(ctx: Context, host: Resource, changed: Iterable[str] = ()) -> Outcome:
    """A spec change (or the operator's start): the host is probed now.

    ``changed``: the spec fields an update changed. When one of them decides what the VMs
    placed here may do (:data:`WAKES_VMS`: a maintenance drains them, a namespace or a
    bridge no longer allowed flags them), each such VM is woken at once
    (:func:`wake_vms`) rather than at its next sync, a ``vm_sync_interval`` later.
    """
    if WAKES_VMS.intersection(changed):
        await wake_vms(ctx, host)
    async with ctx.lock(f"kh/{host.name}"):
        return await converge(ctx, host)


WAKES_VMS = frozenset(
    {"maintenance", "allowedNamespaces", "bridges", "storagePools", "nfsAccess", "migrationGroup"}
)
"""KvmHost spec fields whose change the host's VMs act on (drain, authorization, CPU)."""

HOST_CHANGED_ANNOTATION = "kvmfleet.io/host-changed"
"""Set on each VM of a KvmHost whose spec changed in a way the VM acts on:
``<host>/<generation>``. A change of the VM's metadata is what makes Kopf run its pass now."""


async def wake_vms(ctx: Context, host: Resource) -> None:
    """Annotate the VMs placed on ``host`` (one PATCH each) so their passes run now. A VM
    that is gone meanwhile is skipped; any other failure is logged and that VM acts at its
    next sync."""
    value = f"{host.name}/{host.generation}"
    for node in await fleetindex.virtualnodes(ctx, (HOST_LABEL, host.name)):
        meta = node["metadata"]
        ctx.last_sync.pop(str(meta.get("uid", "")), None)
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        try:
            await ctx.blocking(
                ctx.kube.annotate,
                "virtualnodes",
                name,
                namespace,
                {HOST_CHANGED_ANNOTATION: value},
            )
        except NotFoundError:
            continue
        except KvmfleetError as error:
            log.info(
                "%s/%s acts on %s's change at its next sync: %s",
                namespace,
                name,
                host.name,
                error.message,
            )


async def probe(ctx: Context, host: Resource) -> Outcome:
    """The periodic check: probe when due (every host_probe_interval; sooner when not Ready)."""
    last = ctx.last_probe.get(host.name)
    if last is not None:
        at, ready = last
        interval = ctx.settings.host_probe_interval
        due = interval if ready else min(interval, NOT_READY_RETRY)
        if time.monotonic() - at < due:
            return Outcome()
    lock = ctx.lock(f"kh/{host.name}")
    if lock.locked():
        return Outcome()
    async with lock:
        return await converge(ctx, host)


async def release(ctx: Context, host: Resource) -> None:
    """The KvmHost is deleted: forget its probe state and metrics (the host is left as it is)."""
    ctx.last_probe.pop(host.name, None)
    ctx.locks.pop(f"kh/{host.name}", None)
    vmstats.unwatch(ctx, host.name)
    try:
        spec = KvmHostSpec.from_dict(host.spec)
        target: str | None = f"{spec.address}:{spec.port}"
    except KvmfleetError:
        target = None
    metrics.forget_host(host.name, target)


async def converge(ctx: Context, host: Resource) -> Outcome:
    """Observe the host and bring it to its spec; the Outcome carries the whole status."""
    started = time.monotonic()
    spec = KvmHostSpec.from_dict(host.spec)
    outcome = Outcome()
    epoch = hostusage.epoch(ctx, host.name)
    try:
        await _converge(ctx, host, spec, outcome)
    finally:
        duration = time.monotonic() - started
        metrics.HOST_PROBE_DURATION.labels(host.name).observe(duration)
    if hostusage.stale(ctx, host.name, epoch):
        # A VM was placed, defined or removed while this probe listed: its publish is newer.
        for key in hostusage.USAGE_FIELDS:
            outcome.status.pop(key, None)
    _finish(ctx, host, outcome)
    return outcome


async def _reach(
    ctx: Context,
    host: Resource,
    spec: KvmHostSpec,
    outcome: Outcome,
    conds: dict[str, Condition],
) -> HostSession | None:
    """Connect; on failure fill the conditions and the outcome and return None."""
    try:
        return await connect(ctx, host.name, spec, host.status.get("hostKey"))
    except (HostKeyMismatchError, HostKeyUnknownError) as error:
        conds[REACHABLE] = Condition(REACHABLE, Status.TRUE, "Connected", "TCP and SSH answer")
        conds[HOST_KEY_VERIFIED] = Condition(
            HOST_KEY_VERIFIED, Status.FALSE, error.reason, error.message
        )
        _unknown_rest(conds, "the host key is not verified: nothing was run on the host")
        _stalled(outcome, conds, error)
    except AuthenticationError as error:
        conds[REACHABLE] = Condition(REACHABLE, Status.TRUE, "Connected", "TCP and SSH answer")
        conds[HOST_KEY_VERIFIED] = Condition(HOST_KEY_VERIFIED, Status.TRUE, "Verified", "")
        _unknown_rest(conds, "the host refused our SSH key")
        _stalled(outcome, conds, error)
    except HostUnreachableError as error:
        conds[REACHABLE] = Condition(REACHABLE, Status.FALSE, error.reason, error.message)
        conds[HOST_KEY_VERIFIED] = Condition(
            HOST_KEY_VERIFIED, Status.UNKNOWN, "HostUnreachable", ""
        )
        _unknown_rest(conds, "the host cannot be reached")
        outcome.conditions = [
            *conds.values(),
            *cond.summary(ready=False, reason="HostUnreachable", message=error.message),
        ]
        metrics.HOST_UP.labels(host.name).set(0)
    except NotFoundError as error:  # the key Secret
        _unknown_rest(conds, "no SSH key", include_reach=True)
        _stalled(outcome, conds, PermanentError(error.message, reason="SecretNotFound"))
    except PermanentError as error:
        _unknown_rest(conds, error.message, include_reach=True)
        _stalled(outcome, conds, error)
    return None


async def _converge(ctx: Context, host: Resource, spec: KvmHostSpec, outcome: Outcome) -> None:
    conds: dict[str, Condition] = {}
    session = await _reach(ctx, host, spec, outcome, conds)
    if session is None:
        return
    recorded = host.status.get("hostKey")
    metrics.HOST_UP.labels(host.name).set(1)
    conds[REACHABLE] = Condition(
        REACHABLE, Status.TRUE, "Connected", f"SSH to {spec.address}:{spec.port} works"
    )
    conds[HOST_KEY_VERIFIED] = Condition(
        HOST_KEY_VERIFIED, Status.TRUE, "Verified", f"host key {session.session.fingerprint}"
    )
    outcome.status["hostKeyFingerprint"] = session.session.fingerprint
    if (
        spec.host_key_policy is HostKeyPolicy.TRUST_ON_FIRST_USE
        and recorded != session.session.host_key
    ):
        outcome.status["hostKey"] = session.session.host_key
        outcome.note("HostKeyRecorded", f"trusted on first use: {session.session.fingerprint}")

    hw = await _hardware(session)
    host_facts = await _libvirt(session, conds)
    _virtualization(conds, hw, host_facts)
    if host_facts is not None:
        await _guest_cpu(ctx, session, host, spec, host_facts, conds, outcome)
    if host_facts is not None and hw.memory_mib:
        host_facts = replace(host_facts, memory_mib=hw.memory_mib)
    if host_facts is not None:
        outcome.status["capabilities"] = {
            "arch": host_facts.arch,
            "cpuModel": host_facts.cpu_model or "unknown",
            "cpus": host_facts.cpus,
            "memoryMiB": host_facts.memory_mib,
            "virtualization": "kvm"
            if conds[VIRTUALIZATION_CAPABLE].reason == "KVM"
            else "emulated",
            "libvirtVersion": host_facts.libvirt_version,
            "qemuVersion": host_facts.qemu_version,
        }
        capabilities = outcome.status["capabilities"]
        metrics.set_host_info(
            host.name,
            host_facts.libvirt_version,
            host_facts.qemu_version,
            capabilities["virtualization"],
        )
        vmstats.watch(ctx, host.name, session.libvirt_target())
        await _domains(ctx, session, host, outcome)
        await _allocation(ctx, host, spec, host_facts, outcome)

    await _bridges(session, spec, outcome, conds)
    await _storage(
        ctx, session=session, spec=spec, host_facts=host_facts, outcome=outcome, conds=conds
    )
    not_ready = [c for c in conds.values() if c.status is not Status.TRUE]
    if not_ready:
        first = not_ready[0]
        state = "False" if first.status is Status.FALSE else "Unknown"
        summary = cond.summary(
            ready=False,
            reason=f"{first.type}{state}",
            message=first.message or first.type,
        )
    else:
        summary = cond.summary(ready=True, reason="HostReady", message=f"{spec.address} is ready")
    outcome.conditions = [*conds.values(), *summary]


async def _bridges(
    session: HostSession, spec: KvmHostSpec, outcome: Outcome, conds: dict[str, Condition]
) -> None:
    bridges = await hostnetwork.ensure(session, spec.bridges)
    outcome.status["bridges"] = [b.to_status() for b in bridges]
    for report in bridges:
        if report.changed and report.ready:
            outcome.note("BridgeCreated", report.message)
    broken = [b.message for b in bridges if not b.ready]
    conds[BRIDGES_READY] = (
        Condition(BRIDGES_READY, Status.FALSE, "BridgeFailed", "; ".join(broken))
        if broken
        else Condition(
            BRIDGES_READY,
            Status.TRUE,
            "Ready",
            f"{len(bridges)} bridge(s) ready" if bridges else "no bridges asked for",
        )
    )


async def _storage(
    ctx: Context,
    *,
    session: HostSession,
    spec: KvmHostSpec,
    host_facts: HostFacts | None,
    outcome: Outcome,
    conds: dict[str, Condition],
) -> None:
    if host_facts is None:
        conds[STORAGE_READY] = Condition(STORAGE_READY, Status.UNKNOWN, "LibvirtNotReady", "")
    else:
        pools = await hoststorage.ensure(
            session, spec.storage_pools, spec.nfs_access, ctx.settings.mount_root
        )
        outcome.status["storagePools"] = [p.to_status() for p in pools]
        metrics.forget_storage_pools(session.name)
        for pool in pools:
            metrics.set_storage_pool(
                session.name, pool.name, pool.capacity_bytes, pool.available_bytes
            )
        failed = [p.message for p in pools if not p.ready]
        conds[STORAGE_READY] = (
            Condition(STORAGE_READY, Status.FALSE, "StorageFailed", "; ".join(failed))
            if failed
            else Condition(
                STORAGE_READY,
                Status.TRUE,
                "Ready",
                f"{len(pools)} pool(s) ready" if pools else "no storage pools asked for",
            )
        )


@dataclass(frozen=True)
class Hardware:
    """What the host's kernel says: xCAT's `egrep "(svm|vmx)" /proc/cpuinfo`, and more."""

    flag: str | None
    """vmx, svm, or None."""
    dev_kvm: bool
    """/dev/kvm exists and can be opened."""
    memory_mib: int | None
    """MemTotal: libvirt's node info counts NUMA cells, which can miss memory."""


async def _hardware(session: HostSession) -> Hardware:
    flags = await session.run(hostcmds.cpuinfo_flags(), check=False)
    kvm = await session.run(hostcmds.dev_kvm_device(), check=False)
    meminfo = await session.run(hostcmds.meminfo(), check=False)
    memory = facts.parse_meminfo(meminfo.stdout).total_mib if meminfo.ok else None
    return Hardware(
        facts.hardware_virtualization(facts.parse_cpu_flags(flags.stdout)),
        kvm.ok and facts.parse_dev_kvm_device(kvm.stdout),
        memory,
    )


async def _libvirt(session: HostSession, conds: dict[str, Condition]) -> HostFacts | None:
    try:
        connection = await session.libvirt()
        host_facts = await session.ctx.blocking(Host(connection).facts)
    except KvmfleetError as error:
        conds[LIBVIRT_READY] = Condition(LIBVIRT_READY, Status.FALSE, error.reason, error.message)
        return None
    conds[LIBVIRT_READY] = Condition(
        LIBVIRT_READY,
        Status.TRUE,
        "Connected",
        f"libvirt {host_facts.libvirt_version}, QEMU {host_facts.qemu_version}",
    )
    return host_facts


def _virtualization(
    conds: dict[str, Condition], hw: Hardware, host_facts: HostFacts | None
) -> None:
    """KVM when libvirt offers kvm guests (it checks that QEMU can open /dev/kvm), else TCG.

    The CPU flag (xCAT's `egrep "(svm|vmx)" /proc/cpuinfo`) is reported, not required:
    nested hypervisors often hide it while /dev/kvm works.
    """
    flag = hw.flag or "no vmx/svm flag shown"
    if host_facts is None:
        conds[VIRTUALIZATION_CAPABLE] = Condition(
            VIRTUALIZATION_CAPABLE, Status.UNKNOWN, "LibvirtNotReady", "libvirt did not answer"
        )
    elif host_facts.kvm_domain_supported and hw.dev_kvm:
        conds[VIRTUALIZATION_CAPABLE] = Condition(
            VIRTUALIZATION_CAPABLE,
            Status.TRUE,
            "KVM",
            f"hardware virtualization: libvirt offers KVM guests ({flag}, /dev/kvm usable)",
        )
    else:
        why = "/dev/kvm is missing or not usable" if not hw.dev_kvm else "libvirt offers no KVM"
        conds[VIRTUALIZATION_CAPABLE] = Condition(
            VIRTUALIZATION_CAPABLE,
            Status.TRUE,
            "Emulated",
            f"VMs run under TCG emulation (slow): {why} ({flag})",
        )


async def _guest_cpu(  # noqa: PLR0917 - the probe's state
    ctx: Context,
    session: HostSession,
    host: Resource,
    spec: KvmHostSpec,
    host_facts: HostFacts,
    conds: dict[str, Condition],
    outcome: Outcome,
) -> None:
    """Prove which guest CPU configurations start (see hostcpu) and the migration group's
    baseline; correct the KVM verdict."""
    kvm = conds[VIRTUALIZATION_CAPABLE].reason == "KVM"
    try:
        host_cpu, fresh = await hostcpu.ensure(
            session, host.status.get("guestCpu"), host_facts, kvm=kvm
        )
        host_cpu, group_news = await hostcpu.ensure_group(
            session,
            host_cpu,
            group=spec.migration_group,
            host_name=host.name,
            hosts=await fleetindex.kvmhosts(ctx),
            kvm=kvm and host_cpu.preferred is not None,
        )
    except TemporaryError:
        return  # libvirt went away mid-trial: nothing is concluded, the next probe retries
    outcome.status["guestCpu"] = host_cpu.to_status()
    if group_news:
        _note_group(outcome, host_cpu.group)
    works = [t.choice.label for t in host_cpu.trials if t.works]
    fails = [t for t in host_cpu.trials if not t.works]
    if fresh:
        failed = "; ".join(f"{t.choice.label}: {t.message}" for t in fails) or "none"
        outcome.note(
            "GuestCpuProbed",
            f"trial guests start with: {', '.join(works) or 'none'}; fail: {failed}",
        )
    best = host_cpu.preferred
    if kvm and best is None:
        why = fails[0].message if fails else "no trial"
        conds[VIRTUALIZATION_CAPABLE] = Condition(
            VIRTUALIZATION_CAPABLE,
            Status.TRUE,
            "Emulated",
            f"KVM is present but no trial guest starts under it ({why}); "
            "VMs run under TCG emulation (slow)",
        )
    elif kvm and best is not None:
        old = conds[VIRTUALIZATION_CAPABLE]
        conds[VIRTUALIZATION_CAPABLE] = replace(
            old, message=f"{old.message}; a KVM guest starts with CPU {best.label}"
        )
    elif not works:
        why = fails[0].message if fails else "no trial"
        conds[VIRTUALIZATION_CAPABLE] = Condition(
            VIRTUALIZATION_CAPABLE,
            Status.FALSE,
            "GuestsDoNotStart",
            f"a trial guest does not start under TCG emulation: {why}",
        )


def _note_group(outcome: Outcome, group: GroupCpu | None) -> None:
    """An Event for a new or changed group baseline (or a host that left its group)."""
    if group is None:
        outcome.note("GuestCpuGroup", "no migration group: auto uses this host's own CPU trials")
    elif group.choice is None:
        outcome.note("GuestCpuGroupFailed", f"group {group.name}: {group.message}")
    elif group.works:
        outcome.note(
            "GuestCpuGroup",
            f"group {group.name} ({', '.join(group.members)}): auto gives {group.choice.label}",
        )
    else:
        outcome.note(
            "GuestCpuGroupFailed",
            f"group {group.name}: a guest with the baseline {group.choice.label} does not "
            f"start here ({group.message}); auto uses this host's own CPU trials",
        )


async def _domains(ctx: Context, session: HostSession, host: Resource, outcome: Outcome) -> None:
    """What `lsvm` shows: every domain on the host with its state."""
    try:
        connection = await session.libvirt()
        domains = await ctx.blocking(Host(connection).list_domains)
    except KvmfleetError:
        return
    outcome.status["domains"] = [
        {"name": d.name, "state": str(d.state), **({"disks": list(d.disks)} if d.disks else {})}
        for d in domains
    ]
    outcome.status["domainCount"] = len(domains)
    metrics.HOST_DOMAINS.labels(host.name).set(len(domains))


async def _allocation(
    ctx: Context, host: Resource, spec: KvmHostSpec, host_facts: HostFacts, outcome: Outcome
) -> None:
    """allocatable (hardware x overcommit) and allocated (the VirtualNodes placed here)."""
    nodes = await fleetindex.virtualnodes(ctx)
    ctx.released &= {str(n["metadata"].get("uid")) for n in nodes}  # gone from the API: forget
    used = hostusage.allocated_on(host.name, nodes, ctx.reservations, ctx.released)
    capacity = allocatable(host_facts.cpus, host_facts.memory_mib, spec.overcommit)
    outcome.status["allocatable"] = {"cpus": capacity.cpus, "memoryMiB": capacity.memory_mib}
    outcome.status["allocated"] = {"cpus": used.cpus, "memoryMiB": used.memory_mib}
    outcome.status["cpuSummary"] = f"{used.cpus}/{capacity.cpus}"
    outcome.status["memorySummary"] = f"{used.memory_mib}/{capacity.memory_mib}Mi"
    for kind, value in (
        ("capacity", host_facts.cpus),
        ("allocatable", capacity.cpus),
        ("allocated", used.cpus),
    ):
        metrics.HOST_CPUS.labels(host.name, kind).set(value)
    for kind, mib in (
        ("capacity", host_facts.memory_mib),
        ("allocatable", capacity.memory_mib),
        ("allocated", used.memory_mib),
    ):
        metrics.HOST_MEMORY.labels(host.name, kind).set(mib * 1024 * 1024)


def _unknown_rest(conds: dict[str, Condition], why: str, include_reach: bool = False) -> None:
    for name in HOST_CONDITIONS:
        if name in conds or (name in (REACHABLE, HOST_KEY_VERIFIED) and not include_reach):
            continue
        conds[name] = Condition(name, Status.UNKNOWN, "NotProbed", why)


def _stalled(outcome: Outcome, conds: dict[str, Condition], error: KvmfleetError) -> None:
    outcome.conditions = [
        *conds.values(),
        *cond.summary(ready=False, reason=error.reason, message=error.message, stalled=True),
    ]


def _finish(ctx: Context, host: Resource, outcome: Outcome) -> None:
    """Record the probe, announce condition changes as Events, keep lastProbeTime alive."""
    now = datetime.now(UTC)
    old = {c.type: c for c in cond.parse_conditions(host.status.get("conditions"))}
    ready = False
    for new in outcome.conditions:
        if new.type == cond.READY:
            ready = new.status is Status.TRUE
        before = old.get(new.type)
        if new.type in (cond.RECONCILING, cond.STALLED):
            continue
        if before is None or before.status != new.status:
            if new.status is Status.TRUE:
                outcome.note(new.type, new.message or f"{new.type} is True")
            elif before is not None or new.status is Status.FALSE:
                outcome.warn(
                    f"{new.type}{new.status}", new.message or f"{new.type} is {new.status}"
                )
    first = host.name not in ctx.last_probe
    ctx.last_probe[host.name] = (time.monotonic(), ready)
    # Write lastProbeTime on the first probe of this operator process, with other changes,
    # or as a heartbeat: a steady host costs no status write per probe.
    seen = cond.parse_rfc3339(host.status.get("lastProbeTime"))
    heartbeat = HEARTBEAT_FACTOR * ctx.settings.host_probe_interval
    stale = seen is None or (now - seen).total_seconds() > heartbeat
    changes = {k: v for k, v in outcome.status.items() if host.status.get(k) != v}
    conds_changed = cond.changed(
        list(old.values()),
        cond.merge(list(old.values()), outcome.conditions, now=now, generation=host.generation),
    )
    if first or changes or conds_changed or stale or outcome.events:
        outcome.status["lastProbeTime"] = cond.rfc3339(now)
