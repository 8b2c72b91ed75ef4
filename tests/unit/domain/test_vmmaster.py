"""kvmfleet.domain.vmmaster: master naming, capture steps, dependants, reach, clone disks."""

from __future__ import annotations

from typing import Any

import pytest

from kvmfleet.domain.specs import CloneMode, VirtualNodeSpec
from kvmfleet.domain.storage_urls import disk_file_name, parse_storage_url
from kvmfleet.domain.vmmaster import (
    MasterDisk,
    Step,
    capture_refusal,
    capture_steps,
    clone_count,
    dependants,
    disk_plan,
    is_master_file,
    master_file_name,
    originator,
    partial_name,
    placement_spec,
    reach_refusal,
)
from kvmfleet.errors import InvalidSpecError

GIB = 1024**3
DIR = parse_storage_url("dir:///var/lib/vms")
NFS = parse_storage_url("nfs://10.0.0.1/srv/vms")
MASTER = "/var/lib/vms/vmmaster.default.kvmm.hda.qcow2"


def test_master_file_names_never_meet_virtualnode_disk_names() -> None:
    assert master_file_name("default", "kvmm", "hda") == "vmmaster.default.kvmm.hda.qcow2"
    assert partial_name("vmmaster.default.kvmm.hda.qcow2").endswith(".qcow2.partial")
    # A VirtualNode name is a DNS label (no dot): <vm>.<disk>.qcow2 has two dots, a master four.
    assert disk_file_name("vmmaster", "hda").count(".") == 2
    assert is_master_file(MASTER) and is_master_file("nfs://s/e/vmmaster.a.b.c.qcow2")
    assert not is_master_file("/var/lib/vms/kvm2.hda.qcow2")
    assert not is_master_file("/var/lib/vms/vmmaster.default.kvmm.hda.qcow2.partial")


@pytest.mark.parametrize(
    ("namespace", "master", "disk"),
    [("Default", "kvmm", "hda"), ("default", "../x", "hda"), ("default", "kvmm", "a.b")],
)
def test_master_file_name_parts_are_dns_labels(namespace: str, master: str, disk: str) -> None:
    with pytest.raises(InvalidSpecError):
        master_file_name(namespace, master, disk)


@pytest.mark.parametrize(
    ("mode", "present", "backing", "expected"),
    [
        # Fresh capture.
        (CloneMode.ATTACHED, False, None, (Step.COPY, Step.REBASE)),
        (CloneMode.DETACHED, False, None, (Step.COPY,)),
        # Killed after the rename: the master is complete, only the rebase is left.
        (CloneMode.ATTACHED, True, None, (Step.REBASE,)),
        (CloneMode.DETACHED, True, None, ()),
        # Killed after the rebase: nothing left.
        (CloneMode.ATTACHED, True, MASTER, ()),
        (CloneMode.ATTACHED, True, "/var/lib/vms/./" + MASTER.rsplit("/", 1)[1], ()),
        # The source was a clone of another master: it is rebased onto the new one.
        (CloneMode.ATTACHED, True, "/var/lib/vms/vmmaster.default.old.hda.qcow2", (Step.REBASE,)),
        # A master file missing while the source names it (removed by hand): copied again.
        (CloneMode.ATTACHED, False, MASTER, (Step.COPY,)),
    ],
)
def test_capture_steps_resume_where_a_pass_stopped(
    mode: CloneMode, present: bool, backing: str | None, expected: tuple[Step, ...]
) -> None:
    steps = capture_steps(
        mode, master_present=present, source_backing=backing, master_target=MASTER
    )
    assert steps == expected


def test_nfs_backing_compares_urls_exactly() -> None:
    url = "nfs://10.0.0.1/srv/vms/vmmaster.default.kvmm.hda.qcow2"
    assert (
        capture_steps(
            CloneMode.ATTACHED, master_present=True, source_backing=url, master_target=url
        )
        == ()
    )


@pytest.mark.parametrize(
    ("state", "refused"),
    [(None, False), ("Off", False), ("On", True), ("Paused", True), ("Crashed", True)],
)
def test_only_a_powered_off_source_is_captured(state: str | None, refused: bool) -> None:
    why = capture_refusal(state)
    assert (why is not None) is refused
    if why:
        assert state in why and "Halted" in why


def test_originator_is_the_first_manager() -> None:
    fields = [
        {"manager": "kopf", "time": "2026-01-02T00:00:00Z", "subresource": "status"},
        {"manager": "kubectl-kvm", "time": "2026-01-01T00:00:00Z"},
        {"manager": "argocd", "time": "2026-01-03T00:00:00Z"},
    ]
    assert originator(fields) == "kubectl-kvm"
    assert originator(None) is None
    assert originator([{"manager": "kopf", "subresource": "status"}]) is None


