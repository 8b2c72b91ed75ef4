"""`kubectl kvm capture` / `clone` (kvmfleet.plugin, kvmfleet.reconcile.cloning) on a stub API.

They only write objects; the operator does the capture (tests/integration/test_vmmaster.py).
"""

from __future__ import annotations

import io
from typing import Any

from kvmfleet import plugin
from kvmfleet.errors import NotFoundError
from kvmfleet.kube.objects import VIRTUALNODES, VMMASTERS


class StubKube:
    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.created: list[tuple[str, str, dict[str, Any]]] = []

    def get_virtualnode(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get(VIRTUALNODES, name)

    def get_vmmaster(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get(VMMASTERS, name)

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        if (plural, name) not in self.objects:
            raise NotFoundError(f"{plural} {name} not found")
        return self.objects[(plural, name)]

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((plural, namespace, body))
        return body


class StubFleet:
    default_namespace = "ctx-ns"

    def __init__(self, kube: StubKube) -> None:
        self.kube = kube


def run(kube: StubKube, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = plugin.main(list(argv), fleet_factory=lambda _: StubFleet(kube), out=out, err=err)  # type: ignore[arg-type,return-value]
    return code, out.getvalue(), err.getvalue()


CAPTURED = {
    "metadata": {"name": "kvmm"},
    "status": {
        "phase": "Ready",
        "vintage": "2026-11-30T00:00:00Z",
        "os": "rhels6",
        "profile": "compute",
        "nics": [{"bridge": "br0", "model": "virtio"}],
        "disks": [{"name": "hda", "virtualSizeBytes": 4}],
    },
}


def test_capture_writes_the_vmmaster_and_warns_about_a_running_source() -> None:
    kube = StubKube({(VIRTUALNODES, "kvm2"): {"status": {"powerState": "On"}}})
    code, out, err = run(kube, "capture", "kvm2", "kvmmd", "--detached", "-n", "lab")
    assert code == 0 and "vmmaster/kvmmd created" in out
    assert "waits until it is powered off" in err
    [(plural, namespace, body)] = kube.created
    assert (plural, namespace) == (VMMASTERS, "lab")
    assert body["spec"] == {"sourceNode": "kvm2", "mode": "Detached"}
    assert body["metadata"] == {"name": "kvmmd", "namespace": "lab"}


def test_capture_of_a_missing_vm_writes_nothing() -> None:
    kube = StubKube({})
    code, _, err = run(kube, "capture", "kvm9", "kvmm")
    assert code == plugin.EXIT_NOT_FOUND and "kvm9" in err and kube.created == []


def test_clone_copies_disks_nics_and_identity_fields_of_the_master() -> None:
    kube = StubKube({(VMMASTERS, "kvmm"): CAPTURED})
    code, out, _ = run(kube, "clone", "kvmm", "kvm4", "--host", "kvmhost2")
    assert code == 0 and "virtualnode/kvm4 created" in out
    [(plural, namespace, body)] = kube.created
    assert (plural, namespace) == (VIRTUALNODES, "ctx-ns")
    assert body["spec"] == {
        "source": {"vmMaster": "kvmm", "mode": "Attached"},
        "disks": [{"name": "hda"}],
        "nics": [{"bridge": "br0", "model": "virtio"}],
        "os": "rhels6",
        "profile": "compute",
        "hostRef": "kvmhost2",
    }


def test_clone_of_a_master_not_captured_yet_is_refused() -> None:
    kube = StubKube({(VMMASTERS, "kvmm"): {"metadata": {"name": "kvmm"}, "status": {}}})
    code, _, err = run(kube, "clone", "kvmm", "kvm4", "--detached")
    assert code == plugin.EXIT_FAILED and "not captured yet" in err and kube.created == []
    code, _, err = run(kube, "clone", "nothing", "kvm4")
    assert code == plugin.EXIT_NOT_FOUND
