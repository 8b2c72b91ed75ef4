"""`kubectl kvm force-remove`: let a VirtualNode stuck in Terminating go, saying what stays.

The operator removes a VirtualNode's finalizer only once its domain is undefined and its
disks are deleted or kept as ``reclaimPolicy`` says (``DeletionBlocked`` otherwise). When
that cannot happen (the host is gone for good, a disk is in a state no one will fix), a
person may take the finalizer off by hand. :func:`leftovers` says first what will then be
left, and where: the domain on the VM's host and every disk image with its owner record,
computed from the spec and the KvmHost's pools (never from status, as deletion itself).
:func:`release` removes kvmfleet's finalizer only, and only if the finalizers are still
those that were shown (a JSON patch with a ``test``): nothing is deleted on any host.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.specs import KvmHostSpec, VirtualNodeSpec
from kvmfleet.errors import KvmfleetError, NotFoundError
from kvmfleet.kube.objects import KubeObjects
from kvmfleet.reconcile.vmdisks import locate
from kvmfleet.settings import FINALIZER, HOST_LABEL


@dataclass(frozen=True)
class Leftovers:
    """What stays behind when kvmfleet's finalizer of a VirtualNode is removed."""

    namespace: str
    name: str
    deleting: bool
    finalizers: tuple[str, ...]
    host: str | None
    domain: str
    disks: tuple[str, ...]
    unknown: str = ""
    """Why the disk paths could not all be computed (empty when they could)."""
    blocked: str = ""
    """The Ready message while deleting (why the operator keeps the finalizer)."""

    @property
    def ours(self) -> bool:
        """Whether kvmfleet's finalizer is still on the object."""
        return FINALIZER in self.finalizers


def leftovers(kube: KubeObjects, namespace: str, name: str, mount_root: str) -> Leftovers:
    """Read the VirtualNode and its KvmHost; NotFoundError if the VirtualNode is gone."""
    obj = kube.get_virtualnode(namespace, name)
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    spec_raw = obj.get("spec") or {}
    host = (
        status.get("host") or (meta.get("labels") or {}).get(HOST_LABEL) or spec_raw.get("hostRef")
    )
    ready = cond.find(cond.parse_conditions(status.get("conditions")), cond.READY)
    disks: tuple[str, ...] = ()
    unknown = ""
    if host is None:
        unknown = "never placed on a host: no domain and no disk was made"
    else:
        try:
            host_obj = kube.get_kvmhost(str(host))
            spec = VirtualNodeSpec.from_dict(spec_raw)
            host_spec = KvmHostSpec.from_dict(host_obj.get("spec") or {})
            places = locate(name, spec, host_spec, mount_root)
            disks = tuple(
                f"{where.qemu_img_target} (and {where.qemu_img_target}.owner.json)"
                if where.file_name
                else where.path
                for where in places
            )
        except NotFoundError:
            unknown = f"KvmHost {host} does not exist any more: its pools (disk paths) are unknown"
        except KvmfleetError as error:
            unknown = f"disk paths unknown: {error.message}"
    return Leftovers(
        namespace=namespace,
        name=name,
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
        host=str(host) if host else None,
        domain=name,
        disks=disks,
        unknown=unknown,
        blocked=ready.message if ready is not None and ready.status is cond.Status.FALSE else "",
    )


def describe(left: Leftovers) -> str:
    """What will be left, as lines for a person to read before confirming."""
    lines = [f"VirtualNode {left.namespace}/{left.name}"]
    if left.blocked:
        lines.append(f"  the operator keeps it because: {left.blocked}")
    if left.host is None:
        lines.append(f"  nothing on any host ({left.unknown})")
        return "\n".join(lines) + "\n"
    lines.append(f"  left on KvmHost {left.host} (nothing is deleted there):")
    lines.append(f"    libvirt domain {left.domain} (if defined; a running one keeps running)")
    lines.extend(f"    disk {disk}" for disk in left.disks)
    if left.unknown:
        lines.append(f"    disks: {left.unknown}")
    lines.append(
        "  Remove them by hand if they are not wanted (virsh destroy/undefine, rm), or re-create "
        "a VirtualNode of the same name to adopt the disks."
    )
    return "\n".join(lines) + "\n"


def release(kube: KubeObjects, left: Leftovers) -> None:
    """Remove kvmfleet's finalizer, if the finalizers are still those in ``left``."""
    remaining = [f for f in left.finalizers if f != FINALIZER]
    kube.replace_finalizers(left.namespace, left.name, list(left.finalizers), remaining)
