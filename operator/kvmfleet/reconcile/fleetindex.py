"""What a pass needs from the other objects, read from watch-fed indexes instead of LISTs.

A VirtualNode pass needs facts about the other VirtualNodes (names in use, MACs, which
host each is placed on and what it asks for, backing files) and about the KvmHosts.
Listing them from the API server on every pass makes the API load grow with the square
of the fleet. Instead, the handlers keep two indexes fed by the watches the operator
already runs (``kopf.index``, see :mod:`kvmfleet.handlers.indexes`): a slim record per
VirtualNode and the KvmHost objects. Kopf fills every index from its initial listing
before any handler runs, so after a restart a pass sees the same fleet a LIST would.

A watch lags the API server by the time one event takes to arrive: decisions that must
see an object this process just changed (a placement, its MACs) already cover that
moment with :attr:`Context.reservations`, exactly as they did for a LIST that raced
with a PATCH.

Without bound indexes (a use-case test, a tool) the same calls fall back to the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kvmfleet.reconcile.context import Context


class IndexView(Protocol):
    """The read side of one ``kopf.Index``: key -> collection of values."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def values(self) -> Iterable[Any]: ...


VM_INDEX = "kvmfleet_vms"
"""kopf.index of VirtualNodes: key None -> slim records (:func:`slim_virtualnode`)."""
HOST_INDEX = "kvmfleet_hosts"
"""kopf.index of KvmHosts: key = name -> the object (metadata, spec, status)."""


def slim_virtualnode(body: Mapping[str, Any]) -> dict[str, Any]:
    """What other passes need of a VirtualNode (the shape of a listed object, trimmed).

    ``status.kopf`` (Kopf's diff base, the largest part of an object) and conditions are
    left out: no pass reads them from another VM.
    """
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": dict(meta.get("labels") or {}),
        },
        "spec": dict(body.get("spec") or {}),
        "status": {
            key: status[key]
            for key in ("host", "nics", "disks", "phase", "powerState")
            if key in status
        },
    }


def slim_kvmhost(body: Mapping[str, Any]) -> dict[str, Any]:
    """A KvmHost as a pass reads it (its status without Kopf's bookkeeping)."""
    meta = body.get("metadata") or {}
    status = {k: v for k, v in dict(body.get("status") or {}).items() if k != "kopf"}
    return {
        "metadata": {"name": meta.get("name"), "uid": meta.get("uid")},
        "spec": dict(body.get("spec") or {}),
        "status": status,
    }


@dataclass
class FleetIndex:
    """The two indexes, as bound by the handlers on their first call."""

    vms: IndexView
    hosts: IndexView

    def virtualnodes(self, label: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """Every VirtualNode's slim record (with that label, if given)."""
        found = [record for store in self.vms.values() for record in store]
        if label is None:
            return found
        key, value = label
        return [r for r in found if (r["metadata"].get("labels") or {}).get(key) == value]

    def kvmhosts(self) -> list[dict[str, Any]]:
        """Every KvmHost object."""
        return [obj for store in self.hosts.values() for obj in store]

    def kvmhost(self, name: str) -> dict[str, Any] | None:
        """One KvmHost object, None when the watch has not seen it."""
        store = self.hosts.get(name)
        for obj in store or ():
            return dict(obj)
        return None


def bind(ctx: Context, indexes: Mapping[str, Any]) -> None:
    """Keep the handlers' indexes (Kopf hands the same live objects to every call)."""
    if ctx.fleet is None and VM_INDEX in indexes and HOST_INDEX in indexes:
        ctx.fleet = FleetIndex(indexes[VM_INDEX], indexes[HOST_INDEX])


def _fleet(ctx: Context) -> FleetIndex | None:
    fleet = getattr(ctx, "fleet", None)
    return fleet if isinstance(fleet, FleetIndex) else None


async def virtualnodes(ctx: Context, label: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Every VirtualNode (records with metadata, spec and the placement part of status)."""
    fleet = _fleet(ctx)
    if fleet is not None:
        return fleet.virtualnodes(label)
    if label is None:
        return await ctx.blocking(ctx.kube.list_cluster_objects, "virtualnodes")
    selector = f"{label[0]}={label[1]}"
    return await ctx.blocking(ctx.kube.list_cluster_objects, "virtualnodes", selector)


async def kvmhosts(ctx: Context) -> list[dict[str, Any]]:
    """Every KvmHost object."""
    fleet = _fleet(ctx)
    if fleet is not None:
        return fleet.kvmhosts()
    return await ctx.blocking(ctx.kube.list_cluster_objects, "kvmhosts")


async def kvmhost(ctx: Context, name: str) -> dict[str, Any]:
    """One KvmHost object; NotFoundError when it does not exist."""
    fleet = _fleet(ctx)
    if fleet is not None:
        obj = fleet.kvmhost(name)
        if obj is not None:
            return obj
        # Not (yet) seen by the watch: the API server is the authority on "not found".
    return await ctx.blocking(ctx.kube.get_object, "kvmhosts", name)


def known(ctx: Context) -> bool:
    """Whether passes read the indexes (False: they read the API server)."""
    return _fleet(ctx) is not None
