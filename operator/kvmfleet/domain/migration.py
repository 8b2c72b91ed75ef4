"""Moving a VirtualNode to another KvmHost: pre-flight checks, the status model, recovery.

Everything here is pure (no I/O): the use-case (:mod:`kvmfleet.reconcile.vmmigrate`) reads
the hosts and libvirt, then asks these functions what to do.

* :func:`preflight` says whether a VM may move from one host to another. It runs the
  placement filters of :func:`~kvmfleet.domain.placement.check_host` against the target
  (Ready, not in maintenance, namespace, bridges and storage allowed and present, free
  storage, capacity under overcommit), then the checks that only a move needs: every disk
  on storage both hosts reach as the same files (NFS, with the same ``nfsAccess``), the
  same domain type, and a guest CPU the target proved to run. Each refusal has a precise
  reason code (``Target<rejection>``, ``StorageNotShared``, ``CpuIncompatible``,
  ``VirtTypeMismatch``).
* :class:`MigrationStatus` is ``status.migration`` of a VirtualNode.
* :func:`recover` decides, after an interrupted migration (the operator was killed), which
  copy is the live one from what libvirt says about the domain on both hosts, so exactly
  one copy runs and the status converges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kvmfleet.domain.conditions import parse_rfc3339, rfc3339
from kvmfleet.domain.guestcpu import AUTO_NEVER, CpuChoice, CpuMode, HostCpu
from kvmfleet.domain.placement import HostSnapshot, PlacementRequest, check_host
from kvmfleet.domain.storage_urls import NfsAccess, StorageKind, StorageURL

STORAGE_NOT_SHARED = "StorageNotShared"
CPU_INCOMPATIBLE = "CpuIncompatible"
VIRT_TYPE_MISMATCH = "VirtTypeMismatch"
MIGRATION_PORT_UNREACHABLE = "MigrationPortUnreachable"
TARGET_PREFIX = "Target"
"""A placement rejection of the target becomes ``Target<code>``, e.g. ``TargetInMaintenance``."""


class MigrationPhase(StrEnum):
    """``status.migration.phase``."""

    QUEUED = "Queued"
    """Waiting for a free migration slot of the source or target host."""
    RUNNING = "Running"
    """Started: libvirt's job runs (or ran, when the operator was interrupted)."""
    SUCCEEDED = "Succeeded"
    """The VM runs (or is defined, when stopped) on the target only."""
    FAILED = "Failed"
    """libvirt's job failed or was aborted at the deadline; the VM stays on the source."""
    REFUSED = "Refused"
    """A pre-flight check failed; nothing was started."""


class MoveKind(StrEnum):
    """How a VM moves."""

    LIVE = "Live"
    """Running: libvirt live migration (memory copied while it runs)."""
    OFFLINE = "Offline"
    """Stopped: its definition moves; the disks stay where they are (shared storage)."""


