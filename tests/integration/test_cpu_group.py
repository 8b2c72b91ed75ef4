"""Migration groups on the testbed's KVM host: libvirt's baseline over the members' CPUs,
proven by a trial guest, and the CPU ``auto`` VMs of the group are defined with.

The testbed has one KVM host, so the group's two members are two KvmHosts for it (the
operator treats them as two hypervisors with the same CPU). What is checked against the
host itself: the baseline equals ``virsh cpu-baseline`` of the host's own CPU, the VM's
definition names that model and those features, and its vCPU runs under KVM.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from support.cluster import Kubectl, OperatorProcess
from support.objects import condition, events, scratch_namespace, vm, wait_until
from support.testbed import host_manifests, kvmhost, on_host

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(600)]


def kvm_host(testbed: dict[str, Any]) -> dict[str, Any]:
    for host in testbed["hosts"]:
        if host["virtualization"] == "kvm":
            return dict(host)
    pytest.fail(f"the testbed has no KVM host: {[h['name'] for h in testbed['hosts']]}")


@pytest.fixture
def ns(cluster: Kubectl) -> Iterator[str]:
    yield from scratch_namespace(cluster, "cpugrp")


@pytest.fixture
def group(
    cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any], ns: str
) -> Iterator[tuple[str, list[str], str]]:
    """Two KvmHosts for the KVM host in a group of their own (group, names, testbed host)."""
    host = kvm_host(testbed)
    tag = uuid.uuid4().hex[:6]
    name = f"g{tag}"
    names = [f"cg{tag}-a", f"cg{tag}-b"]
    base = host_manifests(testbed, [])["items"]  # the key Secret (and its namespace)
    members = [
        kvmhost(host, testbed, name=n, migrationGroup=name, allowedNamespaces=[ns]) for n in names
    ]
    cluster.apply({"apiVersion": "v1", "kind": "List", "items": [*base, *members]})
    try:
        yield name, names, str(host["name"])
    finally:
        cluster.run("delete", "vn", "--all", "-n", ns, "--timeout=120s", check=False, timeout=150)
        cluster.run("delete", "kh", *names, "--wait=false", check=False)


def guest_cpu(cluster: Kubectl, name: str) -> dict[str, Any]:
    return dict((cluster.json("get", "kh", name).get("status") or {}).get("guestCpu") or {})


def virsh_baseline(host: str) -> tuple[str, set[str]]:
    """``virsh cpu-baseline`` of the host's own CPU: (model, required features)."""
    caps = on_host(host, "virsh", "-c", "qemu:///system", "capabilities").stdout
    cpu = ET.fromstring(caps).find("host/cpu")
    assert cpu is not None
    script = 'f=$(mktemp); printf "%s" "$1" > "$f"; virsh -c qemu:///system cpu-baseline "$f"'
    out = on_host(host, "bash", "-c", script, "baseline", ET.tostring(cpu, encoding="unicode"))
    root = ET.fromstring(out.stdout)
    required = {f.get("name", "") for f in root.findall("feature") if f.get("policy") == "require"}
    return root.findtext("model") or "", required


def test_a_groups_vm_is_defined_with_the_baseline_every_member_runs(
    cluster: Kubectl, group: tuple[str, list[str], str], ns: str
) -> None:
    name, (first, second), host = group

    def both_members(obj_name: str) -> bool:
        found = guest_cpu(cluster, obj_name).get("group") or {}
        return found.get("members") == sorted([first, second]) and bool(found.get("works"))

    wait_until(lambda: both_members(first) and both_members(second), 180, "both members")
    a, b = guest_cpu(cluster, first), guest_cpu(cluster, second)
    assert a["hostCpu"]["model"] and a["hostCpu"]["arch"] == "x86_64"
    # one baseline for the group, the one libvirt computes over the host's CPU
    assert a["group"]["choice"] == b["group"]["choice"] == a["default"] == b["default"]
    assert a["group"]["name"] == name
    model, required = virsh_baseline(host)
    assert a["group"]["model"] == model
    assert {f[1:] for f in a["group"]["features"] if f.startswith("+")} == required
    assert re.fullmatch(rf"custom/{re.escape(model)}#[0-9a-f]{{12}}", a["group"]["choice"])
    reasons = {e["reason"] for e in events(cluster, "default", first)}
    assert "GuestCpuGroup" in reasons, reasons

    vm_name = f"v{name[1:]}"
    cluster.apply(vm(vm_name, ns, hostRef=first, nics=[]))
    obj = cluster.wait_for(
        lambda o: condition(o, "Ready").get("status") == "True", "vn", vm_name, "-n", ns,
        timeout=180,
    )  # fmt: skip
    assert obj["status"]["host"] == first and not obj["status"].get("restartRequired")
    inactive = on_host(
        host, "virsh", "-c", "qemu:///system", "dumpxml", "--inactive", vm_name
    ).stdout
    assert f'choice="{a["group"]["choice"]}"' in inactive.replace("'", '"'), inactive
    cpu = ET.fromstring(inactive).find("cpu")
    assert cpu is not None and cpu.get("mode") == "custom" and cpu.findtext("model") == model
    assert {f.get("name") for f in cpu.findall("feature") if f.get("policy") == "require"} == (
        required
    )
    live = on_host(host, "virsh", "-c", "qemu:///system", "dumpxml", vm_name).stdout
    assert "<domain type='kvm'" in live

    def cpu_time() -> int:
        out = on_host(
            host, "virsh", "-c", "qemu:///system", "domstats", "--cpu-total", vm_name
        ).stdout
        return int(next(w for w in out.split() if w.startswith("cpu.time=")).split("=")[1])

    first_time = cpu_time()
    wait_until(lambda: cpu_time() > first_time, 30, "the guest's vCPU to run")

    # leaving the group: that host's auto is its own best CPU again
    cluster.run("patch", "kh", second, "--type=json",
                "-p", '[{"op": "remove", "path": "/spec/migrationGroup"}]')  # fmt: skip
    wait_until(lambda: "group" not in guest_cpu(cluster, second), 60, f"{second} to leave")
    left = guest_cpu(cluster, second)
    assert left["default"] != a["group"]["choice"] and "#" not in left["default"]
    wait_until(
        lambda: (guest_cpu(cluster, first).get("group") or {}).get("members") == [first],
        60,
        f"{first}'s group to lose {second}",
    )
    # the same CPU alone has the same baseline: the VM is not redefined
    assert guest_cpu(cluster, first)["group"]["choice"] == a["group"]["choice"]
    obj = cluster.json("get", "vn", vm_name, "-n", ns)
    assert not obj["status"].get("restartRequired")
