"""Operator start-up: Kopf settings and the metrics endpoint (health: handlers/runtime.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from kvmfleet import __version__, metrics
from kvmfleet.reconcile import vmstats
from kvmfleet.reconcile.context import Context
from kvmfleet.settings import FINALIZER, HOST_LABEL, Settings


def diffbase_storage() -> kopf.StatusDiffBaseStorage:
    """Where Kopf keeps what it last handled (status.kopf.diffbase), and what it compares.

    The host label is the operator's own record of a placement, not a change to react to:
    left out of the comparison, placing a VM costs no extra handler cycle and no extra
    diffbase PATCH."""
    return kopf.StatusDiffBaseStorage(
        field="status.kopf.diffbase", ignored_fields=[("metadata", "labels", HOST_LABEL)]
    )


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Apply kvmfleet's Kopf settings, build the shared Context, start the /metrics endpoint
    and the per-VM statistics reader."""
    if "ctx" not in memo:
        memo["ctx"] = Context.create(Settings.from_env())
    ctx: Context = memo["ctx"]
    config = ctx.settings
    settings.persistence.finalizer = FINALIZER
    # Kopf keeps its bookkeeping in status.kopf, never in metadata: kvmfleet only adds its
    # finalizer and labels to metadata (GitOps tools own the rest).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = diffbase_storage()
    # Events are kvmfleet's own (kopf.event with CamelCase reasons, docs/conditions.md):
    # Kopf's log lines are never posted as Events, so an expected wait (a requeue that Kopf
    # logs as "failed temporarily") is no `Error` Event and no news is posted twice.
    settings.posting.loggers = False
    settings.posting.level = logging.WARNING
    settings.watching.connect_timeout = 30
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.execution.max_workers = config.max_workers
    settings.peering.standalone = True
    metrics.serve(config.metrics_port, config.bind_address)
    if config.vm_stats_interval > 0 and "vmstats" not in memo:
        memo["vmstats"] = asyncio.get_running_loop().create_task(vmstats.poll(ctx))
    logger.info(
        "kvmfleet %s started (namespaces: %s, metrics :%s, health :%s)",
        __version__,
        ", ".join(config.namespaces) or "all",
        config.metrics_port,
        config.health_port,
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Stop this run's statistics reader (connections and threads are released by
    :func:`kvmfleet.handlers.runtime.main` when the process stops: Kopf may run again)."""
    if "vmstats" in memo:
        memo["vmstats"].cancel()
    logger.info("Kopf stopped")
