"""Placement: which KvmHost a VirtualNode without ``hostRef`` should run on, and why.

:func:`choose_host` is a pure function of a request and a snapshot of the hosts. Each host
goes through the filters in a fixed order (ready, maintenance, namespace, bridges,
storage, free space, capacity) and the first one it fails is recorded for it. Namespace,
bridges and storage are judged by :mod:`kvmfleet.domain.authorization` (the same function
every later pass uses): a bridge or storage the host's spec does not list is ``NotAllowed``,
one it lists but has not made ready yet is ``MissingBridge`` / ``MissingStorage``. Among the
hosts left, the one with the lowest load after placement wins (load = the larger of its CPU and
memory fractions of allocatable), ties broken by name: identical VMs fed back one by one
spread evenly. When none is left the decision carries a reason code and a message like
the Kubernetes scheduler's: ``"0/3 hosts available: 2 insufficient memory, 1 in
maintenance."``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

from kvmfleet.domain.allocation import Resources, allocatable, load
from kvmfleet.domain.authorization import HostGrant, authorize_use, summary
from kvmfleet.domain.specs import Overcommit, VirtualNodeSpec
from kvmfleet.domain.storage_urls import StorageURL


class HostRejection(StrEnum):
    """Why one host cannot take the VM (per host)."""

    NOT_READY = "NotReady"
    IN_MAINTENANCE = "InMaintenance"
    NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
    NOT_ALLOWED = "NotAllowed"
    MISSING_BRIDGE = "MissingBridge"
    MISSING_STORAGE = "MissingStorage"
    INSUFFICIENT_STORAGE = "InsufficientStorage"
    INSUFFICIENT_CPU = "InsufficientCPU"
    INSUFFICIENT_MEMORY = "InsufficientMemory"
    INSUFFICIENT_CPU_AND_MEMORY = "InsufficientCPUAndMemory"


class PlacementReason(StrEnum):
    """The reason code of a placement decision (for the Scheduled condition)."""

    SCHEDULED = "Scheduled"
    NO_READY_HOST = "NoReadyHost"
    NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
    NOT_ALLOWED = "NotAllowed"
    MISSING_BRIDGE = "MissingBridge"
    MISSING_STORAGE = "MissingStorage"
    INSUFFICIENT_STORAGE = "InsufficientStorage"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"


_PHRASES: dict[HostRejection, str] = {
    HostRejection.NOT_READY: "not ready",
    HostRejection.IN_MAINTENANCE: "in maintenance",
    HostRejection.NAMESPACE_NOT_ALLOWED: "namespace not allowed",
    HostRejection.NOT_ALLOWED: "bridge or storage not allowed",
    HostRejection.MISSING_BRIDGE: "missing bridge",
    HostRejection.MISSING_STORAGE: "missing storage",
    HostRejection.INSUFFICIENT_STORAGE: "storage pool nearly full",
    HostRejection.INSUFFICIENT_CPU: "insufficient cpu",
    HostRejection.INSUFFICIENT_MEMORY: "insufficient memory",
    HostRejection.INSUFFICIENT_CPU_AND_MEMORY: "insufficient cpu and memory",
}

# The filter order; a host is rejected by the first filter it fails. The overall reason
# of a failed placement is that of the host that got furthest.
_STAGE: dict[HostRejection, PlacementReason] = {
    HostRejection.NOT_READY: PlacementReason.NO_READY_HOST,
    HostRejection.IN_MAINTENANCE: PlacementReason.NO_READY_HOST,
    HostRejection.NAMESPACE_NOT_ALLOWED: PlacementReason.NAMESPACE_NOT_ALLOWED,
    HostRejection.NOT_ALLOWED: PlacementReason.NOT_ALLOWED,
    HostRejection.MISSING_BRIDGE: PlacementReason.MISSING_BRIDGE,
    HostRejection.MISSING_STORAGE: PlacementReason.MISSING_STORAGE,
    HostRejection.INSUFFICIENT_STORAGE: PlacementReason.INSUFFICIENT_STORAGE,
    HostRejection.INSUFFICIENT_CPU: PlacementReason.INSUFFICIENT_CAPACITY,
    HostRejection.INSUFFICIENT_MEMORY: PlacementReason.INSUFFICIENT_CAPACITY,
    HostRejection.INSUFFICIENT_CPU_AND_MEMORY: PlacementReason.INSUFFICIENT_CAPACITY,
}
_STAGE_ORDER = list(PlacementReason)
_EXPLAINED = frozenset({HostRejection.NOT_ALLOWED, HostRejection.INSUFFICIENT_STORAGE})
"""Rejections whose detail the message of a failed placement repeats (it says what to fix)."""


@dataclass(frozen=True)
class HostSnapshot:
    """What placement needs to know about one KvmHost, as observed now.

    ``bridges``: the names of the bridges that are ready. ``storage``: the host's storage
    pools in spec order (the first is where disks without ``storage`` go).
    ``allocated_*``: the sum of the requests of the VMs already placed on the host.
    ``grant``: what the host's spec allows (None: only ``allowed_namespaces`` is checked).
    ``available_bytes``: free bytes per storage pool URL, where the probe measured them.
    """

    name: str
    ready: bool
    cpus: int
    memory_mib: int
    maintenance: bool = False
    allowed_namespaces: frozenset[str] = frozenset()
    bridges: frozenset[str] = frozenset()
    storage: tuple[StorageURL, ...] = ()
    allocated_cpus: int = 0
    allocated_memory_mib: int = 0
    overcommit: Overcommit = field(default_factory=Overcommit)
    grant: HostGrant | None = None
    available_bytes: Mapping[StorageURL, int] = field(default_factory=dict)

    @property
    def allocatable(self) -> Resources:
        """Hardware times overcommit."""
        return allocatable(self.cpus, self.memory_mib, self.overcommit)

    @property
    def allocated(self) -> Resources:
        """What the VMs placed here already take."""
        return Resources(self.allocated_cpus, self.allocated_memory_mib)


@dataclass(frozen=True)
class PlacementRequest:
    """What a VirtualNode needs from a host.

    ``storage``: one entry per disk; None means "the host's first storage pool" (so the
    host needs at least one pool). A ``phy:`` device must be one of the host's ``phy:`` pools
    (the authorization). ``min_free_bytes``: a file pool with less free space than this (as
    last measured by the host probe) takes no new VM.
    """

    namespace: str
    cpus: int
    memory_mib: int
    bridges: frozenset[str] = frozenset()
    storage: tuple[StorageURL | None, ...] = ()
    min_free_bytes: int = 0

    @classmethod
    def for_spec(
        cls, spec: VirtualNodeSpec, namespace: str, min_free_bytes: int = 0
    ) -> PlacementRequest:
        """The request of a VirtualNode spec in ``namespace``."""
        return cls(
            namespace=namespace,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            bridges=spec.bridges,
            storage=tuple(disk.storage for disk in spec.disks),
            min_free_bytes=min_free_bytes,
        )

    @property
    def resources(self) -> Resources:
        """The CPUs and memory asked for."""
        return Resources(self.cpus, self.memory_mib)


@dataclass(frozen=True)
class Rejected:
    """Why one host was rejected: a code and a human detail."""

    code: HostRejection
    detail: str


@dataclass(frozen=True)
class PlacementDecision:
    """The outcome: ``host`` (None if nowhere), a reason code, a message, per-host reasons."""

    host: str | None
    reason: PlacementReason
    message: str
    rejected: Mapping[str, Rejected] = field(default_factory=dict)
    load_after: Fraction | None = None


def check_host(request: PlacementRequest, host: HostSnapshot) -> Rejected | None:
    """Why ``host`` cannot take the request, or None if it can (also for a pinned hostRef)."""
    if not host.ready:
        return Rejected(HostRejection.NOT_READY, "host is not Ready")
    if host.maintenance:
        return Rejected(HostRejection.IN_MAINTENANCE, "host is in maintenance")
    if host.allowed_namespaces and request.namespace not in host.allowed_namespaces:
        return Rejected(
            HostRejection.NAMESPACE_NOT_ALLOWED,
            f"namespace {request.namespace} is not in the host's allowedNamespaces",
        )
    if host.grant is not None:
        refusals = authorize_use(
            request.namespace,
            ((f"bridge {b}", b) for b in sorted(request.bridges)),
            ((f"disk {i}", url) for i, url in enumerate(request.storage)),
            host.grant,
        )
        if refusals:
            return Rejected(HostRejection.NOT_ALLOWED, summary(refusals))
    missing_bridges = sorted(request.bridges - host.bridges)
    if missing_bridges:
        return Rejected(
            HostRejection.MISSING_BRIDGE, f"no ready bridge {', '.join(missing_bridges)}"
        )
    missing_storage = _missing_storage(request.storage, host.storage)
    if missing_storage:
        return Rejected(HostRejection.MISSING_STORAGE, f"no storage {', '.join(missing_storage)}")
    low = _low_storage(request, host)
    if low:
        return Rejected(HostRejection.INSUFFICIENT_STORAGE, "; ".join(low))
    return _check_capacity(request.resources, host)


def _low_storage(request: PlacementRequest, host: HostSnapshot) -> list[str]:
    """The file pools the VM would use that have less than ``min_free_bytes`` free."""
    if request.min_free_bytes <= 0:
        return []
    default = next((url for url in host.storage if url.holds_files), None)
    low: list[str] = []
    for wanted in request.storage:
        url = wanted if wanted is not None else default
        if url is None or not url.holds_files:
            continue
        free = host.available_bytes.get(url)
        text = (
            f"storage pool {url} has {free} bytes free, below the minimum of "
            f"{request.min_free_bytes} (setting storage_min_free_bytes)"
        )
        if free is not None and free < request.min_free_bytes and text not in low:
            low.append(text)
    return low


def _missing_storage(
    wanted: Iterable[StorageURL | None], available: Sequence[StorageURL]
) -> list[str]:
    missing: list[str] = []
    for url in wanted:
        if url is None and not available:
            text = "pool (disks without storage need one)"
        elif url is not None and url not in available:
            text = str(url)
        else:
            continue
        if text not in missing:
            missing.append(text)
    return missing


def _check_capacity(request: Resources, host: HostSnapshot) -> Rejected | None:
    free = host.allocatable - host.allocated
    cpu_short = request.cpus > free.cpus
    memory_short = request.memory_mib > free.memory_mib
    if not (cpu_short or memory_short):
        return None
    cpu = f"{request.cpus} cpus requested, {max(free.cpus, 0)} free of {host.allocatable.cpus}"
    memory = (
        f"{request.memory_mib} MiB requested, {max(free.memory_mib, 0)} MiB free of "
        f"{host.allocatable.memory_mib} MiB"
    )
    if cpu_short and memory_short:
        return Rejected(HostRejection.INSUFFICIENT_CPU_AND_MEMORY, f"{cpu}; {memory}")
    if cpu_short:
        return Rejected(HostRejection.INSUFFICIENT_CPU, cpu)
    return Rejected(HostRejection.INSUFFICIENT_MEMORY, memory)


def choose_host(request: PlacementRequest, hosts: Sequence[HostSnapshot]) -> PlacementDecision:
    """Choose the host for ``request``; see the module docstring for the rules."""
    rejected: dict[str, Rejected] = {}
    candidates: list[tuple[Fraction, str]] = []
    for host in hosts:
        rejection = check_host(request, host)
        if rejection is not None:
            rejected[host.name] = rejection
            continue
        after = host.allocated + request.resources
        candidates.append((load(after, host.allocatable), host.name))
    summary = _summary(len(hosts), len(candidates), rejected.values())
    if candidates:
        best_load, best = min(candidates)
        return PlacementDecision(
            host=best,
            reason=PlacementReason.SCHEDULED,
            message=f"placed on {best} ({_percent(best_load)} loaded after placement); {summary}",
            rejected=rejected,
            load_after=best_load,
        )
    if not hosts:
        return PlacementDecision(
            host=None,
            reason=PlacementReason.NO_READY_HOST,
            message="0/0 hosts available: no KvmHost exists.",
        )
    name, furthest = max(
        rejected.items(), key=lambda item: _STAGE_ORDER.index(_STAGE[item[1].code])
    )
    if furthest.code in _EXPLAINED:
        summary = f"{summary} {name}: {furthest.detail}"
    return PlacementDecision(
        host=None, reason=_STAGE[furthest.code], message=summary, rejected=rejected
    )


def _summary(total: int, available: int, rejections: Iterable[Rejected]) -> str:
    counts = Counter(rejection.code for rejection in rejections)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], _PHRASES[item[0]]))
    parts = [f"{count} {_PHRASES[code]}" for code, count in ordered]
    text = f"{available}/{total} hosts available"
    return f"{text}: {', '.join(parts)}." if parts else f"{text}."


def _percent(value: Fraction) -> str:
    return f"{round(float(value) * 100)}%"
