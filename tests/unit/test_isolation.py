"""Per-host threads and deadlines of Context.blocking, with fakes: a hung host holds only its
own threads, a call past its deadline becomes a TemporaryError, /healthz sees it."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvmfleet.errors import TemporaryError
from kvmfleet.kube.api import KubeApi
from kvmfleet.reconcile.context import CURRENT_HOST, CallTimeoutError, Context
from kvmfleet.reconcile.liveness import KUBE, Activity, InFlight, assess
from kvmfleet.settings import Settings


def make_context(**settings: object) -> Context:
    base = {"host_workers": 2, "kube_workers": 2, "libvirt_call_timeout": 5.0}
    base.update(settings)
    return Context(
        settings=Settings(**base),  # type: ignore[arg-type]
        kube=KubeApi(core=None, custom=None),
        executor=ThreadPoolExecutor(max_workers=2),
    )


@pytest.fixture
def hang() -> threading.Event:
    release = threading.Event()
    yield release
    release.set()


async def test_a_hung_host_does_not_delay_another(hang: threading.Event) -> None:
    ctx = make_context()

    async def on(host: str, fn, *args):  # type: ignore[no-untyped-def]
        CURRENT_HOST.set(host)
        return await ctx.blocking(fn, *args)

    # Host a's every thread hangs (a SIGSTOPped libvirtd), and more calls queue behind them.
    stuck = [asyncio.create_task(on("a", hang.wait)) for _ in range(6)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    results = await asyncio.gather(*(on("b", time.sleep, 0.01) for _ in range(10)))
    assert time.monotonic() - started < 1.0 and results == [None] * 10
    assert ctx.in_flight.count("a") == 6 and ctx.in_flight.count("b") == 0
    hang.set()
    await asyncio.gather(*stuck)
    await ctx.close()


async def test_kubernetes_calls_have_their_own_threads(hang: threading.Event) -> None:
    ctx = make_context()

    class Api(KubeApi):
        def get_object(self, plural, name, namespace=None):  # type: ignore[no-untyped-def,override]
            return {"name": name}

    ctx.kube = Api(core=None, custom=None)
    CURRENT_HOST.set(None)
    # The shared pool is busy with something that hangs...
    stuck = [asyncio.create_task(ctx.blocking(hang.wait)) for _ in range(4)]
    await asyncio.sleep(0.05)
    # ...the API client is not.
    got = await asyncio.wait_for(ctx.blocking(ctx.kube.get_object, "kvmhosts", "x"), 1.0)
    assert got == {"name": "x"}
    hang.set()
    await asyncio.gather(*stuck)
    await ctx.close()


async def test_a_call_past_its_deadline_is_a_temporary_error_and_shows_in_healthz(
    hang: threading.Event,
) -> None:
    ctx = make_context(libvirt_call_timeout=0.2, stuck_grace=0.1)
    CURRENT_HOST.set("sick")
    with pytest.raises(CallTimeoutError) as caught:
        await ctx.blocking(hang.wait)
    assert isinstance(caught.value, TemporaryError) and "sick" in caught.value.message
    # The thread is still out there: counted, and after the grace /healthz fails.
    assert ctx.in_flight.count("sick") == 1
    await asyncio.sleep(0.15)
    verdict = assess(ctx.activity, ctx.in_flight, watch_silence_limit=600, stuck_grace=0.1)
    assert not verdict.alive and "past its deadline" in verdict.reasons[0]
    hang.set()
    await asyncio.sleep(0.05)
    assert ctx.in_flight.count("sick") == 0
    assert assess(ctx.activity, ctx.in_flight, watch_silence_limit=600, stuck_grace=0.1).alive
    await ctx.close()


async def test_on_host_uses_that_host_and_its_deadline() -> None:
    ctx = make_context()
    thread = await ctx.on_host("h1", 5.0, threading.current_thread)
    assert thread.name.startswith("kvmfleet-host-h1")
    await ctx.close()


def test_silent_handlers_with_objects_mean_wedged() -> None:
    now = [100.0]
    activity = Activity(clock=lambda: now[0])
    in_flight = InFlight(clock=lambda: now[0])
    assert assess(activity, in_flight, watch_silence_limit=60, stuck_grace=10).alive
    now[0] += 1000  # silent, but nothing exists: fine (a standby, an empty cluster)
    assert assess(activity, in_flight, watch_silence_limit=60, stuck_grace=10).alive
    activity.touch("VirtualNode/lab/vm1")
    now[0] += 61
    verdict = assess(activity, in_flight, watch_silence_limit=60, stuck_grace=10)
    assert not verdict.alive and "no handler ran" in verdict.reasons[0]
    activity.forget("VirtualNode/lab/vm1")
    assert assess(activity, in_flight, watch_silence_limit=60, stuck_grace=10).alive


def test_in_flight_ages_per_place() -> None:
    now = [0.0]
    in_flight = InFlight(clock=lambda: now[0])
    first = in_flight.start(KUBE, "get", 30)
    now[0] = 5
    in_flight.start(KUBE, "list", 30)
    in_flight.start("h", "run", 30)
    assert in_flight.count(KUBE) == 2 and in_flight.oldest_age(KUBE) == 5
    in_flight.end(first)
    assert in_flight.oldest_age(KUBE) == 0 and in_flight.count("h") == 1


async def test_the_deadline_counts_from_when_a_thread_runs_the_call() -> None:
    ctx = make_context(host_workers=1, libvirt_call_timeout=0.3)
    CURRENT_HOST.set("busy")
    # Each call runs 0.15 s, well within 0.3 s; the last waits 0.3 s for the one thread.
    results = await asyncio.gather(*(ctx.blocking(time.sleep, 0.15) for _ in range(3)))
    assert results == [None, None, None]
    await ctx.close()
