"""The metrics: documented as registered, series that leave with their objects, per-VM usage
from libvirt's bulk statistics, provisioning latency, and no-op passes left out."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import kopf
import pytest

from kvmfleet import metrics
from kvmfleet.domain.power import Call
from kvmfleet.domain.vmstats import BlockStats, DomainStats, InterfaceStats, parse_domain_stats
from kvmfleet.handlers import common
from kvmfleet.reconcile.outcome import Outcome

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS_MD = ROOT / "docs" / "operations.md"
SOURCE = ROOT / "operator" / "kvmfleet"
TYPES = {"counter", "gauge", "histogram"}


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """metric -> (type, labels) from the table in docs/operations.md."""
    table = {}
    for line in OPERATIONS_MD.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `kvmfleet_") and len(cells) >= 4:
            labels = tuple(x.strip() for x in cells[2].split(",") if x.strip())
            table[cells[0].strip("`")] = (cells[1], labels)
    return table


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """metric -> (type, labels) of every kvmfleet_ family the registry exposes."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family in metrics.REGISTRY.collect():
        if not family.name.startswith("kvmfleet_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = tuple(metrics._LABELS.get(family.name, ()))
        if not labels:
            described = {
                k for s in family.samples for k in s.labels if k != "le"
            }  # collectors: from samples
            labels = tuple(sorted(described))
        found[name] = (family.type, labels)
    return found


def test_docs_list_exactly_the_registered_metrics() -> None:
    docs = documented()
    assert len(docs) > 30
    # Collectors without samples now: add one of each so their labels show.
    metrics.VM_STATS.place("ns-doc", "vm-doc", "host-doc")
    metrics.VM_STATS.update(
        "host-doc",
        [
            DomainStats(
                "vm-doc",
                cpu_seconds=1,
                cpu_user_seconds=1,
                cpu_system_seconds=1,
                memory_domain_bytes=1,
                memory_resident_bytes=1,
                memory_available_bytes=1,
                memory_unused_bytes=1,
                blocks=(BlockStats("vda", 1, 1, 1, 1),),
                interfaces=(InterfaceStats("vnet0", 1, 1, 1, 1),),
            )
        ],
    )
    metrics.TERMINATING.set("VmMaster", "ns-doc", "m", time.time())
    try:
        regs = registered()
    finally:
        metrics.VM_STATS.forget_vm("ns-doc", "vm-doc")
        metrics.VM_STATS.forget_host("host-doc")
        metrics.TERMINATING.forget("VmMaster", "ns-doc", "m")
    assert set(docs) == set(regs), (
        f"documented only: {sorted(set(docs) - set(regs))}; "
        f"registered only: {sorted(set(regs) - set(docs))}"
    )
    for name, (kind, labels) in regs.items():
        doc_kind, doc_labels = docs[name]
        assert doc_kind == kind, name
        assert set(doc_labels) == set(labels), name


def test_names_follow_the_conventions() -> None:
    for name, (kind, _) in documented().items():
        assert kind in TYPES, name
        assert re.fullmatch(r"kvmfleet_[a-z0-9_]+", name), name
        assert (kind == "counter") == name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def test_kubevirt_names_where_a_dashboard_author_looks() -> None:
    for kubevirt in (
        "kubevirt_vmi_cpu_usage_seconds_total",
        "kubevirt_vmi_memory_resident_bytes",
        "kubevirt_vmi_memory_domain_bytes",
        "kubevirt_vmi_storage_read_traffic_bytes_total",
        "kubevirt_vmi_storage_write_traffic_bytes_total",
        "kubevirt_vmi_storage_iops_read_total",
        "kubevirt_vmi_network_receive_bytes_total",
        "kubevirt_vmi_network_transmit_bytes_total",
    ):
        assert kubevirt.replace("kubevirt_vmi_", "kvmfleet_vm_") in documented(), kubevirt


def test_operation_names_emitted_and_documented_alike() -> None:
    emitted: set[str] = {str(call) for call in Call}
    pattern = re.compile(r"(?:metrics\.operation|count_operation)\(\"([a-z-]+)\"\)")
    for path in SOURCE.rglob("*.py"):
        emitted.update(pattern.findall(path.read_text()))
    assert emitted == set(metrics.OPERATIONS)
    row = next(
        line
        for line in OPERATIONS_MD.read_text().splitlines()
        if line.startswith("| `kvmfleet_vm_operations_total`")
    )
    assert set(re.findall(r"`([a-z]+(?:-[a-z]+)?)`", row)) - {
        "success",
        "error",
        "operation",
        "result",
    } == set(metrics.OPERATIONS)
    with pytest.raises(ValueError, match="unknown operation"), metrics.operation("reconcile"):
        pass


def _value(name: str, labels: dict[str, str]) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def _series_naming(**match: str) -> list[tuple[str, dict[str, str]]]:
    found = []
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in match.items()):
                found.append((sample.name, dict(sample.labels)))
    return found


