"""``kubectl kvm capture`` and ``clone``: write the VmMaster or the clone VirtualNode.

The plugin only writes objects (so a GitOps user can write the same YAML); the operator
does the work. Both check what they can beforehand: the source VirtualNode exists and is
powered off (capture), the master exists and is captured (clone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmfleet.domain.vmmaster import clone_object, master_object
from kvmfleet.errors import KvmfleetError, NotFoundError
from kvmfleet.kube.objects import VIRTUALNODES, VMMASTERS, KubeObjects


class CloneRefusedError(KvmfleetError):
    """The request cannot be carried out as it stands (nothing was written)."""

    reason = "ActionRefused"


@dataclass(frozen=True)
class Written:
    """The object written, and a note for the user."""

    kind: str
    name: str
    note: str


def capture(
    kube: KubeObjects,
    namespace: str,
    vm: str,
    master: str,
    *,
    detached: bool = False,
    storage: str | None = None,
) -> Written:
    """Write VmMaster ``master`` capturing VirtualNode ``vm`` (``clonevm vm -t master``)."""
    node = kube.get_virtualnode(namespace, vm)  # NotFoundError: exit 3
    power = (node.get("status") or {}).get("powerState")
    body = master_object(namespace, master, vm, detached=detached, storage=storage)
    kube.create(VMMASTERS, namespace, body)
    note = ""
    if power not in (None, "Off"):
        note = (
            f"{vm} is {power}: the capture waits until it is powered off "
            f'(kubectl patch vn {vm} --type=merge -p \'{{"spec":{{"runStrategy":"Halted"}}}}\')'
        )
    return Written("VmMaster", master, note)


def clone(
    kube: KubeObjects,
    namespace: str,
    master: str,
    vm: str,
    *,
    detached: bool = False,
    host: str | None = None,
) -> Written:
    """Write VirtualNode ``vm`` cloned from VmMaster ``master`` (``clonevm vm -b master``)."""
    try:
        found: dict[str, Any] = kube.get_vmmaster(namespace, master)
    except NotFoundError:
        raise NotFoundError(f"VmMaster {namespace}/{master} not found") from None
    status = found.get("status") or {}
    if not status.get("vintage") or not status.get("disks"):
        raise CloneRefusedError(
            f"VmMaster {master} is not captured yet (phase {status.get('phase') or 'Pending'}): "
            "its disks are not known"
        )
    body = clone_object(namespace, vm, found, detached=detached, host=host)
    kube.create(VIRTUALNODES, namespace, body)
    return Written("VirtualNode", vm, "")
