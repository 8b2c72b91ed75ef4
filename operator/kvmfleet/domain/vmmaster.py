"""VmMaster golden images and their clones (``clonevm -t`` / ``-b``): pure decisions, no I/O.

* Naming: a master disk is ``vmmaster.<namespace>.<master>.<disk>.qcow2`` on the master's
  storage. A VirtualNode's disk is ``<vm>.<disk>.qcow2`` with a DNS-1123 label as ``<vm>``
  (no dot), so no master file can ever be computed as a VirtualNode disk path (and so be
  purged with a VM), and no VM disk as a master file. A capture writes to
  ``<file>.partial`` first and renames only a complete, verified copy: a file under the
  final name is always whole.
* Capture planning: :func:`capture_steps` says, from what is observed on the host, which
  steps remain for one disk (copy, rebase), so a pass resumes wherever a killed one stopped.
* Dependants: :func:`dependants` lists the VirtualNodes whose disks need the master image
  (attached clones, the attached source node); a master with any cannot be deleted.
* Reach: :func:`reach_refusal` says why a host cannot use a master's storage (a ``dir://``
  pool is local to the host that holds it; NFS storage is reachable from every host that
  lists the same export in its storage pools).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from kvmfleet.domain.specs import CloneMode, DiskSpec, VirtualNodeSpec
from kvmfleet.domain.storage_urls import DISK_IMAGE_SUFFIX, StorageKind, StorageURL
from kvmfleet.domain.validation import validate_dns1123_label

MASTER_PREFIX = "vmmaster."
PARTIAL_SUFFIX = ".partial"
"""A copy being written; renamed to the final name only when complete and verified."""

# Condition reasons, see docs/conditions.md.
CAPTURED = "Captured"
CAPTURING = "Capturing"
SOURCE_NOT_FOUND = "SourceNotFound"
SOURCE_NOT_PLACED = "SourceNotPlaced"
SOURCE_RUNNING = "SourceRunning"
CAPTURE_FAILED = "CaptureFailed"
DEPENDANTS_EXIST = "DependantsExist"
WAITING_FOR_MASTER = "WaitingForMaster"
MASTER_UNREACHABLE = "MasterUnreachable"
MASTER_DISK_MISSING = "MasterDiskMissing"


def master_file_name(namespace: str, master: str, disk: str) -> str:
    """``vmmaster.<namespace>.<master>.<disk>.qcow2`` (each part a validated DNS label)."""
    parts = [
        validate_dns1123_label(namespace, "namespace"),
        validate_dns1123_label(master, "VmMaster name"),
        validate_dns1123_label(disk, "disk name"),
    ]
    return MASTER_PREFIX + ".".join(parts) + DISK_IMAGE_SUFFIX


def partial_name(file_name: str) -> str:
    """Where a copy is written before it is verified and renamed to ``file_name``."""
    return file_name + PARTIAL_SUFFIX


def is_master_file(path: str) -> bool:
    """Whether a path (or nfs:// URL) names a master image by its file name."""
    name = posixpath.basename(path)
    return name.startswith(MASTER_PREFIX) and name.endswith(DISK_IMAGE_SUFFIX)


# --- capture ---------------------------------------------------------------------------------


class Step(StrEnum):
    """What remains to be done for one disk of a capture."""

    COPY = "copy"
    """Copy the source (flattened, compacted) to the partial file, verify, rename."""
    REBASE = "rebase"
    """Attached: make the source disk an overlay of the master (data checked unchanged)."""


def capture_steps(
    mode: CloneMode, *, master_present: bool, source_backing: str | None, master_target: str
) -> tuple[Step, ...]:
    """The steps left for one disk, from what the host shows now.

    A master image under its final name is complete (it is renamed only once verified), so
    its copy is done. In Attached mode the source is rebased unless it already names the
    master as its backing file. Detached mode never touches the source.
    """
    steps: list[Step] = [] if master_present else [Step.COPY]
    if mode is CloneMode.ATTACHED and not _same_image(source_backing, master_target):
        steps.append(Step.REBASE)
    return tuple(steps)


def _same_image(backing: str | None, target: str) -> bool:
    if not backing:
        return False
    if "://" in backing or "://" in target:
        return backing == target
    return posixpath.normpath(backing) == posixpath.normpath(target)


def capture_refusal(power_state: str | None) -> str | None:
    """Why a source node in this observed power state cannot be captured (None: it can).

    ``None`` for the state means no domain is defined: its disks are not in use either.
    """
    if power_state in (None, "Off"):
        return None
    return (
        f"the source node is {power_state}: it must be powered off while it is captured "
        "(set its runStrategy to Halted); nothing was touched"
    )


def originator(managed_fields: Sequence[Mapping[str, Any]] | None) -> str | None:
    """Who created the object: the manager of its earliest managedFields entry."""
    entries = [
        entry
        for entry in managed_fields or []
        if entry.get("manager") and entry.get("subresource") != "status"
    ]
    if not entries:
        return None
    first = min(entries, key=lambda entry: str(entry.get("time") or ""))
    return str(first["manager"])


# --- dependants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dependant:
    """A VirtualNode that needs the master image, and why."""

    name: str
    why: str

    def __str__(self) -> str:
        return f"{self.name} ({self.why})"


def dependants(
    namespace: str,
    master: str,
    virtualnodes: Iterable[Mapping[str, Any]],
    *,
    attached_source: str | None = None,
) -> list[Dependant]:
    """VirtualNodes whose disks need this master: attached clones (by spec.source), the
    source node of an attached capture (``attached_source``, once the capture started:
    its disks may already be overlays of the master), and any whose disks' recorded
    backing file is one of its images.

    Objects being deleted still count: their disks exist until their deletion finishes.
    """
    prefix = f"{MASTER_PREFIX}{namespace}.{master}."
    found: list[Dependant] = []
    for obj in virtualnodes:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") != namespace:
            continue
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        source = spec.get("source") or {}
        why = None
        if attached_source is not None and meta.get("name") == attached_source:
            why = "source node, rebased onto the master"
        elif source.get("vmMaster") == master and source.get("mode", "Attached") == "Attached":
            why = "attached clone"
        for disk in status.get("disks") or []:
            backing = posixpath.basename(str(disk.get("backingFile") or ""))
            if why is None and backing.startswith(prefix) and backing.endswith(DISK_IMAGE_SUFFIX):
                why = f"disk {disk.get('name')} is an overlay of the master"
        if why is not None:
            found.append(Dependant(str(meta.get("name")), why))
    return sorted(found, key=lambda d: d.name)


def clone_count(namespace: str, master: str, virtualnodes: Iterable[Mapping[str, Any]]) -> int:
    """How many VirtualNodes are attached clones of this master (by their spec.source)."""
    count = 0
    for obj in virtualnodes:
        source = (obj.get("spec") or {}).get("source") or {}
        if (obj.get("metadata") or {}).get("namespace") == namespace and (
            source.get("vmMaster") == master and source.get("mode", "Attached") == "Attached"
        ):
            count += 1
    return count


# --- clones ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MasterDisk:
    """One image of a Ready master, as its status records it."""

    name: str
    storage: StorageURL
    virtual_size: int


def reach_refusal(
    host: str, host_storage: Iterable[StorageURL], master_host: str, storage: StorageURL
) -> str | None:
    """Why ``host`` cannot use master images on ``storage`` (None: it can).

    A ``dir://`` pool is a directory of one host: only the master's own host reaches it.
    NFS storage is reachable from any host listing the same export in its storage pools.
    """
    if storage.kind is StorageKind.DIR:
        if host != master_host:
            return (
                f"the master image is on {storage}, a directory of KvmHost {master_host}; "
                f"KvmHost {host} cannot reach it (capture the master on NFS storage to clone "
                "on other hosts)"
            )
        return None
    if storage not in set(host_storage):
        return f"KvmHost {host} has no storage pool {storage}, where the master image is"
    return None


def disk_plan(
    clone: VirtualNodeSpec, master: str, masters: Sequence[MasterDisk]
) -> tuple[dict[str, MasterDisk], list[str]]:
    """Which master image each clone disk is made from, and the problems.

    A clone disk is matched to the master disk of the same name; a disk the master lacks
    is a blank disk and needs a size. A size below the master image's size is refused
    (grow, never shrink).
    """
    by_name = {disk.name: disk for disk in masters}
    plan: dict[str, MasterDisk] = {}
    problems: list[str] = []
    for disk in clone.disks:
        found = by_name.get(disk.name)
        if found is None:
            if disk.size_bytes is None:
                names = ", ".join(sorted(by_name)) or "none"
                problems.append(
                    f"disk {disk.name}: VmMaster {master} has no disk of that name "
                    f"(it has: {names}) and no size is given for a blank disk"
                )
            continue
        if disk.size_bytes is not None and disk.size_bytes < found.virtual_size:
            problems.append(
                f"disk {disk.name}: {disk.size_bytes} bytes is smaller than the master image "
                f"({found.virtual_size} bytes); a clone may grow, never shrink"
            )
            continue
        plan[disk.name] = found
    return plan, problems


def placement_spec(
    clone: VirtualNodeSpec, master: str, master_host: str, masters: Sequence[MasterDisk]
) -> tuple[VirtualNodeSpec, str | None]:
    """The spec placement judges for a clone, or why the pinned host cannot be used.

    Master images on a ``dir://`` pool pin the clone to the master's host; on NFS, every
    export they are on is required of the host as if a disk of the clone were there (so
    placement rejects hosts that do not list it, with its usual reasons, and authorization
    checks the namespace may use it).
    """
    local = any(disk.storage.kind is StorageKind.DIR for disk in masters)
    if local:
        if clone.host_ref and clone.host_ref != master_host:
            return clone, (
                f"VmMaster {master} is on a directory pool of KvmHost {master_host}; "
                f"the pinned KvmHost {clone.host_ref} cannot reach it"
            )
        clone = replace(clone, host_ref=master_host)
    shared = sorted({str(d.storage) for d in masters if d.storage.kind is StorageKind.NFS})
    by_url = {str(d.storage): d.storage for d in masters}
    extra = tuple(
        DiskSpec(name=f"vmmaster-{index}", storage=by_url[url]) for index, url in enumerate(shared)
    )
    return replace(clone, disks=clone.disks + extra), None


# --- objects written by kubectl kvm capture / clone ----------------------------------------


def master_object(
    namespace: str, name: str, source_node: str, *, detached: bool, storage: str | None = None
) -> dict[str, Any]:
    """The VmMaster ``kubectl kvm capture VM MASTER [--detached]`` writes (``clonevm -t``)."""
    spec: dict[str, Any] = {
        "sourceNode": validate_dns1123_label(source_node, "VM"),
        "mode": str(CloneMode.DETACHED if detached else CloneMode.ATTACHED),
    }
    if storage:
        spec["storage"] = storage
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VmMaster",
        "metadata": {"name": validate_dns1123_label(name, "MASTER"), "namespace": namespace},
        "spec": spec,
    }


def clone_object(
    namespace: str,
    name: str,
    master: Mapping[str, Any],
    *,
    detached: bool,
    host: str | None = None,
) -> dict[str, Any]:
    """The VirtualNode ``kubectl kvm clone MASTER VM [--detached]`` writes (``clonevm -b``):
    the master's disks (by name, their size), NICs (bridge and model; MACs are the
    clone's own), os, arch and profile, and ``spec.source``."""
    status = master.get("status") or {}
    spec: dict[str, Any] = {
        "source": {
            "vmMaster": str((master.get("metadata") or {}).get("name")),
            "mode": str(CloneMode.DETACHED if detached else CloneMode.ATTACHED),
        },
        "disks": [{"name": str(d["name"])} for d in status.get("disks") or []],
        "nics": [
            {k: v for k, v in (("bridge", n.get("bridge")), ("model", n.get("model"))) if v}
            for n in status.get("nics") or []
        ],
    }
    for key in ("os", "arch", "profile"):
        if status.get(key):
            spec[key] = status[key]
    if host:
        spec["hostRef"] = host
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": validate_dns1123_label(name, "VM"), "namespace": namespace},
        "spec": spec,
    }
