"""VmMaster use-cases: capture a golden image from a VirtualNode; guard deletion by dependents."""

from __future__ import annotations

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.specs import VmMasterSpec
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource


async def reconcile(ctx: Context, master: Resource) -> Outcome:
    """Validate the spec and say honestly that capturing is not built yet.

    Capture (`clonevm -t`) is planned, not implemented: the object is Stalled with reason
    `NotImplemented` (kstatus Failed, Argo CD Degraded) rather than Reconciling forever,
    which GitOps tools would show as a sync that never finishes.
    """
    spec = VmMasterSpec.from_dict(master.spec)
    outcome = Outcome()
    outcome.status["phase"] = master.status.get("phase") or "Pending"
    outcome.conditions = cond.summary(
        ready=False,
        reason="NotImplemented",
        message=(
            f"capturing a master image (from VirtualNode {spec.source_node}) is not "
            "implemented yet (planned); nothing is done with this VmMaster"
        ),
        stalled=True,
    )
    return outcome


async def remove(ctx: Context, master: Resource) -> Outcome:
    """Nothing has been captured yet, so nothing is left behind."""
    return Outcome()
