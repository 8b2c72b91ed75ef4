"""kvmfleet.reconcile.vmdisks on an in-memory host: which commands run for each disk state.

The fake host answers the probe, owner-record and qemu-img commands from a script and
records every argv, so each test states exactly what was (not) run. The same steps on
real hosts are covered by tests/integration/test_disk_safety.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from kvmfleet.domain.diskstate import Owner
from kvmfleet.domain.specs import KvmHostSpec, VirtualNodeSpec
from kvmfleet.reconcile import vmdisks
from kvmfleet.ssh.session import CommandResult

ME = Owner("ns-a", "vm1", "uid-1")
OTHER = Owner("ns-b", "vm1", "uid-2")
GIB = 1024**3
IMAGE = "/var/lib/kvmfleet/images/vm1.hda.qcow2"
MOUNT_ROOT = "/var/lib/kvmfleet/pools"


def host_spec(nfs_access: str = "Direct") -> KvmHostSpec:
    return KvmHostSpec.from_dict(
        {
            "address": "10.0.0.5",
            "hostKeyPolicy": "TrustOnFirstUse",
            "sshKeySecretRef": {"name": "k", "namespace": "kvmfleet-system"},
            "storagePools": [
                {"name": "local", "url": "dir:///var/lib/kvmfleet/images"},
                {"name": "shared", "url": "nfs://10.0.0.1/srv/vms"},
            ],
            "nfsAccess": nfs_access,
        }
    )


def spec(storage: str = "dir:///var/lib/kvmfleet/images", **disk: Any) -> VirtualNodeSpec:
    return VirtualNodeSpec.from_dict(
        {"disks": [{"name": "hda", "size": "1Gi", "storage": storage, **disk}]}
    )


def info(size: int = GIB, fmt: str = "qcow2") -> str:
    return json.dumps([{"filename": IMAGE, "format": fmt, "virtual-size": size}])


@dataclass
class FakeSession:
    """Answers by the command's shape; ``probe`` is the probe's JSON, ``qemu_info`` the
    ``qemu-img info`` answer (None: qemu-img fails, e.g. a corrupt header)."""

    probe: dict[str, Any]
    qemu_info: str | None = None
    ran: list[list[str]] = field(default_factory=list)
    ctx: Any = field(
        default_factory=lambda: SimpleNamespace(settings=SimpleNamespace(mount_root=MOUNT_ROOT))
    )

    async def run(
        self, argv: list[str], *, input: bytes | None = None, check: bool = True
    ) -> CommandResult:
        self.ran.append(list(argv))
        out, status, err = "", 0, ""
        if argv[0] == "python3" and argv[3] == "probe":
            out = json.dumps(self.probe)
        elif argv[0] == "python3" and argv[3] == "write":
            assert input is not None and json.loads(input) == json.loads(ME.to_json())
            out = '{"ok": true}'
            self.probe = {**self.probe, "owner": {"text": input.decode()}}
        elif argv[:2] == ["qemu-img", "create"]:
            self.probe = {**self.probe, "image": {"type": "file"}}
            self.qemu_info = info()
        elif argv[:2] == ["qemu-img", "info"]:
            if self.qemu_info is None:
                status, err = 1, "qemu-img: Image is not in qcow2 format"
            else:
                out = self.qemu_info
        elif argv[:2] == ["qemu-img", "resize"]:
            self.qemu_info = info(int(argv[-1]))
        if check:
            assert status == 0, argv
        return CommandResult(tuple(argv), status, out, err, 0.0)

    def verbs(self) -> list[str]:
        return [" ".join(a[:2]) if a[0] == "qemu-img" else f"{a[0]} {a[3]}" for a in self.ran]


def run(session: FakeSession, node_spec: VirtualNodeSpec, nfs: str = "Direct") -> Any:
    host = SimpleNamespace(name="kvmhost1", spec=host_spec(nfs), session=session)

    async def guests() -> Any:
        async def lookup(name: str) -> Any:
            raise AssertionError("no domain lookup expected")

        return SimpleNamespace(lookup=lookup)

    host.guests = guests
    return asyncio.run(vmdisks.ensure(host, ME, node_spec, MOUNT_ROOT, running=False))  # type: ignore[arg-type]


POOL = {"pool": {"type": "directory"}, "fstype": "ext4"}
ENOENT = {"errno": "ENOENT"}


def test_absent_disk_gets_its_owner_record_first_then_the_image() -> None:
    session = FakeSession({**POOL, "image": ENOENT, "owner": ENOENT})
    report = run(session, spec())
    assert report.problems == [] and report.created == [IMAGE]
    assert session.verbs() == [
        "python3 probe",
        "python3 write",
        "qemu-img create",
        "qemu-img info",
    ]
    assert session.ran[2][:5] == ["qemu-img", "create", "-q", "-f", "qcow2"]
    assert all("-f" in argv for argv in session.ran if argv[0] == "qemu-img")


@pytest.mark.parametrize(
    ("probe", "reason"),
    [
        ({**POOL, "pool": ENOENT, "image": ENOENT, "owner": ENOENT}, "StorageNotReady"),
        ({**POOL, "image": {"errno": "EIO"}, "owner": ENOENT}, "DiskUnreadable"),
        ({**POOL, "image": {"type": "directory"}, "owner": ENOENT}, "DiskNotAFile"),
        ({"error": "cannot reach the export"}, "StorageNotReady"),
    ],
)
def test_unknown_state_creates_nothing(probe: dict[str, Any], reason: str) -> None:
    session = FakeSession(probe)
    report = run(session, spec())
    assert [p.reason for p in report.problems] == [reason]
    assert session.verbs() == ["python3 probe"]
    assert report.status == [] and report.created == []


def test_mount_point_without_nfs_mounted_creates_nothing() -> None:
    session = FakeSession({**POOL, "fstype": "ext4", "image": ENOENT, "owner": ENOENT})
    report = run(session, spec("nfs://10.0.0.1/srv/vms"), nfs="Mount")
    assert [p.reason for p in report.problems] == ["StorageNotReady"]
    assert "not a mounted NFS export" in report.problems[0].message
    assert session.verbs() == ["python3 probe"]
    mounted = FakeSession({**POOL, "fstype": "nfs4", "image": ENOENT, "owner": ENOENT})
    assert run(mounted, spec("nfs://10.0.0.1/srv/vms"), nfs="Mount").created


def test_corrupt_header_is_neither_recreated_nor_resized() -> None:
    session = FakeSession({**POOL, "image": {"type": "file"}, "owner": {"text": ME.to_json()}})
    report = run(session, spec(size="2Gi"))
    assert [p.reason for p in report.problems] == ["DiskUnreadable"]
    assert session.verbs() == ["python3 probe", "qemu-img info"]
    assert session.ran[1][4:6] == ["-f", "qcow2"] and "--backing-chain" in session.ran[1]


def test_own_disk_is_grown_with_its_format_named() -> None:
    session = FakeSession(
        {**POOL, "image": {"type": "file"}, "owner": {"text": ME.to_json()}}, info(GIB // 2)
    )
    report = run(session, spec())
    assert report.grown == [IMAGE] and report.problems == []
    resize = next(a for a in session.ran if a[:2] == ["qemu-img", "resize"])
    assert resize[3:5] == ["-f", "qcow2"]


def test_another_tenants_disk_is_not_touched_unless_adopted() -> None:
    probe = {**POOL, "image": {"type": "file"}, "owner": {"text": OTHER.to_json()}}
    session = FakeSession(probe, info())
    report = run(session, spec())
    assert [p.reason for p in report.problems] == ["DiskOwnedByOther"]
    assert "ns-b/vm1" in report.problems[0].message
    assert session.verbs() == ["python3 probe"]
    adopting = FakeSession(probe, info())
    report = run(adopting, spec(adopt=True))
    assert report.claimed == [IMAGE] and report.problems == []
    # The chain is validated before the owner record is rewritten.
    assert adopting.verbs()[:3] == ["python3 probe", "qemu-img info", "python3 write"]


def test_nfs_direct_probes_and_records_through_libnfs() -> None:
    session = FakeSession({**POOL, "fstype": None, "image": ENOENT, "owner": ENOENT})
    report = run(session, spec("nfs://10.0.0.1/srv/vms"))
    assert report.created == ["nfs://10.0.0.1/srv/vms/vm1.hda.qcow2"]
    assert session.ran[0][4] == "nfs://10.0.0.1/srv/vms/vm1.hda.qcow2"
    assert session.ran[1][4] == "nfs://10.0.0.1/srv/vms/vm1.hda.qcow2.owner.json"
