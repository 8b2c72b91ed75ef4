"""kvmfleet.reconcile.vmmasters on an in-memory host: the capture's commands, in order, and
how a pass resumes after a crash. The same flow on real hosts, with the operator killed
at failpoints: tests/integration/test_vmmaster.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from kvmfleet.domain.specs import KvmHostSpec
from kvmfleet.reconcile import vmmasters
from kvmfleet.reconcile.resource import Resource
from kvmfleet.ssh.session import CommandResult
from kvmfleet.virt.guest import PowerState

NS = "default"
POOL = "/var/lib/vms"
SOURCE = f"{POOL}/kvm2.hda.qcow2"
FINAL = f"{POOL}/vmmaster.default.kvmm.hda.qcow2"
PARTIAL = FINAL + ".partial"
MIB = 1024**2

HOST_SPEC = KvmHostSpec.from_dict(
    {
        "address": "10.0.0.5",
        "hostKeyPolicy": "TrustOnFirstUse",
        "sshKeySecretRef": {"name": "k", "namespace": "kvmfleet-system"},
        "storagePools": [{"name": "local", "url": f"dir://{POOL}"}],
    }
)


@dataclass
class FakeHost:
    """Files by path: {"backing": ..., "owner": ...}; answers the capture's commands."""

    files: dict[str, dict[str, Any]]
    state: PowerState = PowerState.OFF
    ran: list[str] = field(default_factory=list)
    compare_differs: bool = False

    async def run(
        self, argv: list[str], *, input: bytes | None = None, check: bool = True, **_: Any
    ) -> CommandResult:
        verb = argv[1] if argv[0] == "qemu-img" else argv[3] if argv[0] == "python3" else argv[0]
        self.ran.append(verb)
        out, status = "", 0
        if verb == "probe":
            image, owner = argv[5], argv[6]
            out = json.dumps(
                {
                    "pool": {"type": "directory"},
                    "fstype": "ext4",
                    "image": {"type": "file"} if image in self.files else {"errno": "ENOENT"},
                    "owner": {"text": self.files[owner]["text"]}
                    if owner in self.files
                    else {"errno": "ENOENT"},
                }
            )
        elif verb == "write":
            self.files[argv[4]] = {"text": (input or b"").decode()}
            out = '{"ok": true}'
        elif verb == "info":
            path = argv[-1]
            backing = self.files[path].get("backing")
            chain = [
                {"filename": path, "format": "qcow2", "virtual-size": 64 * MIB, "actual-size": MIB}
            ]
            if backing:
                chain[0] |= {"full-backing-filename": backing, "backing-filename-format": "qcow2"}
                chain.append({"filename": backing, "format": "qcow2", "virtual-size": 64 * MIB})
            out = json.dumps(chain if "--backing-chain" in argv else chain[0])
        elif verb == "convert":
            self.files[argv[-1]] = {}
        elif verb == "compare":
            status = 1 if self.compare_differs else 0
        elif verb == "rebase":
            self.files[argv[-1]]["backing"] = argv[-2]
        elif verb == "mv":
            self.files[argv[-1]] = self.files.pop(argv[-2])
        elif verb == "rm":
            self.files.pop(argv[-1], None)
        return CommandResult(tuple(argv), status, out, "" if status == 0 else "differ", 0.0)

    def verbs(self) -> list[str]:
        return self.ran


def source_node() -> dict[str, Any]:
    return {
        "metadata": {"name": "kvm2", "namespace": NS, "uid": "vn-uid"},
        "spec": {"disks": [{"name": "hda", "size": "64Mi"}], "os": "rhels6"},
        "status": {"host": "kvmhost1", "nics": [{"bridge": "br0", "model": "virtio", "mac": "x"}]},
    }


def master(mode: str = "Attached", **status: Any) -> Resource:
    return Resource.from_body(
        {
            "metadata": {"name": "kvmm", "namespace": NS, "uid": "m-uid"},
            "spec": {"sourceNode": "kvm2", "mode": mode},
            "status": status,
        }
    )


