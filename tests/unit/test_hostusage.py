"""A KvmHost's allocation and VM count follow placements and removals at once (reconcile/hostusage)."""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kvmfleet.domain.allocation import Resources
from kvmfleet.errors import TemporaryError
from kvmfleet.reconcile import hostusage
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostusage import allocated_on, usage_patch
from kvmfleet.settings import HOST_LABEL, Settings


def node(uid: str, cpus: int, memory: str, host: str | None = None, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"uid": uid, "name": uid, "namespace": "ns", "labels": {}},
        "spec": {"cpus": cpus, "memory": memory, **spec},
        "status": {},
    }
    if host:
        obj["status"]["host"] = host
        obj["metadata"]["labels"][HOST_LABEL] = host
    return obj


def test_allocation_counts_placed_vms_and_reservations_not_released_ones() -> None:
    nodes = [
        node("a", 2, "1Gi", "h1"),
        node("b", 1, "512Mi", hostRef="h1"),  # pinned, not placed (yet): its reservation counts
        node("c", 4, "bad", "h1"),  # unreadable memory counts 0
        node("d", 8, "8Gi", "h2"),
        node("e", 3, "3Gi", "h1"),  # removed, object not gone yet
    ]
    assert allocated_on("h1", nodes) == Resources(2 + 4 + 3, 1024 + 3072)
    reservations = {
        "b": ("h1", Resources(1, 512), {"52:54:00:00:00:01"}),
        "a": ("h1", Resources(2, 1024), set()),  # listed as placed: counted once
        "z": ("h1", Resources(2, 256), set()),  # placed a moment ago, not in the list yet
    }
    used = allocated_on("h1", nodes, reservations, released={"e"})
    assert used == Resources(2 + 1 + 4 + 2, 1024 + 512 + 256)


def test_patch_updates_allocation_and_domain_list() -> None:
    status = {
        "allocatable": {"cpus": 32, "memoryMiB": 8000},
        "allocated": {"cpus": 0, "memoryMiB": 0},
        "cpuSummary": "0/32",
        "memorySummary": "0/8000Mi",
        "domains": [{"name": "other", "state": "On"}],
        "domainCount": 1,
    }
    patch = usage_patch("h1", status, Resources(2, 1024), added=("kvm1", "Off"))
    assert patch == {
        "allocated": {"cpus": 2, "memoryMiB": 1024},
        "cpuSummary": "2/32",
        "memorySummary": "1024/8000Mi",
        "domains": [{"name": "other", "state": "On"}, {"name": "kvm1", "state": "Off"}],
        "domainCount": 2,
    }
    status.update(patch)
    assert usage_patch("h1", status, Resources(2, 1024), added=("kvm1", "On")) == {}
    gone = usage_patch("h1", status, Resources(0, 0), removed="kvm1")
    assert gone["cpuSummary"] == "0/32" and gone["domainCount"] == 1
    # Before the first probe nothing is allocatable yet: no allocation is invented.
    assert usage_patch("h1", {}, Resources(2, 1024)) == {}


class FakeKube:
    """The three calls publish makes, against objects in memory."""

    def __init__(self, hosts: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        self.hosts, self.nodes = hosts, nodes
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def get_object(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(("get", plural))
        if self.fail:
            raise TemporaryError("API server unavailable")
        return copy.deepcopy(self.hosts[name])

    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        self.calls.append(("list", label_selector))
        key, _, value = label_selector.partition("=")
        return [n for n in self.nodes if n["metadata"]["labels"].get(key) == value]

    def patch_status(
        self, plural: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> None:
        self.calls.append(("patch", name))
        self.hosts[name]["status"].update(status)


@pytest.fixture
def kube() -> FakeKube:
    hosts = {
        "h1": {
            "metadata": {"name": "h1"},
            "status": {
                "allocatable": {"cpus": 32, "memoryMiB": 8000},
                "cpuSummary": "0/32",
                "domains": [],
                "domainCount": 0,
            },
        }
    }
    return FakeKube(hosts, [node("old", 1, "1Gi", "h1")])


def context(kube: FakeKube) -> Context:
    return Context(settings=Settings(), kube=kube, executor=ThreadPoolExecutor(1))  # type: ignore[arg-type]


async def test_placement_definition_and_removal_show_on_the_host_at_once(kube: FakeKube) -> None:
    ctx = context(kube)
    status = kube.hosts["h1"]["status"]
    # Placed: the reservation is there before the list shows the VM's host.
    ctx.reservations["new"] = ("h1", Resources(2, 1024), set())
    await hostusage.publish(ctx, "h1")
    assert status["cpuSummary"] == "3/32" and status["memorySummary"] == "2048/8000Mi"
    assert ("list", f"{HOST_LABEL}=h1") in kube.calls  # only that host's VMs, never all of them
    kube.nodes.append(node("new", 2, "1Gi", "h1"))
    await hostusage.publish(ctx, "h1", added=("new", "Off"))
    assert status["cpuSummary"] == "3/32" and status["domainCount"] == 1
    # Removed: released while its object still exists, and its domain leaves the list.
    ctx.released.add("new")
    del ctx.reservations["new"]
    await hostusage.publish(ctx, "h1", removed="new")
    assert status["cpuSummary"] == "1/32" and status["domainCount"] == 0
    assert status["domains"] == []


async def test_a_failed_publish_changes_nothing(kube: FakeKube) -> None:
    ctx = context(kube)
    kube.fail = True
    ctx.reservations["new"] = ("h1", Resources(2, 1024), set())
    await asyncio.wait_for(hostusage.publish(ctx, "h1"), 5)  # no exception: the probe catches up
    assert kube.hosts["h1"]["status"]["cpuSummary"] == "0/32"
    assert ("patch", "h1") not in kube.calls


async def test_a_probe_that_listed_before_a_publish_leaves_the_numbers_to_it(
    kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe lists domains (seconds over SSH) and Kopf writes its status after it returns:
    a removal published meanwhile must not be overwritten by the older listing."""
    from kvmfleet.reconcile import hosts
    from kvmfleet.reconcile.outcome import Outcome
    from kvmfleet.reconcile.resource import Resource

    ctx = context(kube)
    publish_meanwhile = True

    async def listing(ctx: Context, host: Resource, spec: object, outcome: Outcome) -> None:
        outcome.status.update(
            domains=[{"name": "gone", "state": "Off"}], domainCount=1, cpuSummary="3/32"
        )
        outcome.status["allocatable"] = {"cpus": 32, "memoryMiB": 8000}
        if publish_meanwhile:  # the VM is removed while the probe waits on the host
            await hostusage.publish(ctx, "h1", removed="gone")

    monkeypatch.setattr(hosts, "_converge", listing)
    h1 = Resource.from_body(
        {
            "metadata": {"name": "h1"},
            "spec": {
                "address": "10.0.0.1",
                "sshKeySecretRef": {"name": "k", "namespace": "kvmfleet-system"},
                "hostKeyPolicy": "TrustOnFirstUse",
            },
            "status": {},
        }
    )
    stale = await hosts.converge(ctx, h1)
    assert "domains" not in stale.status and "domainCount" not in stale.status
    assert "cpuSummary" not in stale.status
    assert stale.status["allocatable"] == {"cpus": 32, "memoryMiB": 8000}  # not a usage field
    publish_meanwhile = False  # a quiet probe writes what it saw
    fresh = await hosts.converge(ctx, h1)
    assert fresh.status["domainCount"] == 1 and fresh.status["cpuSummary"] == "3/32"
