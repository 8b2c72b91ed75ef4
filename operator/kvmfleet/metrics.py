"""Every Prometheus metric kvmfleet exports, declared in one place (exported on :8080/metrics).

Names follow the Prometheus conventions (`kvmfleet_` prefix, base units, `_total` for
counters, `_seconds` for durations, `_bytes` for sizes) and KubeVirt's names where a
dashboard author would look for them (`kubevirt_vmi_cpu_usage_seconds_total` is
`kvmfleet_vm_cpu_usage_seconds_total` here). The table of every metric, its labels and
meaning is in docs/operations.md ("Metrics"); tests/unit/test_metrics.py checks that it
lists exactly what this module registers, and the operation names below.

Series of an object leave with it: :func:`forget` (a VirtualNode or VmMaster) and
:func:`forget_host` (a KvmHost) remove every label set that names it, so an alert on a
deleted object resolves.

Per-VM usage (CPU, memory, block, network) is read by the reconcile layer with one bulk
libvirt call per host per interval (kvmfleet.reconcile.vmstats) and handed to
:data:`VM_STATS`; a scrape only reads that cache and never waits for a host.
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from kvmfleet import __version__
from kvmfleet.domain.vmstats import DomainStats

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
with contextlib.suppress(ValueError):  # the GC collector is process-wide; export its figures
    REGISTRY.register(GC_COLLECTOR)

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_PROVISIONING_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)

OPERATIONS = (
    "create-disk",
    "define",
    "redefine",
    "start",
    "shutdown",
    "destroy",
    "reset",
    "undefine",
)
"""Values of the `operation` label of kvmfleet_vm_operations_total and
kvmfleet_vm_operation_duration_seconds (disk creation is counted, not timed)."""

_LABELS: dict[str, tuple[str, ...]] = {}
"""Label names of every labelled metric declared here, by metric name (for removal)."""


def _labelled(metric: MetricWrapperBase, labels: Sequence[str]) -> None:
    _LABELS[metric._name] = tuple(labels)


def _counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
    metric = Counter(name, doc, labels, registry=REGISTRY)
    _labelled(metric, labels)
    return metric


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    metric = Gauge(name, doc, labels, registry=REGISTRY)
    _labelled(metric, labels)
    return metric


def _histogram(
    name: str, doc: str, labels: Sequence[str], buckets: Sequence[float] = _DURATION_BUCKETS
) -> Histogram:
    metric = Histogram(name, doc, labels, buckets=buckets, registry=REGISTRY)
    _labelled(metric, labels)
    return metric


BUILD_INFO = _gauge(
    "kvmfleet_build_info", "Always 1: the operator's version and Python.", ["version", "python"]
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

RECONCILE_TOTAL = _counter(
    "kvmfleet_reconcile_total",
    "Reconciliations that did something, by kind and result.",
    ["kind", "result"],
)
RECONCILE_DURATION = _histogram(
    "kvmfleet_reconcile_duration_seconds",
    "Time spent in one reconciliation that did something (timer ticks with nothing due are "
    "not counted).",
    ["kind"],
)
RESOURCE_READY = _gauge(
    "kvmfleet_resource_ready",
    "1 when the object's Ready condition is True.",
    ["kind", "namespace", "name"],
)
HOST_UP = _gauge("kvmfleet_host_up", "1 when the host answered the last probe.", ["host"])
HOST_INFO = _gauge(
    "kvmfleet_host_info",
    "Always 1: the host's libvirt and QEMU versions and whether guests run with KVM.",
    ["host", "libvirt", "qemu", "virtualization"],
)
HOST_PROBE_DURATION = _histogram(
    "kvmfleet_host_probe_duration_seconds", "Duration of one host probe.", ["host"]
)
HOST_CPUS = _gauge(
    "kvmfleet_host_cpus", "Host CPUs by kind (capacity, allocatable, allocated).", ["host", "kind"]
)
HOST_MEMORY = _gauge(
    "kvmfleet_host_memory_bytes",
    "Host memory by kind (capacity, allocatable, allocated).",
    ["host", "kind"],
)
HOST_DOMAINS = _gauge("kvmfleet_host_domains", "libvirt domains defined on the host.", ["host"])
STORAGE_POOL_CAPACITY = _gauge(
    "kvmfleet_storage_pool_capacity_bytes", "Size of a host's storage pool.", ["host", "pool"]
)
STORAGE_POOL_AVAILABLE = _gauge(
    "kvmfleet_storage_pool_available_bytes",
    "Free space of a host's storage pool.",
    ["host", "pool"],
)
VM_INFO = _gauge(
    "kvmfleet_vm_info",
    "Always 1: the KvmHost a VirtualNode is placed on, and its run strategy.",
    ["namespace", "name", "host", "run_strategy"],
)
VM_POWER_STATE = _gauge(
    "kvmfleet_vm_power_state",
    "1 for the VM's observed power state.",
    ["namespace", "name", "state"],
)
VM_PAUSED = _gauge(
    "kvmfleet_vm_paused",
    "1 while the VM is paused, with libvirt's reason (IOError, NoSpace, User ...).",
    ["namespace", "name", "reason"],
)
VM_PROVISIONING = _histogram(
    "kvmfleet_vm_provisioning_duration_seconds",
    "Time from a VirtualNode's creation to its first Ready=True.",
    [],
    buckets=_PROVISIONING_BUCKETS,
)
VM_FULL_PASSES = _counter(
    "kvmfleet_vm_full_passes_total",
    "Full VirtualNode passes (placement, disks, definition, power).",
    [],
)
KUBE_REQUESTS = _counter(
    "kvmfleet_kube_requests_total",
    "Kubernetes API requests made by the use-cases, by adapter call.",
    ["call"],
)
VM_STEADY_CHECKS = _counter(
    "kvmfleet_vm_steady_checks_total",
    "Syncs of an unchanged VM answered by its host's inventory alone.",
    [],
)
VM_FULL_PASS_CAUSES = _counter(
    "kvmfleet_vm_sync_full_causes_total", "Syncs that needed a full pass, by cause.", ["cause"]
)
HOST_INVENTORY_READS = _counter(
    "kvmfleet_host_inventory_reads_total",
    "Batched domain inventories read from a host.",
    ["host"],
)
VM_OPERATIONS = _counter(
    "kvmfleet_vm_operations_total", "VM operations by kind and result.", ["operation", "result"]
)
VM_OPERATION_DURATION = _histogram(
    "kvmfleet_vm_operation_duration_seconds", "Duration of VM operations.", ["operation"]
)
MIGRATIONS = _counter(
    "kvmfleet_migrations_total",
    "Moves of a VM to another host, by kind (Live, Offline) and result.",
    ["kind", "result"],
)
MIGRATION_DURATION = _histogram(
    "kvmfleet_migration_duration_seconds",
    "Duration of a successful move of a VM to another host.",
    ["kind"],
)
MIGRATION_DATA_REMAINING = _gauge(
    "kvmfleet_migration_data_remaining_bytes",
    "Memory left to copy of a running live migration (0 when none runs).",
    ["namespace", "name"],
)
SSH_COMMANDS = _counter(
    "kvmfleet_ssh_commands_total", "Remote commands run over SSH.", ["host", "result"]
)
SSH_WAITING = _gauge(
    "kvmfleet_ssh_commands_waiting", "Commands queued for a free SSH channel.", ["target"]
)
SSH_CHANNELS = _gauge(
    "kvmfleet_ssh_channels_in_use", "SSH channels (commands) open to the host.", ["target"]
)
SSH_CONNECTIONS = _gauge(
    "kvmfleet_ssh_connections", "SSH connections open to the host for commands.", ["target"]
)
IN_FLIGHT = _gauge(
    "kvmfleet_operations_in_flight",
    "Blocking calls in flight (queued or running), per host.",
    ["where"],
)
OLDEST_AGE = _gauge(
    "kvmfleet_operation_oldest_age_seconds",
    "Age of the oldest blocking call in flight, per host.",
    ["where"],
)
LEADER = _gauge("kvmfleet_leader", "1 while this process is the active operator.")
KOPF_RESTARTS = _counter(
    "kvmfleet_kopf_restarts_total",
    "Times Kopf stopped on an error (a watch refused, e.g. a CRD not served yet after an API "
    "server restart) and the operator started again in place (same process ID).",
    [],
)
VM_STATS_DURATION = _gauge(
    "kvmfleet_vm_stats_collection_duration_seconds",
    "Duration of the last bulk domain statistics call to the host.",
    ["host"],
)
VM_STATS_ERRORS = _counter(
    "kvmfleet_vm_stats_collection_errors_total",
    "Bulk domain statistics calls to the host that failed.",
    ["host"],
)

POWER_STATES = ("On", "Off", "Paused", "Crashed", "Unknown")


# -- removal --


def _series(metric: MetricWrapperBase) -> set[tuple[str, ...]]:
    """The label value tuples the metric currently has."""
    names = _LABELS[metric._name]
    found = set()
    for family in metric.collect():
        for sample in family.samples:
            if all(n in sample.labels for n in names):
                found.add(tuple(sample.labels[n] for n in names))
    return found


def _remove_where(metric: MetricWrapperBase, **match: str) -> None:
    """Remove every series of ``metric`` whose labels include ``match``."""
    names = _LABELS[metric._name]
    for values in _series(metric):
        labels = dict(zip(names, values, strict=True))
        if all(labels.get(k) == v for k, v in match.items()):
            with contextlib.suppress(KeyError):
                metric.remove(*values)


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop every series of a deleted object (VirtualNode, VmMaster or KvmHost)."""
    _remove_where(RESOURCE_READY, kind=kind, namespace=namespace, name=name)
    TERMINATING.forget(kind, namespace, name)
    if kind == "VirtualNode":
        for metric in (VM_POWER_STATE, VM_PAUSED, VM_INFO, MIGRATION_DATA_REMAINING):
            _remove_where(metric, namespace=namespace, name=name)
        VM_STATS.forget_vm(namespace, name)
        PROVISIONING.forget(namespace, name)


