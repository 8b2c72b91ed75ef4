"""The chart's RBAC on a real kube-apiserver 1.20 with RBAC: what the operator's identity can do.

The chart is rendered with Helm (hack/helm.sh), its ServiceAccount, ClusterRole, Roles and
bindings are applied (not the Deployment: no operator runs here), and `kubectl auth can-i
--as=system:serviceaccount:<ns>:<sa>` asks the API server itself what that identity may do.
Both shapes are checked: cluster-wide (the default) and with watchNamespaces. Then the
real operator runs with the ServiceAccount's own token (not as an administrator) and must
handle a KvmHost and a VirtualNode without a single 403.

The module runs on a control plane of its own: the operator it starts reconciles every
KvmHost of its cluster (they are cluster-scoped), and on the shared one that would be SSH
work on other tests' hypervisors and, in the namespaced shape, 403s written into them.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cluster import Kubectl, OperatorProcess, free_port, private_control_plane

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kvmfleet"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Kubectl]:
    """This module's own control plane (see the module's docstring)."""
    with private_control_plane("rbac") as kubectl:
        yield kubectl


@pytest.fixture(scope="module")
def helm() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "helm.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            "Helm is needed to render the chart and hack/helm.sh could not provide it (is "
            f"PyPI reachable? KVMFLEET_HELM=/path/to/helm uses another one):\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout.strip().splitlines()[-1]


def render(helm: str, release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "values.yaml"
        path.write_text(json.dumps(values))
        result = subprocess.run(
            [helm, "template", release, str(CHART), "--namespace", namespace, "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class Installed:
    """The chart's RBAC objects, applied for one release."""

    cluster: Kubectl
    namespace: str
    serviceaccount: str
    docs: list[dict[str, Any]]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.serviceaccount}"

    def can(
        self, verb: str, resource: str, namespace: str | None = None, subresource: str = ""
    ) -> bool:
        """`kubectl auth can-i` as the operator; namespace None: cluster-wide."""
        args = ["auth", "can-i", verb, resource, f"--as={self.user}"]
        args += ["--all-namespaces"] if namespace is None else ["-n", namespace]
        if subresource:
            args.append(f"--subresource={subresource}")
        result = self.cluster.run(*args, check=False)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
        return answer == "yes"


