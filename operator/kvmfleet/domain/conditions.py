"""Status conditions in the metav1.Condition shape, and the kstatus rules kvmfleet follows.

Every kind carries `Ready`, `Reconciling` and `Stalled` as Flux's kstatus and Argo CD read
them (https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md):

- `Reconciling=True` while the operator is still working towards the spec (abnormal-true:
  present only while true; kvmfleet writes it False afterwards so the history is visible).
- `Stalled=True` when it cannot make progress without a change by a user (a permanent
  error: invalid spec, wrong host key, ...).
- `Ready=True` when the object is what its spec asks for.

Whenever Ready is False exactly one of Reconciling and Stalled is True; which one is
decided by the reason table in domain/reasons.py.

All functions here are pure: the current time is passed in, conditions go in and new
lists come out, `lastTransitionTime` changes only when a condition's status changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kvmfleet.domain import reasons

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"


class Status(StrEnum):
    """A condition's status, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"

    @classmethod
    def of(cls, value: bool | None) -> Status:
        """True/False/None to the condition status strings."""
        if value is None:
            return cls.UNKNOWN
        return cls.TRUE if value else cls.FALSE


@dataclass(frozen=True)
class Condition:
    """One metav1.Condition."""

    type: str
    status: Status
    reason: str
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in status.conditions."""
        data: dict[str, Any] = {
            "type": self.type,
            "status": str(self.status),
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
        }
        if self.observed_generation is not None:
            data["observedGeneration"] = self.observed_generation
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        """Read one condition from status.conditions; unknown statuses read as Unknown."""
        raw = str(data.get("status", "Unknown"))
        status = Status(raw) if raw in Status.__members__.values() else Status.UNKNOWN
        generation = data.get("observedGeneration")
        return cls(
            type=str(data.get("type", "")),
            status=status,
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            last_transition_time=str(data.get("lastTransitionTime", "")),
            observed_generation=int(generation) if generation is not None else None,
        )


def rfc3339(now: datetime) -> str:
    """A timestamp as Kubernetes writes them (UTC, seconds, `Z`)."""
    return now.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object) -> datetime | None:
    """An RFC 3339 time (``Z``/``z`` or an offset) as an aware datetime; None if absent/invalid.

    The one parser for the times kvmfleet reads: status fields it wrote with rfc3339(),
    and the action annotations users write (often with fractional seconds).
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_conditions(raw: Iterable[Mapping[str, Any]] | None) -> list[Condition]:
    """status.conditions as Condition objects (missing -> empty)."""
    return [Condition.from_dict(item) for item in (raw or []) if item.get("type")]


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    """Whether the condition of that type is present and True."""
    found = find(conditions, type_)
    return found is not None and found.status is Status.TRUE


def set_condition(
    conditions: Sequence[Condition],
    new: Condition,
    *,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Insert or replace `new` by type; keep lastTransitionTime when the status is unchanged."""
    old = find(conditions, new.type)
    if old is not None and old.status == new.status and old.last_transition_time:
        stamp = old.last_transition_time
    else:
        stamp = rfc3339(now)
    updated = replace(new, last_transition_time=stamp, observed_generation=generation)
    result = [c for c in conditions if c.type != new.type]
    result.append(updated)
    return result


def merge(
    conditions: Sequence[Condition],
    updates: Iterable[Condition],
    *,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Apply several condition updates; the result is ordered by a stable, readable order."""
    result = list(conditions)
    for item in updates:
        result = set_condition(result, item, now=now, generation=generation)
    return sort_conditions(result)


_ORDER = (READY, RECONCILING, STALLED)


def sort_conditions(conditions: Iterable[Condition]) -> list[Condition]:
    """Ready, Reconciling and Stalled first, then the others by name."""

    def key(c: Condition) -> tuple[int, str]:
        return (_ORDER.index(c.type) if c.type in _ORDER else len(_ORDER), c.type)

    return sorted(conditions, key=key)


def summary(
    *,
    ready: bool,
    reason: str,
    message: str,
    stalled: bool | None = None,
) -> list[Condition]:
    """The three kstatus conditions for an outcome: when not Ready, exactly one of
    Reconciling and Stalled is True, with the same reason.

    - ready: Ready=True, Reconciling=False, Stalled=False.
    - stalled (needs a person): Ready=False, Reconciling=False, Stalled=True.
    - otherwise transient (working or retrying): Ready=False, Reconciling=True, Stalled=False.

    `stalled=None` asks the reason table (domain/reasons.py); a caught PermanentError passes
    True, as the adapters classified it.
    """
    if ready:
        return [
            Condition(READY, Status.TRUE, reason, message),
            Condition(RECONCILING, Status.FALSE, reason, message),
            Condition(STALLED, Status.FALSE, reason, ""),
        ]
    if stalled if stalled is not None else reasons.needs_person(reason):
        return [
            Condition(READY, Status.FALSE, reason, message),
            Condition(RECONCILING, Status.FALSE, reason, message),
            Condition(STALLED, Status.TRUE, reason, message),
        ]
    return [
        Condition(READY, Status.FALSE, reason, message),
        Condition(RECONCILING, Status.TRUE, reason, message),
        Condition(STALLED, Status.FALSE, reason, ""),
    ]


def to_dicts(conditions: Iterable[Condition]) -> list[dict[str, Any]]:
    """The JSON list for status.conditions."""
    return [c.to_dict() for c in conditions]


def changed(old: Sequence[Condition], new: Sequence[Condition]) -> bool:
    """Whether writing `new` would change anything a reader sees."""

    def key(items: Sequence[Condition]) -> list[tuple[str, str, str, str, int | None]]:
        return sorted(
            (c.type, str(c.status), c.reason, c.message, c.observed_generation) for c in items
        )

    return key(old) != key(new)
