"""VmMaster use-cases: capture a golden image from a VirtualNode; guard deletion by dependents."""

from __future__ import annotations

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.specs import VmMasterSpec
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource


async def reconcile(ctx: Context, master: Resource) -> Outcome:
    """Validate the spec and report where the capture stands."""
    spec = VmMasterSpec.from_dict(master.spec)
    outcome = Outcome()
    outcome.status["phase"] = master.status.get("phase") or "Pending"
    outcome.conditions = cond.summary(
        ready=False,
        reason="WaitingForSource",
        message=f"waiting to capture VirtualNode {spec.source_node} (it must be powered off)",
        reconciling=True,
    )
    return outcome


async def remove(ctx: Context, master: Resource) -> Outcome:
    """Nothing has been captured yet, so nothing is left behind."""
    return Outcome()
