"""The operator process against the real API server: status, conditions, finalizer, metrics."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from support.cluster import Kubectl, OperatorProcess


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def observed(obj: dict[str, Any]) -> bool:
    status = obj.get("status", {})
    return status.get("observedGeneration") == obj["metadata"]["generation"] and bool(
        status.get("conditions")
    )


def test_health_and_metrics_endpoints(operator: OperatorProcess) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz") as r:
        assert r.status == 200
        assert "version" in json.loads(r.read())
    text = operator.metrics()
    assert "# TYPE kvmfleet_reconcile_total counter" in text
    assert "# TYPE kvmfleet_host_up gauge" in text


def test_valid_virtualnode_gets_observed_generation_and_conditions(
    cluster: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply(
        {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "VirtualNode",
            "metadata": {"name": "kvm1", "namespace": namespace},
            "spec": {
                "cpus": 2,
                "memory": "1Gi",
                "nics": [{"bridge": "br0"}],
                "runStrategy": "Halted",
                "shutdownGracePeriodSeconds": 0,
            },
        }
    )
    obj = cluster.wait_for(observed, "vn", "kvm1", "-n", namespace, timeout=60)
    conds = conditions(obj)
    assert {"Ready", "Reconciling", "Stalled"} <= conds.keys()
    assert conds["Stalled"]["status"] == "False"
    for c in conds.values():
        assert c["lastTransitionTime"].endswith("Z")
        assert c["observedGeneration"] == obj["metadata"]["generation"]
        assert c["reason"]
    # Kopf's bookkeeping lives in status.kopf; metadata only gets our finalizer.
    meta = obj["metadata"]
    assert meta["finalizers"] == ["kvmfleet.io/finalizer"]
    assert not any("kopf" in key for key in meta.get("annotations", {}))

    # A spec edit is observed: observedGeneration follows the new generation.
    cluster.run("patch", "vn", "kvm1", "-n", namespace, "--type=merge", "-p", '{"spec":{"cpus":3}}')
    obj = cluster.wait_for(
        lambda o: o["metadata"]["generation"] >= 2 and observed(o), "vn", "kvm1", "-n", namespace
    )
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]

    # Deletion completes: the operator removes its finalizer.
    cluster.run("delete", "vn", "kvm1", "-n", namespace, "--timeout=90s", timeout=120)
    assert cluster.run("get", "vn", "kvm1", "-n", namespace, check=False).returncode != 0


def test_spec_the_schema_cannot_judge_is_stalled_with_a_clear_message(
    cluster: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    # Two NICs with the same MAC pass the schema (it has no cross-item uniqueness).
    mac = "52:54:00:12:34:56"
    cluster.apply(
        {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "VirtualNode",
            "metadata": {"name": "twins", "namespace": namespace},
            "spec": {"nics": [{"bridge": "br0", "mac": mac}, {"bridge": "br1", "mac": mac}]},
        }
    )
    obj = cluster.wait_for(
        lambda o: conditions(o).get("Stalled", {}).get("status") == "True",
        "vn",
        "twins",
        "-n",
        namespace,
        timeout=60,
    )
    conds = conditions(obj)
    assert conds["Ready"]["status"] == "False"
    assert conds["Stalled"]["reason"] == "InvalidSpec"
    assert "mac" in conds["Stalled"]["message"]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    events = cluster.json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=twins"
    )
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events["items"])


def test_all_three_kinds_listed_by_category(
    cluster: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply(
        {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "VmMaster",
            "metadata": {"name": "kvmm", "namespace": namespace},
            "spec": {"sourceNode": "kvm1"},
        }
    )
    obj = cluster.wait_for(observed, "vmm", "kvmm", "-n", namespace, timeout=60)
    assert obj["spec"]["mode"] == "Attached"
    listing = cluster.run("get", "kvmfleet", "-n", namespace).stdout
    assert "vmmaster.kvmfleet.io/kvmm" in listing
