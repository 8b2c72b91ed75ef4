"""Bridge planning: the ip-batch lines for xHRM's bridgeprereq, in a connection-safe order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmfleet.domain.bridges import default_interface, plan_bridge
from kvmfleet.errors import InvalidSpecError
from kvmfleet.reconcile.hostnetwork import network_from_output


def links(*items: dict[str, Any]) -> list[dict[str, Any]]:
    lo = {"ifname": "lo", "flags": ["LOOPBACK", "UP"]}
    return [{"ifindex": i + 1, **item} for i, item in enumerate([lo, *items])]


def parse_network(
    links_json: list[dict[str, Any]],
    addrs: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    delays: dict[str, int | None] | None = None,
) -> Any:
    return network_from_output(
        json.dumps(links_json), json.dumps(addrs), json.dumps(routes), delays or {}
    )


ETH0 = {"ifname": "eth0", "flags": ["BROADCAST", "UP"], "linkinfo": {"info_kind": "veth"}}
ADDRS_ETH0 = [
    {
        "ifname": "lo",
        "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}],
    },
    {
        "ifname": "eth0",
        "addr_info": [
            {"family": "inet", "local": "10.77.0.11", "prefixlen": 24, "scope": "global"}
        ],
    },
]
ROUTES_ETH0 = [
    {"dst": "default", "gateway": "10.77.0.1", "dev": "eth0"},
    {"dst": "10.77.0.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link"},
]


def test_fresh_host_gets_bridge_address_route_then_loses_nic_address() -> None:
    net = parse_network(links(ETH0), ADDRS_ETH0, ROUTES_ETH0)
    plan = plan_bridge(net, "br0", "eth0")
    assert plan.commands == [
        "link add name br0 type bridge forward_delay 0 stp_state 0",
        "link set dev br0 up",
        "addr add 10.77.0.11/24 dev br0",
        "link set dev eth0 master br0",
        "route replace default via 10.77.0.1 dev br0",
        "addr del 10.77.0.11/24 dev eth0",
    ]
    assert not plan.ready


def test_bridged_host_needs_nothing() -> None:
    net = parse_network(
        links(
            {**ETH0, "master": "br0"},
            {"ifname": "br0", "flags": ["UP"], "linkinfo": {"info_kind": "bridge"}},
        ),
        [{"ifname": "br0", "addr_info": ADDRS_ETH0[1]["addr_info"]}],
        [{"dst": "default", "gateway": "10.77.0.1", "dev": "br0"}],
        {"br0": 0},
    )
    plan = plan_bridge(net, "br0", "eth0")
    assert plan.ready and plan.commands == []
    assert default_interface(net, "10.77.0.11") == "eth0"


def test_existing_bridge_with_delay_is_fixed() -> None:
    net = parse_network(
        links(
            {**ETH0, "master": "br0"},
            {"ifname": "br0", "flags": [], "linkinfo": {"info_kind": "bridge"}},
        ),
        [],
        [],
        {"br0": 1500},
    )
    assert plan_bridge(net, "br0", "eth0").commands == [
        "link set dev br0 type bridge forward_delay 0",
        "link set dev br0 up",
    ]


@pytest.mark.parametrize(
    ("extra_links", "interface", "problem"),
    [
        ([], "eth1", "does not exist"),
        ([{"ifname": "br0", "linkinfo": {"info_kind": "veth"}}], "eth0", "not a bridge"),
        ([{**ETH0, "ifname": "eth1", "master": "virbr0"}], "eth1", "already a port of virbr0"),
    ],
)
def test_unsafe_situations_are_problems_not_commands(
    extra_links: list[dict[str, Any]], interface: str, problem: str
) -> None:
    net = parse_network(links(ETH0, *extra_links), ADDRS_ETH0, ROUTES_ETH0)
    plan = plan_bridge(net, "br0", interface)
    assert plan.commands == [] and problem in plan.problem


@pytest.mark.parametrize("bad", ["br0;reboot", "../x", "br0\nlink del eth0", "a" * 16, "br 0"])
def test_bad_names_never_reach_a_command(bad: str) -> None:
    net = parse_network(links(ETH0), ADDRS_ETH0, ROUTES_ETH0)
    with pytest.raises(InvalidSpecError):
        plan_bridge(net, bad, "eth0")
    with pytest.raises(InvalidSpecError):
        plan_bridge(net, "br0", bad)


def test_garbage_from_the_host_is_refused() -> None:
    with pytest.raises(InvalidSpecError):
        parse_network(
            links(ETH0),
            [
                {
                    "ifname": "eth0",
                    "addr_info": [
                        {
                            "family": "inet",
                            "local": "1.2.3.4; reboot",
                            "prefixlen": 24,
                            "scope": "global",
                        }
                    ],
                }
            ],
            [],
        )
