"""Moving a placed VirtualNode to another KvmHost (xCAT ``rmigrate``), and draining a host.

A VM moves when ``spec.hostRef`` names another host than ``status.host``, or, without a
``hostRef``, when its host is in maintenance (then placement chooses the target). One step
of a VirtualNode pass, before the rest of the pass (which then goes on on the host the VM
is on at its end):

1. An interrupted move (``status.migration.phase`` Running and no job of this process):
   both hosts are read and :func:`~kvmfleet.domain.migration.recover` decides which copy is
   the live one; the other is stopped and undefined, never both.
2. Pre-flight (:func:`~kvmfleet.domain.migration.preflight`, and for a running VM a TCP
   connect from the source host to the target's migration port): a refusal is the
   ``Migration`` condition (False, its reason) and an Event; nothing is touched, the VM
   keeps running where it is and the check is repeated on every pass.
3. A slot on both hosts (``migrations_per_host``); without one the move is Queued.
4. ``status.migration`` (phase Running, source, target, start time) is written before the
   job starts. Running VM: live migration (:mod:`kvmfleet.virt.migration`) with progress in
   ``status.migration`` while it runs and an abort at ``migration_timeout``. Stopped VM:
   the definition is defined on the target, ``status.host`` moves, the source definition
   goes. The disks never move (shared storage only).
5. Success: ``status.host`` and the host label name the target. Failure: the VM still runs
   on the source, the condition says why, the move is retried with a growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kvmfleet import metrics
from kvmfleet.domain.conditions import Condition, Status
from kvmfleet.domain.domainxml.parse import parse_domain
from kvmfleet.domain.guestcpu import CpuChoice, HostCpu
from kvmfleet.domain.migration import (
    DomainState,
    HostSide,
    HostSlots,
    MigrationPhase,
    MigrationStatus,
    MoveKind,
    MoveRequest,
    Recovery,
    RecoveryAction,
    Refusal,
    migration_path_refusal,
    preflight,
    recover,
)
from kvmfleet.domain.placement import PlacementRequest, choose_host
from kvmfleet.domain.specs import KvmHostSpec, VirtualNodeSpec
from kvmfleet.domain.validation import host_for_uri
from kvmfleet.errors import KvmfleetError, NotFoundError
from kvmfleet.reconcile import failpoints, fleetindex, hostusage
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostaccess import PlacedHost, connect_host
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.reconcile.vmplacement import Placement, snapshots_without
from kvmfleet.settings import HOST_LABEL
from kvmfleet.ssh import facts, hostcmds
from kvmfleet.virt import migration as virt
from kvmfleet.virt.connection import LibvirtConnection

MIGRATION = "Migration"
"""The VirtualNode condition of the last (or current) move."""
PROGRESS_INTERVAL = 2.0
TARGET_SILENT_CHECKS = 3
"""Checks in a row the target's libvirtd may miss before a running live job is aborted."""
TARGET_CHECK_TIMEOUT = 5.0
RETRY_BASE = 30.0
RETRY_MAX = 300.0

_SLOTS: dict[int, HostSlots] = {}


