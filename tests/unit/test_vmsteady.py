"""vmsteady and fleetindex: when a VM needs no full pass, and what the indexes answer."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.reconcile import fleetindex, inventory, vmsteady
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import Settings
from kvmfleet.virt.guest import PowerState

UID = "6f1c2d9e-0000-4000-8000-000000000001"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _node(**status: Any) -> Resource:
    base: dict[str, Any] = {
        "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "Reconciling", "status": "False"},
        ],
        "host": "kvmhost1",
        "nics": [{"bridge": "br0", "mac": "52:54:00:00:00:01"}],
        "domainUUID": UID,
        "powerState": "Off",
    }
    base.update(status)
    return Resource(
        kind="VirtualNode",
        name="vm1",
        namespace="ns",
        uid=UID,
        generation=3,
        spec={
            "runStrategy": "Halted",
            "nics": [{"bridge": "br0"}],
            "vnc": {"enabled": False},
            "disks": [{"name": "hda", "size": "1Gi"}],
        },
        status=base,
    )


def _spec(node: Resource) -> VirtualNodeSpec:
    return VirtualNodeSpec.from_dict(node.spec)


def test_a_converged_status_is_settled() -> None:
    node = _node()
    assert vmsteady.settled_status(node, _spec(node), NOW, pending=False) is None


def test_anything_unfinished_needs_a_full_pass() -> None:
    cases = {
        "generation not observed": _node(observedGeneration=2),
        "not Ready": _node(conditions=[{"type": "Ready", "status": "False"}]),
        "power transition": _node(powerTransition={"action": "stop"}),
        "placement": _node(host=None),
        "nics": _node(nics=[]),
        "domain": _node(domainUUID=None),
        "power state": _node(powerState="On"),  # Halted wants Off
        "restart required": _node(restartRequired=True),
    }
    for why, node in cases.items():
        assert vmsteady.settled_status(node, _spec(node), NOW, pending=False) == why
    node = _node()
    assert vmsteady.settled_status(node, _spec(node), NOW, pending=True) == "action requested"


def test_a_console_password_near_its_expiry_needs_a_full_pass() -> None:
    soon = (NOW + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (NOW + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    spec = {**_node().spec, "vnc": {"enabled": True}}
    for expires, why in ((soon, "console password"), (later, None)):
        node = _node(console={"vnc": {"expiresAt": expires}})
        node = Resource(**{**node.__dict__, "spec": spec})
        assert vmsteady.settled_status(node, _spec(node), NOW, pending=False) == why


class _Index:
    def __init__(self, data: dict[Any, list[dict[str, Any]]]) -> None:
        self.data = data

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def values(self) -> Any:
        return self.data.values()


class _Ctx:
    def __init__(self, domains: dict[str, tuple[str, PowerState]]) -> None:
        self.settings = Settings(vm_sync_interval=30, vm_full_sync_interval=600)
        self.inventories: dict[str, object] = {
            "kvmhost1": inventory.Inventory(time.monotonic(), domains)
        }
        self.last_full: dict[str, float] = {}
        self.stats_targets: dict[str, object] = {}
        spec = {
            "address": "10.0.0.1",
            "sshKeySecretRef": {"name": "key", "namespace": "kvmfleet"},
            "hostKeyPolicy": "TrustOnFirstUse",
            "bridges": [{"name": "br0"}],
            "storagePools": [{"name": "local", "url": "dir:///var/lib/kvmfleet/images"}],
        }
        self.host = fleetindex.slim_kvmhost({"metadata": {"name": "kvmhost1"}, "spec": spec})
        self.fleet = fleetindex.FleetIndex(_Index({}), _Index({"kvmhost1": [self.host]}))


def _unchanged(ctx: Any, node: Resource) -> bool:
    return asyncio.run(vmsteady.unchanged(ctx, node, _spec(node), pending=False))


def test_the_inventory_decides_and_drift_fails_the_check() -> None:
    node = _node()
    ctx = _Ctx({"vm1": (UID.upper(), PowerState.OFF)})
    assert _unchanged(ctx, node)  # the first check after a start spreads the full passes
    assert 0 <= time.monotonic() - ctx.last_full[UID] <= 600
    ctx.inventories["kvmhost1"].domains["vm1"] = (UID, PowerState.ON)  # type: ignore[attr-defined]
    assert not _unchanged(ctx, node)  # started behind our back
    ctx.inventories["kvmhost1"].domains.clear()  # type: ignore[attr-defined]
    assert not _unchanged(ctx, node)  # undefined behind our back
    ctx.inventories["kvmhost1"].domains["vm1"] = ("another-uuid", PowerState.OFF)  # type: ignore[attr-defined]
    assert not _unchanged(ctx, node)  # another VM's domain of that name


def test_a_vm_on_a_host_in_maintenance_gets_the_full_pass_that_drains_it() -> None:
    node = _node()
    ctx = _Ctx({"vm1": (UID, PowerState.OFF)})
    assert _unchanged(ctx, node)
    ctx.host["spec"]["maintenance"] = True  # kubectl kvm drain: no change of the VM itself
    assert not _unchanged(ctx, node)
    ctx.host["spec"]["maintenance"] = False
    assert _unchanged(ctx, node)


def test_a_vm_its_host_no_longer_allows_gets_the_full_pass_that_says_so() -> None:
    node = _node()
    ctx = _Ctx({"vm1": (UID, PowerState.OFF)})
    assert _unchanged(ctx, node)
    ctx.host["spec"]["allowedNamespaces"] = ["somebody-else"]  # the VM itself is unchanged
    assert not _unchanged(ctx, node)
    ctx.host["spec"]["allowedNamespaces"] = ["ns"]
    assert _unchanged(ctx, node)
    ctx.host["spec"]["bridges"] = [{"name": "br1"}]  # its NIC's bridge withdrawn
    assert not _unchanged(ctx, node)


def test_a_full_pass_is_due_after_the_full_sync_interval() -> None:
    node = _node()
    ctx = _Ctx({"vm1": (UID, PowerState.OFF)})
    ctx.last_full[UID] = time.monotonic() - 601
    assert not _unchanged(ctx, node)
    vmsteady.passed_full(ctx, node, {"host": "kvmhost1", "powerState": "Off", "domainUUID": UID})  # type: ignore[arg-type]
    assert _unchanged(ctx, node)


def test_a_full_pass_writes_what_it_saw_into_the_inventory() -> None:
    node = _node(powerState="On")
    ctx = _Ctx({"vm1": (UID, PowerState.OFF)})
    vmsteady.passed_full(ctx, node, {"host": "kvmhost1", "powerState": "On", "domainUUID": UID})  # type: ignore[arg-type]
    assert ctx.inventories["kvmhost1"].domains["vm1"] == (UID, PowerState.ON)  # type: ignore[attr-defined]


def test_the_fleet_index_answers_like_a_list() -> None:
    body = {
        "metadata": {
            "name": "vm1",
            "namespace": "ns",
            "uid": UID,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kvmfleet.io/host": "kvmhost1"},
            "managedFields": [{"big": "x" * 1000}],
        },
        "spec": {"cpus": 2},
        "status": {"host": "kvmhost1", "nics": [], "kopf": {"diffbase": "x" * 1000}},
    }
    record = fleetindex.slim_virtualnode(body)
    assert "kopf" not in record["status"] and "managedFields" not in record["metadata"]
    host = fleetindex.slim_kvmhost(
        {"metadata": {"name": "kvmhost1"}, "spec": {"address": "a"}, "status": {"kopf": {}}}
    )
    fleet = fleetindex.FleetIndex(_Index({None: [record]}), _Index({"kvmhost1": [host]}))
    assert fleet.virtualnodes() == [record]
    assert fleet.virtualnodes(("kvmfleet.io/host", "kvmhost1")) == [record]
    assert fleet.virtualnodes(("kvmfleet.io/host", "kvmhost2")) == []
    assert fleet.kvmhost("kvmhost1") == host and fleet.kvmhost("nope") is None
    assert fleet.kvmhosts() == [host]


def test_the_statistics_poll_refreshes_the_inventory_and_syncs_read_nothing() -> None:
    ctx = _Ctx({})
    ctx.stats_targets = {"kvmhost1": object()}
    old = time.monotonic() - 40  # older than a sync interval
    ctx.inventories["kvmhost1"] = inventory.Inventory(old, {})
    started = time.monotonic() - 1
    inventory.refresh(ctx, "kvmhost1", started, {"vm1": (UID, PowerState.ON)})  # type: ignore[arg-type]
    assert ctx.inventories["kvmhost1"].domains == {"vm1": (UID, PowerState.ON)}  # type: ignore[attr-defined]
    # a read that started earlier than the one held does not replace it
    inventory.refresh(ctx, "kvmhost1", old, {})  # type: ignore[arg-type]
    assert "vm1" in ctx.inventories["kvmhost1"].domains  # type: ignore[attr-defined]
    # fed by the poll, 40 s is fresh enough (1.5 sync intervals): no libvirt read of its own
    ctx.inventories["kvmhost1"] = inventory.Inventory(old, {"vm1": (UID, PowerState.ON)})
    found = asyncio.run(inventory.read(ctx, "kvmhost1"))  # type: ignore[arg-type]
    assert found.read_at == old
    assert inventory._max_age(ctx, "kvmhost1") == 45  # type: ignore[arg-type]
    ctx.stats_targets = {}
    assert inventory._max_age(ctx, "kvmhost1") == 30  # type: ignore[arg-type]
