"""The operator's shared context: settings, the threads for blocking calls, the adapters.

Blocking calls never share one pool across hosts: each host gets its own threads
(``host_workers``), the Kubernetes client its own (``kube_workers``), and everything else
a shared pool (``max_workers``). A hung libvirtd or NFS mount therefore holds only the
threads of its own host; a VM on a healthy host is never queued behind it. Which pool a
call goes to: Kubernetes client methods go to the Kubernetes pool; calls made while a
task works on a host (:data:`CURRENT_HOST`, set by :func:`~kvmfleet.reconcile.
hostsession.connect`) go to that host's pool; the rest to the shared one.

Every call is recorded in :attr:`Context.in_flight` with its deadline (for /healthz and
the in-flight metrics), and the caller stops waiting at that deadline (TemporaryError);
the thread itself comes back once the adapter's own deadline (SSH remote timeout,
libvirt keepalive, HTTP request timeout) ends the call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

from kvmfleet import metrics
from kvmfleet.domain.allocation import Resources
from kvmfleet.errors import TemporaryError
from kvmfleet.kube.api import KubeApi
from kvmfleet.reconcile.liveness import ANY, KUBE, Activity, InFlight
from kvmfleet.reconcile.startbackoff import StartFailures
from kvmfleet.settings import Settings
from kvmfleet.ssh.reachability import BannerChecks
from kvmfleet.ssh.session import SshOptions, SshPool
from kvmfleet.virt.connection import Keepalive, LibvirtPool, LibvirtTarget, open_connection

P = ParamSpec("P")
T = TypeVar("T")

CURRENT_HOST: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kvmfleet_current_host", default=None
)
"""The KvmHost the current task works on; its blocking calls use that host's threads."""


class CallTimeoutError(TemporaryError):
    """A blocking call did not return within its deadline (the host or API is hung)."""

    reason = "CallTimeout"


