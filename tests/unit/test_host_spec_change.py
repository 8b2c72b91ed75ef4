"""A KvmHost's spec change makes its VMs check again at their next tick (reconcile/hosts)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kvmfleet.reconcile import hosts
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import HOST_LABEL, Settings


class FakeKube:
    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes

    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        key, _, value = label_selector.partition("=")
        return [n for n in self.nodes if n["metadata"]["labels"].get(key) == value]


def vn(uid: str, host: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": uid, "labels": {HOST_LABEL: host}}}


async def test_maintenance_set_wakes_the_vms_of_that_host_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube([vn("a", "h1"), vn("b", "h1"), vn("c", "h2")])
    ctx = Context(settings=Settings(), kube=kube, executor=ThreadPoolExecutor(1))  # type: ignore[arg-type]
    ctx.last_sync.update(a=1.0, b=1.0, c=1.0)
    probed: list[str] = []

    async def converge(ctx: Context, host: Resource) -> Outcome:
        probed.append(host.name)
        return Outcome()

    monkeypatch.setattr(hosts, "converge", converge)
    h1 = Resource.from_body({"metadata": {"name": "h1"}, "spec": {"maintenance": True}})
    await hosts.reconcile(ctx, h1)
    assert probed == ["h1"]
    assert ctx.last_sync == {"c": 1.0}  # a and b sync at their next tick, not 30 s later
