"""The libvirt definition of a VirtualNode (mkvm, chvm): defined once, redefined on change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kvmfleet.domain.domainxml.build import build_domain_xml
from kvmfleet.domain.domainxml.parse import LiveDomainInfo, parse_domain
from kvmfleet.domain.guestcpu import resolve
from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.domain.storage_urls import DiskLocation
from kvmfleet.errors import NotFoundError, PermanentError
from kvmfleet.reconcile import fleetindex
from kvmfleet.reconcile.hostaccess import PlacedHost
from kvmfleet.reconcile.resource import Resource
from kvmfleet.virt.guest import Guests, PowerState


@dataclass
class DefineResult:
    """What the definition step found or did."""

    uuid: str
    defined_now: bool
    redefined: bool
    restart_required: bool
    state: PowerState
    live: LiveDomainInfo
    config_vnc_valid_to: str | None = None
    """``passwdValidTo`` of the persistent definition (which VNC password it holds)."""


def _shape(info: LiveDomainInfo, wanted_cpu: str | None) -> tuple[object, ...]:
    """What a change of needs a redefinition (and, while running, a restart).

    The CPU choice is read from kvmfleet's metadata; a domain defined before it was
    recorded there counts as having the wanted one (it is updated with the next change).
    """
    recorded_cpu = info.node.cpu if info.node is not None else None
    return (
        recorded_cpu or wanted_cpu,
        info.vcpus,
        info.memory_kib,
        tuple((n.mac, n.bridge, n.model) for n in info.nics),
        tuple((d.target, d.source) for d in info.disks),
        info.boot,
    )


async def ensure_defined(  # noqa: PLR0917 - what a definition is made of
    host: PlacedHost,
    node: Resource,
    spec: VirtualNodeSpec,
    disks: list[DiskLocation],
    macs: tuple[str, ...],
    vnc: tuple[str, datetime] | None,
) -> DefineResult:
    """Define the domain if missing, redefine it when the spec changed; never twice."""
    assert node.namespace is not None
    guests = await host.guests()
    ctx = host.session.ctx
    cpu = resolve(spec.cpu, host.guest_cpu, kvm=host.virt_type == "kvm", host_name=host.name)
    xml = build_domain_xml(
        spec,
        name=node.name,
        uid=node.uid,
        namespace=node.namespace,
        virt_type=host.virt_type,
        disks=disks,
        macs=macs,
        vnc_password=vnc[0] if vnc else None,
        vnc_valid_to=vnc[1] if vnc else None,
        uuid=node.uid,
        generation=node.generation,
        cpu=cpu,
    )
    wanted = parse_domain(xml)
    defined_now = redefined = False
    try:
        current = parse_domain(await ctx.blocking(guests.xml, node.name, False))
    except NotFoundError:
        current = None
    if current is not None and current.uid != node.uid:
        await _replace_stale(host, guests, node, current)
        current = None
    config_valid_to = current.vnc_valid_to if current is not None else None
    if current is None:
        await ctx.blocking(guests.define, xml)
        defined_now = True
        config_valid_to = wanted.vnc_valid_to
    elif _shape(current, cpu.label) != _shape(wanted, None):
        await ctx.blocking(guests.define, xml)
        redefined = True
        config_valid_to = wanted.vnc_valid_to
    state = await ctx.blocking(guests.state, node.name)
    live = parse_domain(await ctx.blocking(guests.xml, node.name, True))
    running = state in (PowerState.ON, PowerState.PAUSED)
    restart = running and _shape(live, cpu.label) != _shape(wanted, None)
    return DefineResult(node.uid, defined_now, redefined, restart, state, live, config_valid_to)


async def _replace_stale(
    host: PlacedHost, guests: Guests, node: Resource, current: LiveDomainInfo
) -> None:
    """A domain of this name that belongs to no live VirtualNode may go if it is off."""
    ctx = host.session.ctx
    owner = current.uid
    if owner is None:
        raise PermanentError(
            f"a domain named {node.name} exists on {host.name} and is not managed by kvmfleet; "
            "rename the VirtualNode or remove that domain",
            reason="DomainNameTaken",
        )
    others = await fleetindex.virtualnodes(ctx)
    if any(o["metadata"]["uid"] == owner for o in others):
        raise PermanentError(
            f"a domain named {node.name} on {host.name} belongs to another VirtualNode "
            f"({current.namespace}/{current.node_name})",
            reason="DomainNameTaken",
        )
    state = await ctx.blocking(guests.state, node.name)
    if state not in (PowerState.OFF, PowerState.CRASHED):
        raise PermanentError(
            f"a domain named {node.name} runs on {host.name} and does not belong to this "
            "VirtualNode; stop and undefine it (virsh undefine) or rename the VirtualNode",
            reason="DomainNameTaken",
        )
    await ctx.blocking(guests.undefine, node.name)
