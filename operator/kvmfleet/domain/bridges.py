"""Bridge planning (xHRM `bridgeprereq eth0:br0`): from a host's observed links to `ip` commands.

Pure: the caller observes the host (`ip -j -d link show`, `ip -j addr show`,
`ip -j route show`), hands what it parsed over as a HostNetwork, and runs the planned
lines with `ip -batch -` in ONE remote process. The order keeps the host reachable while the
address moves: the bridge gets the address and the routes before the NIC loses them,
so the SSH session that does the work is never cut.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvmfleet.domain.validation import validate_interface_name
from kvmfleet.errors import InvalidSpecError


@dataclass(frozen=True)
class Link:
    """One network interface as `ip -j -d link show` reports it."""

    name: str
    kind: str | None = None
    master: str | None = None
    up: bool = False
    forward_delay: int | None = None


@dataclass(frozen=True)
class Address:
    """One global address of an interface (`ip -j addr show`), checked to be one."""

    ifname: str
    cidr: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "cidr", str(ipaddress.ip_interface(self.cidr)))
        except ValueError as error:
            message = f"the host reported an unexpected address {self.cidr!r}"
            raise InvalidSpecError(message) from error


@dataclass(frozen=True)
class Route:
    """One route of the main table that goes through a gateway (`ip -j route show`)."""

    dst: str
    gateway: str
    dev: str
    metric: int | None = None

    def __post_init__(self) -> None:
        try:
            if self.dst != "default":
                object.__setattr__(self, "dst", str(ipaddress.ip_network(self.dst, strict=False)))
            object.__setattr__(self, "gateway", str(ipaddress.ip_address(self.gateway)))
        except ValueError as error:
            raise InvalidSpecError(f"the host reported an unexpected route {self}") from error


@dataclass(frozen=True)
class HostNetwork:
    """What the planner needs to know of a host's network."""

    links: Mapping[str, Link]
    addresses: Sequence[Address] = ()
    routes: Sequence[Route] = ()

    def addresses_of(self, ifname: str) -> list[Address]:
        """The global addresses on one interface."""
        return [a for a in self.addresses if a.ifname == ifname]

    def interface_with_ip(self, ip: str) -> str | None:
        """The interface that carries this IP address (None when none does)."""
        for address in self.addresses:
            if str(ipaddress.ip_interface(address.cidr).ip) == ip:
                return address.ifname
        return None


@dataclass
class BridgePlan:
    """What it takes to make one bridge as the spec asks."""

    bridge: str
    interface: str
    commands: list[str] = field(default_factory=list)
    problem: str = ""

    @property
    def ready(self) -> bool:
        """Nothing to do and nothing wrong."""
        return not self.commands and not self.problem


def plan_bridge(net: HostNetwork, bridge: str, interface: str) -> BridgePlan:
    """The `ip -batch` lines that make `bridge` with `interface` as its port, moving addresses.

    Idempotent: a host already in the wanted state yields no commands. What cannot be
    done safely (a missing NIC, a NIC that is a port of another bridge, a name taken by a
    non-bridge) is reported as a problem and nothing is planned.
    """
    validate_interface_name(bridge, "bridge")
    validate_interface_name(interface, "interface")
    plan = BridgePlan(bridge=bridge, interface=interface)
    if bridge == interface:
        raise InvalidSpecError(f"bridge {bridge}: the bridge cannot be its own interface")
    nic = net.links.get(interface)
    existing = net.links.get(bridge)
    if existing is not None and existing.kind != "bridge":
        kind = existing.kind or "device"
        plan.problem = f"{bridge} exists on the host and is not a bridge ({kind})"
        return plan
    if nic is None:
        plan.problem = f"interface {interface} for bridge {bridge} does not exist on the host"
        return plan
    if nic.master not in (None, bridge):
        plan.problem = f"interface {interface} is already a port of {nic.master}"
        return plan

    cmds = plan.commands
    if existing is None:
        cmds.append(f"link add name {bridge} type bridge forward_delay 0 stp_state 0")
    elif existing.forward_delay not in (None, 0):
        cmds.append(f"link set dev {bridge} type bridge forward_delay 0")
    if existing is None or not existing.up:
        cmds.append(f"link set dev {bridge} up")
    moving = net.addresses_of(interface)
    on_bridge = {a.cidr for a in net.addresses_of(bridge)}
    cmds.extend(f"addr add {a.cidr} dev {bridge}" for a in moving if a.cidr not in on_bridge)
    if nic.master != bridge:
        cmds.append(f"link set dev {interface} master {bridge}")
    if not nic.up:
        cmds.append(f"link set dev {interface} up")
    for route in net.routes:
        if route.dev == interface:
            metric = f" metric {route.metric}" if route.metric is not None else ""
            cmds.append(f"route replace {route.dst} via {route.gateway} dev {bridge}{metric}")
    cmds.extend(f"addr del {a.cidr} dev {interface}" for a in moving)
    return plan


def default_interface(net: HostNetwork, address: str) -> str | None:
    """The NIC that carries the host's management address (a bridge's port if bridged)."""
    ifname = net.interface_with_ip(address)
    if ifname is None:
        return None
    link = net.links.get(ifname)
    if link is not None and link.kind == "bridge":
        ports = [lk.name for lk in net.links.values() if lk.master == ifname]
        return ports[0] if len(ports) == 1 else None
    return ifname
