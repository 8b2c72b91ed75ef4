"""Is a disk image there, whose is it, and may it be used: pure decisions, no I/O.

Existence is three-valued. ``ABSENT`` is concluded only from a definitive "no such file"
(ENOENT) of the image, in a pool verified ready by the same probe: the pool directory is a
directory, with ``nfsAccess: Mount`` the mountpoint is a mounted NFS filesystem, with
``Direct`` the export answered. Anything else is ``UNKNOWN``, and unknown never leads to a
create, resize or delete.

Ownership: a small owner record next to each image (``<image>.owner.json``) names the
namespace, name and uid of the VirtualNode the disk belongs to. :func:`decide_ownership`
says whether a VirtualNode may create, use or record itself as owner of a disk.

Chains: :func:`chain_problem` checks what ``qemu-img info --backing-chain`` reported
before an image is used, adopted or resized.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

OWNER_SUFFIX = ".owner.json"
"""The owner record of ``<image>`` is ``<image>.owner.json``, in the same directory."""

OWNER_RECORD_MAX_BYTES = 4096
MAX_CHAIN_DEPTH = 16
"""The longest backing chain (image included) kvmfleet accepts."""

IMAGE_FORMATS = frozenset({"qcow2", "raw"})
NFS_FILESYSTEMS = frozenset({"nfs", "nfs4"})

# Condition reasons (DisksReady=False), see docs/conditions.md.
STORAGE_NOT_READY = "StorageNotReady"
DISK_UNREADABLE = "DiskUnreadable"
DISK_NOT_A_FILE = "DiskNotAFile"
BACKING_CHAIN_INVALID = "BackingChainInvalid"
OWNER_RECORD_UNREADABLE = "OwnerRecordUnreadable"
DISK_OWNED_BY_OTHER = "DiskOwnedByOther"
DISK_NOT_OWNED = "DiskNotOwned"
DISK_IN_USE_ELSEWHERE = "DiskInUseElsewhere"
SHRINK_REFUSED = "ShrinkRefused"


class Existence(StrEnum):
    """What a probe concluded about one image."""

    PRESENT = "present"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Owner:
    """Whose a disk is: the VirtualNode that made (or last claimed) it."""

    namespace: str
    name: str
    uid: str

    def same_vm(self, other: Owner) -> bool:
        """Same namespace and name (the uid may differ: rmvm without -p, then mkvm)."""
        return (self.namespace, self.name) == (other.namespace, other.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"

    def to_json(self) -> str:
        """The owner record's text."""
        data = {"namespace": self.namespace, "name": self.name, "uid": self.uid}
        return json.dumps(data, sort_keys=True) + "\n"


