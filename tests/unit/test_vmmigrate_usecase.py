"""vmmigrate: the retry delay of a failed move and the settling of an old refusal."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from kvmfleet.domain.conditions import Status
from kvmfleet.domain.migration import MigrationPhase, MigrationStatus
from kvmfleet.reconcile import vmmigrate
from kvmfleet.reconcile.resource import Resource
from kvmfleet.reconcile.vmplacement import Placement


def failed(attempts: int, ago: float) -> MigrationStatus:
    end = datetime.fromtimestamp(time.time() - ago, UTC)
    return MigrationStatus(
        MigrationPhase.FAILED, "kvmhost1", "kvmhost2", end_time=end, attempts=attempts
    )


def test_a_failed_move_waits_30s_doubling_to_5_minutes() -> None:
    assert 25 < vmmigrate._backoff(failed(1, ago=1)) <= 30
    assert 55 < vmmigrate._backoff(failed(2, ago=1)) <= 60
    assert 295 < vmmigrate._backoff(failed(9, ago=1)) <= 300
    assert vmmigrate._backoff(failed(1, ago=31)) == 0


def node(conditions: list[dict[str, str]]) -> Resource:
    return Resource(
        kind="VirtualNode",
        name="vm1",
        namespace="default",
        uid="u1",
        generation=1,
        spec={},
        status={"conditions": conditions},
        annotations={},
        labels={},
        deleting=False,
    )


def test_an_old_refusal_is_cleared_when_no_move_is_asked_for() -> None:
    conds: dict[str, Any] = {}
    refused = {"type": "Migration", "status": "False", "reason": "StorageNotShared"}
    vmmigrate._settle(node([refused]), Placement("kvmhost1", ()), conds)
    assert conds["Migration"].status is Status.TRUE
    assert conds["Migration"].reason == "NotRequested"
    conds = {}
    vmmigrate._settle(node([]), Placement("kvmhost1", ()), conds)
    assert conds == {}
