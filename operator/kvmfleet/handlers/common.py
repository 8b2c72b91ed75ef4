"""Glue shared by the handlers: run a use-case, apply its Outcome to Kopf's patch, post events."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from kvmfleet import metrics
from kvmfleet.domain import conditions as cond
from kvmfleet.errors import KvmfleetError, PermanentError, TemporaryError
from kvmfleet.reconcile.context import CURRENT_HOST, Context
from kvmfleet.reconcile.outcome import Event, Outcome
from kvmfleet.reconcile.status import is_ready, status_patch


def outcome_for_error(error: KvmfleetError) -> Outcome:
    """The status a failed use-case leaves: Stalled for permanent errors, Reconciling otherwise."""
    outcome = Outcome()
    if isinstance(error, PermanentError):
        outcome.conditions = cond.summary(
            ready=False, reason=error.reason, message=error.message, stalled=True
        )
        outcome.warn(error.reason, error.message)
    else:
        outcome.conditions = cond.summary(ready=False, reason=error.reason, message=error.message)
        delay = error.delay if isinstance(error, TemporaryError) else 30.0
        outcome.requeue_after = delay
        outcome.retry_message = error.message
    return outcome


async def run(
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    usecase: Callable[[], Awaitable[Outcome]],
    *,
    removing: bool = False,
) -> None:
    """Run one use-case and apply what it produced; requeue through kopf.TemporaryError.

    ``removing``: the use-case is the object's deletion; once it is done (no requeue) the
    object's metric series are dropped with its finalizer."""
    started = time.monotonic()
    ctx = _context(body)
    key = f"{kind}/{body.metadata.namespace or ''}/{body.metadata.name}"
    if ctx is not None:
        ctx.activity.touch(key)
    host = CURRENT_HOST.set(None)  # the use-case names its host when it connects to one
    try:
        outcome = await usecase()
        result = "requeue" if outcome.requeue_after else "success"
    except PermanentError as error:
        outcome, result = outcome_for_error(error), "permanent"
    except KvmfleetError as error:
        outcome, result = outcome_for_error(error), "temporary"
    finally:
        CURRENT_HOST.reset(host)
        if ctx is not None:
            ctx.activity.touch(key)
    deleted_at = body.metadata.get("deletionTimestamp")
    if ctx is not None and result == "success" and deleted_at:
        ctx.activity.forget(key)  # removed: the finalizer goes with this patch
    if outcome.conditions or outcome.status or outcome.events or result != "success":
        # Not the timer ticks that did nothing: they would drown the passes that did work.
        metrics.RECONCILE_DURATION.labels(kind).observe(time.monotonic() - started)
        metrics.RECONCILE_TOTAL.labels(kind, result).inc()
    apply(kind, body, patch, outcome, logger)
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    if removing and result == "success" and outcome.requeue_after is None:
        metrics.forget(kind, namespace, name)  # gone with this patch: its series go too
    elif deleted_at and (since := cond.parse_rfc3339(deleted_at)) is not None:
        metrics.TERMINATING.set(kind, namespace, name, since.timestamp())
    if outcome.requeue_after is not None:
        raise kopf.TemporaryError(
            outcome.retry_message or "still reconciling", delay=outcome.requeue_after
        )


_CONTEXT: list[Context] = []
"""The process's Context, registered at start-up (handlers get it from Kopf's memo)."""


def register(ctx: Context) -> None:
    """Make ``ctx`` the one whose activity :func:`run` records."""
    _CONTEXT[:] = [ctx]


def _context(body: kopf.Body) -> Context | None:
    return _CONTEXT[0] if _CONTEXT else None


def forget(kind: str, body: kopf.Body) -> None:
    """The object is gone: it no longer counts for the liveness check."""
    if _CONTEXT:
        name = f"{kind}/{body.metadata.namespace or ''}/{body.metadata.name}"
        _CONTEXT[0].activity.forget(name)


def new_events(status: Mapping[str, Any], outcome: Outcome) -> list[Event]:
    """The outcome's events, announcing a state that needs a person once.

    - A Warning already announced is dropped: a permanent error is retried on every timer
      tick, and while status.conditions shows Ready=False with the same reason and message
      the news is old.
    - Entering Stalled (the reason table says it needs a person) posts one Warning with
      the Stalled reason and message, unless the outcome already carries a Warning.
    """
    old = cond.parse_conditions(status.get("conditions"))
    ready = cond.find(old, cond.READY)
    events = [
        event
        for event in outcome.events
        if not (
            event.type == "Warning"
            and ready is not None
            and ready.status is cond.Status.FALSE
            and (ready.reason, ready.message) == (event.reason, event.message)
        )
    ]
    stalled = cond.find(outcome.conditions, cond.STALLED)
    if stalled is None or stalled.status is not cond.Status.TRUE:
        return events
    before = cond.find(old, cond.STALLED)
    announced = (
        before is not None
        and before.status is cond.Status.TRUE
        and (before.reason, before.message) == (stalled.reason, stalled.message)
    )
    if not announced and not any(e.type == "Warning" for e in outcome.events):
        events.append(Event("Warning", stalled.reason, stalled.message))
    return events


def only_own_labels(diff: Any) -> bool:
    """True when a change touches nothing but metadata.labels (the operator's own host label
    is written while placing a VM: reacting to it would redo a whole pass for nothing)."""
    items = list(diff or ())
    return bool(items) and all(tuple(item[1])[:2] == ("metadata", "labels") for item in items)


def apply(
    kind: str, body: kopf.Body, patch: kopf.Patch, outcome: Outcome, logger: kopf.Logger
) -> None:
    """Write the outcome into Kopf's patch (status, labels) and post its events."""
    status: Mapping[str, Any] = body.get("status") or {}
    changes = status_patch(
        status, outcome, generation=body.metadata.get("generation"), now=datetime.now(UTC)
    )
    for key, value in changes.items():
        patch.status[key] = value
    labels = body.metadata.labels
    for key, label in outcome.labels.items():
        if labels.get(key) != label:
            patch.metadata.labels[key] = label
    for event in new_events(status, outcome):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        log = logger.warning if event.type == "Warning" else logger.info
        # k8s_skip: this line must never become a second ("Logging") Event of the same news.
        log("%s: %s", event.reason, event.message, extra={"k8s_skip": True})
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    ready = is_ready(status, changes)
    metrics.set_ready(kind, namespace, name, ready)
    if kind == "VirtualNode":
        created = cond.parse_rfc3339(body.metadata.get("creationTimestamp"))
        metrics.PROVISIONING.observe(
            namespace,
            name,
            defined=bool(status.get("domainUUID")),
            ready=ready,
            age=(datetime.now(UTC) - created).total_seconds() if created else None,
        )
