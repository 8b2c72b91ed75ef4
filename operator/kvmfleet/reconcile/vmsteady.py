"""Recognise a converged, unchanged VirtualNode without a full pass.

A full pass (placement, disks, definition, console, power) costs API requests and several
SSH and libvirt calls. A VM whose status says it converged on the current generation, with
no action asked for and no transition under way, needs only one check per sync interval:
its host's inventory (one batched read per host, :mod:`kvmfleet.reconcile.inventory`)
still shows the domain with the VM's UUID in the power state its status reports and its
runStrategy wants. That check costs no API request and no host call of its own; drift of
the power state (a domain stopped, started or undefined behind our back) fails it and the
full pass runs, as before.

The VM's KvmHost is read from the watch-fed index (no API request): a VM on a host in
maintenance always gets the full pass (that is where a drain moves it), and so does a VM
its host no longer authorizes (namespace, bridges, storage: checked on every sync, the
full pass sets ``Authorized=False``).

What the inventory cannot show (a disk removed, the definition edited with ``virsh``, a
VNC password near its expiry) is caught by a full pass at least every
``vm_full_sync_interval``, spread over the interval with jitter so that a restart or a
burst does not make every VM due at once. After an operator restart, converged VMs are
recognised this way: no disk is probed or made, nothing is redefined or started.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kvmfleet import metrics
from kvmfleet.domain.authorization import HostGrant, authorize
from kvmfleet.domain.conditions import parse_rfc3339
from kvmfleet.domain.specs import KvmHostSpec, RunStrategy, VirtualNodeSpec
from kvmfleet.errors import KvmfleetError
from kvmfleet.reconcile import fleetindex, inventory
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.resource import Resource

log = logging.getLogger(__name__)


def _condition(status: Mapping[str, Any], type_: str) -> str | None:
    for found in status.get("conditions") or []:
        if found.get("type") == type_:
            return str(found.get("status"))
    return None


def settled_status(
    node: Resource, spec: VirtualNodeSpec, now: datetime, *, pending: bool
) -> str | None:
    """Why the status alone does not show a settled VM (None: it does). Pure.

    ``pending``: an action annotation asks for something not done yet."""
    status = node.status
    if node.deleting:
        return "deleting"
    if node.generation is None or status.get("observedGeneration") != node.generation:
        return "generation not observed"
    if _condition(status, "Ready") != "True" or _condition(status, "Reconciling") == "True":
        return "not Ready"
    if status.get("powerTransition"):
        return "power transition"
    if pending:
        return "action requested"
    host = status.get("host")
    if not host or (spec.host_ref and spec.host_ref != host):
        return "placement"
    if len(status.get("nics") or []) != len(spec.nics):
        return "nics"
    if status.get("domainUUID") != node.uid:
        return "domain"
    if status.get("restartRequired"):
        return "restart required"
    state = status.get("powerState")
    wanted = {RunStrategy.ALWAYS: "On", RunStrategy.HALTED: "Off"}.get(spec.run_strategy)
    if state not in ("On", "Off") or (wanted is not None and state != wanted):
        return "power state"
    if spec.vnc.enabled:
        vnc = (status.get("console") or {}).get("vnc") or {}
        expires = parse_rfc3339(vnc.get("expiresAt"))
        if expires is None or expires - now < timedelta(hours=1):
            return "console password"
    return None


def _full_due(ctx: Context, uid: str) -> bool:
    """A full pass is due (the first check after a start spreads them over the interval)."""
    interval = ctx.settings.vm_full_sync_interval
    now = time.monotonic()
    last = ctx.last_full.get(uid)
    if last is None:
        ctx.last_full[uid] = now - random.uniform(0, interval)  # noqa: S311 - jitter only
        return False
    return now - last >= interval


async def unchanged(ctx: Context, node: Resource, spec: VirtualNodeSpec, *, pending: bool) -> bool:
    """True when the VM is converged and its host's inventory agrees: nothing to do.

    False counts why in ``kvmfleet_vm_sync_full_causes_total`` (the full pass follows)."""
    why = await _why_full(ctx, node, spec, pending=pending)
    if why is not None:
        metrics.VM_FULL_PASS_CAUSES.labels(why).inc()
        return False
    metrics.VM_STEADY_CHECKS.inc()
    return True


async def _why_full(
    ctx: Context, node: Resource, spec: VirtualNodeSpec, *, pending: bool
) -> str | None:
    why = settled_status(node, spec, datetime.now(UTC), pending=pending)
    if why is not None:
        return why
    if _full_due(ctx, node.uid):
        return "full sync due"
    host = str(node.status["host"])
    try:
        host_spec = KvmHostSpec.from_dict((await fleetindex.kvmhost(ctx, host)).get("spec") or {})
    except KvmfleetError as error:
        log.info("KvmHost %s cannot be read (%s): full pass", host, error)
        return "host unreadable"
    if host_spec.maintenance:
        return "host in maintenance"  # a drain moves the VM: the full pass does that
    assert node.namespace is not None
    if authorize(node.namespace, spec, HostGrant.of(host, host_spec)):
        return "not authorized"  # the host's grant changed: the full pass says so
    try:
        found = await inventory.read(ctx, host)
    except KvmfleetError as error:
        log.info("KvmHost %s: no domain inventory (%s): full passes instead", host, error)
        return "inventory unavailable"  # the full pass reports the host as it always has
    domain = found.domains.get(node.name)
    if domain is None:
        return "domain not in inventory"
    uuid, state = domain
    if uuid.lower() != node.uid.lower():
        return "domain of another uid"
    if str(state) != node.status.get("powerState"):
        return "power state changed"
    metrics.set_power_state(node.namespace or "", node.name, str(state))
    return None


def passed_full(ctx: Context, node: Resource, status: Mapping[str, Any]) -> None:
    """A full pass ended: record it, and what it saw of the domain in the inventory."""
    ctx.last_full[node.uid] = time.monotonic()
    host = status.get("host") or node.status.get("host")
    if host:
        uuid = status.get("domainUUID", node.status.get("domainUUID"))
        state = status.get("powerState")
        if state is not None:
            inventory.observed(ctx, str(host), node.name, uuid, state if uuid else None)