def test_a_deleted_vm_leaves_no_series() -> None:
    metrics.set_ready("VirtualNode", "ns-a", "vm-a", True)
    metrics.set_power_state("ns-a", "vm-a", "Paused")
    metrics.set_paused("ns-a", "vm-a", "IOError")
    metrics.set_vm_info("ns-a", "vm-a", "host-a", "Always")
    metrics.TERMINATING.set("VirtualNode", "ns-a", "vm-a", time.time() - 10)
    metrics.VM_STATS.update("host-a", [DomainStats("vm-a", cpu_seconds=2.5)])
    assert _value("kvmfleet_vm_cpu_usage_seconds_total", {"namespace": "ns-a", "name": "vm-a"})
    assert _value("kvmfleet_vm_paused", {"namespace": "ns-a", "name": "vm-a", "reason": "IOError"})
    age = _value(
        "kvmfleet_object_terminating_seconds",
        {"kind": "VirtualNode", "namespace": "ns-a", "name": "vm-a"},
    )
    assert age is not None and age >= 10
    metrics.forget("VirtualNode", "ns-a", "vm-a")
    assert _series_naming(namespace="ns-a", name="vm-a") == []
    metrics.forget_host("host-a")


def test_paused_and_info_keep_one_series_per_vm() -> None:
    metrics.set_paused("ns-b", "vm-b", "User")
    metrics.set_paused("ns-b", "vm-b", "NoSpace")
    assert [s for s in _series_naming(namespace="ns-b") if s[0] == "kvmfleet_vm_paused"] == [
        ("kvmfleet_vm_paused", {"namespace": "ns-b", "name": "vm-b", "reason": "NoSpace"})
    ]
    metrics.set_paused("ns-b", "vm-b", None)
    metrics.set_vm_info("ns-b", "vm-b", "h1", "Always")
    metrics.set_vm_info("ns-b", "vm-b", "h2", "Halted")
    infos = [s for s in _series_naming(namespace="ns-b") if s[0] == "kvmfleet_vm_info"]
    assert [s[1]["host"] for s in infos] == ["h2"]
    metrics.forget("VirtualNode", "ns-b", "vm-b")
    assert _series_naming(namespace="ns-b") == []


def test_a_deleted_host_leaves_no_series() -> None:
    host = "host-gone"
    metrics.set_ready("KvmHost", "", host, True)
    metrics.HOST_UP.labels(host).set(1)
    metrics.set_host_info(host, "9.0.0", "7.2.0", "kvm")
    metrics.HOST_PROBE_DURATION.labels(host).observe(1)
    metrics.HOST_CPUS.labels(host, "capacity").set(4)
    metrics.HOST_MEMORY.labels(host, "capacity").set(4)
    metrics.HOST_DOMAINS.labels(host).set(1)
    metrics.set_storage_pool(host, "default", 100, 50)
    metrics.SSH_COMMANDS.labels(host, "success").inc()
    metrics.set_ssh_backlog("192.0.2.9:22", 0, 1, 1)
    metrics.track_in_flight(host, lambda _w: 0, lambda _w: 0.0)
    metrics.VM_STATS_DURATION.labels(host).set(0.1)
    metrics.VM_STATS_ERRORS.labels(host).inc()
    assert _series_naming(host=host)
    metrics.forget_host(host, "192.0.2.9:22")
    assert _series_naming(host=host) == []
    assert _series_naming(where=host) == []
    assert _series_naming(target="192.0.2.9:22") == []
    assert _series_naming(kind="KvmHost", name=host) == []


def test_host_info_keeps_one_series_per_host() -> None:
    metrics.set_host_info("h-info", "9.0.0", "7.2.0", "kvm")
    metrics.set_host_info("h-info", "9.1.0", "8.0.0", "emulated")
    infos = [s for s in _series_naming(host="h-info") if s[0] == "kvmfleet_host_info"]
    assert [s[1]["libvirt"] for s in infos] == ["9.1.0"]
    metrics.forget_host("h-info")


def test_domain_stats_are_parsed_into_base_units() -> None:
    record = {
        "state.state": 1,
        "cpu.time": 2_500_000_000,
        "cpu.user": 1_000_000_000,
        "cpu.system": 500_000_000,
        "balloon.current": 1048576,
        "balloon.maximum": 1048576,
        "balloon.rss": 204800,
        "block.count": 2,
        "block.0.name": "vda",
        "block.0.rd.bytes": 4096,
        "block.0.wr.bytes": 8192,
        "block.0.rd.reqs": 2,
        "block.0.wr.reqs": 3,
        "block.1.name": "sda",
        "net.count": 1,
        "net.0.name": "vnet3",
        "net.0.rx.bytes": 100,
        "net.0.tx.bytes": 200,
        "net.0.rx.pkts": 1,
        "net.0.tx.pkts": 2,
    }
    stats = parse_domain_stats("vm", record)
    assert stats.cpu_seconds == pytest.approx(2.5)
    assert stats.cpu_user_seconds == pytest.approx(1.0)
    assert stats.cpu_system_seconds == pytest.approx(0.5)
    assert stats.memory_domain_bytes == 1024**3
    assert stats.memory_resident_bytes == 200 * 1024**2
    assert stats.memory_available_bytes is None  # no balloon driver: not reported
    assert stats.blocks == (
        BlockStats("vda", 4096, 8192, 2, 3),
        BlockStats("sda", None, None, None, None),
    )
    assert stats.interfaces == (InterfaceStats("vnet3", 100, 200, 1, 2),)
    empty = parse_domain_stats("off", {"state.state": 5})
    assert empty == DomainStats("off")


