"""A KvmHost's spec change wakes the VMs placed on it, when they act on what changed
(reconcile/hosts.wake_vms, handlers/hosts.spec_fields_changed)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kvmfleet.errors import NotFoundError
from kvmfleet.handlers.hosts import spec_fields_changed
from kvmfleet.reconcile import hosts
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import HOST_LABEL, Settings


class FakeKube:
    """Lists VirtualNodes by label and records annotations; ``gone`` ones are NotFound."""

    def __init__(self, nodes: list[dict[str, Any]], gone: tuple[str, ...] = ()) -> None:
        self.nodes = nodes
        self.gone = gone
        self.annotated: list[tuple[str, str, str, dict[str, str | None]]] = []

    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        key, _, value = label_selector.partition("=")
        return [n for n in self.nodes if n["metadata"]["labels"].get(key) == value]

    def annotate(
        self, plural: str, name: str, namespace: str, annotations: dict[str, str | None]
    ) -> None:
        if name in self.gone:
            raise NotFoundError(f"virtualnodes {namespace}/{name} not found")
        self.annotated.append((plural, namespace, name, annotations))


def vn(uid: str, host: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns", "labels": {HOST_LABEL: host}}}


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    async def converge(ctx: Context, host: Resource) -> Outcome:
        seen.append(host.name)
        return Outcome()

    monkeypatch.setattr(hosts, "converge", converge)
    return seen


def context(kube: FakeKube) -> Context:
    return Context(settings=Settings(), kube=kube, executor=ThreadPoolExecutor(1))  # type: ignore[arg-type]


H1 = Resource.from_body(
    {"metadata": {"name": "h1", "generation": 7}, "spec": {"maintenance": True}}
)


async def test_maintenance_set_wakes_the_vms_of_that_host_only(probed: list[str]) -> None:
    kube = FakeKube([vn("a", "h1"), vn("b", "h1"), vn("c", "h2")], gone=("b",))
    ctx = context(kube)
    ctx.last_sync.update(a=1.0, b=1.0, c=1.0)
    await hosts.reconcile(ctx, H1, {"maintenance"})
    assert probed == ["h1"]
    # a is annotated (its pass runs now); b was deleted meanwhile: skipped, not an error
    assert kube.annotated == [("virtualnodes", "ns", "a", {hosts.HOST_CHANGED_ANNOTATION: "h1/7"})]
    assert ctx.last_sync == {"c": 1.0}


async def test_a_change_the_vms_do_not_act_on_wakes_none(probed: list[str]) -> None:
    kube = FakeKube([vn("a", "h1")])
    ctx = context(kube)
    await hosts.reconcile(ctx, H1, {"overcommit", "hostKey"})
    await hosts.reconcile(ctx, H1)  # the operator's start (resume): no storm of PATCHes
    assert probed == ["h1", "h1"] and kube.annotated == []


def test_the_changed_spec_fields_are_read_from_kopfs_diff() -> None:
    diff = [
        ("change", ("spec", "maintenance"), False, True),
        ("add", ("spec", "bridges", 0), None, {"name": "br1"}),
        ("change", ("metadata", "labels", "x"), "a", "b"),
    ]
    assert spec_fields_changed(diff) == {"maintenance", "bridges"}  # type: ignore[arg-type]
    whole = [("change", ("spec",), {"address": "a"}, {"address": "b", "maintenance": True})]
    assert spec_fields_changed(whole) == {"address", "maintenance"}  # type: ignore[arg-type]
