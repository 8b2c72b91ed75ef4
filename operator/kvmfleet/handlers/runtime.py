"""The operator process: health endpoints, leader election, then Kopf with the handlers.

* ``/healthz`` (liveness) answers 500 when the operator is wedged (see
  :func:`kvmfleet.reconcile.liveness.assess`: objects exist but no handler ran for
  ``watch_silence_limit`` seconds, or a blocking call is ``stuck_grace`` seconds past
  its deadline), or when it lost its leader Lease; 200 otherwise, standby included.
* ``/readyz`` (readiness) answers 200 once the process is up, with its role (``active``
  or ``standby``), and 503 while it stops.
* With ``leader_election`` the process waits as a standby until it holds the Lease
  (:mod:`kvmfleet.kube.lease`), then runs Kopf; it renews every ``lease_retry_period``
  seconds and, when it cannot for ``lease_renew_deadline`` seconds, stops Kopf and exits
  (status 1) before any standby may take over; a clean stop releases the Lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import kopf
from aiohttp import web

from kvmfleet import __version__, metrics
from kvmfleet.errors import KvmfleetError
from kvmfleet.handlers import common, restart, virtualnodes
from kvmfleet.kube.lease import LeaderElector, LeaseConfig
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.liveness import assess
from kvmfleet.settings import Settings

log = logging.getLogger(__name__)

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass
class State:
    """What the health endpoints report about the process."""

    role: str = "standby"
    lost_lease: bool = False
    stopping: bool = False


def lease_config(settings: Settings) -> LeaseConfig:
    """The Lease: its namespace (setting, $POD_NAMESPACE, the service account's, default)."""
    namespace = settings.leader_election_namespace or os.environ.get("POD_NAMESPACE", "")
    if not namespace and _SA_NAMESPACE.exists():
        namespace = _SA_NAMESPACE.read_text().strip()
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    return LeaseConfig(
        namespace=namespace or "default",
        name=settings.leader_election_name,
        identity=f"{identity}_{os.getpid()}",
        lease_duration=settings.lease_duration,
        renew_deadline=settings.lease_renew_deadline,
        retry_period=settings.lease_retry_period,
    )


def health_app(ctx: Context, state: State) -> web.Application:
    """The /healthz and /readyz endpoints."""

    async def healthz(_: web.Request) -> web.Response:
        verdict = assess(
            ctx.activity,
            ctx.in_flight,
            watch_silence_limit=ctx.settings.watch_silence_limit,
            stuck_grace=ctx.settings.stuck_grace,
        )
        reasons = list(verdict.reasons)
        if state.lost_lease:
            reasons.append("the leader Lease was lost")
        body = {"version": __version__, "role": state.role, "problems": reasons}
        return web.json_response(body, status=500 if reasons else 200)

    async def readyz(_: web.Request) -> web.Response:
        body = {"version": __version__, "role": state.role}
        return web.json_response(body, status=503 if state.stopping else 200)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _serve_health(ctx: Context, state: State) -> web.AppRunner | None:
    settings = ctx.settings
    if not settings.health_port:
        return None
    runner = web.AppRunner(health_app(ctx, state), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.bind_address, settings.health_port).start()
    return runner


async def _acquire(elector: LeaderElector) -> None:
    cfg = elector.config
    log.info(
        "standby: waiting for the leader Lease %s/%s as %s", cfg.namespace, cfg.name, cfg.identity
    )
    while True:
        try:
            if await asyncio.to_thread(elector.try_acquire_or_renew):
                log.info("became the leader (Lease %s/%s)", cfg.namespace, cfg.name)
                return
        except KvmfleetError as error:
            log.warning("leader election: %s", error.message)
        await asyncio.sleep(cfg.retry_period)


async def _keep(elector: LeaderElector, stop: asyncio.Event, state: State) -> None:
    cfg = elector.config
    while not stop.is_set():
        await asyncio.sleep(cfg.retry_period)
        try:
            await asyncio.to_thread(elector.try_acquire_or_renew)
        except KvmfleetError as error:
            log.warning("leader election: cannot renew: %s", error.message)
        if not elector.is_leader:
            log.error("lost the leader Lease %s/%s: stopping", cfg.namespace, cfg.name)
            state.lost_lease = True
            metrics.LEADER.set(0)
            stop.set()
            # Whatever Kopf still does must end before a standby may take over.
            grace = max(0.5, cfg.lease_duration - cfg.renew_deadline - 1)
            threading.Timer(grace, os._exit, args=(1,)).start()
            return


async def main(settings: Settings, ctx: Context) -> int:
    """Run the operator until it is stopped; 1 if it lost its leader Lease."""
    state = State()
    restart.record_restarts()
    common.register(ctx)
    virtualnodes.register_sync(settings)
    metrics.serve(settings.metrics_port, settings.bind_address)
    runner = await _serve_health(ctx, state)
    stop = asyncio.Event()
    elector: LeaderElector | None = None
    keeper: asyncio.Task[None] | None = None
    try:
        if settings.leader_election:
            metrics.LEADER.set(0)
            elector = LeaderElector(ctx.kube, lease_config(settings))
            await _acquire(elector)
            keeper = asyncio.create_task(_keep(elector, stop, state))
        state.role = "active"
        metrics.LEADER.set(1)
        failures = restart.FailureWatch().install()
        guard = asyncio.create_task(restart.watchdog(failures, stop))  # before Kopf's tasks
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,
            memo=kopf.Memo(ctx=ctx),
            stop_flag=stop,
        )
        if failures.failed.is_set() and not stop.is_set():
            await guard  # Kopf stopped because of its failure: start again (never returns)
        guard.cancel()
    finally:
        await ctx.close()
        state.stopping = True
        if keeper is not None:
            keeper.cancel()
        if elector is not None and not state.lost_lease:
            await asyncio.to_thread(elector.release)
        if runner is not None:
            await runner.cleanup()
    return 1 if state.lost_lease else 0
