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
    """Seconds between two power-state syncs of a VirtualNode."""

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
    """Threads for blocking libvirt/SSH calls (work for many VMs and hosts runs concurrently)."""

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