@dataclass
class Context:
    """One per operator process; handed to every handler through Kopf's memo."""

    settings: Settings
    kube: KubeApi
    executor: ThreadPoolExecutor = field(repr=False)
    ssh: SshPool = field(default_factory=SshPool, repr=False)
    libvirt: LibvirtPool = field(default_factory=LibvirtPool, repr=False)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict, repr=False)
    """One lock per object key: a timer and a handler never work on one object at once."""
    last_probe: dict[str, tuple[float, bool]] = field(default_factory=dict, repr=False)
    """Per KvmHost: (monotonic time of the last probe, whether it ended Ready)."""
    last_sync: dict[str, float] = field(default_factory=dict, repr=False)
    """Per VirtualNode uid: monotonic time of the last reconciliation."""
    reservations: dict[str, tuple[str, Resources, set[str]]] = field(
        default_factory=dict, repr=False
    )
    """Per VirtualNode uid: (host, requests, MACs) decided by this process (see vmplacement)."""
    released: set[str] = field(default_factory=set, repr=False)
    """VirtualNode uids whose removal finished while their object may still be listed: they
    no longer count in a host's allocation (see hostusage; the probe forgets them)."""
    banners: BannerChecks = field(default_factory=BannerChecks, repr=False)
    """SSH banner checks, one at a time per host, reused briefly (sshd's MaxStartups)."""
    in_flight: InFlight = field(default_factory=InFlight, repr=False)
    activity: Activity = field(default_factory=Activity, repr=False)
    kube_executor: ThreadPoolExecutor | None = field(default=None, repr=False)
    fleet: object | None = field(default=None, repr=False)
    """The watch-fed indexes of VirtualNodes and KvmHosts (see fleetindex), once bound."""
    inventories: dict[str, object] = field(default_factory=dict, repr=False)
    """Per KvmHost: its latest domain inventory (see inventory)."""
    secrets: dict[tuple[str, str, str], tuple[float, bytes]] = field(
        default_factory=dict, repr=False
    )
    """SSH key values by (namespace, name, key): (monotonic time read, value)."""
    last_full: dict[str, float] = field(default_factory=dict, repr=False)
    """Per VirtualNode uid: monotonic time of the last full pass (see vmsteady)."""
    pass_slots: dict[str, asyncio.Semaphore] = field(default_factory=dict, repr=False)
    """Per KvmHost: bounds the full passes running at once (settings.max_passes_per_host)."""
    host_executors: dict[str, ThreadPoolExecutor] = field(default_factory=dict, repr=False)
    stats_targets: dict[str, LibvirtTarget] = field(default_factory=dict, repr=False)
    """Per KvmHost: its libvirtd, read for per-VM statistics (see vmstats)."""
    start_failures: dict[str, StartFailures] = field(default_factory=dict, repr=False)
    """Per VirtualNode uid: its consecutive failed starts (see startbackoff)."""
    usage_epochs: dict[str, int] = field(default_factory=dict, repr=False)
    """Per KvmHost: how many allocation/domain publishes this process made (see hostusage);
    a probe that saw one happen while it listed drops its older numbers."""

    @classmethod
    def create(cls, settings: Settings) -> Context:
        """Build the context and its adapters from settings."""
        executor = ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix="kvmfleet-io"
        )
        options = SshOptions(
            connect_timeout=settings.ssh_connect_timeout,
            default_command_timeout=settings.ssh_command_timeout,
            kill_grace=settings.ssh_kill_grace,
            max_output_bytes=settings.ssh_max_output_bytes,
            max_channels_per_connection=settings.ssh_max_channels_per_connection,
            max_connections=settings.ssh_max_connections_per_host,
            queue_timeout=settings.ssh_queue_timeout,
        )
        keepalive = Keepalive(settings.libvirt_keepalive_interval, settings.libvirt_keepalive_count)
        kube = KubeApi.connect(settings.kube_request_timeout, settings.kube_workers)
        return cls(
            settings=settings,
            kube=kube,
            executor=executor,
            ssh=SshPool(options, observer=metrics.set_ssh_backlog),
            libvirt=LibvirtPool(
                functools.partial(open_connection, keepalive=keepalive, serialize=True),
                open_timeout=settings.libvirt_open_timeout,
            ),
        )

    def lock(self, key: str) -> asyncio.Lock:
        """The lock of one object (created on first use)."""
        return self.locks.setdefault(key, asyncio.Lock())

    # -- blocking calls --

    def _kube_pool(self) -> ThreadPoolExecutor:
        if self.kube_executor is None:
            self.kube_executor = ThreadPoolExecutor(
                max_workers=max(1, self.settings.kube_workers), thread_name_prefix="kvmfleet-kube"
            )
            metrics.track_in_flight(KUBE, self.in_flight.count, self.in_flight.oldest_age)
        return self.kube_executor

    def host_pool(self, host: str) -> ThreadPoolExecutor:
        """The threads of one host (created on first use)."""
        pool = self.host_executors.get(host)
        if pool is None:
            pool = ThreadPoolExecutor(
                max_workers=max(1, self.settings.host_workers),
                thread_name_prefix=f"kvmfleet-host-{host}"[:40],
            )
            self.host_executors[host] = pool
            metrics.track_in_flight(host, self.in_flight.count, self.in_flight.oldest_age)
        return pool

    def _route(self, fn: Callable[..., object]) -> tuple[str, ThreadPoolExecutor, float]:
        """Where a call runs, and its deadline."""
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, KubeApi):
            # The HTTP request timeout ends it; allow for the connect and one retry.
            return KUBE, self._kube_pool(), 2 * self.settings.kube_request_timeout + 5
        host = CURRENT_HOST.get()
        limit = self.settings.libvirt_call_timeout
        if host:
            return host, self.host_pool(host), limit
        return ANY, self.executor, limit

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking call (libvirt, SSH, Kubernetes client) off the event loop, on the
        threads of its host (or of the Kubernetes client), within its deadline."""
        where, pool, limit = self._route(fn)
        if where == KUBE:
            metrics.KUBE_REQUESTS.labels(_name(fn).rsplit(".", 1)[-1]).inc()
        call = functools.partial(fn, *args, **kwargs)
        return await self._run(where, pool, limit, _name(fn), call)

    async def on_host(
        self, host: str, limit: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a blocking call on ``host``'s threads with an explicit deadline (seconds)."""
        call = functools.partial(fn, *args, **kwargs)
        return await self._run(host, self.host_pool(host), limit, _name(fn), call)

    async def _run(
        self, where: str, pool: ThreadPoolExecutor, limit: float, what: str, call: Callable[[], T]
    ) -> T:
        loop = asyncio.get_running_loop()
        token = self.in_flight.start(where, what, limit)
        started: asyncio.Future[Any] = loop.create_future()

        def running() -> T:
            self.in_flight.running(token)
            loop.call_soon_threadsafe(_resolve, started)
            return call()

        future = loop.run_in_executor(pool, running)
        # The record ends when the thread comes back, not when the caller gives up.
        future.add_done_callback(lambda _f: self.in_flight.end(token))
        result: asyncio.Future[Any] = asyncio.shield(future)
        # The deadline counts from the moment a thread of its pool runs the call: waiting
        # behind the host's other calls is bounded by their deadlines.
        await asyncio.wait([started, result], return_when=asyncio.FIRST_COMPLETED)
        try:
            return cast(T, await asyncio.wait_for(result, timeout=limit))
        except TimeoutError:
            raise CallTimeoutError(
                f"{what} on {where or 'the operator'} did not return within {limit:g}s",
            ) from None

    async def close(self) -> None:
        """Release threads and connections (a hung host's threads are left behind)."""
        await self.blocking(self.ssh.close_all)
        await self.blocking(self.libvirt.close_all)
        for pool in self.host_executors.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if self.kube_executor is not None:
            self.kube_executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)


def _name(fn: Callable[..., object]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "call")


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
