"""VirtualNode use-cases: schedule, provision, power, change and remove a virtual machine.

`converge` is one idempotent pass (mkvm + rpower + chvm): it observes, then does only
what is missing, in an order that survives a crash at any line: placement and MACs are
persisted first, disks are made only if absent, the domain is defined only if absent (or
redefined when the spec changed), power follows runStrategy and each action annotation
once. `remove` is rmvm with a bounded wait for hosts that do not answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kvmfleet import metrics
from kvmfleet.domain import conditions as cond
from kvmfleet.domain.authorization import REASON as NOT_ALLOWED
from kvmfleet.domain.authorization import HostGrant, Refusal, authorize, summary
from kvmfleet.domain.conditions import Condition, Status, parse_rfc3339
from kvmfleet.domain.diskstate import DISK_IN_USE_ELSEWHERE, Owner
from kvmfleet.domain.diskuse import users_elsewhere
from kvmfleet.domain.power import Call, Transition, plan_power
from kvmfleet.domain.specs import RunStrategy, VirtualNodeSpec
from kvmfleet.errors import KvmfleetError, NotFoundError, PermanentError, TemporaryError
from kvmfleet.reconcile import (
    failpoints,
    fleetindex,
    hostusage,
    startbackoff,
    vmclones,
    vmconsole,
    vmdisks,
    vmdomain,
    vmmigrate,
    vmremove,
    vmsteady,
)
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostaccess import PlacedHost, connect_host, read_host
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.reconcile.vmplacement import Placement, UnschedulableError, ensure_placed
from kvmfleet.settings import HOST_LABEL
from kvmfleet.virt.errors import StartFailedError
from kvmfleet.virt.guest import Guests, Pause, PowerState

SCHEDULED = "Scheduled"
DISKS_READY = "DisksReady"
DEFINED = "Defined"
RUNNING = "Running"
AUTHORIZED = "Authorized"
CONSOLE_READY = "ConsoleReady"
ANNOTATION = "kvmfleet.io/{}-requested-at"
ACTION_ANNOTATIONS = {
    "start": "start",
    "stop": "stop",
    "reboot": "reboot",
    "reset": "reset",
    "consoleCredentials": "console-credentials",
}
RETRY = 15.0
START_FAILED = "StartFailed"


@dataclass
class _Pass:
    """One reconciliation of one VirtualNode on its host."""

    ctx: Context
    node: Resource
    spec: VirtualNodeSpec
    host: PlacedHost
    guests: Guests
    outcome: Outcome
    conds: dict[str, Condition]


def requests_of(annotations: Mapping[str, str]) -> dict[str, datetime]:
    """The action annotations present, by action."""
    result = {}
    for action, word in ACTION_ANNOTATIONS.items():
        when = parse_rfc3339(annotations.get(ANNOTATION.format(word)))
        if when is not None:
            result[action] = when
    return result


async def reconcile(ctx: Context, node: Resource, *, resumed: bool = False) -> Outcome:
    """A change of the object (or the operator's start): converge now.

    On the operator's start (``resumed``) a VM its status and its host's inventory show
    converged is left alone (see vmsteady): a restart repeats no provisioning."""
    async with ctx.lock(f"vn/{node.uid}"):
        if resumed and await _unchanged(ctx, node):
            ctx.last_sync[node.uid] = time.monotonic()
            return Outcome()
        return await converge(ctx, node)


async def sync(ctx: Context, node: Resource) -> Outcome:
    """The periodic check: observed power state, Always restarts, expired VNC passwords.

    An unchanged VM is checked against its host's inventory only (see vmsteady); a full
    pass runs when that check fails and at least every vm_full_sync_interval."""
    last = ctx.last_sync.get(node.uid)
    if last is not None and time.monotonic() - last < ctx.settings.vm_sync_interval:
        return Outcome()
    lock = ctx.lock(f"vn/{node.uid}")
    if lock.locked() or node.deleting:
        return Outcome()
    async with lock:
        if await _unchanged(ctx, node):
            ctx.last_sync[node.uid] = time.monotonic()
            return Outcome()
        return await converge(ctx, node)


async def _unchanged(ctx: Context, node: Resource) -> bool:
    try:
        spec = VirtualNodeSpec.from_dict(node.spec)
    except KvmfleetError:
        return False  # the full pass reports it
    requests = requests_of(node.annotations)
    acted = {
        k: t
        for k, v in dict(node.status.get("lastActions") or {}).items()
        if (t := parse_rfc3339(v)) is not None
    }
    pending = any(action not in acted or when > acted[action] for action, when in requests.items())
    return await vmsteady.unchanged(ctx, node, spec, pending=pending)


async def remove(ctx: Context, node: Resource) -> Outcome:
    """rmvm: see vmremove."""
    async with ctx.lock(f"vn/{node.uid}"):
        outcome = await vmremove.remove(ctx, node)
    if outcome.requeue_after is None:
        ctx.released.add(node.uid)
        reserved = ctx.reservations.pop(node.uid, None)
        host = node.status.get("host") or (reserved[0] if reserved else None)
        if host:  # the host stops counting it at once
            left = any(e.reason == "LeftBehind" for e in outcome.events)
            await hostusage.publish(ctx, str(host), removed=None if left else node.name)
        ctx.last_sync.pop(node.uid, None)
        ctx.last_full.pop(node.uid, None)
        ctx.start_failures.pop(node.uid, None)
        ctx.locks.pop(f"vn/{node.uid}", None)
        metrics.forget("VirtualNode", node.namespace or "", node.name)
    return outcome


async def converge(ctx: Context, node: Resource) -> Outcome:
    """One full pass over a VirtualNode; the Outcome carries its whole status.

    At most settings.max_passes_per_host run at once for one host (the one the VM is
    placed on or pinned to): a burst queues here, and a slow host holds only its own VMs."""
    where = str(node.status.get("host") or node.spec.get("hostRef") or "")
    slots = ctx.pass_slots.get(where)
    if slots is None:
        slots = ctx.pass_slots[where] = asyncio.Semaphore(max(1, ctx.settings.max_passes_per_host))
    async with slots:
        metrics.VM_FULL_PASSES.inc()
        spec = VirtualNodeSpec.from_dict(node.spec)
        outcome = Outcome()
        conds: dict[str, Condition] = {}
        try:
            await _converge(ctx, node, spec, outcome, conds)
            vmsteady.passed_full(ctx, node, outcome.status)
        finally:
            ctx.last_sync[node.uid] = time.monotonic()
        return outcome


async def _converge(
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    outcome: Outcome,
    conds: dict[str, Condition],
) -> None:
    await _check_name(ctx, node)
    # Clones (spec.source): the master must be Ready and reachable from the host.
    clone = await vmclones.resolve(ctx, node, spec) if spec.source is not None else None
    if clone is not None:
        await vmclones.check_pinned(ctx, node, clone, spec)
    try:
        placement = await ensure_placed(ctx, node, clone.placement_spec(spec) if clone else spec)
    except UnschedulableError as error:
        conds[SCHEDULED] = Condition(SCHEDULED, Status.FALSE, error.reason, error.message)
        outcome.status["phase"] = "Scheduling"
        _summarise(outcome, conds, ready=False, reason=error.reason, message=error.message)
        outcome.requeue_after, outcome.retry_message = RETRY, error.message
        return
    if node.status.get("host") == placement.host:  # placed before: it may have to move
        try:
            placement = await vmmigrate.follow(ctx, node, spec, placement, outcome, conds)
        except TemporaryError as error:
            conds[vmmigrate.MIGRATION] = Condition(
                vmmigrate.MIGRATION, Status.FALSE, "MigrationBlocked", error.message
            )
    placed_now = node.status.get("host") != placement.host
    try:
        await _converge_placed(ctx, node, spec, placement, outcome, conds, clone)
    finally:
        # Placed now: the host counts it at once. A domain defined in this pass published
        # the allocation with it (one read and one write of the KvmHost, not two).
        if placed_now and not any(e.reason == "Defined" for e in outcome.events):
            await hostusage.publish(ctx, placement.host)


async def _converge_placed(  # noqa: PLR0917 - the pass's whole context
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    placement: Placement,
    outcome: Outcome,
    conds: dict[str, Condition],
    clone: vmclones.Clone | None,
) -> None:
    conds[SCHEDULED] = Condition(SCHEDULED, Status.TRUE, "Scheduled", f"on {placement.host}")
    outcome.status["host"] = placement.host
    outcome.status["nics"] = [
        {"bridge": nic.bridge, "model": str(nic.model), "mac": mac}
        for nic, mac in zip(spec.nics, placement.macs, strict=True)
    ]
    outcome.labels[HOST_LABEL] = placement.host
    metrics.set_vm_info(node.namespace or "", node.name, placement.host, str(spec.run_strategy))

    try:
        host_spec, host_status = await read_host(ctx, placement.host)
        assert node.namespace is not None
        refusals = authorize(node.namespace, spec, HostGrant.of(placement.host, host_spec))
        if refusals:
            conds[AUTHORIZED] = Condition(AUTHORIZED, Status.FALSE, NOT_ALLOWED, summary(refusals))
            host = await connect_host(ctx, placement.host, host_spec, host_status)
            await _refused(ctx, node, host, refusals, outcome, conds)
            return
        conds[AUTHORIZED] = Condition(
            AUTHORIZED, Status.TRUE, "Allowed", f"KvmHost {placement.host} allows this VM"
        )
        if clone is not None:
            clone.check_reach(placement.host, host_spec)
        host = await connect_host(ctx, placement.host, host_spec, host_status)
        await _on_host(ctx, node, spec, host, placement, outcome, conds, clone)
    except TemporaryError as error:
        _host_unavailable(node, outcome, conds, placement.host, error)
    except PermanentError as error:
        if error.reason in ("HostKeyMismatch", "HostKeyMissing", "AuthenticationFailed"):
            _host_unavailable(node, outcome, conds, placement.host, error)
        else:
            raise


async def _refused(  # noqa: PLR0917 - the pass's whole context
    ctx: Context,
    node: Resource,
    host: PlacedHost,
    refusals: tuple[Refusal, ...],
    outcome: Outcome,
    conds: dict[str, Condition],
) -> None:
    """The spec (or the host's spec) asks for something the host does not allow.

    Nothing is done for it: no disk is made, grown or touched, the domain is neither
    defined nor redefined, power is not changed. A VM already running keeps running; its
    observed power state is still reported.
    """
    message = summary(refusals)
    previous = _previous(node, AUTHORIZED)
    if previous.get("status") != "False" or previous.get("message") != message:
        outcome.warn(NOT_ALLOWED, f"refused, nothing was changed on {host.name}: {message}")
    guests = await host.guests()
    try:
        state = await ctx.blocking(guests.state, node.name)
    except NotFoundError:
        state = None
    if state is not None:
        outcome.status["powerState"] = str(state)
        metrics.set_power_state(node.namespace or "", node.name, str(state))
        on = state in (PowerState.ON, PowerState.PAUSED)
        conds[RUNNING] = Condition(
            RUNNING, Status.of(on), "Running" if on else "NotRunning", f"power state {state}"
        )
    outcome.status["phase"] = _phase_of(state)
    _summarise(
        outcome,
        conds,
        ready=False,
        reason=NOT_ALLOWED,
        message=f"KvmHost {host.name} does not allow this VM: {message}",
        stalled=True,
    )


def _previous(node: Resource, type_: str) -> dict[str, Any]:
    """The condition of that type in the object's status (empty when there is none)."""
    for found in node.status.get("conditions") or []:
        if found.get("type") == type_:
            return dict(found)
    return {}


def _phase_of(state: PowerState | None) -> str:
    if state is PowerState.ON:
        return "Running"
    if state is PowerState.PAUSED:
        return "Paused"
    if state is None:
        return "Pending"
    return "Stopped" if state in (PowerState.OFF, PowerState.CRASHED) else "Unknown"


async def _on_host(  # noqa: PLR0917 - the pass's whole context
    ctx: Context,
    node: Resource,
    spec: VirtualNodeSpec,
    host: PlacedHost,
    placement: Placement,
    outcome: Outcome,
    conds: dict[str, Condition],
    clone: vmclones.Clone | None = None,
) -> None:
    guests = await host.guests()
    try:
        before = await ctx.blocking(guests.state, node.name)
    except NotFoundError:
        before = None

    mount_root = ctx.settings.mount_root
    disks = await vmdisks.ensure(
        host,
        Owner(node.namespace or "", node.name, node.uid),
        spec,
        mount_root,
        running=before in (PowerState.ON, PowerState.PAUSED),
        clone=clone.images(node.namespace or "", host.spec, mount_root) if clone else None,
    )
    for path in disks.created:
        outcome.note("DiskCreated", f"created {path}")
        metrics.count_operation("create-disk")
    for path in disks.grown:
        outcome.note("DiskGrown", f"grew {path}")
    for path in disks.claimed:
        owner = f"{node.namespace}/{node.name}"
        outcome.note("DiskClaimed", f"owner record of {path} now names {owner}")
    if disks.created:
        failpoints.hit("after-disk")
    outcome.status["disks"] = disks.status
    missing = len(disks.status) < len(spec.disks)
    conds[DISKS_READY] = (
        Condition(DISKS_READY, Status.FALSE, disks.problems[0].reason, disks.messages())
        if disks.problems
        else Condition(DISKS_READY, Status.TRUE, "Ready", f"{len(disks.status)} disk(s) ready")
    )
    if missing:
        message = disks.messages()
        reason = disks.problems[0].reason if disks.problems else "DiskProblem"
        outcome.status["phase"] = "Provisioning"
        _summarise(outcome, conds, ready=False, reason=reason, message=message)
        outcome.requeue_after, outcome.retry_message = RETRY, message
        return

    run = _Pass(ctx, node, spec, host, guests, outcome, conds)
    await _define_and_power(run, disks.locations, placement.macs)


async def _define_and_power(run: _Pass, locations: list[Any], macs: tuple[str, ...]) -> None:
    ctx, node, spec, host, guests = run.ctx, run.node, run.spec, run.host, run.guests
    outcome, conds = run.outcome, run.conds
    now = datetime.now(UTC).replace(microsecond=0)
    requests = requests_of(node.annotations)
    acted_raw = dict(node.status.get("lastActions") or {})
    acted = {k: t for k, v in acted_raw.items() if (t := parse_rfc3339(v)) is not None}
    rotate = "consoleCredentials" in requests and (
        "consoleCredentials" not in acted
        or requests["consoleCredentials"] > acted["consoleCredentials"]
    )
    creds = (
        await vmconsole.ensure_credentials(ctx, node, rotate=rotate) if spec.vnc.enabled else None
    )
    result = await vmdomain.ensure_defined(
        host, node, spec, locations, macs, (creds.password, creds.expires_at) if creds else None
    )
    if result.defined_now:
        outcome.note("Defined", f"domain {node.name} defined on {host.name} (mkvm)")
        await hostusage.publish(ctx, host.name, added=(node.name, str(result.state)))
        metrics.count_operation("define")
        failpoints.hit("after-define")
    elif result.redefined:
        outcome.note("Redefined", f"domain {node.name} updated from the spec (chvm)")
        metrics.count_operation("redefine")
    outcome.status["domainUUID"] = result.uuid
    conds[DEFINED] = Condition(
        DEFINED, Status.TRUE, "Defined", f"domain {node.name} on {host.name}"
    )
    if rotate:
        acted_raw["consoleCredentials"] = node.annotations[ANNOTATION.format("console-credentials")]
    if creds is not None:
        await _apply_credentials(run, creds, result)

    transition_raw = node.status.get("powerTransition") or {}
    started_at = parse_rfc3339(transition_raw.get("startedAt"))
    transition = Transition(str(transition_raw.get("action")), started_at) if started_at else None
    plan = plan_power(
        strategy=spec.run_strategy,
        state=str(result.state),
        requests={k: v for k, v in requests.items() if k != "consoleCredentials"},
        acted=acted,
        transition=transition,
        now=now,
        grace_seconds=spec.shutdown_grace_period_seconds,
    )
    if Call.START in plan.calls and await _image_in_use_elsewhere(run, locations):
        outcome.status["lastActions"] = dict(node.status.get("lastActions") or {})
        outcome.status["powerTransition"] = transition_raw or None
        await _observe(run, creds, None, result)
        outcome.requeue_after, outcome.retry_message = RETRY, conds[DISKS_READY].message
        return
    if Call.START in plan.calls:
        failures = ctx.start_failures.get(node.uid)
        if failures is not None and startbackoff.waiting(failures, time.monotonic()) is not None:
            await _start_failed(run, creds, result, failures, failed_now=False)
            return
    try:
        for call in plan.calls:
            await _power_call(ctx, guests, node.name, call)
    except StartFailedError as error:
        failures = startbackoff.failed(
            ctx.start_failures.get(node.uid), error.message, time.monotonic()
        )
        ctx.start_failures[node.uid] = failures
        await _start_failed(run, creds, result, failures, failed_now=True)
        return
    if Call.START in plan.calls:
        ctx.start_failures.pop(node.uid, None)
    for kind, reason, message in plan.events:
        (outcome.note if kind == "Normal" else outcome.warn)(reason, message)
    for action in plan.acted:
        acted_raw[action] = node.annotations[ANNOTATION.format(ACTION_ANNOTATIONS[action])]
    outcome.status["lastActions"] = acted_raw
    outcome.status["powerTransition"] = (
        {"action": plan.transition.action, "startedAt": cond.rfc3339(plan.transition.started_at)}
        if plan.transition
        else None
    )
    await _observe(run, creds, plan.requeue_after, result)


async def _apply_credentials(
    run: _Pass, creds: vmconsole.VncCredentials, result: vmdomain.DefineResult
) -> None:
    """Make the domain hold the Secret's VNC password, in every power state.

    The persistent definition always (a stopped VM starts with it), the live VNC server
    while the domain runs. The domain's ``passwdValidTo`` tells which password it holds.
    """
    ctx, node, outcome, conds = run.ctx, run.node, run.outcome, run.conds
    if creds.conflict is not None:
        conds[CONSOLE_READY] = Condition(
            CONSOLE_READY, Status.FALSE, "SecretNotOwned", creds.conflict
        )
        if _previous(node, CONSOLE_READY).get("reason") != "SecretNotOwned":
            outcome.warn("SecretNotOwned", creds.conflict)
        return
    running = result.state in (PowerState.ON, PowerState.PAUSED)
    stale = not vmconsole.domain_has(creds, result.config_vnc_valid_to) or (
        running and not vmconsole.domain_has(creds, result.live.vnc_valid_to)
    )
    if stale:
        live_ok = await ctx.blocking(
            run.guests.set_vnc_password, node.name, creds.password, creds.expires_at
        )
        if not live_ok:
            conds[CONSOLE_READY] = Condition(
                CONSOLE_READY,
                Status.FALSE,
                "PasswordPending",
                "the running VNC server cannot take the new password; it applies from the "
                "next start",
            )
            return
        if creds.rotated:
            outcome.note("ConsoleCredentials", "new VNC password set (getrvidparms)")
    conds[CONSOLE_READY] = Condition(
        CONSOLE_READY,
        Status.TRUE,
        "PasswordSet",
        f"Secret {creds.secret_name} holds the password the domain accepts",
    )


async def _image_in_use_elsewhere(run: _Pass, locations: list[Any]) -> bool:
    """One image, one running VM: refuse a start while another KvmHost runs one of its disks."""
    hosts = await fleetindex.kvmhosts(run.ctx)
    users = users_elsewhere(run.host.name, locations, hosts, run.ctx.settings.mount_root)
    if not users:
        return False
    message = f"not started: {'; '.join(users)} (one image, one running VM)"
    before: dict[str, Any] = next(
        (c for c in run.node.status.get("conditions") or [] if c.get("type") == DISKS_READY), {}
    )
    if before.get("reason") != DISK_IN_USE_ELSEWHERE:
        run.outcome.warn(DISK_IN_USE_ELSEWHERE, message)
    run.conds[DISKS_READY] = Condition(DISKS_READY, Status.FALSE, DISK_IN_USE_ELSEWHERE, message)
    return True


async def _start_failed(
    run: _Pass,
    creds: vmconsole.VncCredentials | None,
    result: vmdomain.DefineResult,
    failures: startbackoff.StartFailures,
    *,
    failed_now: bool,
) -> None:
    """QEMU did not start: the VM stays Stopped, Ready=False ``StartFailed`` with libvirt's
    message, Reconciling (retried with a backoff), one Warning when it first happens
    (``failed_now``: this pass's start failed; a pass waiting out the backoff, possibly on
    a body older than the last status write, never warns)."""
    node, outcome, conds = run.node, run.outcome, run.conds
    outcome.status["lastActions"] = dict(node.status.get("lastActions") or {})
    outcome.status["powerTransition"] = node.status.get("powerTransition") or None
    await _observe(run, creds, None, result)
    if outcome.status.get("powerState") not in (str(PowerState.OFF), str(PowerState.CRASHED)):
        return  # it runs after all (started behind our back): the observation stands
    message = (
        f"domain {node.name} did not start on {run.host.name} ({failures.count} "
        f"failed start(s), next try in {failures.delay:g}s): {failures.message}"
    )
    conds[RUNNING] = Condition(RUNNING, Status.FALSE, START_FAILED, failures.message)
    outcome.status["phase"] = "Stopped"
    first = failed_now and failures.count == 1
    if first and _previous(node, cond.READY).get("reason") != START_FAILED:
        outcome.warn(START_FAILED, message)
    _summarise(outcome, conds, ready=False, reason=START_FAILED, message=message)
    wait = startbackoff.waiting(failures, time.monotonic())
    outcome.requeue_after, outcome.retry_message = wait or failures.delay, message


async def _power_call(ctx: Context, guests: Guests, name: str, call: Call) -> None:
    fn = {
        Call.START: guests.start,
        Call.SHUTDOWN: guests.shutdown,
        Call.DESTROY: guests.destroy,
        Call.RESET: guests.reset,
    }[call]
    with metrics.operation(str(call)):
        await ctx.blocking(fn, name)
    if call is Call.START:
        failpoints.hit("after-start")


async def _observe(
    run: _Pass,
    creds: vmconsole.VncCredentials | None,
    requeue: float | None,
    result: vmdomain.DefineResult,
) -> None:
    ctx, node, spec, host, guests = run.ctx, run.node, run.spec, run.host, run.guests
    outcome, conds = run.outcome, run.conds
    state = await ctx.blocking(guests.state, node.name)
    pause = await ctx.blocking(guests.pause, node.name) if state is PowerState.PAUSED else None
    live = await ctx.blocking(guests.info, node.name)
    on = state in (PowerState.ON, PowerState.PAUSED)
    outcome.status["powerState"] = str(state)
    outcome.status["pauseReason"] = str(pause.reason) if pause else None
    metrics.set_power_state(node.namespace or "", node.name, str(state))
    metrics.set_paused(node.namespace or "", node.name, str(pause.reason) if pause else None)
    outcome.status["restartRequired"] = bool(on and result.restart_required)
    outcome.status["console"] = vmconsole.console_status(
        host.spec.address, creds, live.vnc_port, live.serial_pty if on else None, host.name
    )
    if pause is not None:
        conds[RUNNING] = Condition(RUNNING, Status.FALSE, f"Paused{pause.reason}", pause.message)
    else:
        conds[RUNNING] = Condition(
            RUNNING, Status.of(on), "Running" if on else "NotRunning", f"power state {state}"
        )
    wanted_on = {RunStrategy.ALWAYS: True, RunStrategy.HALTED: False}.get(spec.run_strategy)
    transition = outcome.status.get("powerTransition")
    if pause is not None:
        phase = "Paused"
    elif on:
        phase = "Running"
    elif wanted_on or (transition and transition["action"] == "reboot"):
        phase = "Starting"
    else:
        phase = "Stopped"
    outcome.status["phase"] = phase
    if pause is not None:
        _paused(run, pause)
        return
    settled = not transition and (wanted_on is None or wanted_on == on)
    problems = [c for c in conds.values() if c.status is Status.FALSE and c.type != RUNNING]
    if settled and not problems:
        _summarise(outcome, conds, ready=True, reason=phase, message=f"{phase} on {host.name}")
    elif problems:
        _summarise(
            outcome, conds, ready=False, reason=problems[0].reason, message=problems[0].message
        )
    else:
        doing = f"{transition['action']} in progress" if transition else phase
        _summarise(outcome, conds, ready=False, reason=phase, message=f"{doing} on {host.name}")
        outcome.requeue_after = requeue or 2.0
        outcome.retry_message = f"waiting: {doing.lower()}"


def _paused(run: _Pass, pause: Pause) -> None:
    """A paused domain is not Running: Ready=False with libvirt's reason.

    A pause libvirt ends by itself (migration, save, snapshot) is waited for; any other
    (an I/O error, a full storage pool, a user's ``virsh suspend``) needs someone to act.
    """
    reason = f"Paused{pause.reason}"
    message = f"{pause.message} on {run.host.name}"
    if pause.reason.transient:
        _summarise(run.outcome, run.conds, ready=False, reason=reason, message=message)
        run.outcome.requeue_after, run.outcome.retry_message = 5.0, message
        return
    _summarise(run.outcome, run.conds, ready=False, reason=reason, message=message, stalled=True)


def _host_unavailable(
    node: Resource,
    outcome: Outcome,
    conds: dict[str, Condition],
    host: str,
    error: KvmfleetError,
) -> None:
    """A host that cannot be used: the VM's state is Unknown; nothing is deleted or recreated.

    Unreachable (a temporary error) is `HostUnavailable`, Reconciling: retried. A host that
    refuses our key or shows another host key keeps that reason, Stalled: a person must
    fix the KvmHost (the retry goes on and clears it)."""
    outcome.status["powerState"] = "Unknown"
    outcome.status["phase"] = "Unknown"
    metrics.set_power_state(node.namespace or "", node.name, "Unknown")
    conds[RUNNING] = Condition(RUNNING, Status.UNKNOWN, "HostUnavailable", error.message)
    permanent = isinstance(error, PermanentError)
    _summarise(
        outcome,
        conds,
        ready=False,
        reason=error.reason if permanent else "HostUnavailable",
        message=f"KvmHost {host}: {error.message}",
        stalled=permanent,
    )
    outcome.requeue_after, outcome.retry_message = RETRY, error.message


async def _check_name(ctx: Context, node: Resource) -> None:
    """Domain and disk names come from metadata.name: it must be unique in the cluster."""
    nodes = await fleetindex.virtualnodes(ctx)
    older = [
        o
        for o in nodes
        if o["metadata"]["name"] == node.name
        and o["metadata"]["uid"] != node.uid
        and (o["metadata"].get("creationTimestamp", ""), o["metadata"]["uid"])
        < (_created(node, nodes), node.uid)
    ]
    if older:
        other = older[0]["metadata"]
        raise PermanentError(
            f"VirtualNode names are unique across namespaces (they name libvirt domains and "
            f"disk files, as xCAT node names do): {other.get('namespace')}/{node.name} exists",
            reason="NameInUse",
        )


def _created(node: Resource, nodes: list[dict[str, Any]]) -> str:
    own = next((o for o in nodes if o["metadata"]["uid"] == node.uid), None)
    return str((own or {}).get("metadata", {}).get("creationTimestamp", "9999"))


def _summarise(
    outcome: Outcome,
    conds: dict[str, Condition],
    *,
    ready: bool,
    reason: str,
    message: str,
    stalled: bool | None = None,
) -> None:
    outcome.conditions = [
        *conds.values(),
        *cond.summary(ready=ready, reason=reason, message=message, stalled=stalled),
    ]
