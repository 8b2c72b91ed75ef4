"""GitOps health of real objects: what Argo CD (health.lua, run by lua5.1) and kstatus
(Flux) make of KvmHosts, VirtualNodes and VmMasters the operator wrote, and the Events it
posted for them.

The operator runs against the real API server and the hypervisor testbed; each object is
driven into one state (Ready, transient, needs a person) and read back with `kubectl get`.
With KVMFLEET_CAPTURE_ARGOCD_FIXTURES=1 the objects are also written (without
managedFields and uids) as the testdata of charts/kvmfleet/argocd and health_test.yaml is
regenerated: that is how those fixtures were made.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from support.cluster import Kubectl, OperatorProcess, free_port
from support.gitops import CUSTOMIZATIONS, argocd_health, kstatus, strip_object
from support.objects import apply_testbed_hosts, condition, scratch_namespace
from support.testbed import kvmhost

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(600)]

CAPTURE = os.environ.get("KVMFLEET_CAPTURE_ARGOCD_FIXTURES") == "1"
EXPECTED_KSTATUS = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}


def reason_is(type_: str, status: str, reason: str) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        found = condition(obj, type_)
        generation = obj["metadata"].get("generation")
        return (
            found.get("status") == status
            and found.get("reason") == reason
            and obj.get("status", {}).get("observedGeneration") == generation
        )

    return check


class Captured:
    """The objects of one run, by kind, and their expected health."""

    def __init__(self) -> None:
        self.cases: dict[str, list[tuple[str, dict[str, Any], str]]] = {}

    def add(self, kind: str, fixture: str, obj: dict[str, Any], health: str) -> None:
        self.cases.setdefault(kind, []).append((fixture, strip_object(obj), health))

    def write(self) -> None:
        for kind, cases in self.cases.items():
            folder = CUSTOMIZATIONS / kind
            (folder / "testdata").mkdir(parents=True, exist_ok=True)
            tests = []
            for fixture, obj, _ in sorted(cases):
                path = folder / "testdata" / f"{fixture}.yaml"
                path.write_text(yaml.safe_dump(obj, sort_keys=False))
                status, message = argocd_health(kind, obj)
                tests.append(
                    {
                        "healthStatus": {"status": status, "message": message},
                        "inputPath": f"testdata/{fixture}.yaml",
                    }
                )
            (folder / "health_test.yaml").write_text(
                yaml.safe_dump({"tests": tests}, sort_keys=False)
            )


@pytest.fixture(scope="module")
def captured() -> Iterator[Captured]:
    result = Captured()
    yield result
    if CAPTURE:
        result.write()


def check(captured: Captured, kind: str, fixture: str, obj: dict[str, Any], health: str) -> None:
    """Argo CD's and kstatus' verdicts on a real object; remembered for the fixtures."""
    status, message = argocd_health(kind, obj)
    assert status == health, f"{kind} {fixture}: Argo CD says {status} ({message})"
    assert message, f"{kind} {fixture}: no message"
    assert kstatus(obj) == EXPECTED_KSTATUS[health], f"{kind} {fixture}: kstatus"
    if health != "Healthy":
        ready = condition(obj, "Ready")
        assert ready.get("status") == "False"
        # Ready=False: exactly one of Reconciling and Stalled, with Ready's reason.
        flags = [condition(obj, t).get("status") == "True" for t in ("Reconciling", "Stalled")]
        assert flags.count(True) == 1, obj["status"]["conditions"]
        assert ready["reason"] in message
    captured.add(kind, fixture, obj, health)


def warnings_for(cluster: Kubectl, name: str, namespace: str) -> list[dict[str, Any]]:
    events = cluster.json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [e for e in events if e.get("type") != "Normal"]


@pytest.fixture(scope="module")
def hosts(cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any]) -> list[str]:
    return apply_testbed_hosts(cluster, testbed, ready=reason_is("Ready", "True", "HostReady"))


@pytest.fixture
def ns(cluster: Kubectl) -> Iterator[str]:
    yield from scratch_namespace(cluster, "gh", kinds="vn,vmm")


def test_kvmhost_health(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any], captured: Captured
) -> None:
    ready = cluster.json("get", "kh", hosts[0])
    check(captured, "KvmHost", "healthy_ready", ready, "Healthy")

    suffix = uuid.uuid4().hex[:6]
    unreachable, broken = f"gh-unreachable-{suffix}", f"gh-nobridge-{suffix}"
    host = testbed["hosts"][0]
    cluster.apply(kvmhost(host, testbed, name=unreachable, address="127.0.0.1", port=free_port()))
    # A bridge over a NIC the host does not have: a person must fix the spec or the host.
    cluster.apply(
        kvmhost(
            host,
            testbed,
            name=broken,
            bridges=[{"name": "brgh", "interface": "ghmissing0"}],
            storagePools=[],
        )
    )
    try:
        obj = cluster.wait_for(
            reason_is("Ready", "False", "HostUnreachable"), "kh", unreachable, timeout=90
        )
        assert condition(obj, "Reconciling")["status"] == "True"
        check(captured, "KvmHost", "progressing_unreachable", obj, "Progressing")

        obj = cluster.wait_for(
            reason_is("Ready", "False", "BridgesReadyFalse"), "kh", broken, timeout=90
        )
        assert condition(obj, "Stalled")["status"] == "True"
        check(captured, "KvmHost", "degraded_bridge_failed", obj, "Degraded")
    finally:
        for name in (unreachable, broken):
            cluster.run("delete", "kh", name, "--timeout=60s", check=False)


def test_virtualnode_health(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any], ns: str, captured: Captured
) -> None:
    def vm(name: str, **spec: Any) -> dict[str, Any]:
        body = {"cpus": 1, "memory": "128Mi", "nics": [{"bridge": "br0"}], **spec}
        return {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "VirtualNode",
            "metadata": {"name": name, "namespace": ns},
            "spec": body,
        }

    suffix = uuid.uuid4().hex[:6]
    stopped = f"gh-stopped-{suffix}"
    waiting, nohost = f"gh-waiting-{suffix}", f"gh-nohost-{suffix}"
    unreachable = f"gh-down-{suffix}"
    cluster.apply(
        kvmhost(
            testbed["hosts"][0], testbed, name=unreachable, address="127.0.0.1", port=free_port()
        )
    )
    try:
        cluster.apply(vm(stopped, hostRef=hosts[0], runStrategy="Halted"))
        cluster.apply(vm(waiting, hostRef=unreachable, runStrategy="Always"))
        cluster.apply(vm(nohost, hostRef=f"gh-no-such-host-{suffix}", runStrategy="Always"))

        obj = cluster.wait_for(
            reason_is("Ready", "True", "Stopped"), "vn", stopped, "-n", ns, timeout=180
        )
        check(captured, "VirtualNode", "healthy_stopped", obj, "Healthy")
        obj = cluster.wait_for(
            reason_is("Ready", "False", "HostNotReady"), "vn", waiting, "-n", ns, timeout=120
        )
        check(captured, "VirtualNode", "progressing_host_not_ready", obj, "Progressing")
        obj = cluster.wait_for(
            reason_is("Ready", "False", "HostNotFound"), "vn", nohost, "-n", ns, timeout=120
        )
        check(captured, "VirtualNode", "degraded_host_not_found", obj, "Degraded")

        # A spec edit the operator has not answered yet (server-side dry run of the patch:
        # the API server's own answer, with the new generation and the old status).
        edited = json.loads(
            cluster.run(
                "patch",
                "vn",
                stopped,
                "-n",
                ns,
                "--type=merge",
                "--dry-run=server",
                "-p",
                '{"spec":{"cpus":2}}',
                "-o",
                "json",
            ).stdout
        )
        assert edited["metadata"]["generation"] > edited["status"]["observedGeneration"]
        status, _ = argocd_health("VirtualNode", edited)
        assert status == "Progressing" and kstatus(edited) == "InProgress"
        captured.add("VirtualNode", "progressing_generation_not_observed", edited, "Progressing")

        # Events: a permanent error is announced once, not on every retry, and an
        # expected wait posts no Warning at all; every Event is Normal or Warning.
        time.sleep(12)  # several timer ticks and retries
        stalled_warnings = [
            e for e in warnings_for(cluster, nohost, ns) if e["reason"] == "HostNotFound"
        ]
        assert all(
            e.get("type") in ("Normal", "Warning") for e in warnings_for(cluster, nohost, ns)
        )
        assert len(stalled_warnings) == 1 and all(
            e.get("count", 1) == 1 for e in stalled_warnings
        ), stalled_warnings
        assert warnings_for(cluster, waiting, ns) == []
        assert warnings_for(cluster, stopped, ns) == []
    finally:
        cluster.run("delete", "kh", unreachable, "--timeout=60s", check=False)


def test_vmmaster_health(
    cluster: Kubectl, operator: OperatorProcess, ns: str, captured: Captured
) -> None:
    name = f"gh-master-{uuid.uuid4().hex[:6]}"
    master = {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VmMaster",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"sourceNode": "kvm1"},
    }
    # As the API server stores it before the operator answers (server-side dry run).
    fresh = json.loads(
        cluster.run(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(master)
        ).stdout
    )
    check_fresh = argocd_health("VmMaster", fresh)
    assert check_fresh[0] == "Progressing"
    captured.add("VmMaster", "progressing_no_status", fresh, "Progressing")

    cluster.apply(master)
    obj = cluster.wait_for(
        reason_is("Ready", "False", "SourceNotFound"), "vmm", name, "-n", ns, timeout=60
    )
    assert condition(obj, "Stalled")["status"] == "True"
    assert "does not exist" in condition(obj, "Stalled")["message"]
    check(captured, "VmMaster", "degraded_source_not_found", obj, "Degraded")
