"""Test helpers for the hypervisor testbed (hack/testbed.sh): bring it up, read it, poke it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from kvmfleet.virt.connection import LibvirtTarget

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("KVMFLEET_RUN_DIR", REPO / ".run"))
TESTBED_SH = REPO / "hack" / "testbed.sh"
HOSTS_JSON = RUN_DIR / "testbed" / "hosts.json"
# KVMFLEET_INSTANCE (0-9) selects which side-by-side testbed hack/testbed.sh runs: its
# network is 10.77.N.0/24 and its bridge kvmf-mgmt (N=0) or kvmfN-mgmt.
INSTANCE = int(os.environ.get("KVMFLEET_INSTANCE", "0") or "0")
NET = f"10.77.{INSTANCE}"
BRIDGE = "kvmf-mgmt" if INSTANCE == 0 else f"kvmf{INSTANCE}-mgmt"


def run_testbed(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run hack/testbed.sh with arguments; raise with its output when it fails and check is set."""
    result = subprocess.run(
        ["bash", str(TESTBED_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"hack/testbed.sh {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def ensure_up() -> tuple[dict[str, Any], bool]:
    """The testbed's hosts.json, starting it when `status` fails; (doc, started from nothing).

    KVMFLEET_TESTBED_UP_ARGS adds options to `up`, e.g. "--kvm-hosts 2". Raises
    AssertionError (with what `up` printed) when the testbed cannot be brought up.
    """
    status = run_testbed("status", check=False)
    started = status.returncode == 3
    if status.returncode != 0:
        run_testbed(
            "up", *shlex.split(os.environ.get("KVMFLEET_TESTBED_UP_ARGS", "")), timeout=1500
        )
    if not HOSTS_JSON.exists():
        raise AssertionError(f"the testbed is up but {HOSTS_JSON} is missing")
    doc: dict[str, Any] = json.loads(HOSTS_JSON.read_text())
    return doc, started


def on_host(host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv inside a testbed host's namespaces (not through the operator's SSH path)."""
    return run_testbed("exec", host, "--", *argv, check=check)


def current_virtualization(host: dict[str, Any]) -> str:
    """The host's virtualization as hosts.json says now (other runs may recreate hosts)."""
    doc = json.loads(HOSTS_JSON.read_text())
    return str(next(h for h in doc["hosts"] if h["name"] == host["name"])["virtualization"])


def other_host(hosts: list[dict[str, Any]], host: dict[str, Any]) -> dict[str, Any]:
    """A testbed host that is not ``host``."""
    return next(h for h in hosts if h["name"] != host["name"])


def libvirt_target(
    host: dict[str, Any], host_key: str | None = None, uri: str | None = None
) -> LibvirtTarget:
    """kvmfleet's libvirt target for a testbed host: its key, its host key pinned (or host_key)."""
    return LibvirtTarget.for_host(
        host["address"],
        Path(host["privateKeyPath"]).read_bytes(),
        host_key or host["hostKey"],
        port=host["port"],
        user=host["user"],
        libvirt_uri=uri,
    )


def host_manifests(doc: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """The KvmHosts of the testbed (pinned host keys, br0 over eth0, NFS Direct + dir) and their key Secret."""
    key = Path(doc["hosts"][0]["privateKeyPath"]).read_text()
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kvmfleet-system"}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/ssh-auth",
            "metadata": {"name": "testbed-ssh", "namespace": "kvmfleet-system"},
            "stringData": {"ssh-privatekey": key},
        },
    ]
    for host in doc["hosts"]:
        if names is not None and host["name"] not in names:
            continue
        items.append(kvmhost(host, doc))
    return {"apiVersion": "v1", "kind": "List", "items": items}


def kvmhost(host: dict[str, Any], doc: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """One KvmHost for a testbed host; keyword arguments replace spec fields (name: the object's)."""
    name = spec.pop("name", None) or host["name"]
    body: dict[str, Any] = {
        "address": host["address"],
        "port": host["port"],
        "user": host["user"],
        "sshKeySecretRef": {"name": "testbed-ssh", "namespace": "kvmfleet-system"},
        "hostKey": host["hostKey"],
        "hostKeyPolicy": "Strict",
        "bridges": [{"name": "br0", "interface": "eth0"}],
        "storagePools": [
            {"name": "shared", "url": doc["nfs"]["url"]},
            {"name": "local", "url": "dir:///var/lib/kvmfleet/images"},
        ],
        "nfsAccess": "Direct",
        # Two cores per test host: room for the 50-VM placement test (default cpu: 4).
        "overcommit": {"cpu": 16, "memory": 1},
    }
    body.update(spec)
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "KvmHost",
        "metadata": {"name": name},
        "spec": {k: v for k, v in body.items() if v is not None},
    }
