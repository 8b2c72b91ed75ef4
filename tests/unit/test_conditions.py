"""Conditions: transitions keep their time, kstatus summaries, and the minimal status patch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kvmfleet.domain import conditions as cond
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.status import is_ready, status_patch

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_transition_time_kept_while_status_unchanged() -> None:
    first = cond.set_condition(
        [], cond.Condition("Ready", cond.Status.FALSE, "A"), now=T0, generation=1
    )
    later = T0 + timedelta(minutes=5)
    second = cond.set_condition(
        first, cond.Condition("Ready", cond.Status.FALSE, "B", "other"), now=later, generation=2
    )
    assert second[0].last_transition_time == "2026-01-02T03:04:05Z"
    assert second[0].reason == "B" and second[0].observed_generation == 2
    third = cond.set_condition(
        second, cond.Condition("Ready", cond.Status.TRUE, "C"), now=later, generation=2
    )
    assert third[0].last_transition_time == "2026-01-02T03:09:05Z"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"ready": True}, {"Ready": "True", "Reconciling": "False", "Stalled": "False"}),
        (
            {"ready": False, "stalled": True},
            {"Ready": "False", "Reconciling": "False", "Stalled": "True"},
        ),
        ({"ready": False}, {"Ready": "False", "Reconciling": "True", "Stalled": "False"}),
        (
            {"ready": False, "reconciling": False},
            {"Ready": "False", "Reconciling": "False", "Stalled": "False"},
        ),
    ],
)
def test_summary_follows_kstatus(kwargs: dict[str, bool], expected: dict[str, str]) -> None:
    result = cond.summary(reason="R", message="m", **kwargs)
    assert {c.type: str(c.status) for c in result} == expected


def test_status_patch_is_empty_when_nothing_changed() -> None:
    outcome = Outcome(conditions=cond.summary(ready=True, reason="Ok", message="fine"))
    outcome.status["phase"] = "Running"
    patch = status_patch({}, outcome, generation=3, now=T0)
    assert patch["observedGeneration"] == 3 and patch["phase"] == "Running"
    assert [c["type"] for c in patch["conditions"]] == ["Ready", "Reconciling", "Stalled"]
    assert is_ready({}, patch)
    # Applying the same outcome to the patched status changes nothing.
    again = status_patch(patch, outcome, generation=3, now=T0 + timedelta(hours=1))
    assert again == {}


def test_status_patch_bumps_observed_generation_only() -> None:
    outcome = Outcome(conditions=cond.summary(ready=True, reason="Ok", message="fine"))
    old = status_patch({}, outcome, generation=1, now=T0)
    patch = status_patch(old, outcome, generation=2, now=T0)
    assert patch["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in patch["conditions"])


def test_unknown_status_string_reads_as_unknown() -> None:
    [c] = cond.parse_conditions([{"type": "Ready", "status": "Maybe"}])
    assert c.status is cond.Status.UNKNOWN


def test_only_own_label_changes_are_recognised() -> None:
    from kvmfleet.handlers.common import only_own_labels

    label = ("add", ("metadata", "labels", "kvmfleet.io/host"), None, "kvmhost1")
    annotation = ("add", ("metadata", "annotations", "kvmfleet.io/start-requested-at"), None, "t")
    spec = ("change", ("spec", "cpus"), 1, 2)
    assert only_own_labels([label])
    assert not only_own_labels([label, spec])
    assert not only_own_labels([annotation])
    assert not only_own_labels([])
