"""/healthz fails when the operator is wedged or lost its Lease; /readyz reports the role."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp.test_utils import TestClient, TestServer

from kvmfleet.handlers.runtime import State, health_app
from kvmfleet.kube.api import KubeApi
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.liveness import Activity, InFlight
from kvmfleet.settings import Settings


async def test_health_and_readiness() -> None:
    now = [0.0]
    ctx = Context(
        settings=Settings(watch_silence_limit=60, stuck_grace=10),
        kube=KubeApi(core=None, custom=None),
        executor=ThreadPoolExecutor(max_workers=1),
        activity=Activity(clock=lambda: now[0]),
        in_flight=InFlight(clock=lambda: now[0]),
    )
    state = State(role="standby")
    async with TestClient(TestServer(health_app(ctx, state))) as client:
        response = await client.get("/healthz")
        assert response.status == 200
        assert (await response.json())["problems"] == []
        assert (await (await client.get("/readyz")).json())["role"] == "standby"

        ctx.activity.touch("KvmHost//h1")
        token = ctx.in_flight.start("h1", "Guests.define", 30)
        ctx.in_flight.running(token)
        now[0] = 45  # the call is 15 s past its deadline: stuck beyond the grace
        response = await client.get("/healthz")
        assert response.status == 500
        assert "Guests.define (h1) is 15s past its deadline" in (await response.json())["problems"]

        ctx.in_flight.end(token)
        now[0] = 200  # handlers silent for 200 s while an object exists
        body = await (await client.get("/healthz")).json()
        assert body["problems"][0].startswith("no handler ran for 200s")

        ctx.activity.touch("KvmHost//h1")
        state.lost_lease = True
        assert (await client.get("/healthz")).status == 500
        state.stopping = True
        assert (await client.get("/readyz")).status == 503
    ctx.executor.shutdown()
