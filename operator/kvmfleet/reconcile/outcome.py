"""What one reconciliation produced: status to write, events to post, and when to come back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kvmfleet.domain.conditions import Condition


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event a user should see (`kubectl describe`)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Outcome:
    """The result of a use-case, applied by the thin handler that called it.

    - conditions: condition updates, merged into status.conditions by type.
    - status: other status fields to set (top-level keys replaced as a whole).
    - events: Events to post on the object.
    - labels: labels to set on the object (None removes one).
    - requeue_after: come back after this many seconds (still progressing); None: done.
    - retry_message: why the requeue happens (logged, never a failure by itself).
    """

    conditions: list[Condition] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    labels: dict[str, str | None] = field(default_factory=dict)
    requeue_after: float | None = None
    retry_message: str = ""

    def warn(self, reason: str, message: str) -> None:
        """Add a Warning event."""
        self.events.append(Event("Warning", reason, message))

    def note(self, reason: str, message: str) -> None:
        """Add a Normal event."""
        self.events.append(Event("Normal", reason, message))
