"""Bridges on a host (xHRM bridgeprereq): observe its links, plan with the domain, apply once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from kvmfleet.domain import bridges
from kvmfleet.domain.specs import BridgeSpec
from kvmfleet.errors import InvalidSpecError, KvmfleetError
from kvmfleet.reconcile.hostsession import HostSession
from kvmfleet.ssh import facts, hostcmds


@dataclass
class BridgeReport:
    """One bridge as it stands after the step: status.bridges[] plus what happened."""

    name: str
    interface: str
    ready: bool
    message: str = ""
    changed: bool = False

    def to_status(self) -> dict[str, object]:
        """The status.bridges entry."""
        return {"name": self.name, "interface": self.interface, "ready": self.ready}


async def observe(host: HostSession) -> bridges.HostNetwork:
    """The host's links, global addresses and gateway routes."""
    return network_from_output(
        (await host.run(hostcmds.ip_links())).stdout,
        (await host.run(hostcmds.ip_addrs())).stdout,
        (await host.run(hostcmds.ip_routes())).stdout,
    )


def network_from_output(
    links_json: str,
    addrs_json: str,
    routes_json: str,
    delays: Mapping[str, int | None] | None = None,
) -> bridges.HostNetwork:
    """The planner's view of `ip -j -d link`, `ip -j addr` and `ip -j route` output."""
    links = facts.parse_ip_links(links_json)
    addrs = facts.parse_ip_addrs(addrs_json)
    routes = facts.parse_ip_routes(routes_json)
    return bridges.HostNetwork(
        links={
            link.name: bridges.Link(
                link.name, link.kind, link.master, link.is_up, (delays or {}).get(link.name)
            )
            for link in links
        },
        addresses=[
            bridges.Address(ifname, address.cidr)
            for ifname, items in addrs.items()
            for address in facts.global_addresses(items)
            if address.family in ("inet", "inet6")
        ],
        routes=[
            bridges.Route(route.dst, route.gateway, route.dev, route.metric)
            for route in routes
            if route.gateway and route.dev
        ],
    )


async def forward_delays(host: HostSession, names: list[str]) -> dict[str, int | None]:
    """The forward delay of each existing bridge (`ip -j -d link show dev NAME`)."""
    result: dict[str, int | None] = {}
    for name in names:
        out = await host.run(hostcmds.ip_link(name), check=False)
        if not out.ok:
            continue
        data = json.loads(out.stdout or "[]")
        info = (data[0].get("linkinfo") or {}).get("info_data") or {} if data else {}
        delay = info.get("forward_delay")
        result[name] = int(delay) if delay is not None else None
    return result


async def management_ip(host: HostSession) -> str | None:
    """The host address our SSH session reached (SSH_CONNECTION's server address)."""
    out = await host.run(["printenv", "SSH_CONNECTION"], check=False)
    words = out.stdout.split()
    return words[2] if len(words) == 4 else None


async def observe_with_delays(host: HostSession, names: list[str]) -> bridges.HostNetwork:
    """The network, with the forward delay of the named bridges filled in."""
    net = await observe(host)
    delays = await forward_delays(host, [name for name in names if name in net.links])
    return bridges.HostNetwork(
        links={
            name: bridges.Link(link.name, link.kind, link.master, link.up, delays.get(name))
            for name, link in net.links.items()
        },
        addresses=net.addresses,
        routes=net.routes,
    )


async def ensure(host: HostSession, wanted: tuple[BridgeSpec, ...]) -> list[BridgeReport]:
    """Make every bridge of the spec exist with its NIC as port; report each one."""
    if not wanted:
        return []
    names = [b.name for b in wanted]
    net = await observe_with_delays(host, names)
    address = await management_ip(host)
    reports = []
    for spec in wanted:
        interface = spec.interface or (bridges.default_interface(net, address) if address else None)
        if interface is None:
            reports.append(
                BridgeReport(
                    spec.name,
                    "",
                    False,
                    f"{spec.name}: cannot tell which NIC carries the host's address; set interface",
                )
            )
            continue
        report = await _ensure_one(host, net, spec.name, interface)
        if report.changed:
            # Verify on the host itself: planning again must find nothing left to do.
            net = await observe_with_delays(host, names)
            again = bridges.plan_bridge(net, spec.name, interface)
            if not again.ready:
                report.ready = False
                left = "; ".join(again.commands)
                report.message = (
                    again.problem or f"{spec.name}: still to do after the change: {left}"
                )
        reports.append(report)
    return reports


async def _ensure_one(
    host: HostSession, net: bridges.HostNetwork, bridge: str, interface: str
) -> BridgeReport:
    try:
        plan = bridges.plan_bridge(net, bridge, interface)
    except InvalidSpecError as error:
        return BridgeReport(bridge, interface, False, error.message)
    if plan.problem:
        return BridgeReport(bridge, interface, False, plan.problem)
    if plan.ready:
        return BridgeReport(bridge, interface, True)
    try:
        await host.run(hostcmds.ip_batch(), input=hostcmds.ip_batch_input(plan.commands))
    except KvmfleetError as error:
        return BridgeReport(bridge, interface, False, f"{bridge}: {error.message}", changed=True)
    return BridgeReport(bridge, interface, True, f"created {bridge} on {interface}", changed=True)