def _install(
    cluster: Kubectl, helm: str, namespace: str, values: dict[str, Any]
) -> Iterator[Installed]:
    release = f"rbac-{uuid.uuid4().hex[:6]}"
    docs = render(helm, release, namespace, values)
    rbac = [doc for doc in docs if doc["kind"] in RBAC_KINDS]
    assert {doc["kind"] for doc in rbac} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    (sa,) = [doc for doc in rbac if doc["kind"] == "ServiceAccount"]
    cluster_scoped = [d for d in rbac if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    installed = Installed(cluster, namespace, sa["metadata"]["name"], docs)
    # Before: the identity can do nothing, so every "yes" below comes from the chart.
    assert not installed.can("patch", "virtualnodes.kvmfleet.io", namespace, subresource="status")
    try:
        cluster.apply({"apiVersion": "v1", "kind": "List", "items": rbac})
        _wait_until_effective(installed, rbac)
        yield installed
    finally:
        for doc in cluster_scoped:
            cluster.run(
                "delete",
                doc["kind"].lower(),
                doc["metadata"]["name"],
                "--ignore-not-found",
                check=False,
            )
        for doc in rbac:
            if doc["kind"] in ("Role", "RoleBinding") and doc["metadata"]["namespace"] != namespace:
                cluster.run(
                    "delete",
                    doc["kind"].lower(),
                    doc["metadata"]["name"],
                    "-n",
                    doc["metadata"]["namespace"],
                    "--ignore-not-found",
                    check=False,
                )


def _for_users(doc: dict[str, Any]) -> bool:
    """A ClusterRole the chart aggregates into the user-facing view/edit/admin roles."""
    labels = doc.get("metadata", {}).get("labels") or {}
    return any(key.startswith("rbac.authorization.k8s.io/aggregate-to-") for key in labels)


def _wait_until_effective(installed: Installed, rbac: list[dict[str, Any]]) -> None:
    """The authorizer learns new roles through a watch: wait until each one is in force."""
    probes = []
    for doc in rbac:
        if _for_users(doc):
            continue  # aggregated into view/edit/admin for people, not bound to the operator
        if doc["kind"] in ("ClusterRole", "Role"):
            rule = doc["rules"][0]
            group, (resource, _, sub) = rule["apiGroups"][0], rule["resources"][0].partition("/")
            qualified = f"{resource}.{group}" if group else resource
            probes.append((rule["verbs"][0], qualified, doc["metadata"].get("namespace"), sub))
    deadline = time.monotonic() + 30
    for verb, resource, namespace, sub in probes:
        while not installed.can(verb, resource, namespace, subresource=sub):
            assert time.monotonic() < deadline, f"{verb} {resource} in {namespace}: never granted"
            time.sleep(0.2)


def _make_namespace(cluster: Kubectl, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.run("create", "namespace", name)
    return name


@pytest.fixture
def other_namespaces(cluster: Kubectl) -> Iterator[dict[str, str]]:
    """Namespaces for the namespaced shape: watched, SSH keys only, and unrelated."""
    names = {role: _make_namespace(cluster, f"t-{role}") for role in ("lab", "keys", "other")}
    yield names
    for name in names.values():
        cluster.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def clusterwide(cluster: Kubectl, helm: str, namespace: str) -> Iterator[Installed]:
    yield from _install(cluster, helm, namespace, {})


@pytest.fixture
def namespaced(
    cluster: Kubectl, helm: str, namespace: str, other_namespaces: dict[str, str]
) -> Iterator[Installed]:
    values = {
        "watchNamespaces": [other_namespaces["lab"]],
        "sshKeySecretNamespaces": [other_namespaces["keys"]],
    }
    yield from _install(cluster, helm, namespace, values)


VN = "virtualnodes.kvmfleet.io"
VMM = "vmmasters.kvmfleet.io"
KH = "kvmhosts.kvmfleet.io"


def test_clusterwide_operator_can_do_its_job(clusterwide: Installed, namespace: str) -> None:
    op = clusterwide
    elsewhere = "default"
    # Kopf watches all three kinds and patches their finalizers, labels and status.
    for resource in (VN, VMM):
        for verb in ("list", "watch"):
            assert op.can(verb, resource), f"{verb} {resource}"
        assert op.can("patch", resource, elsewhere)
        assert op.can("patch", resource, elsewhere, subresource="status")
    for verb in ("get", "list", "watch", "patch"):
        assert op.can(verb, KH), f"{verb} {KH}"
    assert op.can("patch", KH, subresource="status")
    assert op.can("update", VN, elsewhere, subresource="finalizers")
    # Events on the objects, in their namespaces ("default" for KvmHosts).
    for where in (elsewhere, namespace):
        assert op.can("create", "events", where)
    # SSH key Secrets by name (anywhere: KvmHosts are cluster-scoped), VNC password Secrets
    # created when absent and replaced when owned.
    assert op.can("get", "secrets", elsewhere)
    assert op.can("get", "secrets", namespace)
    for verb in ("create", "update"):
        assert op.can(verb, "secrets", elsewhere), f"{verb} secrets"
    # Kopf's observation of CRDs.
    for verb in ("list", "watch"):
        assert op.can(verb, "customresourcedefinitions.apiextensions.k8s.io")


def test_clusterwide_operator_cannot_do_more(clusterwide: Installed, namespace: str) -> None:
    op = clusterwide
    elsewhere = "default"
    # Users and GitOps tools own the objects: no create, replace or delete.
    for verb in ("create", "delete", "deletecollection", "update"):
        assert not op.can(verb, KH), f"{verb} {KH}"
    for verb in ("create", "delete", "update"):
        assert not op.can(verb, VN, elsewhere), f"{verb} {VN}"
        assert not op.can(verb, VMM, elsewhere), f"{verb} {VMM}"
    assert not op.can("update", VMM, elsewhere, subresource="finalizers")
    # Only the verbs the code uses: no reading VirtualNodes one by one (Kopf lists and
    # watches; a VmMaster is read by name: a clone's master), no patching or deleting
    # Secrets (never adopted; garbage collection removes them), no touching Events after
    # posting them.
    assert not op.can("get", VN, elsewhere)
    assert op.can("get", VMM, elsewhere)
    for verb in ("patch", "delete"):
        assert not op.can(verb, "secrets", elsewhere), f"{verb} secrets"
    assert not op.can("patch", "events", elsewhere)
    assert not op.can("create", "events.events.k8s.io", elsewhere)
    assert not op.can("get", "customresourcedefinitions.apiextensions.k8s.io")
    # Secrets only by name: no listing or watching, cluster-wide or in a namespace.
    assert not op.can("list", "secrets")
    assert not op.can("watch", "secrets")
    assert not op.can("list", "secrets", elsewhere)
    assert not op.can("list", "secrets", namespace)
    # No workloads, no nodes, no tokens.
    assert not op.can("create", "pods", namespace)
    assert not op.can("create", "pods", elsewhere, subresource="exec")
    assert not op.can("create", "deployments.apps", namespace)
    assert not op.can("get", "nodes")
    assert not op.can("create", "serviceaccounts", namespace, subresource="token")
    assert not op.can("list", "namespaces")
    assert not op.can("delete", "customresourcedefinitions.apiextensions.k8s.io")
    assert not op.can("get", "configmaps", namespace)
    # No way to escalate.
    assert not op.can("create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert not op.can("create", "rolebindings.rbac.authorization.k8s.io", namespace)
    assert not op.can("create", "clusterroles.rbac.authorization.k8s.io")
    assert not op.can("escalate", "clusterroles.rbac.authorization.k8s.io")
    assert not op.can("bind", "clusterroles.rbac.authorization.k8s.io")
    assert not op.can("impersonate", "users")
    assert not op.can("impersonate", "serviceaccounts", namespace)


def test_namespaced_operator_is_confined(
    namespaced: Installed, namespace: str, other_namespaces: dict[str, str]
) -> None:
    op = namespaced
    lab, keys, other = (other_namespaces[k] for k in ("lab", "keys", "other"))

    # In the watched namespace: the full namespaced job.
    for resource in (VN, VMM):
        for verb in ("list", "watch", "patch"):
            assert op.can(verb, resource, lab), f"{verb} {resource} in {lab}"
        assert op.can("patch", resource, lab, subresource="status")
    assert op.can("update", VN, lab, subresource="finalizers")
    for verb in ("get", "create", "update"):
        assert op.can(verb, "secrets", lab), f"{verb} secrets in {lab}"
    for verb in ("patch", "delete"):
        assert not op.can(verb, "secrets", lab), f"{verb} secrets in {lab}"
    assert op.can("create", "events", lab)
    assert not op.can("list", "secrets", lab)

    # Its own namespace and the keys namespace: SSH keys, read by name. KvmHost events go to
    # "default" (Kopf's namespace for events of cluster-scoped objects).
    assert op.can("create", "events", "default")
    assert not op.can("get", "secrets", "default")
    assert op.can("get", "secrets", namespace)
    assert not op.can("create", "secrets", namespace)
    assert op.can("get", "secrets", keys)
    assert not op.can("create", "secrets", keys)
    assert not op.can("create", "events", keys)
    assert not op.can("create", "events", namespace)

    # Anywhere else: nothing namespaced.
    assert not op.can("get", VN, other)
    assert not op.can("watch", VN, other)
    assert not op.can("patch", VN, other, subresource="status")
    assert not op.can("patch", VMM, other)
    assert not op.can("get", "secrets", other)
    assert not op.can("create", "secrets", other)
    assert not op.can("create", "events", other)

    # Cluster-scoped needs stay cluster-wide: KvmHosts, CRDs, namespaces, and listing
    # VirtualNodes everywhere for host allocation (list only).
    assert op.can("patch", KH)
    assert op.can("patch", KH, subresource="status")
    assert op.can("watch", KH)
    assert op.can("list", "customresourcedefinitions.apiextensions.k8s.io")
    assert op.can("list", "namespaces") and op.can("watch", "namespaces")
    assert op.can("list", VN)
    assert not op.can("watch", VN)
    assert not op.can("list", VMM)
    assert not op.can("get", "secrets")
    assert not op.can("list", "secrets")
    assert not op.can("delete", KH)
    assert not op.can("create", "pods", lab)
    assert not op.can("create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert not op.can("create", "rolebindings.rbac.authorization.k8s.io", lab)


def test_rendered_workload_is_accepted_by_the_api_server(
    clusterwide: Installed, cluster: Kubectl
) -> None:
    """The Deployment, Service and dashboard ConfigMap pass a server-side dry run on 1.20."""
    workload = [
        doc for doc in clusterwide.docs if doc["kind"] in ("Deployment", "Service", "ConfigMap")
    ]
    assert {doc["kind"] for doc in workload} == {"Deployment", "Service"}
    result = cluster.run(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": workload}),
    )
    assert "deployment.apps" in result.stdout and "service" in result.stdout


def test_rendered_crds_are_accepted_by_the_api_server(cluster: Kubectl, helm: str) -> None:
    """The templated CRDs (labels, keep annotation) pass a server-side dry run on 1.20."""
    docs = render(helm, "crds", "kvmfleet-system", {})
    crds = [doc for doc in docs if doc["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 3
    result = cluster.run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-dry-run",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}),
    )
    assert result.stdout.count("customresourcedefinition.apiextensions.k8s.io") == 3, result.stdout


# --- people: the roles aggregated into view / edit / admin -------------------------------------


@pytest.fixture
def user_roles(cluster: Kubectl, helm: str, namespace: str) -> Iterator[list[dict[str, Any]]]:
    """The chart's user ClusterRoles, applied; waits until Kubernetes aggregated them."""
    release = f"users-{uuid.uuid4().hex[:6]}"
    docs = render(helm, release, namespace, {})
    roles = [
        doc
        for doc in docs
        if doc["kind"] == "ClusterRole"
        and doc["metadata"]["labels"].get("app.kubernetes.io/component") == "user-role"
    ]
    assert sorted(doc["metadata"]["name"].rsplit("-", 1)[1] for doc in roles) == ["edit", "view"]
    try:
        cluster.apply({"apiVersion": "v1", "kind": "List", "items": roles})
        yield roles
    finally:
        for doc in roles:
            cluster.run("delete", "clusterrole", doc["metadata"]["name"], "--ignore-not-found")


def _can(
    cluster: Kubectl, user: str, verb: str, resource: str, namespace: str, subresource: str = ""
) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={user}", "-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    result = cluster.run(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stdout + result.stderr
    return answer == "yes"


def test_namespace_editor_can_create_and_start_a_virtualnode_viewer_cannot(
    cluster: Kubectl, namespace: str, user_roles: list[dict[str, Any]]
) -> None:
    editor, viewer = f"editor-{uuid.uuid4().hex[:6]}", f"viewer-{uuid.uuid4().hex[:6]}"
    # Kubernetes' own roles, bound in one namespace only: nothing of kvmfleet's is bound.
    cluster.run(
        "create",
        "rolebinding",
        f"{editor}-edit",
        "--clusterrole=edit",
        f"--user={editor}",
        "-n",
        namespace,
    )
    cluster.run(
        "create",
        "rolebinding",
        f"{viewer}-view",
        "--clusterrole=view",
        f"--user={viewer}",
        "-n",
        namespace,
    )
    # The clusterrole-aggregation controller folds our rules into edit and view.
    deadline = time.monotonic() + 60
    while not (
        _can(cluster, editor, "create", VN, namespace)
        and _can(cluster, viewer, "list", VN, namespace)
    ):
        assert time.monotonic() < deadline, "edit/view never gained the kvmfleet rules"
        time.sleep(0.5)

    for verb in ("get", "list", "watch", "create", "patch", "update", "delete"):
        assert _can(cluster, editor, verb, VN, namespace), f"edit: {verb} {VN}"
        assert _can(cluster, editor, verb, VMM, namespace), f"edit: {verb} {VMM}"
    for verb in ("get", "list", "watch"):
        assert _can(cluster, viewer, verb, VN, namespace), f"view: {verb} {VN}"
    for verb in ("create", "patch", "update", "delete"):
        assert not _can(cluster, viewer, verb, VN, namespace), f"view: {verb} {VN}"
        assert not _can(cluster, viewer, verb, VMM, namespace), f"view: {verb} {VMM}"
    # Nobody but the operator writes status; KvmHosts stay with cluster administrators.
    assert not _can(cluster, editor, "patch", VN, namespace, subresource="status")
    assert _can(cluster, viewer, "get", VN, namespace, subresource="status")
    assert not _can(cluster, editor, "create", KH, namespace)
    # Only in the namespace of the binding.
    assert not _can(cluster, editor, "create", VN, "default")

    # For real: the editor creates a VirtualNode and starts it; the viewer cannot do either.
    name = f"users-{uuid.uuid4().hex[:6]}"
    vm = {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hostRef": "no-such-host", "cpus": 1, "memory": "256Mi", "runStrategy": "Halted"},
    }
    refused = cluster.run("create", f"--as={viewer}", "-f", "-", input=json.dumps(vm), check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    try:
        cluster.run("create", f"--as={editor}", "-f", "-", input=json.dumps(vm))
        start = '{"spec":{"runStrategy":"Always"}}'
        refused = cluster.run(
            "patch",
            "vn",
            name,
            "-n",
            namespace,
            f"--as={viewer}",
            "--type=merge",
            "-p",
            start,
            check=False,
        )
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
        cluster.run(
            "patch", "vn", name, "-n", namespace, f"--as={editor}", "--type=merge", "-p", start
        )
        # `kubectl kvm start` writes the start annotation: a patch as well.
        cluster.run(
            "annotate",
            "vn",
            name,
            "-n",
            namespace,
            f"--as={editor}",
            "kvmfleet.io/start-requested-at=2026-01-01T00:00:00Z",
        )
        got = cluster.json("get", "vn", name, "-n", namespace, f"--as={viewer}")
        assert got["spec"]["runStrategy"] == "Always"
        refused = cluster.run(
            "delete", "vn", name, "-n", namespace, f"--as={viewer}", "--wait=false", check=False
        )
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    finally:
        cluster.run(
            "patch",
            "vn",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
        cluster.run(
            "delete", "vn", name, "-n", namespace, "--ignore-not-found", "--wait=false", check=False
        )
        for binding in (f"{editor}-edit", f"{viewer}-view"):
            cluster.run("delete", "rolebinding", binding, "-n", namespace, check=False)


def test_rendered_dashboard_is_accepted_by_the_api_server(
    cluster: Kubectl, helm: str, namespace: str
) -> None:
    docs = render(helm, "dash", namespace, {"grafanaDashboard": {"enabled": True}})
    (configmap,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    result = cluster.run("apply", "--dry-run=server", "-f", "-", input=json.dumps(configmap))
    assert "configmap" in result.stdout


# --- the operator itself, as its ServiceAccount ------------------------------------------------


def _serviceaccount_kubeconfig(installed: Installed, path: Path) -> Path:
    """A kubeconfig with the ServiceAccount's token (1.20's token controller makes a Secret)."""
    cluster = installed.cluster
    deadline = time.monotonic() + 60
    token = ""
    while not token:
        assert time.monotonic() < deadline, "no token Secret for the ServiceAccount in 60 s"
        sa = cluster.json(
            "get", "serviceaccount", installed.serviceaccount, "-n", installed.namespace
        )
        for ref in sa.get("secrets") or []:
            secret = cluster.json("get", "secret", ref["name"], "-n", installed.namespace)
            if secret.get("type") == "kubernetes.io/service-account-token":
                token = base64.b64decode(secret.get("data", {}).get("token", "")).decode()
        if not token:
            time.sleep(0.5)
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [server],
        "users": [{"name": "kvmfleet-operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kvmfleet-operator",
                "context": {
                    "cluster": server["name"],
                    "user": "kvmfleet-operator",
                    # Kopf posts the events of cluster-scoped objects in the context's
                    # namespace, as it does in its own namespace in a pod.
                    "namespace": installed.namespace,
                },
            }
        ],
        "current-context": "kvmfleet-operator",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def _ssh_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )


def _forbidden(log: str) -> list[str]:
    """Log lines of refused API calls (the operator logs each request at debug level)."""
    return [
        line
        for line in log.splitlines()
        if re.search(
            r'HTTP/1\.1" 403 |APIForbiddenError|403 Forbidden|Not enough permissions|Failed to post an event',
            line,
        )
    ]


@pytest.mark.parametrize("shape", ["clusterwide", "namespaced"])
def test_operator_runs_with_only_the_chart_permissions(
    request: pytest.FixtureRequest,
    cluster: Kubectl,
    namespace: str,
    tmp_path: Path,
    shape: str,
) -> None:
    foreign = [o["metadata"]["name"] for o in cluster.json("get", "kvmhosts")["items"]]
    assert not foreign, f"this module's control plane has other KvmHosts: {foreign}"
    installed: Installed = request.getfixturevalue(shape)
    if shape == "namespaced":
        (vm_namespace,) = [
            doc["metadata"]["namespace"]
            for doc in installed.docs
            if doc["kind"] == "Role" and "virtualnodes" in json.dumps(doc["rules"])
        ]
        extra_env = {"KVMFLEET_NAMESPACES": vm_namespace}
    else:
        vm_namespace, extra_env = namespace, {}
    kubeconfig = _serviceaccount_kubeconfig(installed, tmp_path / "kubeconfig")

    host = f"rbac-{uuid.uuid4().hex[:6]}"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{host}-ssh", "namespace": namespace},
            "type": "kubernetes.io/ssh-auth",
            "stringData": {"ssh-privatekey": _ssh_key()},
        }
    )
    # An SSH port on loopback where nothing listens: the host is unreachable, which the
    # operator reports in status (reading the key Secret first).
    cluster.apply(
        {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "KvmHost",
            "metadata": {"name": host},
            "spec": {
                "address": "127.0.0.1",
                "port": free_port(),
                "sshKeySecretRef": {"name": f"{host}-ssh", "namespace": namespace},
                "hostKeyPolicy": "TrustOnFirstUse",
            },
        }
    )
    cluster.apply(
        {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "VirtualNode",
            "metadata": {"name": "rbac-vm", "namespace": vm_namespace},
            "spec": {"hostRef": host, "cpus": 1, "memory": "256Mi"},
        }
    )
    operator = OperatorProcess(
        str(kubeconfig),
        tmp_path / "operator.log",
        extra_env={"KVMFLEET_HOST_PROBE_INTERVAL": "5", **extra_env},
    )
    try:
        operator.start()
        kh = cluster.wait_for(
            lambda o: (
                o.get("status", {}).get("conditions")
                and "kvmfleet.io/finalizer" in o["metadata"].get("finalizers", [])
            ),
            "kvmhost",
            host,
            timeout=90,
        )
        reachable = {c["type"]: c for c in kh["status"]["conditions"]}.get("Reachable")
        assert reachable is None or reachable["status"] != "True", reachable
        cluster.wait_for(
            lambda o: (
                o.get("status", {}).get("conditions")
                and "kvmfleet.io/finalizer" in o["metadata"].get("finalizers", [])
            ),
            "vn",
            "rbac-vm",
            "-n",
            vm_namespace,
            timeout=90,
        )
        # Deletion goes through: the operator removes its finalizers with PATCH.
        cluster.run("delete", "vn", "rbac-vm", "-n", vm_namespace, "--timeout=60s")
        cluster.run("delete", "kvmhost", host, "--timeout=60s")
        log = operator.log()
        assert host in log and "rbac-vm" in log, log[-3000:]
        assert not _forbidden(log), "\n".join(_forbidden(log)[:20])
    finally:
        operator.stop()
        for args in (("vn", "rbac-vm", "-n", vm_namespace), ("kvmhost", host)):
            if cluster.run("get", *args, check=False).returncode == 0:
                cluster.run(
                    "patch",
                    *args,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
                cluster.run("delete", *args, "--ignore-not-found", "--wait=false", check=False)
