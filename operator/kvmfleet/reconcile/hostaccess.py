"""Reach the KvmHost a VirtualNode lives on: its object, its spec, an SSH session to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmfleet.domain.guestcpu import HostCpu
from kvmfleet.domain.specs import KvmHostSpec
from kvmfleet.reconcile import fleetindex
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostsession import HostSession, connect
from kvmfleet.virt.guest import Guests


@dataclass
class PlacedHost:
    """A connected KvmHost, with what VirtualNode work needs of its object."""

    name: str
    spec: KvmHostSpec
    status: dict[str, Any]
    session: HostSession

    @property
    def virt_type(self) -> str:
        """libvirt domain type: kvm where the probe found KVM, qemu (TCG) otherwise."""
        caps = self.status.get("capabilities") or {}
        return "kvm" if caps.get("virtualization") == "kvm" else "qemu"

    @property
    def guest_cpu(self) -> HostCpu | None:
        """The CPU configurations the host's probe proved to start (or not), if recorded."""
        return HostCpu.from_status(self.status.get("guestCpu"))

    async def guests(self) -> Guests:
        """Domain operations on this host."""
        return Guests(await self.session.libvirt())


async def read_host(ctx: Context, name: str) -> tuple[KvmHostSpec, dict[str, Any]]:
    """The KvmHost's spec and status, without connecting to it."""
    obj = await fleetindex.kvmhost(ctx, name)
    return KvmHostSpec.from_dict(obj.get("spec") or {}), dict(obj.get("status") or {})


async def connect_host(
    ctx: Context, name: str, spec: KvmHostSpec, status: dict[str, Any]
) -> PlacedHost:
    """Connect to a KvmHost already read (errors stay classified: unreachable is temporary)."""
    session = await connect(ctx, name, spec, status.get("hostKey"))
    return PlacedHost(name, spec, status, session)


async def open_host(ctx: Context, name: str) -> PlacedHost:
    """Read the KvmHost and connect to it (errors stay classified: unreachable is temporary)."""
    spec, status = await read_host(ctx, name)
    return await connect_host(ctx, name, spec, status)