def vn(name: str, ns: str = "default", source: Any = None, backing: str | None = None) -> Any:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": ns}, "spec": {}, "status": {}}
    if source is not None:
        obj["spec"]["source"] = source
    if backing is not None:
        obj["status"]["disks"] = [{"name": "hda", "backingFile": backing}]
    return obj


def test_dependants_are_attached_clones_overlays_and_the_attached_source() -> None:
    nodes = [
        vn("kvm4", source={"vmMaster": "kvmm"}),
        vn("kvm5", source={"vmMaster": "kvmm", "mode": "Attached"}),
        vn("kvm3", source={"vmMaster": "kvmm", "mode": "Detached"}),
        vn("other-ns", ns="lab", source={"vmMaster": "kvmm"}),
        vn("kvm6", backing=MASTER),
        vn("kvm7", backing="/var/lib/vms/vmmaster.default.kvmmd.hda.qcow2"),
        vn("kvm2"),
        vn("kvm9", source={"vmMaster": "kvmmd"}),
    ]
    found = dependants("default", "kvmm", nodes, attached_source="kvm2")
    assert [d.name for d in found] == ["kvm2", "kvm4", "kvm5", "kvm6"]
    assert "source node" in str(found[0]) and "overlay" in str(found[3])
    assert [d.name for d in dependants("default", "kvmm", nodes)] == ["kvm4", "kvm5", "kvm6"]
    assert clone_count("default", "kvmm", nodes) == 2
    assert clone_count("default", "kvmmd", nodes) == 1
    assert dependants("default", "nothing", nodes) == []


HOST_POOLS = [DIR, NFS]


@pytest.mark.parametrize(
    ("host", "pools", "storage", "refused"),
    [
        ("kvmhost1", HOST_POOLS, DIR, False),  # the master's own host
        ("kvmhost2", HOST_POOLS, DIR, True),  # a dir pool is local, even with the same URL
        ("kvmhost2", HOST_POOLS, NFS, False),  # NFS: any host listing the export
        ("kvmhost2", [DIR], NFS, True),
        ("kvmhost1", [DIR], NFS, True),
    ],
)
def test_reach(host: str, pools: list[Any], storage: Any, refused: bool) -> None:
    why = reach_refusal(host, pools, "kvmhost1", storage)
    assert (why is not None) is refused


def clone(**spec: Any) -> VirtualNodeSpec:
    return VirtualNodeSpec.from_dict({"source": {"vmMaster": "kvmm"}, **spec})


MASTER_DISKS = (MasterDisk("hda", NFS, 4 * GIB),)


@pytest.mark.parametrize(
    ("disks", "planned", "problem"),
    [
        ([{"name": "hda"}], ["hda"], ""),
        ([{"name": "hda", "size": "8Gi"}], ["hda"], ""),  # grow
        ([{"name": "hda", "size": "4Gi"}], ["hda"], ""),
        ([{"name": "hda", "size": "1Gi"}], [], "never shrink"),
        ([{"name": "hda"}, {"name": "hdb", "size": "1Gi"}], ["hda"], ""),  # hdb blank
        ([{"name": "hdb"}], [], "no disk of that name"),
        ([], [], ""),
    ],
)
def test_disk_plan(disks: list[Any], planned: list[str], problem: str) -> None:
    plan, problems = disk_plan(clone(disks=disks), "kvmm", MASTER_DISKS)
    assert sorted(plan) == planned
    assert (problem in "; ".join(problems)) and (bool(problems) is bool(problem))


def test_a_dir_master_pins_placement_to_its_host() -> None:
    masters = (MasterDisk("hda", DIR, GIB),)
    judged, refusal = placement_spec(clone(disks=[{"name": "hda"}]), "kvmm", "kvmhost1", masters)
    assert refusal is None and judged.host_ref == "kvmhost1"
    _, refusal = placement_spec(
        clone(hostRef="kvmhost2", disks=[{"name": "hda"}]), "kvmm", "kvmhost1", masters
    )
    assert refusal is not None and "kvmhost2 cannot reach it" in refusal


def test_an_nfs_master_is_required_storage_for_placement() -> None:
    judged, refusal = placement_spec(
        clone(disks=[{"name": "hda"}]), "kvmm", "kvmhost1", MASTER_DISKS
    )
    assert refusal is None and judged.host_ref is None
    assert [d.storage for d in judged.disks] == [None, NFS]