@dataclass(frozen=True)
class MigrationStatus:
    """``status.migration`` of a VirtualNode: the last (or current) move."""

    phase: MigrationPhase
    source: str
    target: str
    kind: MoveKind = MoveKind.LIVE
    start_time: datetime | None = None
    end_time: datetime | None = None
    data_total: int | None = None
    data_remaining: int | None = None
    message: str = ""
    attempts: int = 1

    @property
    def active(self) -> bool:
        """True while the move is started and not finished (a crash leaves it so)."""
        return self.phase is MigrationPhase.RUNNING

    def to_status(self) -> dict[str, Any]:
        """The ``status.migration`` object."""
        return {
            "phase": str(self.phase),
            "source": self.source,
            "target": self.target,
            "kind": str(self.kind),
            "startTime": rfc3339(self.start_time) if self.start_time else None,
            "endTime": rfc3339(self.end_time) if self.end_time else None,
            "dataTotal": self.data_total,
            "dataRemaining": self.data_remaining,
            "message": self.message,
            "attempts": self.attempts,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> MigrationStatus | None:
        """Read ``status.migration`` back; None when absent or unreadable."""
        if not raw:
            return None
        try:
            return cls(
                phase=MigrationPhase(str(raw["phase"])),
                source=str(raw["source"]),
                target=str(raw["target"]),
                kind=MoveKind(str(raw.get("kind") or MoveKind.LIVE)),
                start_time=parse_rfc3339(raw.get("startTime")),
                end_time=parse_rfc3339(raw.get("endTime")),
                data_total=_int(raw.get("dataTotal")),
                data_remaining=_int(raw.get("dataRemaining")),
                message=str(raw.get("message") or ""),
                attempts=int(raw.get("attempts") or 1),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


# --- pre-flight ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a VM may not move: a reason code and a sentence."""

    reason: str
    message: str

    @property
    def needs_person(self) -> bool:
        """True when the refusal will not go away by waiting (storage, CPU, domain type)."""
        return self.reason in {STORAGE_NOT_SHARED, CPU_INCOMPATIBLE, VIRT_TYPE_MISMATCH}


@dataclass(frozen=True)
class HostSide:
    """What pre-flight needs of one host beyond placement's view of it."""

    name: str
    nfs_access: NfsAccess
    default_storage: StorageURL | None
    virt_type: str
    """libvirt domain type the host runs guests with: ``kvm`` or ``qemu`` (TCG)."""
    guest_cpu: HostCpu | None = None


@dataclass(frozen=True)
class MoveRequest:
    """One VM to move: its request (as placement sees it) and what it runs with now.

    ``disks``: the storage of each disk as the spec says (None: the source's first pool).
    ``cpu``: the CPU choice recorded in the domain (None: not recorded, e.g. not defined).
    ``virt_type``: the domain type it was defined with.
    """

    placement: PlacementRequest
    disks: Sequence[StorageURL | None]
    virt_type: str
    cpu: CpuChoice | None = None


def preflight(
    move: MoveRequest, source: HostSide, target: HostSide, target_snapshot: HostSnapshot
) -> list[Refusal]:
    """Every reason ``move`` may not go from ``source`` to ``target`` (empty: it may).

    ``target_snapshot.allocated_*`` must not count the VM itself (it is on the source).
    """
    refusals: list[Refusal] = []
    rejected = check_host(move.placement, target_snapshot)
    if rejected is not None:
        refusals.append(
            Refusal(
                f"{TARGET_PREFIX}{rejected.code}",
                f"KvmHost {target.name} cannot take this VM: {rejected.detail}",
            )
        )
    refusals.extend(_storage_refusals(move, source, target))
    if move.virt_type == "kvm" and target.virt_type != "kvm":
        refusals.append(
            Refusal(
                VIRT_TYPE_MISMATCH,
                f"the VM runs with KVM on {source.name} and {target.name} runs guests "
                "emulated (TCG): restart it with a domain type both hosts run",
            )
        )
    cpu = _cpu_refusal(move.cpu, source, target)
    if cpu is not None:
        refusals.append(cpu)
    return refusals


def migration_path_refusal(  # noqa: PLR0917 - the check's facts
    source: str, target: str, address: str, port: int, answered: bool, detail: str
) -> Refusal | None:
    """The live migration's memory stream goes from the source host to ``address:port`` of
    the target (its libvirt's first migration port): a refusal unless the address answered
    there (a listener, or a "connection refused" from the target itself)."""
    if answered:
        return None
    return Refusal(
        MIGRATION_PORT_UNREACHABLE,
        f"{source} cannot reach {target}'s migration port {address}:{port} ({detail}): "
        "the memory would have no path (open TCP ports 49152-49215 from the source)",
    )


def shared(url: StorageURL, source: HostSide, target: HostSide) -> str | None:
    """None when ``url`` holds the same files on both hosts; else why it does not.

    Only NFS is shared: ``dir://`` pools are directories of each host (a dir pool of the
    same path on two hosts holds different files), ``phy:`` devices are each host's own.
    Both hosts must reach the export the same way (``nfsAccess``), so the disk's libvirt
    source is the same on both (a network disk, or the file under the same mount path).
    """
    if url.kind is not StorageKind.NFS:
        return (
            f"{url} is {'a directory' if url.kind is StorageKind.DIR else 'a block device'} "
            f"of {source.name}, not shared storage {target.name} can reach"
        )
    if source.nfs_access is not target.nfs_access:
        return (
            f"{url} is reached with nfsAccess {source.nfs_access} on {source.name} and "
            f"{target.nfs_access} on {target.name}: the disk would not be the same source"
        )
    return None


def _storage_refusals(move: MoveRequest, source: HostSide, target: HostSide) -> list[Refusal]:
    problems: list[str] = []
    for index, wanted in enumerate(move.disks):
        url = wanted if wanted is not None else source.default_storage
        if url is None:
            problems.append(f"disk {index}: {source.name} has no storage pool for it")
            continue
        problem = shared(url, source, target)
        if problem is not None and f"disk {index}: {problem}" not in problems:
            problems.append(f"disk {index}: {problem}")
    if not problems:
        return []
    return [
        Refusal(
            STORAGE_NOT_SHARED,
            "; ".join(problems) + ": only disks on NFS storage both hosts use move (nothing "
            "was moved)",
        )
    ]


def _cpu_refusal(cpu: CpuChoice | None, source: HostSide, target: HostSide) -> Refusal | None:
    """The guest CPU must be one the target proved to start (its probe's trials).

    ``host-passthrough`` and ``maximum`` expose the source's own CPU: refused. A choice the
    target never tried is let through: libvirt compares the CPU itself when the migration
    starts and refuses an incompatible one (that error is reported as a failed migration).
    """
    if cpu is None:
        return None
    if cpu.mode in AUTO_NEVER:
        return Refusal(
            CPU_INCOMPATIBLE,
            f"the guest CPU is {cpu.label}: it exposes {source.name}'s own CPU and does not "
            "move; use spec.cpu auto, host-model or a named model",
        )
    if target.virt_type != "kvm" and cpu.mode is CpuMode.HOST_MODEL:
        return Refusal(
            CPU_INCOMPATIBLE,
            f"the guest CPU is host-model (KVM) and {target.name} runs guests emulated",
        )
    trial = target.guest_cpu.verdict(cpu) if target.guest_cpu is not None else None
    if trial is not None and not trial.works:
        return Refusal(
            CPU_INCOMPATIBLE,
            f"the guest CPU {cpu.label} does not start on {target.name}: "
            f"{trial.message or 'its probe trial failed'}",
        )
    return None


# --- recovery after an interruption --------------------------------------------------------


class DomainState(StrEnum):
    """The domain on one host, as recovery needs to see it."""

    ABSENT = "Absent"
    RUNNING = "Running"
    """Active and not paused for a migration (the guest runs)."""
    PAUSED_MIGRATION = "PausedMigration"
    """Active and paused by libvirt for a migration (incoming, or outgoing at its end)."""
    PAUSED = "Paused"
    """Active and paused for any other reason (a user, an I/O error)."""
    OFF = "Off"
    """Defined and not active."""


class RecoveryAction(StrEnum):
    """What to do with one host's copy."""

    KEEP = "Keep"
    RESUME = "Resume"
    """Resume the paused copy: it is the only one and libvirt left it paused."""
    DESTROY = "Destroy"
    """Stop an incomplete copy (never the only one with the guest's state)."""
    UNDEFINE = "Undefine"
    """Remove a definition that is not active (the other host has the VM)."""
    PERSIST = "Persist"
    """Make the running copy persistent (define it from the source's definition) before
    the source's definition goes."""


@dataclass(frozen=True)
class Recovery:
    """The decision: which host has the VM, and what to do on each host."""

    host: str | None
    """Where the VM is now (None: undecidable, a person must look)."""
    source: tuple[RecoveryAction, ...] = ()
    target: tuple[RecoveryAction, ...] = ()
    message: str = ""
    succeeded: bool = False
    """True when the move completed (the VM is on the target)."""


_ACTIVE = frozenset({DomainState.RUNNING, DomainState.PAUSED_MIGRATION, DomainState.PAUSED})


def recover(
    status: MigrationStatus,
    on_source: DomainState,
    on_target: DomainState,
    *,
    target_persistent: bool = True,
) -> Recovery:
    """Decide from both hosts' libvirt state where a migration interrupted by a crash ended.

    The rules, in order (S: source, T: target):

    * T running (guest runs there): the migration finished. S is stopped if it is still
      active (libvirt pauses the source at the end of a migration and keeps it so until the
      job is confirmed) and its definition removed; a transient T is made persistent first.
    * S running: the migration did not finish: an incoming copy on T (paused for the
      migration) is destroyed; a definition on T that is not active is kept only if it is
      persistent and S is not (never leave no definition), else undefined.
    * S paused for the migration, T absent or paused for it: nothing finished; S is resumed
      and T's incomplete copy destroyed.
    * Both off (an offline move): the target's definition wins when it exists.
    * Anything else (both running, paused by a user...): no action; a person must look.
    """
    src, tgt = status.source, status.target
    if on_target is DomainState.RUNNING and on_source is not DomainState.RUNNING:
        actions: list[RecoveryAction] = []
        if on_source in _ACTIVE:
            actions.append(RecoveryAction.DESTROY)
        if on_source is not DomainState.ABSENT:
            actions.append(RecoveryAction.UNDEFINE)
        return Recovery(
            tgt,
            source=tuple(actions),
            target=() if target_persistent else (RecoveryAction.PERSIST,),
            message=f"the migration had finished: the VM runs on {tgt}",
            succeeded=True,
        )
    if on_source is DomainState.RUNNING and on_target is not DomainState.RUNNING:
        target_actions: tuple[RecoveryAction, ...] = ()
        if on_target in (DomainState.PAUSED_MIGRATION, DomainState.PAUSED):
            target_actions = (RecoveryAction.DESTROY, RecoveryAction.UNDEFINE)
        elif on_target is DomainState.OFF:
            target_actions = (RecoveryAction.UNDEFINE,)
        return Recovery(
            src,
            target=target_actions,
            message=f"the migration did not finish: the VM runs on {src}",
        )
    if on_source is DomainState.PAUSED_MIGRATION and on_target in (
        DomainState.ABSENT,
        DomainState.PAUSED_MIGRATION,
        DomainState.OFF,
    ):
        target_actions = ()
        if on_target is DomainState.PAUSED_MIGRATION:
            target_actions = (RecoveryAction.DESTROY, RecoveryAction.UNDEFINE)
        elif on_target is DomainState.OFF:
            target_actions = (RecoveryAction.UNDEFINE,)
        return Recovery(
            src,
            source=(RecoveryAction.RESUME,),
            target=target_actions,
            message=f"the migration did not finish: the VM was resumed on {src}",
        )
    if on_source in (DomainState.OFF, DomainState.ABSENT) and on_target is DomainState.OFF:
        return Recovery(
            tgt,
            source=(RecoveryAction.UNDEFINE,) if on_source is DomainState.OFF else (),
            message=f"the stopped VM's definition is on {tgt}",
            succeeded=True,
        )
    if on_source is DomainState.OFF and on_target is DomainState.ABSENT:
        return Recovery(src, message=f"the stopped VM's definition is still on {src}")
    if on_source is DomainState.ABSENT and on_target is DomainState.ABSENT:
        return Recovery(src, message=f"the VM is defined on neither {src} nor {tgt}")
    return Recovery(
        None,
        message=f"the VM is {on_source} on {src} and {on_target} on {tgt}: nothing was "
        "changed; stop the copy that must not run (virsh destroy) and the operator goes on",
    )


@dataclass
class HostSlots:
    """How many migrations each host takes part in now (as source or target), capped.

    ``try_take`` takes a slot on both hosts or none; requests beyond the cap are answered
    with False and retried by their VM's next pass (they say Queued meanwhile).
    """

    cap: int
    busy: dict[str, set[str]] = field(default_factory=dict)

    def try_take(self, vm: str, *hosts: str) -> bool:
        """Take a slot on every host for ``vm``; False (nothing taken) when one is full."""
        for host in hosts:
            users = self.busy.get(host, set())
            if vm not in users and len(users) >= self.cap:
                return False
        for host in hosts:
            self.busy.setdefault(host, set()).add(vm)
        return True

    def release(self, vm: str) -> None:
        """Give back every slot ``vm`` holds."""
        for users in self.busy.values():
            users.discard(vm)

    def holds(self, vm: str) -> bool:
        """True while ``vm`` holds a slot (its migration runs in this process)."""
        return any(vm in users for users in self.busy.values())
