"""Power decisions (rpower): runStrategy, one-shot requests, graceful transitions, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kvmfleet.domain.power import Call, Transition, plan_power
from kvmfleet.domain.specs import RunStrategy

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=10)


def plan(strategy: RunStrategy, state: str, **kw):  # type: ignore[no-untyped-def]
    args = {"requests": {}, "acted": {}, "transition": None, "now": T1, "grace_seconds": 60}
    args.update(kw)
    return plan_power(strategy=strategy, state=state, **args)


@pytest.mark.parametrize(
    ("strategy", "state", "calls"),
    [
        (RunStrategy.ALWAYS, "Off", [Call.START]),
        (RunStrategy.ALWAYS, "Crashed", [Call.START]),
        (RunStrategy.ALWAYS, "On", []),
        (RunStrategy.HALTED, "On", [Call.SHUTDOWN]),
        (RunStrategy.HALTED, "Off", []),
        (RunStrategy.MANUAL, "Off", []),
        (RunStrategy.MANUAL, "On", []),
        (RunStrategy.ALWAYS, "Unknown", []),
    ],
)
def test_run_strategy(strategy: RunStrategy, state: str, calls: list[Call]) -> None:
    assert plan(strategy, state).calls == calls


def test_unknown_state_never_acts_even_on_requests() -> None:
    result = plan(RunStrategy.MANUAL, "Unknown", requests={"start": T0})
    assert result.calls == [] and result.acted == {} and result.requeue_after


def test_each_request_is_acted_on_once() -> None:
    first = plan(RunStrategy.MANUAL, "Off", requests={"start": T0})
    assert first.calls == [Call.START] and first.acted == {"start": T0}
    again = plan(RunStrategy.MANUAL, "Off", requests={"start": T0}, acted={"start": T0})
    assert again.calls == []
    newer = plan(RunStrategy.MANUAL, "Off", requests={"start": T1}, acted={"start": T0})
    assert newer.calls == [Call.START]


def test_reset_is_immediate_and_reboot_is_graceful() -> None:
    reset = plan(RunStrategy.ALWAYS, "On", requests={"reset": T0})
    assert reset.calls == [Call.RESET]
    reboot = plan(RunStrategy.ALWAYS, "On", requests={"reboot": T0})
    assert reboot.calls == [Call.SHUTDOWN]
    assert reboot.transition == Transition("reboot", T1) and reboot.requeue_after


def test_reboot_finishes_by_starting_once_off() -> None:
    pending = Transition("reboot", T0)
    result = plan(RunStrategy.ALWAYS, "Off", acted={"reboot": T0}, transition=pending)
    assert result.calls == [Call.START] and result.transition is None
    waiting = plan(RunStrategy.ALWAYS, "On", transition=pending)
    assert waiting.calls == [] and waiting.transition == pending and waiting.requeue_after


def test_grace_period_ends_in_a_hard_stop() -> None:
    pending = Transition("stop", T0)
    late = plan(RunStrategy.HALTED, "On", transition=pending, now=T0 + timedelta(seconds=61))
    assert late.calls == [Call.DESTROY] and late.transition is None
    assert any(e[1] == "ForcedOff" for e in late.events)
    reboot = plan(
        RunStrategy.ALWAYS,
        "On",
        transition=Transition("reboot", T0),
        now=T0 + timedelta(seconds=61),
    )
    assert reboot.calls == [Call.DESTROY, Call.START]


def test_zero_grace_stops_hard_at_once() -> None:
    first = plan(RunStrategy.HALTED, "On", grace_seconds=0)
    assert first.calls == [Call.SHUTDOWN]
    second = plan(RunStrategy.HALTED, "On", grace_seconds=0, transition=first.transition)
    assert second.calls == [Call.DESTROY]


@pytest.mark.parametrize(
    ("strategy", "state", "action", "reason"),
    [
        (RunStrategy.ALWAYS, "On", "stop", "StopIgnored"),
        (RunStrategy.HALTED, "Off", "start", "StartIgnored"),
        (RunStrategy.MANUAL, "Off", "reset", "ResetIgnored"),
        (RunStrategy.MANUAL, "Off", "reboot", "RebootIgnored"),
    ],
)
def test_requests_that_make_no_sense_are_recorded_and_explained(
    strategy: RunStrategy, state: str, action: str, reason: str
) -> None:
    result = plan(strategy, state, requests={action: T0})
    assert result.acted == {action: T0}
    assert any(e[0] == "Warning" and e[1] == reason for e in result.events)


def test_manual_stop_is_graceful() -> None:
    result = plan(RunStrategy.MANUAL, "On", requests={"stop": T0})
    assert result.calls == [Call.SHUTDOWN] and result.transition == Transition("stop", T1)
