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
            {"ready": False, "stalled": False},
            {"Ready": "False", "Reconciling": "True", "Stalled": "False"},
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


def test_a_null_in_a_status_field_removes_and_then_matches_the_stored_field() -> None:
    stored = {"guestCpu": {"default": "host-model", "group": {"name": "lab"}}}
    outcome = Outcome()
    outcome.status["guestCpu"] = {"default": "host-model", "group": None}
    patch = status_patch(stored, outcome, generation=None, now=T0)
    assert patch == {"guestCpu": {"default": "host-model", "group": None}}  # removes group
    # once the API server dropped the key, the same outcome is no change at all
    assert (
        status_patch({"guestCpu": {"default": "host-model"}}, outcome, generation=None, now=T0)
        == {}
    )


def test_status_patch_bumps_observed_generation_only() -> None:
    outcome = Outcome(conditions=cond.summary(ready=True, reason="Ok", message="fine"))
    old = status_patch({}, outcome, generation=1, now=T0)
    patch = status_patch(old, outcome, generation=2, now=T0)
    assert patch["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in patch["conditions"])


def test_status_patch_leaves_observed_generation_alone_on_an_empty_tick() -> None:
    """A timer tick that did nothing did not reconcile the new generation."""
    outcome = Outcome(conditions=cond.summary(ready=True, reason="Ok", message="fine"))
    old = status_patch({}, outcome, generation=1, now=T0)
    assert status_patch(old, Outcome(), generation=2, now=T0) == {}
    skipped = Outcome()
    skipped.status["phase"] = "Running"
    assert "observedGeneration" not in status_patch(old, skipped, generation=2, now=T0)


def test_warning_already_announced_is_not_posted_again() -> None:
    from kvmfleet.errors import PermanentError
    from kvmfleet.handlers.common import new_events, outcome_for_error

    first = outcome_for_error(PermanentError("bad spec", reason="InvalidSpec"))
    assert [e.type for e in new_events({}, first)] == ["Warning"]
    status = status_patch({}, first, generation=1, now=T0)
    again = outcome_for_error(PermanentError("bad spec", reason="InvalidSpec"))
    assert new_events(status, again) == []
    other = outcome_for_error(PermanentError("other problem", reason="InvalidSpec"))
    assert [e.message for e in new_events(status, other)] == ["other problem"]
    other.note("Started", "x")
    assert [e.reason for e in new_events(status, other)] == ["InvalidSpec", "Started"]


def test_entering_stalled_posts_one_warning() -> None:
    from kvmfleet.handlers.common import new_events

    stalled = Outcome(
        conditions=cond.summary(ready=False, reason="HostNotFound", message="no kvmhost9")
    )
    [event] = new_events({}, stalled)
    assert (event.type, event.reason, event.message) == ("Warning", "HostNotFound", "no kvmhost9")
    status = status_patch({}, stalled, generation=1, now=T0)
    assert new_events(status, stalled) == []  # the next tick: old news
    waiting = Outcome(conditions=cond.summary(ready=False, reason="NoReadyHost", message="w"))
    assert new_events({}, waiting) == []  # a transient wait posts nothing


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", T0),
        ("2026-01-02T03:04:05z", T0),
        ("2026-01-02T04:04:05+01:00", T0),
        ("2026-01-02T03:04:05.250000Z", T0.replace(microsecond=250000)),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_one_rfc3339_parser_reads_status_and_annotations(text: object, expected: object) -> None:
    assert cond.parse_rfc3339(text) == expected
    if isinstance(text, str) and expected is not None:
        assert cond.parse_rfc3339(cond.rfc3339(cond.parse_rfc3339(text))) == T0  # type: ignore[arg-type]


def test_allocation_counts_placed_vms() -> None:
    from kvmfleet.reconcile.hostusage import allocated_on

    nodes = [
        {"spec": {"cpus": 2, "memory": "1Gi"}, "status": {"host": "h1"}},
        {"spec": {"cpus": 1, "memory": "512Mi", "hostRef": "h1"}},  # pinned, not placed
        {"spec": {"cpus": 4, "memory": "bad"}, "status": {"host": "h1"}},
        {"spec": {"cpus": 8, "memory": "8Gi"}, "status": {"host": "h2"}},
    ]
    used = allocated_on("h1", nodes)
    assert (used.cpus, used.memory_mib) == (6, 1024)
