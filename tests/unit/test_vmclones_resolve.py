"""A clone reads its one VmMaster (a GET, never a LIST of all of them) (reconcile/vmclones)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.errors import NotFoundError, TemporaryError
from kvmfleet.reconcile import vmclones
from kvmfleet.reconcile.resource import Resource

NS = "lab"
SPEC = {"cpus": 1, "memory": "256Mi", "source": {"vmMaster": "kvmm", "mode": "Attached"}}


def context(masters: dict[tuple[str, str], dict[str, Any]], calls: list[str]) -> Any:
    def get_object(plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        calls.append(f"get {plural} {namespace}/{name}")
        try:
            return masters[(str(namespace), name)]
        except KeyError:
            raise NotFoundError(f"{plural} {namespace}/{name} not found") from None

    def list_cluster_objects(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise AssertionError("a clone pass must not list every VmMaster")

    async def blocking(fn: Any, *args: Any) -> Any:
        return fn(*args)

    kube = SimpleNamespace(get_object=get_object, list_cluster_objects=list_cluster_objects)
    return SimpleNamespace(kube=kube, blocking=blocking)


def clone(placed: bool = False) -> Resource:
    status = {"host": "kvmhost1"} if placed else {}
    return Resource.from_body(
        {"metadata": {"name": "c1", "namespace": NS, "uid": "u"}, "spec": SPEC, "status": status}
    )


def resolve(ctx: Any, node: Resource) -> Any:
    return asyncio.run(vmclones.resolve(ctx, node, VirtualNodeSpec.from_dict(node.spec)))


def test_a_missing_master_waits_and_a_placed_clone_goes_on_without_it() -> None:
    calls: list[str] = []
    ctx = context({}, calls)
    with pytest.raises(TemporaryError, match="does not exist") as error:
        resolve(ctx, clone())
    assert error.value.reason == "WaitingForMaster"
    assert resolve(ctx, clone(placed=True)) is None
    assert calls == [f"get vmmasters {NS}/kvmm"] * 2


def test_a_master_of_another_namespace_is_not_this_clones() -> None:
    ready = {"metadata": {"name": "kvmm", "namespace": "other"}, "status": {"vintage": "v"}}
    with pytest.raises(TemporaryError, match="does not exist"):
        resolve(context({("other", "kvmm"): ready}, []), clone())


def test_a_captured_master_gives_the_clone_its_disks() -> None:
    master = {
        "metadata": {"name": "kvmm", "namespace": NS},
        "status": {
            "vintage": "2026-11-30T00:00:00Z",
            "host": "kvmhost1",
            "disks": [{"name": "hda", "url": "nfs://10.0.0.1/vms/kvmm/hda.qcow2"}],
        },
    }
    found = resolve(context({(NS, "kvmm"): master}, []), clone())
    assert (
        found is not None and found.host == "kvmhost1" and [d.name for d in found.disks] == ["hda"]
    )