def run(host: FakeHost, obj: Resource, monkeypatch: pytest.MonkeyPatch, nodes: Any = None) -> Any:
    patched: list[dict[str, Any]] = []
    masters = [{"metadata": {"uid": "m-uid", "managedFields": [{"manager": "kubectl-kvm"}]}}]

    def list_objects(plural: str) -> list[dict[str, Any]]:
        return masters if plural == "vmmasters" else (nodes or [source_node()])

    def get_object(plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        assert plural == "vmmasters" and name == "kvmm" and namespace == NS
        return masters[0]

    kube = SimpleNamespace(
        list_cluster_objects=list_objects,
        get_object=get_object,
        patch_status=lambda plural, name, ns, body: patched.append(body),
    )

    async def blocking(fn: Any, *args: Any) -> Any:
        return fn(*args)

    locks: dict[str, asyncio.Lock] = {}
    ctx = SimpleNamespace(
        kube=kube,
        blocking=blocking,
        settings=SimpleNamespace(mount_root="/var/lib/kvmfleet/pools"),
        lock=lambda key: locks.setdefault(key, asyncio.Lock()),
    )
    host.ctx = ctx  # type: ignore[attr-defined]
    guests = SimpleNamespace(state=lambda name: host.state)

    async def open_host(ctx: Any, name: str) -> Any:
        async def get_guests() -> Any:
            return guests

        return SimpleNamespace(name=name, spec=HOST_SPEC, session=host, guests=get_guests)

    monkeypatch.setattr(vmmasters, "open_host", open_host)
    outcome = asyncio.run(vmmasters.reconcile(ctx, obj))  # type: ignore[arg-type]
    return outcome, patched


def ready(outcome: Any) -> dict[str, Any]:
    return next(c for c in outcome.conditions if c.type == "Ready").__dict__


def test_attached_capture_copies_verifies_renames_then_rebases_and_proves_the_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = FakeHost({SOURCE: {}})
    outcome, patched = run(host, master(), monkeypatch)
    assert ready(outcome)["reason"] == "Captured"
    assert host.verbs() == [
        "info",  # the source's chain
        "probe",  # the master file: absent
        "write",  # its owner record first
        "rm",  # any partial file of an earlier pass
        "convert",  # source -> partial
        "compare",  # source == partial
        "chmod",  # read-only
        "mv",  # partial -> final
        "rebase",  # the source keeps only its own changes
        "compare",  # the source (through the master) == the master
        "info",
    ]
    assert host.files[SOURCE]["backing"] == FINAL and PARTIAL not in host.files
    assert patched[0]["phase"] == "Capturing" and patched[0]["host"] == "kvmhost1"
    status = outcome.status
    assert status["phase"] == "Ready" and status["originator"] == "kubectl-kvm"
    assert status["os"] == "rhels6" and status["nics"] == [{"bridge": "br0", "model": "virtio"}]
    assert status["disks"][0]["path"] == FINAL and status["disks"][0]["actualSizeBytes"] == MIB
    assert status["dependants"] == ["kvm2 (source node, rebased onto the master)"]


def test_detached_capture_never_touches_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost({SOURCE: {}})
    outcome, _ = run(host, master("Detached"), monkeypatch)
    assert ready(outcome)["reason"] == "Captured"
    assert "rebase" not in host.verbs() and "backing" not in host.files[SOURCE]
    assert outcome.status["dependants"] == []


def test_a_running_source_is_refused_and_nothing_is_run(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost({SOURCE: {}}, state=PowerState.ON)
    outcome, patched = run(host, master(), monkeypatch)
    assert ready(outcome)["reason"] == "SourceRunning" and patched == []
    assert host.verbs() == []
    assert [e.reason for e in outcome.events] == ["SourceRunning"]


def test_a_copy_that_does_not_compare_equal_is_never_renamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = FakeHost({SOURCE: {}}, compare_differs=True)
    outcome, _ = run(host, master(), monkeypatch)
    assert ready(outcome)["reason"] == "CaptureFailed" and outcome.status["phase"] == "Failed"
    assert FINAL not in host.files and "mv" not in host.verbs()
    assert "backing" not in host.files[SOURCE]


def owner_record() -> dict[str, Any]:
    return {"text": json.dumps({"namespace": NS, "name": "kvmm", "uid": "m-uid"})}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # Killed after the copy, before the rename: the partial is redone from the start.
        (
            {SOURCE: {}, PARTIAL: {}, FINAL + ".owner.json": owner_record()},
            [
                "info",
                "probe",
                "write",
                "rm",
                "convert",
                "compare",
                "chmod",
                "mv",
                "rebase",
                "compare",
                "info",
            ],
        ),
        # Killed after the rename: only the rebase is left.
        (
            {SOURCE: {}, FINAL: {}, FINAL + ".owner.json": owner_record()},
            ["info", "probe", "rebase", "compare", "info"],
        ),
        # Killed after the rebase: only the proof.
        (
            {SOURCE: {"backing": FINAL}, FINAL: {}, FINAL + ".owner.json": owner_record()},
            ["info", "probe", "compare", "info"],
        ),
    ],
)
def test_a_pass_after_a_crash_resumes_where_it_stopped(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, Any], expected: list[str]
) -> None:
    host = FakeHost(files)
    outcome, _ = run(host, master(phase="Capturing", host="kvmhost1"), monkeypatch)
    assert ready(outcome)["reason"] == "Captured"
    assert host.verbs() == expected
    assert host.files[SOURCE]["backing"] == FINAL and PARTIAL not in host.files


def test_a_master_file_of_another_owner_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    other = {"text": json.dumps({"namespace": NS, "name": "kvmm", "uid": "old-uid"})}
    host = FakeHost({SOURCE: {}, FINAL: {}, FINAL + ".owner.json": other})
    outcome, _ = run(host, master(), monkeypatch)
    assert ready(outcome)["reason"] == "CaptureFailed"
    assert host.verbs() == ["info", "probe"]


def test_a_ready_master_is_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost({SOURCE: {}})
    nodes = [
        source_node(),
        {"metadata": {"name": "kvm4", "namespace": NS}, "spec": {"source": {"vmMaster": "kvmm"}}},
    ]
    done = master(phase="Ready", host="kvmhost1", vintage="2026-11-30T00:00:00Z")
    outcome, patched = run(host, done, monkeypatch, nodes)
    assert ready(outcome)["reason"] == "Captured" and host.verbs() == [] and patched == []
    assert outcome.status["clones"] == 1
    assert [d.split(" ")[0] for d in outcome.status["dependants"]] == ["kvm2", "kvm4"]