def forget_host(host: str, target: str | None = None) -> None:
    """Drop every series of a deleted KvmHost (and of its SSH target ``address:port``)."""
    forget("KvmHost", "", host)
    for metric in (
        HOST_UP,
        HOST_INFO,
        HOST_PROBE_DURATION,
        HOST_CPUS,
        HOST_MEMORY,
        HOST_DOMAINS,
        STORAGE_POOL_CAPACITY,
        STORAGE_POOL_AVAILABLE,
        SSH_COMMANDS,
        HOST_INVENTORY_READS,
        VM_STATS_DURATION,
        VM_STATS_ERRORS,
    ):
        _remove_where(metric, host=host)
    for metric in (IN_FLIGHT, OLDEST_AGE):
        _remove_where(metric, where=host)
    if target:
        for metric in (SSH_WAITING, SSH_CHANNELS, SSH_CONNECTIONS):
            _remove_where(metric, target=target)
    VM_STATS.forget_host(host)


# -- setters --


def set_ssh_backlog(target: str, waiting: int, channels: int, connections: int) -> None:
    """Record an SSH target's queue, channels in use and connections."""
    SSH_WAITING.labels(target).set(waiting)
    SSH_CHANNELS.labels(target).set(channels)
    SSH_CONNECTIONS.labels(target).set(connections)


