"""Kopf indexes of VirtualNodes and KvmHosts, fed by the watches the operator already runs.

The use-cases read them through :mod:`kvmfleet.reconcile.fleetindex` instead of listing
objects from the API server on every pass. Kopf fills them from its initial listing
before any handler runs and removes an object's entry when the object is deleted.
"""

from __future__ import annotations

from typing import Any

import kopf

from kvmfleet.reconcile import fleetindex
from kvmfleet.reconcile.context import Context
from kvmfleet.settings import GROUP, VERSION


@kopf.index(GROUP, VERSION, "virtualnodes", id=fleetindex.VM_INDEX)
async def kvmfleet_vms(body: kopf.Body, **_: Any) -> dict[None, dict[str, Any]]:
    """Every VirtualNode under one key: the slim record other passes read."""
    return {None: fleetindex.slim_virtualnode(body)}


@kopf.index(GROUP, VERSION, "kvmhosts", id=fleetindex.HOST_INDEX)
async def kvmfleet_hosts(body: kopf.Body, name: str, **_: Any) -> dict[str, dict[str, Any]]:
    """Every KvmHost by name."""
    return {name: fleetindex.slim_kvmhost(body)}


def bind(memo: kopf.Memo, handler_kwargs: dict[str, Any]) -> Context:
    """The Context, with the indexes Kopf passed to this handler bound (first call only)."""
    ctx: Context = memo["ctx"]
    if ctx.fleet is None:
        fleetindex.bind(ctx, handler_kwargs)
    return ctx