def test_vm_usage_is_exported_for_placed_vms_only_and_not_when_stale() -> None:
    stats = metrics.VmStats(max_age=90)
    now = [1000.0]
    stats.clock = lambda: now[0]
    stats.place("ns-c", "vm-c", "h")
    stats.update(
        "h",
        [
            DomainStats(
                "vm-c",
                cpu_seconds=3.0,
                memory_resident_bytes=10,
                blocks=(BlockStats("vda", 1, 2, 3, 4),),
                interfaces=(InterfaceStats("vnet0", 5, 6, 7, 8),),
            ),
            DomainStats("not-ours", cpu_seconds=9.0),
        ],
    )

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in stats.collect()
            for s in family.samples
        }

    vm = (("name", "vm-c"), ("namespace", "ns-c"))
    got = samples()
    assert got[("kvmfleet_vm_cpu_usage_seconds_total", vm)] == 3.0
    assert got[("kvmfleet_vm_memory_resident_bytes", vm)] == 10
    assert got[("kvmfleet_vm_storage_read_traffic_bytes_total", (("drive", "vda"), *vm))] == 1
    assert got[("kvmfleet_vm_storage_iops_write_total", (("drive", "vda"), *vm))] == 4
    assert got[("kvmfleet_vm_network_transmit_packets_total", (("interface", "vnet0"), *vm))] == 8
    assert not any(dict(labels).get("name") == "not-ours" for _, labels in got)
    assert ("kvmfleet_vm_cpu_user_usage_seconds_total", vm) not in got  # not reported
    now[0] += 91
    assert samples() == {}
    now[0] -= 91
    stats.forget_vm("ns-c", "vm-c")
    assert samples() == {}


def test_provisioning_latency_is_observed_once_for_a_new_vm() -> None:
    def count() -> float:
        return _value("kvmfleet_vm_provisioning_duration_seconds_count", {}) or 0.0

    before = count()
    p = metrics.PROVISIONING
    p.observe("ns-p", "new", defined=False, ready=False, age=5)
    p.observe("ns-p", "new", defined=True, ready=True, age=42)
    p.observe("ns-p", "new", defined=True, ready=True, age=50)  # Ready again: not again
    assert count() == before + 1
    p.observe("ns-p", "old", defined=True, ready=False, age=5)  # defined before we saw it
    p.observe("ns-p", "old", defined=True, ready=True, age=9)
    assert count() == before + 1
    p.observe("ns-p", "halted", defined=False, ready=True, age=3)  # Ready in its first pass
    assert count() == before + 2


class _Logger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__(logging.getLogger("test"), {})


def _run(body: dict[str, Any], outcome: Outcome, **kwargs: Any) -> kopf.Patch:
    patch = kopf.Patch()

    async def usecase() -> Outcome:
        return outcome

    async def go() -> None:
        await common.run("VmMaster", kopf.Body(body), patch, _Logger(), usecase, **kwargs)

    asyncio.run(go())
    return patch


def _durations() -> float:
    return _value("kvmfleet_reconcile_duration_seconds_count", {"kind": "VmMaster"}) or 0.0


def test_reconcile_duration_leaves_out_passes_that_did_nothing() -> None:
    body = {
        "metadata": {"name": "m1", "namespace": "ns-r", "generation": 1},
        "status": {},
    }
    before = _durations()
    _run(body, Outcome())
    assert _durations() == before
    work = Outcome()
    work.status["phase"] = "Pending"
    _run(body, work)
    assert _durations() == before + 1
    metrics.forget("VmMaster", "ns-r", "m1")


def test_a_finished_removal_drops_the_objects_series() -> None:
    body = {
        "metadata": {
            "name": "m2",
            "namespace": "ns-r",
            "deletionTimestamp": "2020-01-01T00:00:00Z",
        },
        "status": {},
    }
    _run(body, Outcome())  # a timer pass while deleting: the age shows
    age = _value(
        "kvmfleet_object_terminating_seconds",
        {"kind": "VmMaster", "namespace": "ns-r", "name": "m2"},
    )
    assert age is not None and age > 3600
    _run(body, Outcome(), removing=True)
    assert _series_naming(namespace="ns-r", name="m2") == []
