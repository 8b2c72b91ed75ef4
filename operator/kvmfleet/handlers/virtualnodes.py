"""Kopf handlers for VirtualNode: provision and change on spec edits, sync power, remove."""

from __future__ import annotations

from typing import Any

import kopf

from kvmfleet.handlers import common, indexes
from kvmfleet.reconcile import virtualnodes
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import GROUP, VERSION, Settings

KIND = "VirtualNode"
RESOURCE = (GROUP, VERSION, "virtualnodes")


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def reconcile(  # noqa: PLR0917 - Kopf's keyword arguments
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    diff: kopf.Diff,
    reason: str,
    **kwargs: Any,
) -> None:
    """Bring the VM to its spec: schedule, make disks, define, power."""
    if common.only_own_labels(diff):
        return
    ctx = indexes.bind(memo, kwargs)
    resource = Resource.from_body(body)
    resumed = reason == "resume"
    await common.run(
        KIND,
        body,
        patch,
        logger,
        lambda: virtualnodes.reconcile(ctx, resource, resumed=resumed),
    )


async def sync(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Keep the observed power state true (every vm_sync_interval): Always restarts a VM
    that went off behind our back, Manual only reports it."""
    ctx = indexes.bind(memo, kwargs)
    resource = Resource.from_body(body)
    await common.run(KIND, body, patch, logger, lambda: virtualnodes.sync(ctx, resource))


def register_sync(settings: Settings) -> None:
    """Register :func:`sync` as a Kopf timer ticking every ``vm_sync_interval``.

    One tick per VM per interval, not more: each tick of each VM costs CPU in Kopf and
    here, so with thousands of VMs a short fixed tick would keep the operator busy doing
    nothing. What must not wait for the next tick wakes a VM itself: its own changes
    (Kopf's update handler) and changes of its KvmHost that it acts on
    (:func:`kvmfleet.reconcile.hosts.wake_vms`). Registered once per process.
    """
    if _registered:
        return
    kopf.timer(
        *RESOURCE, id="sync", interval=max(1.0, settings.vm_sync_interval), initial_delay=5.0
    )(sync)
    _registered.append(settings.vm_sync_interval)


_registered: list[float] = []
"""The interval :func:`register_sync` registered the timer with (empty: not yet)."""


@kopf.on.delete(*RESOURCE)
async def remove(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Shut down, undefine and (by reclaimPolicy) delete the disks (`rmvm`)."""
    ctx = indexes.bind(memo, kwargs)
    resource = Resource.from_body(body)
    await common.run(
        KIND, body, patch, logger, lambda: virtualnodes.remove(ctx, resource), removing=True
    )
