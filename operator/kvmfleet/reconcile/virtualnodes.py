"""VirtualNode use-cases: schedule, provision, power, change and remove a virtual machine."""

from __future__ import annotations

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource


async def reconcile(ctx: Context, node: Resource) -> Outcome:
    """Validate the spec and report the VM's progress."""
    spec = VirtualNodeSpec.from_dict(node.spec)
    outcome = Outcome()
    outcome.status["phase"] = node.status.get("phase") or "Pending"
    where = f"on KvmHost {spec.host_ref}" if spec.host_ref else "on a host with room"
    outcome.conditions = cond.summary(
        ready=False,
        reason="Pending",
        message=f"waiting for placement {where}",
        reconciling=True,
    )
    return outcome


async def remove(ctx: Context, node: Resource) -> Outcome:
    """Nothing was created on a host yet, so nothing is left behind."""
    return Outcome()
