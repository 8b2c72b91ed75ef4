"""Every condition reason kvmfleet can set, and what it means for `Reconciling` / `Stalled`.

One table decides, for an object that is not Ready, which of the two kstatus conditions
holds (cli-utils kstatus, Flux and the Argo CD health checks in charts/kvmfleet/argocd
read them):

- `RECONCILING`: transient. The operator is working on it or retrying by itself (a host
  that does not answer, a VM that is starting, no capacity free yet). kstatus: InProgress;
  Argo CD: Progressing.
- `STALLED`: it will not get better without a person (an invalid spec, a refused SSH key,
  a wrong host key, a bridge whose NIC does not exist, a feature that is not implemented).
  The operator still retries on its timer and clears `Stalled` as soon as the cause is
  gone. kstatus: Failed; Argo CD: Degraded.
- `DONE`: the reason of a condition that holds (`Ready=True`, `Scheduled=True`, ...);
  it never makes an object Stalled.

Errors raised as `PermanentError` are Stalled and `TemporaryError` Reconciling wherever
they are caught (the adapters classify them); their reasons are listed here as well so
that this table is the whole list (tests/unit/test_reasons.py checks the code against it,
and docs/conditions.md lists the same reasons).
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType


class Progress(StrEnum):
    """What a reason says about an object's progress."""

    DONE = "Done"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


_DONE = Progress.DONE
_RETRY = Progress.RECONCILING
_STALL = Progress.STALLED

HOST_CONDITION_TYPES = (
    "Reachable",
    "HostKeyVerified",
    "VirtualizationCapable",
    "LibvirtReady",
    "BridgesReady",
    "StorageReady",
)
"""The KvmHost conditions whose first non-True one names Ready's reason (`<Type><Status>`)."""

_HOST_SUMMARY: dict[str, Progress] = {
    f"{type_}{status}": _RETRY for type_ in HOST_CONDITION_TYPES for status in ("False", "Unknown")
}
# A bridge or a pool the host cannot provide (missing NIC, no NFS client, no block device),
# and a host key that does not verify, need a person; the rest is retried by the probe.
_HOST_SUMMARY |= {
    "HostKeyVerifiedFalse": _STALL,
    "VirtualizationCapableFalse": _STALL,  # no trial guest starts on the host at all
    "BridgesReadyFalse": _STALL,
    "StorageReadyFalse": _STALL,
}

