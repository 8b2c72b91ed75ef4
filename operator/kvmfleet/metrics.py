"""Every Prometheus metric kvmfleet exports, declared and documented in one place.

Names follow the Prometheus conventions (`kvmfleet_` prefix, base units, `_total` for
counters, `_seconds` for durations, `_bytes` for sizes). Exported on :8080/metrics.

| metric | type | labels | meaning |
|---|---|---|---|
| kvmfleet_reconcile_total | counter | kind, result | reconciliations, by outcome (success, temporary, permanent) |
| kvmfleet_reconcile_duration_seconds | histogram | kind | time spent in one reconciliation |
| kvmfleet_resource_ready | gauge | kind, namespace, name | 1 when the object's Ready condition is True, else 0 |
| kvmfleet_host_up | gauge | host | 1 when the host answered the last probe over SSH |
| kvmfleet_host_probe_duration_seconds | histogram | host | duration of one host probe |
| kvmfleet_host_cpus | gauge | host, kind | CPUs: kind=capacity, allocatable (with overcommit) or allocated |
| kvmfleet_host_memory_bytes | gauge | host, kind | memory: capacity, allocatable or allocated |
| kvmfleet_host_domains | gauge | host | libvirt domains defined on the host |
| kvmfleet_storage_pool_capacity_bytes | gauge | host, pool | size of a storage pool (file systems and block devices; as measured by the probe) |
| kvmfleet_storage_pool_available_bytes | gauge | host, pool | free space of a storage pool (exact, not rounded like status) |
| kvmfleet_vm_power_state | gauge | namespace, name, state | 1 for the VM's observed power state |
| kvmfleet_vm_operations_total | counter | operation, result | create, start, stop, reboot, reset, delete, migrate... |
| kvmfleet_vm_operation_duration_seconds | histogram | operation | duration of such operations |
| kvmfleet_migrations_total | counter | kind, result | moves of a VM to another host: kind Live or Offline; result succeeded, failed, aborted (deadline), refused (pre-flight), recovered (after an interruption) |
| kvmfleet_migration_duration_seconds | histogram | kind | duration of a successful move |
| kvmfleet_migration_data_remaining_bytes | gauge | namespace, name | memory left to copy of a running live migration (0 when none runs) |
| kvmfleet_ssh_commands_total | counter | host, result | remote commands run over SSH |
| kvmfleet_ssh_commands_waiting | gauge | target | commands queued for a free SSH channel (the backlog) |
| kvmfleet_ssh_channels_in_use | gauge | target | SSH channels (commands) open to the host |
| kvmfleet_ssh_connections | gauge | target | SSH connections open to the host for commands |
| kvmfleet_operations_in_flight | gauge | where | blocking calls in flight (queued or running) per host, `kubernetes`, or `` |
| kvmfleet_operation_oldest_age_seconds | gauge | where | age of the oldest of them |
| kvmfleet_leader | gauge | | 1 while this process holds the leader Lease (or runs without election) |

`target` is the host's SSH address:port; `where` is a KvmHost name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

RECONCILE_TOTAL = Counter(
    "kvmfleet_reconcile_total",
    "Reconciliations by kind and result.",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "kvmfleet_reconcile_duration_seconds",
    "Time spent in one reconciliation.",
    ["kind"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
RESOURCE_READY = Gauge(
    "kvmfleet_resource_ready",
    "1 when the object's Ready condition is True.",
    ["kind", "namespace", "name"],
    registry=REGISTRY,
)
HOST_UP = Gauge(
    "kvmfleet_host_up",
    "1 when the host answered the last probe.",
    ["host"],
    registry=REGISTRY,
)
HOST_PROBE_DURATION = Histogram(
    "kvmfleet_host_probe_duration_seconds",
    "Duration of one host probe.",
    ["host"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
HOST_CPUS = Gauge(
    "kvmfleet_host_cpus",
    "Host CPUs by kind (capacity, allocatable, allocated).",
    ["host", "kind"],
    registry=REGISTRY,
)
HOST_MEMORY = Gauge(
    "kvmfleet_host_memory_bytes",
    "Host memory by kind (capacity, allocatable, allocated).",
    ["host", "kind"],
    registry=REGISTRY,
)
HOST_DOMAINS = Gauge(
    "kvmfleet_host_domains",
    "libvirt domains defined on the host.",
    ["host"],
    registry=REGISTRY,
)
STORAGE_POOL_CAPACITY = Gauge(
    "kvmfleet_storage_pool_capacity_bytes",
    "Size of a host's storage pool.",
    ["host", "pool"],
    registry=REGISTRY,
)
STORAGE_POOL_AVAILABLE = Gauge(
    "kvmfleet_storage_pool_available_bytes",
    "Free space of a host's storage pool.",
    ["host", "pool"],
    registry=REGISTRY,
)
VM_POWER_STATE = Gauge(
    "kvmfleet_vm_power_state",
    "1 for the VM's observed power state.",
    ["namespace", "name", "state"],
    registry=REGISTRY,
)
VM_OPERATIONS = Counter(
    "kvmfleet_vm_operations_total",
    "VM operations by kind and result.",
    ["operation", "result"],
    registry=REGISTRY,
)
VM_OPERATION_DURATION = Histogram(
    "kvmfleet_vm_operation_duration_seconds",
    "Duration of VM operations.",
    ["operation"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
MIGRATIONS = Counter(
    "kvmfleet_migrations_total",
    "Moves of a VM to another host, by kind (Live, Offline) and result.",
    ["kind", "result"],
    registry=REGISTRY,
)
MIGRATION_DURATION = Histogram(
    "kvmfleet_migration_duration_seconds",
    "Duration of a successful move of a VM to another host.",
    ["kind"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
MIGRATION_DATA_REMAINING = Gauge(
    "kvmfleet_migration_data_remaining_bytes",
    "Memory left to copy of a running live migration (0 when none runs).",
    ["namespace", "name"],
    registry=REGISTRY,
)
SSH_COMMANDS = Counter(
    "kvmfleet_ssh_commands_total",
    "Remote commands run over SSH.",
    ["host", "result"],
    registry=REGISTRY,
)

SSH_WAITING = Gauge(
    "kvmfleet_ssh_commands_waiting",
    "Commands queued for a free SSH channel.",
    ["target"],
    registry=REGISTRY,
)
SSH_CHANNELS = Gauge(
    "kvmfleet_ssh_channels_in_use",
    "SSH channels (commands) open to the host.",
    ["target"],
    registry=REGISTRY,
)
SSH_CONNECTIONS = Gauge(
    "kvmfleet_ssh_connections",
    "SSH connections open to the host for commands.",
    ["target"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "kvmfleet_operations_in_flight",
    "Blocking calls in flight (queued or running), per host.",
    ["where"],
    registry=REGISTRY,
)
OLDEST_AGE = Gauge(
    "kvmfleet_operation_oldest_age_seconds",
    "Age of the oldest blocking call in flight, per host.",
    ["where"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "kvmfleet_leader",
    "1 while this process is the active operator.",
    registry=REGISTRY,
)

POWER_STATES = ("On", "Off", "Paused", "Crashed", "Unknown")


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


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop the series of a deleted object."""
    with contextlib.suppress(KeyError):
        RESOURCE_READY.remove(kind, namespace, name)
    if kind == "VirtualNode":
        for state in POWER_STATES:
            with contextlib.suppress(KeyError):
                VM_POWER_STATE.remove(namespace, name, state)
        with contextlib.suppress(KeyError):
            MIGRATION_DATA_REMAINING.remove(namespace, name)