def slots(ctx: Context) -> HostSlots:
    """This operator's migration slots (one table per Context)."""
    return _SLOTS.setdefault(id(ctx), HostSlots(max(1, ctx.settings.migrations_per_host)))


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def follow(  # noqa: PLR0915, PLR0917 - one step per outcome of a move
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    placement: Placement,
    outcome: Outcome,
    conds: dict[str, Condition],
) -> Placement:
    """Move the VM where its spec (or its host's maintenance) wants it, if it can; return
    the placement the rest of the pass works on (the target once the VM moved)."""
    previous = MigrationStatus.from_status(node.status.get("migration"))
    if previous is not None and previous.active and not slots(ctx).holds(node.uid):
        recovered = await _recover(ctx, node, previous, placement, outcome, conds)
        if recovered is not None:
            return recovered
        # Interrupted before its end: tried again at once (no job failed).
        previous = None
    target = spec.host_ref
    if target == placement.host:
        _settle(node, placement, conds)
        return placement
    hosts: list[dict[str, Any]] = []
    if target is None:  # one index read per pass; the hosts are read only for a drain
        if not await _in_maintenance(ctx, placement.host):
            _settle(node, placement, conds)
            return placement
        hosts = await fleetindex.kvmhosts(ctx)
        target = await _drain_target(ctx, node, spec, hosts, placement, conds)
        if target is None:
            return placement
    if not hosts:
        hosts = await fleetindex.kvmhosts(ctx)
    by_name = {h["metadata"]["name"]: h for h in hosts}
    source_obj = by_name.get(placement.host)
    if (
        previous is not None
        and previous.phase is MigrationPhase.FAILED
        and previous.target == target
    ):
        wait = _backoff(previous)
        if wait > 0:
            conds[MIGRATION] = Condition(
                MIGRATION,
                Status.FALSE,
                "MigrationFailed",
                f"{previous.message}; retried in {wait:.0f}s",
            )
            outcome.requeue_after = wait
            return placement
    target_obj = by_name.get(target)
    if source_obj is None or target_obj is None:
        missing = placement.host if source_obj is None else target
        _refuse(
            node,
            outcome,
            conds,
            placement,
            target,
            [Refusal("HostNotFound", f"KvmHost {missing} does not exist")],
        )
        return placement
    source = await connect_host(
        ctx, placement.host, _spec(source_obj), dict(source_obj.get("status") or {})
    )
    source_conn = await source.session.libvirt()
    state, _ = await ctx.on_host(
        source.name, ctx.settings.libvirt_call_timeout, virt.domain_state, source_conn, node.name
    )
    info = None
    if state is not DomainState.ABSENT:
        guests = await source.guests()
        info = parse_domain(
            await ctx.on_host(
                source.name, ctx.settings.libvirt_call_timeout, guests.xml, node.name, True
            )
        )
    refusals = await _preflight(ctx, node, spec, hosts, source_obj, target_obj, info)
    if refusals:
        _refuse(node, outcome, conds, placement, target, refusals)
        return placement
    if state is DomainState.PAUSED_MIGRATION:
        conds[MIGRATION] = Condition(
            MIGRATION,
            Status.FALSE,
            "MigrationQueued",
            f"a migration job of {node.name} runs on {source.name}; waiting",
        )
        outcome.requeue_after = 5.0
        return placement
    if not slots(ctx).try_take(node.uid, source.name, target):
        _queued(node, outcome, conds, placement, target)
        return placement
    try:
        # The path check runs with a slot held: a queue of moves does not repeat it.
        if state in (DomainState.RUNNING, DomainState.PAUSED) and (
            refusals := await _migration_path(ctx, source, target_obj)
        ):
            _refuse(node, outcome, conds, placement, target, refusals)
            return placement
        target_host = await connect_host(
            ctx, target, _spec(target_obj), dict(target_obj.get("status") or {})
        )
        target_conn = await target_host.session.libvirt()
        attempts = (
            previous.attempts + 1
            if previous and previous.target == target and previous.phase is MigrationPhase.FAILED
            else 1
        )
        if state in (DomainState.RUNNING, DomainState.PAUSED):
            moved = await _live(
                ctx, node, source, target_host, source_conn, outcome, conds, attempts
            )
        else:
            moved = await _offline(
                ctx,
                node,
                source,
                target_host,
                source_conn,
                target_conn,
                state,
                outcome,
                conds,
                attempts,
            )
    finally:
        slots(ctx).release(node.uid)
    return Placement(target, placement.macs) if moved else placement


async def _in_maintenance(ctx: Context, host: str) -> bool:
    """Whether the KvmHost is in maintenance (its VMs without hostRef move away): read
    from the watch-fed index, no API request. A host that does not exist is not."""
    try:
        obj = await fleetindex.kvmhost(ctx, host)
    except NotFoundError:
        return False
    try:
        return _spec(obj).maintenance
    except KvmfleetError:
        return False


def _spec(obj: dict[str, Any]) -> KvmHostSpec:
    return KvmHostSpec.from_dict(obj.get("spec") or {})


def _backoff(previous: MigrationStatus) -> float:
    """Seconds before a failed move is tried again (30 s, doubling, at most 5 min)."""
    if previous.end_time is None:
        return 0.0
    delay = min(RETRY_BASE * 2 ** max(previous.attempts - 1, 0), RETRY_MAX)
    return float(max(0.0, (previous.end_time.timestamp() + delay) - time.time()))


def _settle(node: Resource, placement: Placement, conds: dict[str, Condition]) -> None:
    """No move is asked for: a refusal of an earlier request no longer holds."""
    before: dict[str, Any] = next(
        (c for c in node.status.get("conditions") or [] if c.get("type") == MIGRATION), {}
    )
    if before and before.get("status") != "True":
        conds[MIGRATION] = Condition(
            MIGRATION, Status.TRUE, "NotRequested", f"on {placement.host}; no move is asked for"
        )