_TABLE: dict[str, Progress] = {
    # --- conditions that hold ------------------------------------------------------------
    "HostReady": _DONE,  # KvmHost Ready
    "Running": _DONE,  # VirtualNode Ready (phase) / Running; Ready=False while a transition runs
    "Stopped": _DONE,  # VirtualNode Ready (phase); Ready=False while a transition runs
    "Scheduled": _DONE,
    "Ready": _DONE,  # DisksReady, BridgesReady, StorageReady
    "Defined": _DONE,
    "Connected": _DONE,  # Reachable, LibvirtReady
    "Verified": _DONE,  # HostKeyVerified
    "KVM": _DONE,  # VirtualizationCapable
    "Emulated": _DONE,  # VirtualizationCapable (TCG)
    # --- transient: working or retrying --------------------------------------------------
    "Starting": _RETRY,  # VirtualNode: powering on / a transition in progress
    "NotRunning": _RETRY,  # VirtualNode Running=False (Ready follows runStrategy)
    "HostUnavailable": _RETRY,  # the VM's host does not answer: nothing is changed
    "StartFailed": _RETRY,  # QEMU did not start (libvirt's message); retried with a backoff
    "HostUnreachable": _RETRY,
    "CommandTimeout": _RETRY,
    "CommandFailed": _RETRY,
    "LibvirtUnavailable": _RETRY,
    "LibvirtError": _RETRY,  # libvirt failed in a way not known to be permanent
    "LibvirtNotReady": _RETRY,
    "NotProbed": _RETRY,
    "ApiUnavailable": _RETRY,
    "TemporaryFailure": _RETRY,
    "Error": _RETRY,
    "NotFound": _RETRY,
    "NoReadyHost": _RETRY,  # placement waits for a Ready host
    "InsufficientCapacity": _RETRY,  # ... or for capacity, as a Pending pod does
    "HostNotReady": _RETRY,  # the pinned host is not Ready (yet)
    "HostInMaintenance": _RETRY,
    "HostInsufficientCPU": _RETRY,
    "HostInsufficientMemory": _RETRY,
    "HostInsufficientCPUAndMemory": _RETRY,
    "Unschedulable": _RETRY,
    # kubectl kvm (plugin) errors: never written to status, classified for completeness
    "NotReady": _RETRY,
    "NotPlaced": _RETRY,
    "NoVncConsole": _RETRY,
    "CredentialsExpired": _RETRY,
    "Timeout": _RETRY,
    "ConsoleBusy": _RETRY,
    "ConsoleLost": _RETRY,
    "VirtualNodeNotFound": _RETRY,
    "KvmHostNotFound": _RETRY,
    # --- needs a person ------------------------------------------------------------------
    "InvalidSpec": _STALL,
    "PermanentFailure": _STALL,
    "NameInUse": _STALL,
    "MacInUse": _STALL,
    "MacSpaceExhausted": _STALL,
    "DomainNameTaken": _STALL,
    "InvalidDomainXML": _STALL,
    "DiskProblem": _STALL,  # qemu-img's message, a missing block device, a refused shrink
    "HostNotFound": _STALL,  # the pinned hostRef names no KvmHost
    "NamespaceNotAllowed": _STALL,
    "HostNamespaceNotAllowed": _STALL,
    "MissingBridge": _STALL,  # no host has the bridge the VM asks for
    "HostMissingBridge": _STALL,
    "MissingStorage": _STALL,
    "HostMissingStorage": _STALL,
    "HostKeyMismatch": _STALL,
    "HostKeyMissing": _STALL,
    "AuthenticationFailed": _STALL,
    "InvalidSSHKey": _STALL,
    "SecretNotFound": _STALL,
    "SecretKeyMissing": _STALL,
    "SecretUnreadable": _STALL,
    "ApiRefused": _STALL,
    "KubeconfigInvalid": _STALL,
    "UnexpectedOutput": _STALL,
    "LibvirtRefused": _STALL,  # libvirt refused the request itself (bad XML, unsupported)
    "OperationInvalid": _STALL,
    "NFSMountUnsupported": _STALL,
    "StoragePoolConflict": _STALL,
    "BridgeFailed": _STALL,
    "StorageFailed": _STALL,
    "NoSuchConsole": _STALL,
    "ActionRefused": _STALL,
    "ActionFailed": _STALL,
    "CpuNotSupported": _STALL,  # the spec.cpu asked for does not start on the host
    "GuestsDoNotStart": _STALL,  # VirtualizationCapable=False: no trial guest starts
    "CallTimeout": _RETRY,  # a blocking call did not return in time (hung host or API)
    "NotAllowed": _STALL,  # the namespace may not use the host or its pools (tenancy)
    "OutputTooLarge": _STALL,  # a host command printed more than the adapter keeps
    # A paused domain: libvirt's pause reason; the ones libvirt ends by itself are waited for.
    "PausedUnknown": _STALL,
    "PausedUser": _STALL,
    "PausedMigration": _RETRY,
    "PausedSave": _RETRY,
    "PausedDump": _RETRY,
    "PausedIOError": _STALL,
    "PausedNoSpace": _STALL,
    "PausedWatchdog": _STALL,
    "PausedFromSnapshot": _RETRY,
    "PausedShuttingDown": _RETRY,
    "PausedSnapshot": _RETRY,
    "PausedCrashed": _STALL,
    "PausedStartingUp": _RETRY,
    "PausedPostcopy": _RETRY,
    "PausedPostcopyFailed": _STALL,
    "PausedAPIError": _STALL,
    "PausedGuestSuspended": _STALL,
    "Allowed": _DONE,  # Authorized: the namespace may use the host and its pools
    "PasswordSet": _DONE,  # ConsoleReady: the Secret holds the password the domain accepts
    "PasswordPending": _RETRY,  # ConsoleReady: the new VNC password applies from the next start
    "Conflict": _RETRY,  # the object changed meanwhile; read again
    "HostBusy": _RETRY,  # no SSH channel to the host became free in time
    "InsufficientStorage": _RETRY,  # no host has the storage space free
    "HostInsufficientStorage": _RETRY,  # the pinned host lacks storage space
    "HostNotAllowed": _STALL,  # the pinned host does not allow the namespace (tenancy)
    "SecretNotOwned": _STALL,  # ConsoleReady: the VNC password Secret's name is taken
    # Disks (vmdisks, vmremove): unknown states are retried; what a person must decide is not.
    "StorageNotReady": _RETRY,  # pool directory / NFS mount / export not there right now
    "DiskUnreadable": _STALL,  # qemu-img cannot read the image: corrupt header, permission
    "DiskNotAFile": _STALL,  # a directory or symlink where the image should be
    "BackingChainInvalid": _STALL,
    "OwnerRecordUnreadable": _STALL,
    "DiskOwnedByOther": _STALL,  # set adopt: true to take it
    "DiskNotOwned": _STALL,  # no owner record: adopt it or remove it
    "DiskInUseElsewhere": _RETRY,  # another host runs the image; starts once it is gone
    "ShrinkRefused": _STALL,
    "DeletionBlocked": _STALL,  # fix the cause, or set kvmfleet.io/orphan
    # Moving a VM to another host (Migration condition; the VM stays where it is until it
    # moved). Waiting for a host to change is retried; what a person must change is not.
    "Migrated": _DONE,  # the last move succeeded
    "NotRequested": _DONE,  # no move is asked for (an earlier refusal no longer holds)
    "MigrationQueued": _RETRY,  # waiting for a migration slot (migrations_per_host)
    "MigrationFailed": _RETRY,  # libvirt's job failed; the VM runs on the source; retried
    "MigrationTimedOut": _RETRY,  # aborted at migration_timeout; retried
    "MigrationBlocked": _RETRY,  # a host of the move did not answer
    "MigrationInterrupted": _RETRY,  # the operator stopped during a move; the source runs it
    "MigrationUndecided": _STALL,  # the VM is active on both hosts: a person decides
    "NoMigrationTarget": _RETRY,  # drain: no other host can take the VM now
    "TargetNotReady": _RETRY,
    "TargetInMaintenance": _RETRY,
    "TargetNamespaceNotAllowed": _STALL,
    "TargetNotAllowed": _STALL,
    "TargetMissingBridge": _STALL,
    "TargetMissingStorage": _STALL,
    "TargetInsufficientStorage": _RETRY,
    "TargetInsufficientCPU": _RETRY,
    "TargetInsufficientMemory": _RETRY,
    "TargetInsufficientCPUAndMemory": _RETRY,
    "StorageNotShared": _STALL,  # a disk is not on NFS both hosts reach the same way
    "CpuIncompatible": _STALL,  # the guest CPU does not run on the target
    "GroupCpuUnavailable": _STALL,  # libvirt computes no baseline CPU for a migration group
    "MigrationPortUnreachable": _RETRY,  # the source reaches no migration port of the target
    "VirtTypeMismatch": _STALL,  # a KVM guest cannot move to an emulated (TCG) host
    # VmMaster capture and clones (domain/vmmaster.py).
    "Captured": _DONE,  # VmMaster Ready: the master images are complete and verified
    "SourceNotFound": _STALL,  # the sourceNode VirtualNode does not exist
    "SourceNotPlaced": _RETRY,  # the source VirtualNode has no host yet
    "SourceRunning": _STALL,  # power the source off (runStrategy Halted) to capture it
    "CaptureFailed": _STALL,  # qemu-img failed or a copy did not verify; retried
    "DependantsExist": _RETRY,  # deletion waits for the clones to go; completes by itself
    "WaitingForMaster": _RETRY,  # a clone's VmMaster is not captured yet
    "MasterUnreachable": _STALL,  # the clone's host cannot reach the master's storage
    "MasterDiskMissing": _STALL,  # a clone disk neither in the master nor sized, or shrunk
    **_HOST_SUMMARY,
}

REASONS = MappingProxyType(_TABLE)
"""reason -> Progress, for every reason the code can set."""


def progress_of(reason: str) -> Progress:
    """The table's verdict; a reason missing from it (a bug the tests catch) is transient."""
    return REASONS.get(reason, Progress.RECONCILING)


def needs_person(reason: str) -> bool:
    """Whether an object not Ready for this reason is Stalled (rather than Reconciling)."""
    return progress_of(reason) is Progress.STALLED