def set_power_state(namespace: str, name: str, state: str) -> None:
    """Record a VM's observed power state (one-hot over POWER_STATES)."""
    for candidate in POWER_STATES:
        VM_POWER_STATE.labels(namespace, name, candidate).set(1 if candidate == state else 0)


_serving: set[tuple[int, str]] = set()


def set_storage_pool(host: str, pool: str, capacity: int | None, available: int | None) -> None:
    """Record a storage pool's size and free space (unknown values drop the series)."""
    for gauge, value in ((STORAGE_POOL_CAPACITY, capacity), (STORAGE_POOL_AVAILABLE, available)):
        if value is None:
            with contextlib.suppress(KeyError):
                gauge.remove(host, pool)
        else:
            gauge.labels(host, pool).set(value)


def forget_storage_pools(host: str) -> None:
    """Drop every storage pool series of a host (deleted, or its pools changed)."""
    for gauge in (STORAGE_POOL_CAPACITY, STORAGE_POOL_AVAILABLE):
        for labels in [s.labels for m in gauge.collect() for s in m.samples]:
            if labels.get("host") == host:
                with contextlib.suppress(KeyError):
                    gauge.remove(host, labels["pool"])


def serve(port: int, address: str) -> None:
    """Start the /metrics HTTP endpoint in a background thread (once per port)."""
    if port and (port, address) not in _serving:
        start_http_server(port, addr=address, registry=REGISTRY)
        _serving.add((port, address))
