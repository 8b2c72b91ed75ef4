"""Leader election against an in-memory Lease API with resourceVersion conflicts."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from kvmfleet.kube.api import KubeApi
from kvmfleet.kube.lease import LeaderElector, LeaseConfig


class FakeLeases:
    """read/create/replace of one namespace's Leases, optimistic concurrency like the API."""

    def __init__(self) -> None:
        self.leases: dict[str, Any] = {}
        self.version = 0

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        if name not in self.leases:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.leases[name])

    def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> Any:
        if body.metadata.name in self.leases:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        if body.metadata.resource_version != self.leases[name].metadata.resource_version:
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)

    def _store(self, body: Any) -> Any:
        self.version += 1
        stored = copy.deepcopy(body)
        stored.metadata.resource_version = str(self.version)
        self.leases[stored.metadata.name] = stored
        return stored


@pytest.fixture
def world() -> tuple[FakeLeases, list[float]]:
    return FakeLeases(), [0.0]


def candidate(world: tuple[FakeLeases, list[float]], who: str) -> LeaderElector:
    leases, now = world
    config = LeaseConfig("ops", "kvmfleet", who, 15.0, 10.0, 2.0)
    return LeaderElector(KubeApi(None, None), config, clock=lambda: now[0], coordination=leases)


def test_one_leader_the_other_waits_then_takes_over(world) -> None:
    leases, now = world
    a, b = candidate(world, "a"), candidate(world, "b")
    assert a.try_acquire_or_renew() and a.is_leader
    assert not b.try_acquire_or_renew()
    for _ in range(20):  # a renews every 2 s: b never gets it
        now[0] += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    # a is killed: b takes over once the Lease stood still for lease_duration (15 s).
    taken = None
    for step in range(1, 12):
        now[0] += 2
        if b.try_acquire_or_renew():
            taken = step * 2
            break
    assert taken is not None and 15 <= taken <= 17
    assert leases.leases["kvmfleet"].spec.holder_identity == "b"
    assert leases.leases["kvmfleet"].spec.lease_transitions == 1
    # a comes back from a pause: it may not renew any more.
    assert not a.try_acquire_or_renew()
    now[0] += 11
    assert not a.is_leader


def test_release_hands_over_at_once(world) -> None:
    a, b = candidate(world, "a"), candidate(world, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.is_leader
    assert b.try_acquire_or_renew()


def test_a_race_for_the_same_version_has_one_winner(world) -> None:
    leases, _ = world
    a, b = candidate(world, "a"), candidate(world, "b")
    leases.create_namespaced_lease(
        "ops",
        kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(name="kvmfleet"),
            spec=kubernetes.client.V1LeaseSpec(holder_identity=None),
        ),
    )
    original = leases.read_namespaced_lease
    stale = original("kvmfleet", "ops")
    leases.read_namespaced_lease = lambda *a_, **k: copy.deepcopy(stale)  # type: ignore[method-assign]
    results = [a.try_acquire_or_renew(), b.try_acquire_or_renew()]
    assert sorted(results) == [False, True]


def test_timing_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        LeaseConfig("ops", "x", "a", lease_duration=10, renew_deadline=10, retry_period=2)
