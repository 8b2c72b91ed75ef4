"""KvmHost use-cases: reach the host over SSH, check it, prepare bridges and storage, probe."""

from __future__ import annotations

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.specs import KvmHostSpec
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource


async def reconcile(ctx: Context, host: Resource) -> Outcome:
    """Validate the spec and report the host's progress."""
    spec = KvmHostSpec.from_dict(host.spec)
    outcome = Outcome()
    outcome.conditions = cond.summary(
        ready=False, reason="Probing", message=f"probing {spec.address}:{spec.port}"
    )
    return outcome


async def probe(ctx: Context, host: Resource) -> Outcome:
    """Nothing to do until a probe exists."""
    return Outcome()


async def release(ctx: Context, host: Resource) -> None:
    """Nothing is held for a host yet."""
