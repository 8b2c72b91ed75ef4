"""kubectl kvm force-remove: what stays where is printed first, then only our finalizer goes."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from kvmfleet import plugin
from kvmfleet.errors import NotFoundError, TemporaryError
from kvmfleet.kube.api import KubeApi
from kvmfleet.kube.objects import KubeObjects
from kvmfleet.reconcile import forceremove
from kvmfleet.settings import FINALIZER

HOST = {
    "spec": {
        "address": "10.0.0.5",
        "hostKeyPolicy": "TrustOnFirstUse",
        "sshKeySecretRef": {"name": "k", "namespace": "kvmfleet-system"},
        "storagePools": [
            {"name": "local", "url": "dir:///var/lib/kvmfleet/images"},
            {"name": "shared", "url": "nfs://10.0.0.2/srv/vms"},
        ],
    }
}


class MemoryObjects(KubeObjects):
    def __init__(self, vm: dict[str, Any], hosts: dict[str, Any]) -> None:
        super().__init__(KubeApi(core=None, custom=None), "default")
        self.vm, self.hosts = vm, hosts
        self.patches: list[tuple[list[str], list[str]]] = []

    def get_virtualnode(self, namespace: str, name: str) -> dict[str, Any]:
        if self.vm["metadata"]["name"] != name:
            raise NotFoundError(f"VirtualNode {namespace}/{name} not found")
        return self.vm

    def get_kvmhost(self, name: str) -> dict[str, Any]:
        if name not in self.hosts:
            raise NotFoundError(f"KvmHost {name} not found")
        return dict(self.hosts[name])

    def replace_finalizers(
        self, namespace: str, name: str, expected: list[str], finalizers: list[str]
    ) -> dict[str, Any]:
        if self.vm["metadata"].get("finalizers") != expected:
            raise TemporaryError("changed meanwhile", reason="Conflict")
        self.patches.append((expected, finalizers))
        self.vm["metadata"]["finalizers"] = finalizers
        return self.vm


def stuck_vm(deleting: bool = True, host: str | None = "kvmhost1") -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "vm1",
        "namespace": "lab",
        "finalizers": [FINALIZER, "example.com/keep"],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T01:00:00Z"
    status: dict[str, Any] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "DeletionBlocked",
                "message": "disk hda: qemu-img cannot read it",
            }
        ]
    }
    if host:
        status["host"] = host
    return {
        "metadata": meta,
        "spec": {
            "cpus": 1,
            "memory": "64Mi",
            "disks": [
                {"name": "hda", "size": "1Gi"},
                {"name": "hdb", "size": "1Gi", "storage": "nfs://10.0.0.2/srv/vms"},
            ],
        },
        # A forged status path is never what is shown.
        "status": status | {"disks": [{"name": "hda", "path": "/etc/passwd"}]},
    }


class Holder:
    def __init__(self, kube: MemoryObjects) -> None:
        self.kube = kube
        self.default_namespace = "lab"


def run(kube: MemoryObjects, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = plugin.main(
        list(argv),
        fleet_factory=lambda args: Holder(kube),  # type: ignore[arg-type,return-value]
        out=out,
        err=err,
    )
    return code, out.getvalue(), err.getvalue()


def test_what_stays_is_computed_from_the_spec_and_the_hosts_pools() -> None:
    kube = MemoryObjects(stuck_vm(), {"kvmhost1": HOST})
    left = forceremove.leftovers(kube, "lab", "vm1", "/var/lib/kvmfleet/pools")
    text = forceremove.describe(left)
    assert "KvmHost kvmhost1" in text and "libvirt domain vm1" in text
    assert "/var/lib/kvmfleet/images/vm1.hda.qcow2" in text
    assert "/var/lib/kvmfleet/images/vm1.hda.qcow2.owner.json" in text
    assert re.search(r"/var/lib/kvmfleet/pools/[0-9a-f]+/vm1.hdb.qcow2 ", text)
    assert "/etc/passwd" not in text
    assert "qemu-img cannot read it" in text


def test_yes_removes_only_kvmfleets_finalizer() -> None:
    kube = MemoryObjects(stuck_vm(), {"kvmhost1": HOST})
    code, out, _ = run(kube, "force-remove", "vm1", "--yes")
    assert code == plugin.EXIT_OK
    assert kube.patches == [([FINALIZER, "example.com/keep"], ["example.com/keep"])]
    assert out.index("vm1.hda.qcow2") < out.index("finalizer removed")


def test_without_yes_and_without_a_terminal_nothing_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    kube = MemoryObjects(stuck_vm(), {"kvmhost1": HOST})
    code, out, err = run(kube, "force-remove", "vm1")
    assert code == plugin.EXIT_NOT_READY and "--yes" in err
    assert kube.patches == [] and "vm1.hda.qcow2" in out


@pytest.mark.parametrize(("answer", "code", "patched"), [("y\n", 0, True), ("\n", 1, False)])
def test_a_person_confirms(
    monkeypatch: pytest.MonkeyPatch, answer: str, code: int, patched: bool
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty(answer))
    kube = MemoryObjects(stuck_vm(), {"kvmhost1": HOST})
    got, out, _ = run(kube, "force-remove", "vm1")
    assert got == code and bool(kube.patches) is patched
    assert "[y/N]" in out


def test_an_object_not_being_deleted_is_refused() -> None:
    kube = MemoryObjects(stuck_vm(deleting=False), {"kvmhost1": HOST})
    code, _, err = run(kube, "force-remove", "vm1", "--yes")
    assert code == plugin.EXIT_NOT_READY and "delete it first" in err
    assert kube.patches == []


def test_a_vanished_host_is_said_and_the_domain_still_named() -> None:
    kube = MemoryObjects(stuck_vm(), {})
    code, out, _ = run(kube, "force-remove", "vm1", "--yes")
    assert code == plugin.EXIT_OK
    assert "KvmHost kvmhost1 does not exist any more" in out and "domain vm1" in out


def test_a_finalizer_changed_meanwhile_is_not_overwritten() -> None:
    kube = MemoryObjects(stuck_vm(), {"kvmhost1": HOST})
    left = forceremove.leftovers(kube, "lab", "vm1", "/var/lib/kvmfleet/pools")
    kube.vm["metadata"]["finalizers"] = [FINALIZER, "example.com/keep", "example.com/new"]
    with pytest.raises(TemporaryError):
        forceremove.release(kube, left)


def test_a_missing_virtualnode_exits_3() -> None:
    kube = MemoryObjects(stuck_vm(), {})
    code, _, err = run(kube, "force-remove", "nope", "--yes")
    assert code == plugin.EXIT_NOT_FOUND and "not found" in err
