"""Power decisions (xCAT rpower): what to do to a VM, from its runStrategy, state and requests.

Pure: the caller passes the observed state, the action annotations, what was already
acted on (status.lastActions), a graceful transition in progress (status.powerTransition)
and the time; `plan_power` returns the libvirt calls to make, in order, and what to
record. Each annotation is acted on exactly once: when its time is newer than the one
recorded for it.

Graceful changes (runStrategy Halted, a stop or reboot request) send an ACPI shutdown and
are finished by later calls: once the guest is off (a reboot then starts it), or after
`shutdownGracePeriodSeconds` with a hard stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from kvmfleet.domain.specs import RunStrategy

ACTIONS = ("reset", "reboot", "stop", "start")
"""Action annotations in the order they are handled when several are new."""


class Call(StrEnum):
    """A libvirt call to make."""

    START = "start"
    SHUTDOWN = "shutdown"
    DESTROY = "destroy"
    RESET = "reset"


@dataclass(frozen=True)
class Transition:
    """A graceful stop or reboot in progress."""

    action: str
    started_at: datetime


@dataclass
class PowerPlan:
    """What to do now, and what to write to status afterwards."""

    calls: list[Call] = field(default_factory=list)
    acted: dict[str, datetime] = field(default_factory=dict)
    """Actions whose request is handled now (status.lastActions.<action> := request time)."""
    transition: Transition | None = None
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) for Kubernetes Events."""

    def note(self, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))

    def warn(self, reason: str, message: str) -> None:
        self.events.append(("Warning", reason, message))


def new_requests(
    requests: Mapping[str, datetime], acted: Mapping[str, datetime]
) -> list[tuple[str, datetime]]:
    """The action requests not acted on yet, in handling order."""
    result = []
    for action in ACTIONS:
        when = requests.get(action)
        if when is not None and (action not in acted or when > acted[action]):
            result.append((action, when))
    return result


def plan_power(
    *,
    strategy: RunStrategy,
    state: str,
    requests: Mapping[str, datetime],
    acted: Mapping[str, datetime],
    transition: Transition | None,
    now: datetime,
    grace_seconds: int,
) -> PowerPlan:
    """Decide the power calls for one reconciliation. `state` is On/Off/Paused/Crashed/Unknown."""
    plan = PowerPlan(transition=transition)
    if state == "Unknown":
        plan.requeue_after = 15.0
        return plan
    on = state in ("On", "Paused")
    for action, when in new_requests(requests, acted):
        plan.acted[action] = when
        _request(plan, action, strategy, on, now)
    if plan.transition is not None:
        _continue_transition(plan, on and Call.DESTROY not in plan.calls, now, grace_seconds)
        if plan.transition is not None:
            return plan
    busy = bool(plan.calls)
    if strategy is RunStrategy.ALWAYS and not on and not busy:
        plan.calls.append(Call.START)
        plan.note("Started", "runStrategy Always: the VM was off, starting it (rpower on)")
    elif strategy is RunStrategy.HALTED and on and not busy:
        plan.calls.append(Call.SHUTDOWN)
        plan.transition = Transition("stop", now)
        plan.note("Stopping", "runStrategy Halted: ACPI shutdown sent (rpower off)")
        plan.requeue_after = 2.0
    return plan


def _request(plan: PowerPlan, action: str, strategy: RunStrategy, on: bool, now: datetime) -> None:
    if action == "reset":
        if on:
            plan.calls.append(Call.RESET)
            plan.note("Reset", "hard reset (rpower reset)")
        else:
            plan.warn("ResetIgnored", "reset requested while the VM is off")
    elif action == "reboot":
        if on:
            plan.calls.append(Call.SHUTDOWN)
            plan.transition = Transition("reboot", now)
            plan.note("Rebooting", "graceful reboot: ACPI shutdown, then start (rpower boot)")
        else:
            plan.warn("RebootIgnored", "reboot requested while the VM is off")
    elif action == "stop":
        if strategy is not RunStrategy.MANUAL:
            plan.warn(
                "StopIgnored",
                f"stop requests apply to runStrategy Manual only (this VM is {strategy}); "
                "set runStrategy: Halted to keep it off",
            )
        elif on:
            plan.calls.append(Call.SHUTDOWN)
            plan.transition = Transition("stop", now)
            plan.note("Stopping", "ACPI shutdown sent (rpower off)")
    elif action == "start":
        if strategy is RunStrategy.HALTED:
            plan.warn("StartIgnored", "runStrategy Halted keeps this VM off; set Always or Manual")
        elif not on:
            plan.calls.append(Call.START)
            plan.note("Started", "start requested (rpower on)")


def _continue_transition(plan: PowerPlan, on: bool, now: datetime, grace_seconds: int) -> None:
    transition = plan.transition
    assert transition is not None
    elapsed = (now - transition.started_at).total_seconds()
    if not on:
        plan.transition = None
        if transition.action == "reboot":
            plan.calls.append(Call.START)
            plan.note("Rebooted", "the guest shut down; started again")
        else:
            plan.note("Stopped", "the guest shut down")
    elif elapsed >= grace_seconds:
        plan.transition = None
        plan.calls.append(Call.DESTROY)
        plan.warn(
            "ForcedOff",
            f"the guest did not shut down within {grace_seconds} s; stopped hard",
        )
        if transition.action == "reboot":
            plan.calls.append(Call.START)
    else:
        plan.requeue_after = min(2.0, max(0.5, grace_seconds - elapsed))