def track_in_flight(
    where: str, count: Callable[[str], int], oldest_age: Callable[[str], float]
) -> None:
    """Export the in-flight calls of ``where``, read when scraped."""
    IN_FLIGHT.labels(where).set_function(lambda: count(where))
    OLDEST_AGE.labels(where).set_function(lambda: oldest_age(where))


def set_ready(kind: str, namespace: str, name: str, ready: bool) -> None:
    """Record whether an object is Ready."""
    RESOURCE_READY.labels(kind, namespace, name).set(1 if ready else 0)


def set_power_state(namespace: str, name: str, state: str) -> None:
    """Record a VM's observed power state (one-hot over POWER_STATES)."""
    for candidate in POWER_STATES:
        VM_POWER_STATE.labels(namespace, name, candidate).set(1 if candidate == state else 0)


def set_paused(namespace: str, name: str, reason: str | None) -> None:
    """Record why a VM is paused (None: it is not paused; the series goes)."""
    for ns, vm, old in _series(VM_PAUSED):
        if (ns, vm) == (namespace, name) and old != reason:
            with contextlib.suppress(KeyError):
                VM_PAUSED.remove(ns, vm, old)
    if reason is not None:
        VM_PAUSED.labels(namespace, name, reason).set(1)


def set_vm_info(namespace: str, name: str, host: str, run_strategy: str) -> None:
    """Record where a VM is placed (one series per VM: a new host replaces the old one)."""
    for values in _series(VM_INFO):
        if values[:2] == (namespace, name) and values != (namespace, name, host, run_strategy):
            with contextlib.suppress(KeyError):
                VM_INFO.remove(*values)
    VM_INFO.labels(namespace, name, host, run_strategy).set(1)
    VM_STATS.place(namespace, name, host)


def set_host_info(host: str, libvirt: str, qemu: str, virtualization: str) -> None:
    """Record a host's libvirt and QEMU versions and virtualization (one series per host)."""
    _remove_where(HOST_INFO, host=host)
    HOST_INFO.labels(host, libvirt, qemu, virtualization).set(1)


def set_storage_pool(host: str, pool: str, capacity: int | None, available: int | None) -> None:
    """Record a storage pool's size and free space (unknown values drop the series)."""
    for gauge, value in ((STORAGE_POOL_CAPACITY, capacity), (STORAGE_POOL_AVAILABLE, available)):
        if value is None:
            with contextlib.suppress(KeyError):
                gauge.remove(host, pool)
        else:
            gauge.labels(host, pool).set(value)


