"""The CRDs on the real kube-apiserver 1.20.2: established, documented, and refusing bad specs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from support.cluster import Kubectl


def virtualnode(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"cpus": 2, "memory": "1Gi"},
    }
    base["spec"].update(spec)
    return base


def test_server_is_real_kube_apiserver_1_20(cluster: Kubectl) -> None:
    version = cluster.json("version")["serverVersion"]
    assert (version["major"], version["minor"]) == ("1", "20")
    assert version["gitVersion"].startswith("v1.20.2")


def test_category_lists_all_three_kinds(cluster: Kubectl) -> None:
    resources = cluster.run("api-resources", "--api-group=kvmfleet.io", "-o", "wide").stdout
    for plural, short in (("kvmhosts", "kh"), ("virtualnodes", "vn"), ("vmmasters", "vmm")):
        line = next(line for line in resources.splitlines() if line.startswith(plural))
        assert short in line.split()
        assert "kvmfleet" in line
    # `kubectl get kvmfleet` resolves the category to the three kinds.
    result = cluster.run("get", "kvmfleet", "-A")
    assert result.returncode == 0


def test_explain_documents_nic_fields(cluster: Kubectl) -> None:
    text = cluster.run("explain", "virtualnode.spec.nics").stdout
    for field in ("bridge", "model", "mac"):
        assert f"   {field}\t" in text or f"   {field} " in text, text
    assert "DESCRIPTION" in text
    mac = cluster.run("explain", "virtualnode.spec.nics.mac").stdout
    assert "FIELD:    mac" in mac and len(mac.split("DESCRIPTION:")[1].strip()) > 20


@pytest.mark.parametrize(
    ("case", "spec_patch", "message"),
    [
        ("cpus-zero", {"cpus": 0}, "spec.cpus"),
        ("wrong-run-strategy", {"runStrategy": "Sometimes"}, "spec.runStrategy"),
        ("bad-mac", {"nics": [{"bridge": "br0", "mac": "zz:00:00:00:00:01"}]}, "mac"),
        ("upper-mac", {"nics": [{"bridge": "br0", "mac": "52:54:00:AA:BB:CC"}]}, "mac"),
        ("bad-model", {"nics": [{"bridge": "br0", "model": "ne2k"}]}, "model"),
        ("bridge-metachar", {"nics": [{"bridge": "br0;reboot"}]}, "bridge"),
        (
            "storage-dotdot",
            {"disks": [{"name": "hda", "size": "1Gi", "storage": "dir:///var/../etc"}]},
            "storage",
        ),
        ("memory-garbage", {"memory": "lots"}, "memory"),
        ("bad-boot", {"bootOrder": ["floppy"]}, "bootOrder"),
        ("bad-reclaim", {"reclaimPolicy": "Shred"}, "reclaimPolicy"),
    ],
)
def test_api_server_refuses_bad_virtualnode(
    cluster: Kubectl, namespace: str, case: str, spec_patch: dict[str, Any], message: str
) -> None:
    manifest = virtualnode(f"bad-{case}", namespace)
    manifest["spec"].update(copy.deepcopy(spec_patch))
    # --validate=false: the API server itself must refuse it, not kubectl's client-side check.
    result = cluster.run(
        "apply", "--validate=false", "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode != 0, f"{case} was accepted"
    assert "Invalid value" in result.stderr or "Unsupported value" in result.stderr, result.stderr
    assert message in result.stderr
    assert cluster.run("get", "vn", f"bad-{case}", "-n", namespace, check=False).returncode != 0


def test_api_server_refuses_bad_kvmhost(cluster: Kubectl) -> None:
    for name, spec in (
        (
            "bad-addr",
            {
                "address": "10.0.0.1;reboot",
                "sshKeySecretRef": {"name": "k", "namespace": "default"},
            },
        ),
        (
            "bad-policy",
            {
                "address": "h1",
                "hostKeyPolicy": "Whatever",
                "sshKeySecretRef": {"name": "k", "namespace": "default"},
            },
        ),
        (
            "bad-port",
            {
                "address": "h1",
                "port": 70000,
                "sshKeySecretRef": {"name": "k", "namespace": "default"},
            },
        ),
        ("no-key", {"address": "h1"}),
    ):
        manifest = {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "KvmHost",
            "metadata": {"name": name},
            "spec": spec,
        }
        result = cluster.run(
            "apply", "--validate=false", "-f", "-", input=json.dumps(manifest), check=False
        )
        assert result.returncode != 0, f"{name} accepted"
        assert "spec." in result.stderr


def test_schema_defaults_fill_the_spec(cluster: Kubectl, namespace: str) -> None:
    cluster.apply(virtualnode("defaults", namespace, nics=[{"bridge": "br0"}]))
    spec = cluster.json("get", "vn", "defaults", "-n", namespace)["spec"]
    assert spec["runStrategy"] == "Always"
    assert spec["reclaimPolicy"] == "Retain"
    assert spec["bootOrder"] == ["network", "hd"]
    assert spec["serial"] == {"port": 0, "speed": 115200}
    assert spec["shutdownGracePeriodSeconds"] == 60
    assert spec["nics"][0]["model"] == "virtio"
    cluster.run("delete", "vn", "defaults", "-n", namespace, "--wait=false")


def test_examples_are_accepted_by_the_server(cluster: Kubectl, namespace: str) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    cluster.run("create", "namespace", "kvmfleet-system", check=False)
    for path in sorted(examples.glob("*.yaml")):
        result = cluster.run("apply", "--dry-run=server", "-f", str(path), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
    for path in sorted((examples / "invalid").glob("*.yaml")):
        result = cluster.run(
            "apply", "--validate=false", "--dry-run=server", "-f", str(path), check=False
        )
        assert result.returncode != 0, f"{path.name} was accepted"
