"""The operator's shared context: settings, the thread pool for blocking calls, the adapters."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from kvmfleet.domain.allocation import Resources
from kvmfleet.kube.api import KubeApi
from kvmfleet.settings import Settings
from kvmfleet.ssh.session import SshOptions, SshPool
from kvmfleet.virt.connection import LibvirtPool

P = ParamSpec("P")
T = TypeVar("T")


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

    @classmethod
    def create(cls, settings: Settings) -> Context:
        """Build the context and its adapters from settings."""
        executor = ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix="kvmfleet-io"
        )
        options = SshOptions(
            connect_timeout=settings.ssh_connect_timeout,
            default_command_timeout=settings.ssh_command_timeout,
        )
        return cls(
            settings=settings, kube=KubeApi.connect(), executor=executor, ssh=SshPool(options)
        )

    def lock(self, key: str) -> asyncio.Lock:
        """The lock of one object (created on first use)."""
        return self.locks.setdefault(key, asyncio.Lock())

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking call (libvirt, SSH, Kubernetes client) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Release threads and connections."""
        await self.blocking(self.ssh.close_all)
        await self.blocking(self.libvirt.close_all)
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
