"""Moving a VM between hosts: pre-flight refusals, the status model, crash recovery, slots."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from kvmfleet.domain.guestcpu import HYPERVISOR_DEFAULT, CpuChoice, CpuMode, HostCpu, Trial
from kvmfleet.domain.migration import (
    CPU_INCOMPATIBLE,
    STORAGE_NOT_SHARED,
    VIRT_TYPE_MISMATCH,
    DomainState,
    HostSide,
    HostSlots,
    MigrationPhase,
    MigrationStatus,
    MoveKind,
    MoveRequest,
    RecoveryAction,
    preflight,
    recover,
)
from kvmfleet.domain.placement import HostSnapshot, PlacementRequest
from kvmfleet.domain.specs import Overcommit
from kvmfleet.domain.storage_urls import NfsAccess, parse_storage_url

NFS = parse_storage_url("nfs://10.0.0.1/srv/vms")
DIR = parse_storage_url("dir:///var/lib/kvmfleet/images")
PHY = parse_storage_url("phy:/dev/sdb")
KVM64 = CpuChoice(CpuMode.CUSTOM, "kvm64")


def side(name: str, **changes: object) -> HostSide:
    base = HostSide(name, NfsAccess.DIRECT, NFS, "qemu")
    return replace(base, **changes)  # type: ignore[arg-type]


def snapshot(**changes: object) -> HostSnapshot:
    base = HostSnapshot(
        name="kvmhost2",
        ready=True,
        cpus=2,
        memory_mib=4096,
        bridges=frozenset({"br0"}),
        storage=(NFS, DIR),
        overcommit=Overcommit(cpu=1.0, memory=1.0),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def move(**changes: object) -> MoveRequest:
    base = MoveRequest(
        placement=PlacementRequest(
            "default", cpus=1, memory_mib=512, bridges=frozenset({"br0"}), storage=(None,)
        ),
        disks=(None,),
        virt_type="qemu",
        cpu=HYPERVISOR_DEFAULT,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def reasons(**kw: object) -> list[str]:
    target_snapshot = kw.pop("target_snapshot", snapshot())
    source = kw.pop("source", side("kvmhost1"))
    target = kw.pop("target", side("kvmhost2"))
    request = move(**kw)
    return [
        r.reason
        for r in preflight(request, source, target, target_snapshot)  # type: ignore[arg-type]
    ]


def test_a_vm_on_nfs_moves_to_a_ready_host_with_room() -> None:
    assert reasons() == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ready": False}, "TargetNotReady"),
        ({"maintenance": True}, "TargetInMaintenance"),
        ({"allowed_namespaces": frozenset({"other"})}, "TargetNamespaceNotAllowed"),
        ({"bridges": frozenset()}, "TargetMissingBridge"),
        ({"storage": ()}, "TargetMissingStorage"),
        ({"allocated_memory_mib": 3800}, "TargetInsufficientMemory"),
        ({"allocated_cpus": 2}, "TargetInsufficientCPU"),
        ({"allocated_cpus": 2, "allocated_memory_mib": 4000}, "TargetInsufficientCPUAndMemory"),
    ],
)
def test_the_target_must_take_the_vm_as_placement_would(
    changes: dict[str, object], reason: str
) -> None:
    assert reasons(target_snapshot=snapshot(**changes)) == [reason]


def test_room_counts_overcommit() -> None:
    crowded = snapshot(allocated_cpus=2, overcommit=Overcommit(cpu=4.0, memory=1.0))
    assert reasons(target_snapshot=crowded) == []


@pytest.mark.parametrize("storage", [DIR, PHY])
def test_disks_off_nfs_do_not_move(storage: object) -> None:
    found = preflight(
        move(disks=(storage,)), side("kvmhost1"), side("kvmhost2"), snapshot(storage=(NFS, DIR))
    )
    assert [r.reason for r in found] == [STORAGE_NOT_SHARED]
    assert found[0].needs_person
    assert "not shared storage kvmhost2 can reach" in found[0].message


def test_a_disk_in_the_sources_default_dir_pool_does_not_move() -> None:
    assert reasons(source=side("kvmhost1", default_storage=DIR)) == [STORAGE_NOT_SHARED]


def test_nfs_reached_differently_on_the_two_hosts_does_not_move() -> None:
    found = reasons(target=side("kvmhost2", nfs_access=NfsAccess.MOUNT))
    assert found == [STORAGE_NOT_SHARED]


def test_every_refusal_is_listed() -> None:
    found = reasons(
        target_snapshot=snapshot(maintenance=True),
        disks=(DIR,),
        virt_type="kvm",
        target=side("kvmhost2", virt_type="qemu"),
    )
    assert found == ["TargetInMaintenance", STORAGE_NOT_SHARED, VIRT_TYPE_MISMATCH]


def test_an_emulated_vm_may_move_to_a_kvm_host() -> None:
    assert reasons(target=side("kvmhost2", virt_type="kvm")) == []


@pytest.mark.parametrize(
    ("cpu", "target_cpu", "target_virt", "ok"),
    [
        (KVM64, HostCpu("x", (Trial(KVM64, True),)), "kvm", True),
        (KVM64, HostCpu("x", (Trial(KVM64, False, "failed to set MSR"),)), "kvm", False),
        (KVM64, None, "kvm", True),  # never tried there: libvirt compares at the start
        (CpuChoice(CpuMode.HOST_PASSTHROUGH), None, "kvm", False),
        (CpuChoice(CpuMode.MAXIMUM), None, "kvm", False),
        (CpuChoice(CpuMode.HOST_MODEL), None, "qemu", False),
        (None, None, "qemu", True),
    ],
)
def test_the_guest_cpu_must_run_on_the_target(
    cpu: CpuChoice | None, target_cpu: HostCpu | None, target_virt: str, ok: bool
) -> None:
    found = reasons(
        cpu=cpu,
        virt_type="qemu",
        target=side("kvmhost2", guest_cpu=target_cpu, virt_type=target_virt),
    )
    assert found == ([] if ok else [CPU_INCOMPATIBLE])


def test_status_round_trips() -> None:
    status = MigrationStatus(
        MigrationPhase.RUNNING,
        "kvmhost1",
        "kvmhost2",
        MoveKind.LIVE,
        start_time=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
        data_total=1000,
        data_remaining=10,
        message="copying memory",
        attempts=2,
    )
    raw = status.to_status()
    assert raw["startTime"] == "2026-01-01T12:00:00Z"
    assert raw["endTime"] is None
    assert MigrationStatus.from_status(raw) == status
    assert status.active


@pytest.mark.parametrize("raw", [None, {}, {"phase": "Nonsense", "source": "a", "target": "b"}])
def test_unreadable_status_is_none(raw: dict[str, object] | None) -> None:
    assert MigrationStatus.from_status(raw) is None


S = DomainState
A = RecoveryAction
RUNNING = MigrationStatus(MigrationPhase.RUNNING, "kvmhost1", "kvmhost2")


@pytest.mark.parametrize(
    ("source", "target", "host", "source_actions", "target_actions", "succeeded"),
    [
        # finished: the target runs it; the source's paused or left definition goes
        (S.ABSENT, S.RUNNING, "kvmhost2", (), (), True),
        (S.OFF, S.RUNNING, "kvmhost2", (A.UNDEFINE,), (), True),
        (S.PAUSED_MIGRATION, S.RUNNING, "kvmhost2", (A.DESTROY, A.UNDEFINE), (), True),
        # not finished: the source runs it; the incoming copy goes
        (S.RUNNING, S.ABSENT, "kvmhost1", (), (), False),
        (S.RUNNING, S.PAUSED_MIGRATION, "kvmhost1", (), (A.DESTROY, A.UNDEFINE), False),
        (S.RUNNING, S.OFF, "kvmhost1", (), (A.UNDEFINE,), False),
        # the source was left paused at the end of the job and no target copy runs
        (S.PAUSED_MIGRATION, S.ABSENT, "kvmhost1", (A.RESUME,), (), False),
        (
            S.PAUSED_MIGRATION,
            S.PAUSED_MIGRATION,
            "kvmhost1",
            (A.RESUME,),
            (A.DESTROY, A.UNDEFINE),
            False,
        ),
        # offline moves
        (S.OFF, S.OFF, "kvmhost2", (A.UNDEFINE,), (), True),
        (S.ABSENT, S.OFF, "kvmhost2", (), (), True),
        (S.OFF, S.ABSENT, "kvmhost1", (), (), False),
        # undecidable: never touch two running copies
        (S.RUNNING, S.RUNNING, None, (), (), False),
        (S.PAUSED, S.PAUSED_MIGRATION, None, (), (), False),
    ],
)
def test_recovery_keeps_exactly_one_copy(
    source: DomainState,
    target: DomainState,
    host: str | None,
    source_actions: tuple[RecoveryAction, ...],
    target_actions: tuple[RecoveryAction, ...],
    succeeded: bool,
) -> None:
    decision = recover(RUNNING, source, target)
    assert decision.host == host
    assert decision.source == source_actions
    assert decision.target == target_actions
    assert decision.succeeded is succeeded
    destroyed = {
        "source": A.DESTROY in decision.source,
        "target": A.DESTROY in decision.target,
    }
    assert not all(destroyed.values()), "never both copies"
    if host is None:
        assert "nothing was changed" in decision.message


def test_a_transient_target_is_made_persistent_before_the_source_definition_goes() -> None:
    decision = recover(RUNNING, S.OFF, S.RUNNING, target_persistent=False)
    assert decision.target == (A.PERSIST,)
    assert decision.source == (A.UNDEFINE,)


def test_slots_cap_each_host() -> None:
    slots = HostSlots(cap=1)
    assert slots.try_take("a", "kvmhost1", "kvmhost2")
    assert slots.try_take("a", "kvmhost1", "kvmhost2")  # again: it holds them
    assert not slots.try_take("b", "kvmhost1", "kvmhost3")
    assert "b" not in slots.busy.get("kvmhost3", set())  # all or nothing
    assert slots.holds("a")
    slots.release("a")
    assert not slots.holds("a")
    assert slots.try_take("b", "kvmhost1", "kvmhost3")


def test_the_migration_port_must_answer_from_the_source() -> None:
    from kvmfleet.domain.migration import MIGRATION_PORT_UNREACHABLE, migration_path_refusal

    assert migration_path_refusal("kh1", "kh2", "10.0.0.2", 49152, True, "connected") is None
    refusal = migration_path_refusal("kh1", "kh2", "10.0.0.2", 49152, False, "No route to host")
    assert refusal is not None and refusal.reason == MIGRATION_PORT_UNREACHABLE
    assert "kh1 cannot reach kh2's migration port 10.0.0.2:49152 (No route to host)" in (
        refusal.message
    )
