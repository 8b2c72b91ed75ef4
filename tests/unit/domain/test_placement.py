"""Placement of VirtualNodes on KvmHosts: filters, scoring, reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvmfleet.domain.authorization import HostGrant
from kvmfleet.domain.placement import (
    HostRejection,
    HostSnapshot,
    PlacementReason,
    PlacementRequest,
    check_host,
    choose_host,
)
from kvmfleet.domain.specs import Overcommit, VirtualNodeSpec
from kvmfleet.domain.storage_urls import parse_storage_url

NFS = parse_storage_url("nfs://10.0.0.1/srv/vms")
DIR = parse_storage_url("dir:///var/lib/libvirt/images")
PHY = parse_storage_url("phy:/dev/sdb")


def host(name: str, **changes: object) -> HostSnapshot:
    base = HostSnapshot(
        name=name,
        ready=True,
        cpus=4,
        memory_mib=8192,
        bridges=frozenset({"br0"}),
        storage=(NFS,),
        overcommit=Overcommit(cpu=1.0, memory=1.0),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def request(**changes: object) -> PlacementRequest:
    base = PlacementRequest(
        namespace="default", cpus=1, memory_mib=1024, bridges=frozenset({"br0"}), storage=(None,)
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("snapshot", "req", "code"),
    [
        (host("a"), request(), None),
        (host("a", ready=False), request(), HostRejection.NOT_READY),
        (host("a", ready=False, maintenance=True), request(), HostRejection.NOT_READY),
        (host("a", maintenance=True), request(), HostRejection.IN_MAINTENANCE),
        (
            host("a", allowed_namespaces=frozenset({"team-a"})),
            request(),
            HostRejection.NAMESPACE_NOT_ALLOWED,
        ),
        (host("a", allowed_namespaces=frozenset({"default"})), request(), None),
        (host("a"), request(bridges=frozenset({"br0", "br1"})), HostRejection.MISSING_BRIDGE),
        (host("a", bridges=frozenset()), request(bridges=frozenset()), None),
        (host("a", storage=()), request(), HostRejection.MISSING_STORAGE),
        (host("a", storage=()), request(storage=()), None),
        # A phy: device is storage like any other: the host must list it as a pool.
        (host("a", storage=()), request(storage=(PHY,)), HostRejection.MISSING_STORAGE),
        (host("a", storage=(PHY,)), request(storage=(PHY,)), None),
        (host("a"), request(storage=(DIR,)), HostRejection.MISSING_STORAGE),
        (host("a", storage=(NFS, DIR)), request(storage=(DIR, None)), None),
        (host("a"), request(cpus=5), HostRejection.INSUFFICIENT_CPU),
        (host("a"), request(memory_mib=8193), HostRejection.INSUFFICIENT_MEMORY),
        (host("a"), request(cpus=5, memory_mib=9000), HostRejection.INSUFFICIENT_CPU_AND_MEMORY),
        (host("a"), request(cpus=4, memory_mib=8192), None),
        (host("a", allocated_cpus=3), request(cpus=2), HostRejection.INSUFFICIENT_CPU),
        (host("a", allocated_cpus=3, overcommit=Overcommit(cpu=2.0)), request(cpus=2), None),
        (
            host("a", allocated_memory_mib=8000),
            request(memory_mib=193),
            HostRejection.INSUFFICIENT_MEMORY,
        ),
        (host("a", allocated_memory_mib=8000), request(memory_mib=192), None),
        (host("a", allocated_cpus=9), request(), HostRejection.INSUFFICIENT_CPU),
    ],
)
def test_check_host(
    snapshot: HostSnapshot, req: PlacementRequest, code: HostRejection | None
) -> None:
    rejection = check_host(req, snapshot)
    assert (rejection.code if rejection else None) == code


def test_rejection_details_are_human() -> None:
    missing = check_host(request(bridges=frozenset({"br2", "br1"}), storage=(DIR,)), host("a"))
    assert missing is not None and missing.detail == "no ready bridge br1, br2"
    storage = check_host(request(storage=(DIR, DIR)), host("a"))
    assert storage is not None and storage.detail == "no storage dir:///var/lib/libvirt/images"
    pool = check_host(request(), host("a", storage=()))
    assert pool is not None and pool.detail == "no storage pool (disks without storage need one)"
    memory = check_host(request(memory_mib=4096), host("a", allocated_memory_mib=6144))
    assert memory is not None
    assert memory.detail == "4096 MiB requested, 2048 MiB free of 8192 MiB"
    cpu = check_host(request(cpus=2), host("a", allocated_cpus=5))
    assert cpu is not None and cpu.detail == "2 cpus requested, 0 free of 4"


@pytest.mark.parametrize(
    ("hosts", "req", "chosen", "reason", "message"),
    [
        (
            [host("a"), host("b")],
            request(),
            "a",
            PlacementReason.SCHEDULED,
            "placed on a (25% loaded after placement); 2/2 hosts available.",
        ),
        (
            [host("a", allocated_cpus=2), host("b")],
            request(),
            "b",
            PlacementReason.SCHEDULED,
            "placed on b (25% loaded after placement); 2/2 hosts available.",
        ),
        (
            # memory dominates the load of a: 50% + 1 GiB -> 62.5% vs b's 75% cpu
            [host("a", allocated_memory_mib=4096), host("b", allocated_cpus=2)],
            request(),
            "a",
            PlacementReason.SCHEDULED,
            "placed on a (62% loaded after placement); 2/2 hosts available.",
        ),
        (
            [host("b"), host("a")],
            request(),
            "a",
            PlacementReason.SCHEDULED,
            "placed on a (25% loaded after placement); 2/2 hosts available.",
        ),
        (
            [host("a", maintenance=True), host("b", ready=False), host("c")],
            request(),
            "c",
            PlacementReason.SCHEDULED,
            "placed on c (25% loaded after placement); 1/3 hosts available: 1 in maintenance, 1 not ready.",
        ),
        (
            [],
            request(),
            None,
            PlacementReason.NO_READY_HOST,
            "0/0 hosts available: no KvmHost exists.",
        ),
        (
            [host("a", ready=False), host("b", maintenance=True)],
            request(),
            None,
            PlacementReason.NO_READY_HOST,
            "0/2 hosts available: 1 in maintenance, 1 not ready.",
        ),
        (
            [
                host("a", allocated_memory_mib=8192),
                host("b", allocated_memory_mib=8000),
                host("c", maintenance=True),
            ],
            request(),
            None,
            PlacementReason.INSUFFICIENT_CAPACITY,
            "0/3 hosts available: 2 insufficient memory, 1 in maintenance.",
        ),
        (
            [host("a", ready=False), host("b", bridges=frozenset())],
            request(),
            None,
            PlacementReason.MISSING_BRIDGE,
            "0/2 hosts available: 1 missing bridge, 1 not ready.",
        ),
        (
            [host("a", storage=()), host("b", allowed_namespaces=frozenset({"x"}))],
            request(),
            None,
            PlacementReason.MISSING_STORAGE,
            "0/2 hosts available: 1 missing storage, 1 namespace not allowed.",
        ),
        (
            [host("a", allowed_namespaces=frozenset({"x"}))],
            request(),
            None,
            PlacementReason.NAMESPACE_NOT_ALLOWED,
            "0/1 hosts available: 1 namespace not allowed.",
        ),
        (
            [host("a"), host("b")],
            request(cpus=8, memory_mib=16384),
            None,
            PlacementReason.INSUFFICIENT_CAPACITY,
            "0/2 hosts available: 2 insufficient cpu and memory.",
        ),
    ],
)
def test_choose_host(
    hosts: list[HostSnapshot],
    req: PlacementRequest,
    chosen: str | None,
    reason: PlacementReason,
    message: str,
) -> None:
    decision = choose_host(req, hosts)
    assert decision.host == chosen
    assert decision.reason is reason
    assert decision.message == message
    assert chosen not in decision.rejected
    if chosen is None:
        assert set(decision.rejected) == {h.name for h in hosts}


def test_rejections_are_recorded_per_host() -> None:
    decision = choose_host(
        request(), [host("a", ready=False), host("b", bridges=frozenset()), host("c")]
    )
    assert decision.host == "c"
    assert {name: r.code for name, r in decision.rejected.items()} == {
        "a": HostRejection.NOT_READY,
        "b": HostRejection.MISSING_BRIDGE,
    }


def spread(count: int, hosts: list[HostSnapshot], req: PlacementRequest) -> dict[str, int]:
    placed = {h.name: 0 for h in hosts}
    current = list(hosts)
    for _ in range(count):
        decision = choose_host(req, current)
        assert decision.host is not None, decision.message
        placed[decision.host] += 1
        current = [
            replace(
                h,
                allocated_cpus=h.allocated_cpus + req.cpus,
                allocated_memory_mib=h.allocated_memory_mib + req.memory_mib,
            )
            if h.name == decision.host
            else h
            for h in current
        ]
    return placed


def test_fifty_identical_vms_spread_evenly_over_two_equal_hosts() -> None:
    hosts = [
        host("kvmhost1", cpus=32, memory_mib=131072, overcommit=Overcommit()),
        host("kvmhost2", cpus=32, memory_mib=131072, overcommit=Overcommit()),
    ]
    assert spread(50, hosts, request(cpus=2, memory_mib=2048)) == {"kvmhost1": 25, "kvmhost2": 25}


def test_bigger_host_takes_proportionally_more() -> None:
    hosts = [host("small", cpus=8, memory_mib=16384), host("big", cpus=24, memory_mib=49152)]
    assert spread(32, hosts, request(cpus=1, memory_mib=1024)) == {"small": 8, "big": 24}


def test_fills_up_then_reports_capacity() -> None:
    hosts = [host("a", cpus=2, memory_mib=4096), host("b", cpus=2, memory_mib=4096)]
    assert spread(4, hosts, request(cpus=1, memory_mib=1024)) == {"a": 2, "b": 2}
    full = [replace(h, allocated_cpus=2) for h in hosts]
    decision = choose_host(request(cpus=1, memory_mib=1024), full)
    assert decision.host is None
    assert decision.reason is PlacementReason.INSUFFICIENT_CAPACITY
    assert decision.message == "0/2 hosts available: 2 insufficient cpu."


def test_request_for_spec() -> None:
    spec = VirtualNodeSpec.from_dict(
        {
            "cpus": 2,
            "memory": "1536Mi",
            "nics": [{"bridge": "br0"}, {"bridge": "br1"}, {"bridge": "br0"}],
            "disks": [
                {"name": "hda", "size": "20Gi"},
                {"name": "hdb", "size": "1Gi", "storage": "dir:///var/lib/libvirt/images"},
            ],
        }
    )
    req = PlacementRequest.for_spec(spec, "team-a")
    assert req == PlacementRequest(
        namespace="team-a",
        cpus=2,
        memory_mib=1536,
        bridges=frozenset({"br0", "br1"}),
        storage=(None, DIR),
    )
    decision = choose_host(req, [host("a", bridges=frozenset({"br0", "br1"}), storage=(NFS, DIR))])
    assert decision.host == "a"


def granted(name: str = "a", **changes: object) -> HostSnapshot:
    """A host whose spec lists br0 and the NFS, dir and phy pools, for every namespace."""
    grant = HostGrant(name, frozenset(), frozenset({"br0"}), (NFS, DIR, PHY))
    return replace(host(name, storage=(NFS, DIR, PHY), grant=grant), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "code", "words"),
    [
        (request(), None, ""),
        (request(bridges=frozenset({"mgmt"})), HostRejection.NOT_ALLOWED, "bridge mgmt"),
        (
            request(storage=(parse_storage_url("phy:/dev/sda"),)),
            HostRejection.NOT_ALLOWED,
            "phy:/dev/sda",
        ),
        (
            request(storage=(parse_storage_url("dir:///etc"),)),
            HostRejection.NOT_ALLOWED,
            "dir:///etc",
        ),
        (request(storage=(PHY, DIR)), None, ""),
    ],
)
def test_placement_refuses_what_the_host_spec_does_not_allow(
    req: PlacementRequest, code: HostRejection | None, words: str
) -> None:
    rejection = check_host(req, granted())
    assert (rejection.code if rejection else None) == code
    assert words in (rejection.detail if rejection else "")


def test_not_allowed_everywhere_is_the_reason_of_the_decision() -> None:
    decision = choose_host(
        request(storage=(parse_storage_url("phy:/dev/sda"),)), [granted("a"), granted("b")]
    )
    assert decision.host is None
    assert decision.reason is PlacementReason.NOT_ALLOWED
    assert "2 bridge or storage not allowed" in decision.message
    assert "phy:/dev/sda is not a block device KvmHost" in decision.message


@pytest.mark.parametrize(
    ("available", "storage", "code"),
    [
        ({NFS: 10 * 2**30}, (None,), None),
        ({NFS: 0}, (None,), HostRejection.INSUFFICIENT_STORAGE),
        ({NFS: 0}, (DIR,), None),
        ({DIR: 2**29}, (DIR,), HostRejection.INSUFFICIENT_STORAGE),
        ({}, (DIR,), None),  # not measured (yet): not refused
        ({PHY: 0}, (PHY,), None),  # a device is not a file pool
    ],
)
def test_placement_refuses_a_nearly_full_pool(
    available: dict[object, int], storage: tuple[object, ...], code: HostRejection | None
) -> None:
    req = request(storage=storage, min_free_bytes=2**30)
    rejection = check_host(req, granted(available_bytes=available))
    assert (rejection.code if rejection else None) == code
    if rejection is not None:
        assert "below the minimum of 1073741824" in rejection.detail
        assert "storage_min_free_bytes" in rejection.detail
    assert check_host(replace(req, min_free_bytes=0), granted(available_bytes=available)) is None
