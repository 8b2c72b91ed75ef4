"""The operator's shared context: settings, the thread pool for blocking calls, the adapters."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from kvmfleet.kube.api import KubeApi
from kvmfleet.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Context:
    """One per operator process; handed to every handler through Kopf's memo."""

    settings: Settings
    kube: KubeApi
    executor: ThreadPoolExecutor = field(repr=False)

    @classmethod
    def create(cls, settings: Settings) -> Context:
        """Build the context and its adapters from settings."""
        executor = ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix="kvmfleet-io"
        )
        return cls(settings=settings, kube=KubeApi.connect(), executor=executor)

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking call (libvirt, SSH, Kubernetes client) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Release threads and connections."""
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
