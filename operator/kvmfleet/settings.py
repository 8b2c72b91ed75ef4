"""The operator's configuration: one dataclass, read from flags and KVMFLEET_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

GROUP = "kvmfleet.io"
VERSION = "v1alpha1"
FINALIZER = "kvmfleet.io/finalizer"
HOST_LABEL = "kvmfleet.io/host"


@dataclass(frozen=True)
class Settings:
    """How the operator runs. Every field can be set by a flag or a KVMFLEET_<NAME> variable."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch for VirtualNodes and VmMasters; empty: all namespaces."""

    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (0 disables it)."""

    health_port: int = 8081
    """Port of the liveness endpoint /healthz (0 disables it)."""

    bind_address: str = "0.0.0.0"  # noqa: S104 - endpoints are scraped from other pods
    """Address the metrics and health endpoints listen on."""

    host_probe_interval: float = 60.0
    """Seconds between two probes of a KvmHost (capabilities, bridges, storage, domains)."""

    vm_sync_interval: float = 30.0
    """Seconds between two power-state syncs of a VirtualNode (against its host's inventory,
    read once per host per interval, or refreshed by the statistics poll: then up to 1.5
    intervals old)."""

    vm_full_sync_interval: float = 600.0
    """Seconds between two full passes of an unchanged, converged VirtualNode (disks,
    definition, console), spread with jitter; in between, a sync compares the status with
    the host's domain inventory only."""

    max_passes_per_host: int = 16
    """Full VirtualNode passes running at once per KvmHost (others wait their turn: a burst
    queues; with the SSH bounds of 2 connections x 8 channels, one command each)."""

    secret_cache_seconds: float = 60.0
    """Seconds an SSH key read from its Secret is reused before it is read again."""

    vm_stats_interval: float = 30.0
    """Seconds between two reads of a host's per-VM statistics (CPU, memory, disk and
    network counters, and the host's domain inventory; one libvirt call per host); 0 turns
    them off."""

    ssh_connect_timeout: float = 10.0
    """Seconds to wait for an SSH connection to a host."""

    ssh_command_timeout: float = 120.0
    """Seconds a remote command may run before it counts as failed (temporary)."""

    delete_host_unreachable_timeout: float = 300.0
    """Seconds a VirtualNode deletion waits for an unreachable host before it lets go."""

    vnc_password_ttl: float = 24 * 3600.0
    """Seconds a VNC console password stays valid."""

    mount_root: str = "/var/lib/kvmfleet/pools"
    """Where hosts mount NFS storage pools in nfsAccess Mount mode."""

    storage_min_free_bytes: int = 1024**3
    """Placement puts no new VM on a storage pool with less free space than this (bytes,
    as the host probe last measured it, in whole GiB; 0 turns the check off)."""

    max_workers: int = 32
    """Kopf's handler threads and the shared pool for blocking calls tied to no host."""

    host_workers: int = 16
    """Threads for blocking SSH/libvirt calls, per host: a hung host holds only its own."""

    kube_workers: int = 8
    """Threads (and HTTP connections) for Kubernetes API calls, apart from host work."""

    ssh_max_channels_per_connection: int = 8
    """Commands at once on one SSH connection; keep it below the hosts' sshd MaxSessions
    (stock: 10). Beyond it commands queue."""

    ssh_max_connections_per_host: int = 2
    """SSH connections per host for commands (libvirt adds one); connections are opened
    one at a time, so a stock sshd's MaxStartups (10:30:100) never drops one."""

    ssh_queue_timeout: float = 300.0
    """Seconds a command may wait for a free SSH channel before it fails (temporary)."""

    ssh_kill_grace: float = 5.0
    """Seconds between TERM and KILL for a remote command past its deadline."""

    ssh_max_output_bytes: int = 16 * 1024 * 1024
    """Output (stdout + stderr) kept of one remote command; beyond it the command stops."""

    libvirt_keepalive_interval: int = 5
    """Seconds between libvirt keepalive messages; a libvirtd that misses
    libvirt_keepalive_count of them in a row is disconnected (0: no keepalive)."""

    libvirt_keepalive_count: int = 3
    """Unanswered keepalive messages after which a libvirt connection is closed."""

    libvirt_call_timeout: float = 120.0
    """Deadline of one blocking libvirt call (the caller stops waiting; temporary)."""

    libvirt_open_timeout: float = 30.0
    """Seconds a caller waits for a new libvirt connection to a host (a hung libvirtd
    accepts the connection but never answers it); then LibvirtUnavailable. The opening
    goes on in the background and its connection is used once it answers."""

    migration_timeout: float = 300.0
    """Deadline of one live migration (seconds): past it the job is aborted
    (virDomainAbortJob) and the VM keeps running on its source host."""

    migration_bandwidth_mib: int = 0
    """Bandwidth cap of a live migration in MiB/s (0: libvirt's default, no cap)."""

    migration_max_downtime_ms: int = 0
    """Longest pause of the guest at the end of a live migration, in milliseconds (set on the
    job as soon as it runs; 0: QEMU's default, 300 ms). A lower value makes a busy guest's
    migration take longer (or reach migration_timeout) rather than pause longer."""

    migration_port: int = 49152
    """The target's first migration port (libvirt's qemu.conf ``migration_port_min``): the
    live migration pre-flight connects to it from the source host."""

    migrations_per_host: int = 2
    """Migrations a host takes part in at once (as source or target); more wait (Queued)."""

    kube_request_timeout: float = 30.0
    """Deadline of one Kubernetes API request made by kvmfleet's own client."""

    watch_silence_limit: float = 600.0
    """/healthz fails when objects exist but no handler ran for this many seconds."""

    stuck_grace: float = 60.0
    """/healthz fails when a blocking call runs this long past its deadline."""

    leader_election: bool = False
    """Run only while holding a coordination.k8s.io Lease (active/standby replicas)."""

    leader_election_namespace: str = ""
    """Namespace of the Lease; empty: $POD_NAMESPACE, else "default"."""

    leader_election_name: str = "kvmfleet-operator"
    """Name of the Lease."""

    lease_duration: float = 15.0
    """Seconds a Lease stays valid without renewal (the standby's takeover bound)."""

    lease_renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it stops (must be < lease_duration)."""

    lease_retry_period: float = 2.0
    """Seconds between two renewals, and between two attempts of a standby."""

    verbose: bool = False
    """Log at DEBUG level."""

    extra: Mapping[str, str] = field(default_factory=dict)
    """Unrecognised KVMFLEET_* variables, kept for diagnostics."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from KVMFLEET_* variables, then explicit overrides (flags) on top."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        for name, spec in known.items():
            raw = env.get(f"KVMFLEET_{name.upper()}")
            if raw is None:
                continue
            default = spec.default
            if name == "namespaces":
                values[name] = tuple(n for n in raw.replace(",", " ").split() if n)
            elif isinstance(default, bool):
                values[name] = raw.strip().lower() in {"1", "true", "yes", "on"}
            elif isinstance(default, int):
                values[name] = int(raw)
            elif isinstance(default, float):
                values[name] = float(raw)
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