async def _drain_target(  # noqa: PLR0917 - the pass's context
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    hosts: list[dict[str, Any]],
    placement: Placement,
    conds: dict[str, Condition],
) -> str | None:
    """The host a VM without hostRef moves to while its host is in maintenance."""
    nodes = await fleetindex.virtualnodes(ctx)
    snapshots = [s for s in snapshots_without(ctx, node, nodes, hosts) if s.name != placement.host]
    assert node.namespace is not None
    decision = choose_host(PlacementRequest.for_spec(spec, node.namespace), snapshots)
    if decision.host is None:
        conds[MIGRATION] = Condition(
            MIGRATION,
            Status.FALSE,
            "NoMigrationTarget",
            f"KvmHost {placement.host} is in maintenance and no other host can take this VM: "
            f"{decision.message}",
        )
        return None
    return decision.host


def _host_side(obj: dict[str, Any]) -> HostSide:
    spec = _spec(obj)
    status = obj.get("status") or {}
    caps = status.get("capabilities") or {}
    return HostSide(
        name=obj["metadata"]["name"],
        nfs_access=spec.nfs_access,
        default_storage=spec.default_storage,
        virt_type="kvm" if caps.get("virtualization") == "kvm" else "qemu",
        guest_cpu=HostCpu.from_status(status.get("guestCpu")),
    )


async def _preflight(  # noqa: PLR0917 - what the checks read
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    hosts: list[dict[str, Any]],
    source_obj: dict[str, Any],
    target_obj: dict[str, Any],
    info: Any,
) -> list[Refusal]:
    nodes = await fleetindex.virtualnodes(ctx)
    target_name = target_obj["metadata"]["name"]
    snapshot = next(
        (s for s in snapshots_without(ctx, node, nodes, [target_obj]) if s.name == target_name),
        None,
    )
    if snapshot is None:
        return [Refusal("TargetNotReady", f"KvmHost {target_name} cannot be read")]
    assert node.namespace is not None
    source = _host_side(source_obj)
    cpu = None
    if info is not None and info.node is not None and info.node.cpu:
        try:
            cpu = CpuChoice.parse(info.node.cpu)
        except ValueError:
            cpu = None
    move = MoveRequest(
        placement=PlacementRequest.for_spec(spec, node.namespace),
        disks=tuple(d.storage for d in spec.disks),
        virt_type=(info.virt_type if info is not None and info.virt_type else source.virt_type),
        cpu=cpu,
    )
    return preflight(move, source, _host_side(target_obj), snapshot)


async def _migration_path(
    ctx: Context, source: PlacedHost, target_obj: dict[str, Any]
) -> list[Refusal]:
    """Whether the source host reaches the target's migration port (a live move only)."""
    address, port = _spec(target_obj).address, ctx.settings.migration_port
    result = await source.session.run(
        hostcmds.tcp_connect(address, port), check=False, limit=hostcmds.TCP_CHECK_SECONDS + 5
    )
    reach = facts.parse_tcp_connect(result.exit_status, result.stderr)
    refusal = migration_path_refusal(
        source.name, target_obj["metadata"]["name"], address, port, reach.answered, reach.detail
    )
    return [refusal] if refusal is not None else []


def _refuse(  # noqa: PLR0917
    node: Resource,
    outcome: Outcome,
    conds: dict[str, Condition],
    placement: Placement,
    target: str,
    refusals: list[Refusal],
) -> None:
    message = (
        f"not moved from {placement.host} to {target} (it keeps running where it is): "
        + "; ".join(r.message for r in refusals)
    )
    conds[MIGRATION] = Condition(MIGRATION, Status.FALSE, refusals[0].reason, message)
    before = MigrationStatus.from_status(node.status.get("migration"))
    if before is None or before.phase is not MigrationPhase.REFUSED or before.message != message:
        outcome.warn(refusals[0].reason, message)
        metrics.MIGRATIONS.labels(str(MoveKind.LIVE), "refused").inc()
    outcome.status["migration"] = MigrationStatus(
        MigrationPhase.REFUSED, placement.host, target, message=message, end_time=_now()
    ).to_status()


