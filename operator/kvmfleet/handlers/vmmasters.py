"""Kopf handlers for VmMaster: capture a golden image from a VirtualNode, guard its deletion."""

from __future__ import annotations

from typing import Any

import kopf

from kvmfleet.handlers import common, indexes
from kvmfleet.reconcile import vmmasters
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import GROUP, VERSION

KIND = "VmMaster"
RESOURCE = (GROUP, VERSION, "vmmasters")


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Capture the master image from its source node (`clonevm -t`)."""
    ctx = indexes.bind(memo, kwargs)
    resource = Resource.from_body(body)
    await common.run(KIND, body, patch, logger, lambda: vmmasters.reconcile(ctx, resource))


@kopf.timer(*RESOURCE, interval=10.0, initial_delay=10.0)
async def sync(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Keep the clone count and the dependants true (they change with other objects)."""
    ctx = indexes.bind(memo, kwargs)
    resource = Resource.from_body(body)
    await common.run(KIND, body, patch, logger, lambda: vmmasters.sync(ctx, resource))


@kopf.on.delete(*RESOURCE)
async def remove(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Delete the master image once no VirtualNode depends on it."""
    ctx: Context = memo["ctx"]
    resource = Resource.from_body(body)
    await common.run(
        KIND, body, patch, logger, lambda: vmmasters.remove(ctx, resource), removing=True
    )