def forget_storage_pools(host: str) -> None:
    """Drop every storage pool series of a host (its pools changed)."""
    for gauge in (STORAGE_POOL_CAPACITY, STORAGE_POOL_AVAILABLE):
        _remove_where(gauge, host=host)


@contextlib.contextmanager
def operation(name: str) -> Iterator[None]:
    """Count and time one VM operation (``name`` is one of OPERATIONS)."""
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        VM_OPERATIONS.labels(name, "error").inc()
        raise
    VM_OPERATION_DURATION.labels(name).observe(time.monotonic() - started)
    VM_OPERATIONS.labels(name, "success").inc()


def count_operation(name: str, result: str = "success") -> None:
    """Count a VM operation that is not timed (disk creation)."""
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}")
    VM_OPERATIONS.labels(name, result).inc()


# -- provisioning latency --


class _Provisioning:
    """VirtualNodes seen before their domain was first defined, until their first Ready.

    A VM is timed when this process saw it new (no ``status.domainUUID``) and later writes
    its first Ready=True: creation to first Ready. A VM whose domain was defined before the
    operator (re)started is not timed, and a VM that becomes Ready again later is not timed
    again.
    """

    def __init__(self) -> None:
        self._new: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def observe(
        self, namespace: str, name: str, *, defined: bool, ready: bool, age: float | None
    ) -> None:
        """One pass over a VM: ``defined`` before it, ``ready`` after it, ``age`` since creation."""
        key = (namespace, name)
        with self._lock:
            if not defined:
                self._new.add(key)
            if not ready or key not in self._new:
                return
            self._new.discard(key)
        if age is not None and age >= 0:
            VM_PROVISIONING.observe(age)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._new.discard((namespace, name))


PROVISIONING = _Provisioning()


# -- objects being deleted --