def parse_owner(text: str) -> Owner:
    """An owner record; ValueError if it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    values = [data.get(key) for key in ("namespace", "name", "uid")]
    if not all(isinstance(value, str) and value for value in values):
        raise ValueError("namespace, name and uid must be non-empty strings")
    return Owner(*(str(value) for value in values))


@dataclass(frozen=True)
class Verdict:
    """What a probe says about one disk: existence, its owner record, or why unknown."""

    existence: Existence
    owner: Owner | None = None
    reason: str = ""
    message: str = ""


def _errno(entry: object) -> str | None:
    if isinstance(entry, Mapping):
        value = entry.get("errno")
        return str(value) if value else None
    return "EIO"


def judge_probe(
    data: Mapping[str, Any], *, image: str, pool: str, nfs_mount: bool = False
) -> Verdict:
    """Classify the JSON a disk probe printed (see ``ssh/diskprobe.py``).

    Keys: ``error`` (the probe could not run: unknown), ``pool`` (``{"type": ...}`` or
    ``{"errno": ...}``), ``fstype`` (mounted filesystem type at the pool directory, or
    null), ``image`` and ``owner`` (``{"type": ...}``/``{"text": ...}`` or ``{"errno": ...}``).
    """
    if data.get("error"):
        return _unknown(STORAGE_NOT_READY, f"{pool} is not reachable: {data['error']}")
    pool_entry = data.get("pool")
    pool_errno = _errno(pool_entry)
    if pool_errno or not isinstance(pool_entry, Mapping):
        return _unknown(STORAGE_NOT_READY, f"pool directory {pool}: {pool_errno}")
    if pool_entry.get("type") != "directory":
        return _unknown(STORAGE_NOT_READY, f"pool {pool} is a {pool_entry.get('type')}")
    if nfs_mount and data.get("fstype") not in NFS_FILESYSTEMS:
        fstype = data.get("fstype") or "no filesystem mounted there"
        return _unknown(STORAGE_NOT_READY, f"{pool} is not a mounted NFS export ({fstype})")
    image_entry = data.get("image")
    image_errno = _errno(image_entry)
    owner_result = _owner(data.get("owner"), image)
    if image_errno == "ENOENT":
        if isinstance(owner_result, Verdict):
            return owner_result
        return Verdict(Existence.ABSENT, owner_result)
    if image_errno or not isinstance(image_entry, Mapping):
        return _unknown(DISK_UNREADABLE, f"{image}: {image_errno}")
    if image_entry.get("type") != "file":
        what = image_entry.get("type")
        return _unknown(DISK_NOT_A_FILE, f"{image} is a {what}, not an image file")
    if isinstance(owner_result, Verdict):
        return owner_result
    return Verdict(Existence.PRESENT, owner_result)


def _owner(entry: object, image: str) -> Owner | Verdict | None:
    errno = _errno(entry)
    if errno == "ENOENT":
        return None
    where = image + OWNER_SUFFIX
    if errno or not isinstance(entry, Mapping) or not isinstance(entry.get("text"), str):
        return _unknown(OWNER_RECORD_UNREADABLE, f"{where}: {errno or 'unreadable'}")
    try:
        return parse_owner(str(entry["text"]))
    except ValueError as error:
        return _unknown(OWNER_RECORD_UNREADABLE, f"{where} is not an owner record ({error})")


def _unknown(reason: str, message: str) -> Verdict:
    return Verdict(Existence.UNKNOWN, None, reason, message)


# --- ownership ------------------------------------------------------------------------------


class Action(StrEnum):
    """What may be done with a disk."""

    CREATE = "create"
    """Absent: write the owner record, then create the image."""
    USE = "use"
    """Present and ours."""
    CLAIM = "claim"
    """Present, to be used after (re)writing the owner record with our uid."""
    REFUSE = "refuse"
    """Not ours: touch nothing."""


@dataclass(frozen=True)
class Decision:
    """An Action, and for REFUSE the condition reason and message."""

    action: Action
    reason: str = ""
    message: str = ""


def decide_ownership(
    existence: Existence,
    record: Owner | None,
    me: Owner,
    *,
    adopt: bool = False,
    our_domain_uses_it: bool = False,
) -> Decision:
    """May ``me`` create or use this disk?

    * absent: create, unless an owner record of another VirtualNode remains (adopt: create);
    * present with a record of the same namespace and name: use (claim with the new uid);
    * present with another's record: refused unless ``adopt``;
    * present without a record (made before owners were recorded, or by hand): refused
      unless ``adopt``, or unless this VirtualNode's own libvirt domain (kvmfleet metadata
      with its uid) already uses it - the upgrade path for disks kvmfleet made earlier.
    """
    if existence is Existence.UNKNOWN:
        raise ValueError("no ownership decision for a disk whose existence is unknown")
    if existence is Existence.ABSENT:
        if record is None or record.same_vm(me) or adopt:
            return Decision(Action.CREATE)
        return Decision(
            Action.REFUSE,
            DISK_OWNED_BY_OTHER,
            f"an owner record of {record} remains without its image; remove it or set adopt: true",
        )
    if record is not None:
        if record.same_vm(me):
            return Decision(Action.USE if record.uid == me.uid else Action.CLAIM)
        if adopt:
            return Decision(Action.CLAIM)
        return Decision(
            Action.REFUSE,
            DISK_OWNED_BY_OTHER,
            f"the image belongs to {record}; set adopt: true on this disk to take it over",
        )
    if adopt or our_domain_uses_it:
        return Decision(Action.CLAIM)
    return Decision(
        Action.REFUSE,
        DISK_NOT_OWNED,
        "the image exists but has no owner record (made by hand or before kvmfleet recorded "
        "owners); set adopt: true on this disk to use it",
    )


# --- backing chains -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainLink:
    """One image of a ``qemu-img info --backing-chain`` answer."""

    filename: str
    format: str
    backing_filename: str | None = None
    backing_format: str | None = None


def chain_problem(
    chain: Sequence[ChainLink], top_format: str = "qcow2", max_depth: int = MAX_CHAIN_DEPTH
) -> str | None:
    """Why this chain must not be used, or None: readable (qemu-img answered for every
    link), no loop, at most ``max_depth`` images, every format the one recorded."""
    if not chain:
        return "qemu-img reported no image"
    if len(chain) > max_depth:
        return f"backing chain of {len(chain)} images (at most {max_depth})"
    if chain[0].format != top_format:
        return f"{chain[0].filename} is {chain[0].format}, expected {top_format}"
    seen: set[str] = set()
    for index, link in enumerate(chain):
        if link.filename in seen:
            return f"backing chain loops at {link.filename}"
        seen.add(link.filename)
        if link.format not in IMAGE_FORMATS:
            return f"{link.filename}: format {link.format} is not one of qcow2, raw"
        last = index == len(chain) - 1
        if link.backing_filename is None:
            if not last:
                return f"{link.filename} has no backing file but qemu-img listed more"
            continue
        if last:
            return f"backing file {link.backing_filename} of {link.filename} was not read"
        if link.backing_format is None:
            return (
                f"{link.filename} does not record its backing file's format (probing it is unsafe)"
            )
        if chain[index + 1].format != link.backing_format:
            return (
                f"{chain[index + 1].filename} is {chain[index + 1].format}, "
                f"but {link.filename} records {link.backing_format}"
            )
    return None