def _queued(
    node: Resource, outcome: Outcome, conds: dict[str, Condition], placement: Placement, target: str
) -> None:
    message = (
        f"waiting for a free migration slot on {placement.host} or {target} "
        "(setting migrations_per_host)"
    )
    conds[MIGRATION] = Condition(MIGRATION, Status.FALSE, "MigrationQueued", message)
    outcome.status["migration"] = MigrationStatus(
        MigrationPhase.QUEUED, placement.host, target, message=message
    ).to_status()
    outcome.requeue_after = 5.0


async def _write(ctx: Context, node: Resource, status: MigrationStatus) -> None:
    assert node.namespace is not None
    await ctx.blocking(
        ctx.kube.patch_status,
        "virtualnodes",
        node.name,
        node.namespace,
        {"migration": status.to_status()},
    )


async def _moved(  # noqa: PLR0917
    ctx: Context,
    node: Resource,
    target: str,
    status: MigrationStatus,
    outcome: Outcome,
    conds: dict[str, Condition],
    started: float,
) -> None:
    """The VM is on the target now: say so in status (host first: a crash after it is safe)."""
    assert node.namespace is not None
    await ctx.blocking(
        ctx.kube.patch_status, "virtualnodes", node.name, node.namespace, {"host": target}
    )
    await ctx.blocking(
        ctx.kube.patch_labels, "virtualnodes", node.name, node.namespace, {HOST_LABEL: target}
    )
    if node.uid in ctx.reservations:
        _, resources, macs = ctx.reservations[node.uid]
        ctx.reservations[node.uid] = (target, resources, macs)
    done = replace(status, phase=MigrationPhase.SUCCEEDED, end_time=_now(), data_remaining=0)
    done = replace(
        done, message=f"moved from {status.source} to {target} in {time.monotonic() - started:.1f}s"
    )
    outcome.status["migration"] = done.to_status()
    outcome.status["host"] = target
    conds[MIGRATION] = Condition(MIGRATION, Status.TRUE, "Migrated", done.message)
    outcome.note("Migrated", done.message)
    metrics.MIGRATIONS.labels(str(status.kind), "succeeded").inc()
    metrics.MIGRATION_DURATION.labels(str(status.kind)).observe(time.monotonic() - started)
    metrics.MIGRATION_DATA_REMAINING.labels(node.namespace, node.name).set(0)
    await hostusage.publish(ctx, status.source, removed=node.name)
    await hostusage.publish(ctx, target)


def _failed(
    node: Resource,
    status: MigrationStatus,
    outcome: Outcome,
    conds: dict[str, Condition],
    *,
    reason: str,
    message: str,
) -> None:
    text = f"not moved to {status.target}, still on {status.source}: {message}"
    failed = replace(status, phase=MigrationPhase.FAILED, end_time=_now(), message=text)
    outcome.status["migration"] = failed.to_status()
    conds[MIGRATION] = Condition(MIGRATION, Status.FALSE, reason, text)
    outcome.warn(reason, text)
    outcome.requeue_after = _backoff(failed) or RETRY_BASE
    result = "aborted" if reason == "MigrationTimedOut" else "failed"
    metrics.MIGRATIONS.labels(str(status.kind), result).inc()
    metrics.MIGRATION_DATA_REMAINING.labels(node.namespace or "", node.name).set(0)


