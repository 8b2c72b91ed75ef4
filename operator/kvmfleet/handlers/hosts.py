"""Kopf handlers for KvmHost: reconcile on change, probe periodically, release on delete."""

from __future__ import annotations

from typing import Any

import kopf

from kvmfleet.handlers import common, indexes
from kvmfleet.reconcile import hosts
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import GROUP, VERSION

KIND = "KvmHost"
RESOURCE = (GROUP, VERSION, "kvmhosts")


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
    """Bring the host to its spec: reach it, check it, prepare bridges and storage."""
    ctx = indexes.bind(memo, kwargs)
    resource = Resource.from_body(body)
    changed = spec_fields_changed(diff) if reason == "update" else frozenset()
    await common.run(KIND, body, patch, logger, lambda: hosts.reconcile(ctx, resource, changed))


def spec_fields_changed(diff: kopf.Diff) -> frozenset[str]:
    """The top-level spec fields an update changed (all of them when spec was replaced)."""
    changed: set[str] = set()
    for _, path, old, new in diff:
        if path[:1] != ("spec",):
            continue
        if len(path) > 1:
            changed.add(str(path[1]))
        else:
            changed.update(str(k) for k in {**dict(old or {}), **dict(new or {})})
    return frozenset(changed)


@kopf.timer(*RESOURCE, interval=5.0, initial_delay=5.0, idle=5.0)
async def probe(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Probe when due (every host_probe_interval): drift, reachability, domains."""
    ctx = indexes.bind(memo, kwargs)
    resource = Resource.from_body(body)
    await common.run(KIND, body, patch, logger, lambda: hosts.probe(ctx, resource))


@kopf.on.delete(*RESOURCE)
async def release(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Forget the host: close its connections and drop its metrics."""
    ctx: Context = memo["ctx"]
    await hosts.release(ctx, Resource.from_body(body))
    common.forget(KIND, body)
    logger.info("KvmHost %s released", body.metadata.name)
