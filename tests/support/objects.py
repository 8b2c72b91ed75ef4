"""Test helpers for kvmfleet objects on the real API server: manifests, conditions, events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from support.cluster import Kubectl
from support.testbed import host_manifests


def vm(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A small VirtualNode manifest (1 CPU, 256 MiB, one NIC on br0); spec keys override."""
    body: dict[str, Any] = {"cpus": 1, "memory": "256Mi", "nics": [{"bridge": "br0"}]}
    body.update(spec)
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of that type in obj's status, or {}."""
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def is_(type_: str, status: str, reason: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """A predicate for `Kubectl.wait_for`: condition type_ has status (and reason, if given)."""

    def check(obj: dict[str, Any]) -> bool:
        found = condition(obj, type_)
        return found.get("status") == status and reason in (None, found.get("reason"))

    return check


def events(cluster: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events about the object called name in namespace."""
    items: list[dict[str, Any]] = cluster.json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


def poke(cluster: Kubectl, namespace: str, name: str) -> None:
    """An annotation change on a VirtualNode: one more reconciliation right away."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    cluster.run("annotate", "vn", name, "-n", namespace, "--overwrite", f"test/poke={stamp}")


def gone(cluster: Kubectl, namespace: str, name: str, timeout: float = 120) -> None:
    """Wait until the VirtualNode is deleted (its finalizer done)."""
    deadline = time.monotonic() + timeout
    while cluster.run("get", "vn", name, "-n", namespace, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{namespace}/{name} was not deleted"
        time.sleep(1)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0
) -> None:
    """Poll predicate() until it is truthy; fail after timeout seconds naming what."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def apply_testbed_hosts(
    cluster: Kubectl,
    testbed: dict[str, Any],
    names: list[str] | None = None,
    ready: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 120,
) -> list[str]:
    """Apply the testbed's hosts (all, or ``names``) as KvmHosts and wait until each is
    Ready (or ``ready`` holds); their names."""
    cluster.apply(host_manifests(testbed, names))
    applied = names or [str(h["name"]) for h in testbed["hosts"]]
    for name in applied:
        cluster.wait_for(ready or is_("Ready", "True"), "kh", name, timeout=timeout)
    return applied


def scratch_namespace(
    cluster: Kubectl, prefix: str, kinds: str = "vn", timeout: int = 180
) -> Iterator[str]:
    """A fresh namespace ``<prefix>-xxxxxx`` for one test; afterwards its objects of
    ``kinds`` are deleted (waiting up to ``timeout`` s, so their disks go too), then it."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.run("create", "namespace", name)
    yield name
    cluster.run(
        "delete", kinds, "--all", "-n", name, f"--timeout={timeout}s",
        check=False, timeout=timeout + 20,
    )  # fmt: skip
    cluster.run("delete", "namespace", name, "--wait=false", check=False)