async def _live(  # noqa: PLR0917 - both hosts, both connections, the pass
    ctx: Context,
    node: Resource,
    source: PlacedHost,
    target: PlacedHost,
    source_conn: LibvirtConnection,
    outcome: Outcome,
    conds: dict[str, Condition],
    attempts: int,
) -> bool:
    settings = ctx.settings
    status = MigrationStatus(
        MigrationPhase.RUNNING,
        source.name,
        target.name,
        MoveKind.LIVE,
        start_time=_now(),
        message=f"live migration {source.name} -> {target.name} started",
        attempts=attempts,
    )
    await _write(ctx, node, status)
    failpoints.hit("before-migrate")
    started = time.monotonic()
    job = asyncio.ensure_future(
        ctx.on_host(
            source.name,
            settings.migration_timeout + settings.libvirt_call_timeout,
            virt.migrate_on_own_connections,
            ctx.libvirt,
            source.session.libvirt_target(),
            target.session.libvirt_target(),
            node.name,
            migrate_uri=f"tcp://{host_for_uri(target.spec.address)}",
            bandwidth_mib=settings.migration_bandwidth_mib,
        )
    )
    aborted = False
    target_lost: str | None = None
    silent = 0
    downtime_set = settings.migration_max_downtime_ms <= 0
    while not job.done():
        await asyncio.wait({job}, timeout=PROGRESS_INTERVAL if downtime_set else 0.2)
        if job.done():
            break
        if not downtime_set:
            downtime_set = await _cap_downtime(ctx, source, source_conn, node.name, started)
            continue
        if not aborted:
            silent = 0 if await _answers(ctx, target) else silent + 1
            if silent >= TARGET_SILENT_CHECKS:
                target_lost = (
                    f"the libvirtd of {target.name} stopped answering during the migration "
                    f"({silent} checks {PROGRESS_INTERVAL:g}s apart); the job was aborted"
                )
        if not aborted and (
            target_lost is not None or time.monotonic() - started > settings.migration_timeout
        ):
            aborted = True
            # The job's own error (or its deadline) ends the wait.
            with contextlib.suppress(KvmfleetError):
                await ctx.on_host(source.name, 30.0, virt.abort, source_conn, node.name)
            continue
        try:
            progress = await ctx.on_host(source.name, 10.0, virt.progress, source_conn, node.name)
        except KvmfleetError:
            progress = None
        if progress is not None:
            status = replace(
                status, data_total=progress.data_total, data_remaining=progress.data_remaining
            )
            metrics.MIGRATION_DATA_REMAINING.labels(node.namespace or "", node.name).set(
                progress.data_remaining or 0
            )
            with contextlib.suppress(KvmfleetError):  # progress only: the end is written
                await _write(ctx, node, status)
    try:
        await job
    except KvmfleetError as error:
        if target_lost is None and not aborted and not await _answers(ctx, target):
            target_lost = f"the libvirtd of {target.name} stopped answering during the migration"
        if target_lost is not None:
            message = f"{target_lost}: {error.message}"
        elif aborted:
            message = (
                f"aborted after the deadline of {settings.migration_timeout:g}s (setting "
                f"migration_timeout): {error.message}"
            )
        else:
            message = error.message
        await _confirm_on_source(ctx, source, source_conn, node, outcome)
        _failed(
            node,
            status,
            outcome,
            conds,
            reason="MigrationTimedOut" if aborted and target_lost is None else "MigrationFailed",
            message=message,
        )
        return False
    failpoints.hit("after-migrate")
    await _moved(ctx, node, target.name, status, outcome, conds, started)
    return True


async def _cap_downtime(
    ctx: Context, source: PlacedHost, conn: LibvirtConnection, name: str, started: float
) -> bool:
    """Set migration_max_downtime_ms on the job once it runs; True when done with it (set,
    or tried for PROGRESS_INTERVAL: the job then goes on with QEMU's default)."""
    with contextlib.suppress(KvmfleetError):
        limit = ctx.settings.migration_max_downtime_ms
        if await ctx.on_host(source.name, 10.0, virt.set_max_downtime, conn, name, limit):
            return True
    return time.monotonic() - started >= PROGRESS_INTERVAL


async def _answers(ctx: Context, host: PlacedHost) -> bool:
    """Whether host's libvirtd answers within a short deadline (a hung one does not), on
    the pooled connection as it is now (the pool may have replaced the one of the pass)."""
    try:
        conn = await asyncio.wait_for(host.session.libvirt(), TARGET_CHECK_TIMEOUT)
        return bool(await ctx.on_host(host.name, TARGET_CHECK_TIMEOUT, virt.answers, conn))
    except (KvmfleetError, TimeoutError):
        return False


async def _confirm_on_source(
    ctx: Context, source: PlacedHost, conn: LibvirtConnection, node: Resource, outcome: Outcome
) -> None:
    """After a failed job the VM must run on the source: resume it if libvirt left it paused."""
    try:
        state, _ = await ctx.on_host(source.name, 30.0, virt.domain_state, conn, node.name)
        if state is DomainState.PAUSED_MIGRATION:
            await ctx.on_host(source.name, 30.0, virt.resume, conn, node.name)
            outcome.note("MigrationRolledBack", f"{node.name} resumed on {source.name}")
    except KvmfleetError:
        pass  # the next pass reads it again


