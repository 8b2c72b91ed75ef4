"""Turn an Outcome into the smallest status patch: nothing when nothing a reader sees changed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kvmfleet.domain import conditions as cond
from kvmfleet.reconcile.outcome import Outcome


def status_patch(
    old_status: Mapping[str, Any] | None,
    outcome: Outcome,
    *,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status fields to patch: observedGeneration, merged conditions and changed fields.

    observedGeneration moves to `generation` only when the outcome carries conditions, i.e.
    when this generation was actually reconciled."""
    old_status = old_status or {}
    patch: dict[str, Any] = {}
    for key, value in outcome.status.items():
        if _stored(old_status.get(key)) != _stored(value):
            patch[key] = value
    old_conditions = cond.parse_conditions(old_status.get("conditions"))
    if outcome.conditions:
        merged = cond.merge(old_conditions, outcome.conditions, now=now, generation=generation)
        if cond.changed(old_conditions, merged):
            patch["conditions"] = cond.to_dicts(merged)
    # Only a pass that reconciled this generation (it always reports conditions) may say it
    # was observed; a timer tick that skipped (empty outcome) leaves observedGeneration alone.
    reconciled = bool(outcome.conditions)
    if reconciled and generation is not None and old_status.get("observedGeneration") != generation:
        patch["observedGeneration"] = generation
    return patch


def _stored(value: Any) -> Any:
    """What a merge patch leaves stored: keys set to None are removed (nested too)."""
    if isinstance(value, Mapping):
        return {k: _stored(v) for k, v in value.items() if v is not None}
    return value


def is_ready(status: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    """Whether the object is Ready after the patch is applied."""
    raw = patch.get("conditions", (status or {}).get("conditions"))
    return cond.is_true(cond.parse_conditions(raw), cond.READY)