class _Terminating(Collector):
    """kvmfleet_object_terminating_seconds: how long an object has been deleted for (its
    finalizer still holds it), computed when scraped from its deletionTimestamp."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def set(self, kind: str, namespace: str, name: str, deleted_at: float) -> None:
        with self._lock:
            self._since[(kind, namespace, name)] = deleted_at

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._since.pop((kind, namespace, name), None)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "kvmfleet_object_terminating_seconds",
            "Seconds since the object was deleted while its finalizer still holds it.",
            labels=["kind", "namespace", "name"],
        )

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        now = time.time()
        with self._lock:
            items = list(self._since.items())
        for (kind, namespace, name), since in items:
            family.add_metric([kind, namespace, name], max(0.0, now - since))
        return [family]


TERMINATING = _Terminating()
REGISTRY.register(TERMINATING)


# -- per-VM usage from libvirt's bulk statistics --


@dataclass(frozen=True)
class _HostStats:
    at: float
    domains: tuple[DomainStats, ...]


_VM_COUNTERS: tuple[tuple[str, str, Callable[[DomainStats], float | None]], ...] = (
    (
        "kvmfleet_vm_cpu_usage_seconds_total",
        "CPU time the VM used (all vCPUs and QEMU's own threads).",
        lambda d: d.cpu_seconds,
    ),
    (
        "kvmfleet_vm_cpu_user_usage_seconds_total",
        "CPU time the VM's QEMU process used in user mode.",
        lambda d: d.cpu_user_seconds,
    ),
    (
        "kvmfleet_vm_cpu_system_usage_seconds_total",
        "CPU time the VM's QEMU process used in kernel mode.",
        lambda d: d.cpu_system_seconds,
    ),
)
_VM_GAUGES: tuple[tuple[str, str, Callable[[DomainStats], float | None]], ...] = (
    (
        "kvmfleet_vm_memory_domain_bytes",
        "Memory the guest has now (the balloon's current size).",
        lambda d: d.memory_domain_bytes,
    ),
    (
        "kvmfleet_vm_memory_resident_bytes",
        "Resident memory of the VM's QEMU process on the host.",
        lambda d: d.memory_resident_bytes,
    ),
    (
        "kvmfleet_vm_memory_available_bytes",
        "Memory the guest sees as usable (needs the guest's balloon driver).",
        lambda d: d.memory_available_bytes,
    ),
    (
        "kvmfleet_vm_memory_unused_bytes",
        "Memory the guest leaves unused (needs the guest's balloon driver).",
        lambda d: d.memory_unused_bytes,
    ),
)
_BLOCK_COUNTERS = (
    (
        "kvmfleet_vm_storage_read_traffic_bytes_total",
        "Bytes the VM read from the disk.",
        "read_bytes",
    ),
    (
        "kvmfleet_vm_storage_write_traffic_bytes_total",
        "Bytes the VM wrote to the disk.",
        "write_bytes",
    ),
    ("kvmfleet_vm_storage_iops_read_total", "Read requests to the disk.", "read_requests"),
    ("kvmfleet_vm_storage_iops_write_total", "Write requests to the disk.", "write_requests"),
)
_NET_COUNTERS = (
    (
        "kvmfleet_vm_network_receive_bytes_total",
        "Bytes the VM received on the interface.",
        "receive_bytes",
    ),
    (
        "kvmfleet_vm_network_transmit_bytes_total",
        "Bytes the VM sent on the interface.",
        "transmit_bytes",
    ),
    (
        "kvmfleet_vm_network_receive_packets_total",
        "Packets the VM received on the interface.",
        "receive_packets",
    ),
    (
        "kvmfleet_vm_network_transmit_packets_total",
        "Packets the VM sent on the interface.",
        "transmit_packets",
    ),
)


_Family = CounterMetricFamily | GaugeMetricFamily


class VmStats(Collector):
    """The last bulk statistics of every host, exported per VirtualNode when scraped.

    Only domains of VirtualNodes placed on that host (:func:`set_vm_info`) are exported,
    labelled with the VirtualNode's namespace and name; other domains of the host are not
    kvmfleet's. A host's figures older than ``max_age`` seconds (its host unreachable) are
    not exported, so a VM's usage series end instead of showing a frozen value.
    """

    def __init__(self, max_age: float = 180.0) -> None:
        self.max_age = max_age
        self._hosts: dict[str, _HostStats] = {}
        self._placed: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.clock: Callable[[], float] = time.monotonic

    def update(self, host: str, domains: Iterable[DomainStats]) -> None:
        """The host's statistics were just read."""
        with self._lock:
            self._hosts[host] = _HostStats(self.clock(), tuple(domains))

    def place(self, namespace: str, name: str, host: str) -> None:
        """The VirtualNode's domain is ``name`` on ``host``."""
        with self._lock:
            self._placed[(namespace, name)] = host

    def forget_vm(self, namespace: str, name: str) -> None:
        with self._lock:
            self._placed.pop((namespace, name), None)

    def forget_host(self, host: str) -> None:
        with self._lock:
            self._hosts.pop(host, None)

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def _families(self) -> dict[str, _Family]:
        vm = ["namespace", "name"]
        families: dict[str, _Family] = {}
        for name, doc, _ in _VM_COUNTERS:
            families[name] = CounterMetricFamily(name, doc, labels=vm)
        for name, doc, _ in _VM_GAUGES:
            families[name] = GaugeMetricFamily(name, doc, labels=vm)
        for name, doc, _ in _BLOCK_COUNTERS:
            families[name] = CounterMetricFamily(name, doc, labels=[*vm, "drive"])
        for name, doc, _ in _NET_COUNTERS:
            families[name] = CounterMetricFamily(name, doc, labels=[*vm, "interface"])
        return families

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        now = self.clock()
        with self._lock:
            placed = dict(self._placed)
            hosts = dict(self._hosts)
        vms = {(host, name): namespace for (namespace, name), host in placed.items()}
        for host, stats in hosts.items():
            if now - stats.at > self.max_age:
                continue
            for domain in stats.domains:
                namespace = vms.get((host, domain.name))
                if namespace is None:
                    continue
                self._add(families, [namespace, domain.name], domain)
        return list(families.values())

    @staticmethod
    def _add(families: dict[str, _Family], vm: list[str], domain: DomainStats) -> None:
        for name, _, get in _VM_COUNTERS + _VM_GAUGES:
            value = get(domain)
            if value is not None:
                families[name].add_metric(vm, value)
        for name, _, field in _BLOCK_COUNTERS:
            for block in domain.blocks:
                value = getattr(block, field)
                if value is not None:
                    families[name].add_metric([*vm, block.drive], value)
        for name, _, field in _NET_COUNTERS:
            for nic in domain.interfaces:
                value = getattr(nic, field)
                if value is not None:
                    families[name].add_metric([*vm, nic.interface], value)


VM_STATS = VmStats()
REGISTRY.register(VM_STATS)


_serving: set[tuple[int, str]] = set()


def serve(port: int, address: str) -> None:
    """Start the /metrics HTTP endpoint in a background thread (once per port)."""
    if port and (port, address) not in _serving:
        start_http_server(port, addr=address, registry=REGISTRY)
        _serving.add((port, address))