async def _offline(  # noqa: PLR0917 - both hosts, both connections, the pass
    ctx: Context,
    node: Resource,
    source: PlacedHost,
    target: PlacedHost,
    source_conn: LibvirtConnection,
    target_conn: LibvirtConnection,
    state: DomainState,
    outcome: Outcome,
    conds: dict[str, Condition],
    attempts: int,
) -> bool:
    """A stopped VM: its definition moves (target first, then status, then the source)."""
    status = MigrationStatus(
        MigrationPhase.RUNNING,
        source.name,
        target.name,
        MoveKind.OFFLINE,
        start_time=_now(),
        message=f"definition {source.name} -> {target.name}",
        attempts=attempts,
    )
    started = time.monotonic()
    await _write(ctx, node, status)
    try:
        if state is DomainState.OFF:
            await ctx.on_host(
                target.name, 60.0, virt.define_from, source_conn, target_conn, node.name
            )
            failpoints.hit("after-offline-define")
    except KvmfleetError as error:
        _failed(node, status, outcome, conds, reason="MigrationFailed", message=error.message)
        return False
    await _moved(ctx, node, target.name, status, outcome, conds, started)
    if state is DomainState.OFF:
        guests = await source.guests()
        await ctx.on_host(source.name, 60.0, guests.undefine, node.name)
    return True


async def _recover(  # noqa: PLR0917
    ctx: Context,
    node: Resource,
    previous: MigrationStatus,
    placement: Placement,
    outcome: Outcome,
    conds: dict[str, Condition],
) -> Placement | None:
    """An interrupted move: keep exactly one copy, from what both hosts say."""
    hosts = {
        h["metadata"]["name"]: h
        for h in await ctx.blocking(ctx.kube.list_cluster_objects, "kvmhosts")
    }
    placed: dict[str, PlacedHost] = {}
    conns: dict[str, LibvirtConnection] = {}
    states: dict[str, tuple[DomainState, bool]] = {}
    for name in (previous.source, previous.target):
        obj = hosts.get(name)
        if obj is None:
            states[name] = (DomainState.ABSENT, False)
            continue
        placed[name] = await connect_host(ctx, name, _spec(obj), dict(obj.get("status") or {}))
        conns[name] = await placed[name].session.libvirt()
        states[name] = await ctx.on_host(name, 30.0, virt.domain_state, conns[name], node.name)
    decision = recover(
        previous,
        states[previous.source][0],
        states[previous.target][0],
        target_persistent=states[previous.target][1],
    )
    if decision.host is None:
        conds[MIGRATION] = Condition(
            MIGRATION, Status.FALSE, "MigrationUndecided", decision.message
        )
        outcome.warn("MigrationUndecided", decision.message)
        return placement
    await _apply(ctx, node, previous, decision, placed, conns)
    metrics.MIGRATIONS.labels(str(previous.kind), "recovered").inc()
    if decision.succeeded:
        await _moved(ctx, node, previous.target, previous, outcome, conds, time.monotonic())
        outcome.note("MigrationRecovered", decision.message)
        return Placement(previous.target, placement.macs)
    failed = replace(
        previous,
        phase=MigrationPhase.FAILED,
        end_time=_now(),
        message=f"interrupted: {decision.message}",
    )
    outcome.status["migration"] = failed.to_status()
    conds[MIGRATION] = Condition(MIGRATION, Status.FALSE, "MigrationInterrupted", failed.message)
    outcome.warn("MigrationInterrupted", failed.message)
    return None


async def _apply(  # noqa: PLR0917
    ctx: Context,
    node: Resource,
    previous: MigrationStatus,
    decision: Recovery,
    placed: dict[str, PlacedHost],
    conns: dict[str, LibvirtConnection],
) -> None:
    """Carry out a recovery: the copy that goes first, PERSIST before a source UNDEFINE."""
    # The target first: a transient copy is made persistent (or an incomplete one goes)
    # before anything happens to the source.
    steps = [(previous.target, a) for a in decision.target]
    steps += [(previous.source, a) for a in decision.source]
    for host, action in steps:
        guests = await placed[host].guests()
        try:
            if action is RecoveryAction.DESTROY:
                await ctx.on_host(host, 60.0, guests.destroy, node.name)
            elif action is RecoveryAction.UNDEFINE:
                await ctx.on_host(host, 60.0, guests.undefine, node.name)
            elif action is RecoveryAction.RESUME:
                await ctx.on_host(host, 30.0, virt.resume, conns[host], node.name)
            elif action is RecoveryAction.PERSIST:
                await ctx.on_host(
                    host, 60.0, virt.define_from, conns[previous.source], conns[host], node.name
                )
        except NotFoundError:
            continue
