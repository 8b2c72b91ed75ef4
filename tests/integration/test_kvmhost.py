"""KvmHost on the real testbed and the real API server: probe, bridges, storage, keys, outages.

xCAT's "check the ability of the kvm hypervisor node", `xHRM bridgeprereq`, `mountvms` and
`lsvm`, checked on the hosts themselves (through hack/testbed.sh exec, not the operator's
own SSH path).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from support.cluster import Kubectl, OperatorProcess
from support.objects import condition, is_
from support.testbed import RUN_DIR, host_manifests, kvmhost, on_host, run_testbed

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(600)]


def host_by_name(testbed: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in testbed["hosts"] if h["name"] == name)


@pytest.fixture(scope="module")
def hosts(
    cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any]
) -> Iterator[list[str]]:
    """Every testbed host as a KvmHost, Ready and probed by this test session's operator."""
    started = datetime.now(UTC).replace(microsecond=0)
    cluster.apply(host_manifests(testbed))
    names = [h["name"] for h in testbed["hosts"]]

    def probed_and_ready(obj: dict[str, Any]) -> bool:
        stamp = obj.get("status", {}).get("lastProbeTime", "1970-01-01T00:00:00Z")
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return when >= started and is_("Ready", "True")(obj)

    for name in names:
        cluster.wait_for(probed_and_ready, "kh", name, timeout=120)
    yield names


def test_hosts_reach_ready_with_true_capabilities(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any]
) -> None:
    table = cluster.run("get", "kh").stdout
    for name in hosts:
        obj = cluster.json("get", "kh", name)
        caps = obj["status"]["capabilities"]
        nproc = int(on_host(name, "nproc").stdout)
        meminfo = on_host(name, "grep", "MemTotal", "/proc/meminfo").stdout.split()
        assert caps["cpus"] == nproc
        assert abs(caps["memoryMiB"] - int(meminfo[1]) // 1024) <= 1
        assert caps["libvirtVersion"].startswith("9.")
        assert caps["qemuVersion"].startswith("7.2")
        assert caps["arch"] == "x86_64"
        assert caps["virtualization"] == host_by_name(testbed, name)["virtualization"]
        virt = condition(obj, "VirtualizationCapable")
        assert virt["status"] == "True"
        assert virt["reason"] == ("KVM" if caps["virtualization"] == "kvm" else "Emulated")
        for type_ in (
            "Reachable",
            "HostKeyVerified",
            "LibvirtReady",
            "BridgesReady",
            "StorageReady",
        ):
            assert condition(obj, type_)["status"] == "True", (type_, obj["status"])
        assert obj["status"]["hostKeyFingerprint"].startswith("SHA256:")
        assert obj["status"]["allocatable"]["cpus"] == nproc * 16  # overcommit cpu: 16
        line = next(line for line in table.splitlines() if line.startswith(name))
        assert "True" in line.split() and host_by_name(testbed, name)["address"] in line


KVM_TRIALS = [
    ("host-model", None),
    ("host-passthrough", None),
    ("custom", "kvm64"),
    ("hypervisor-default", None),
]


def started_by_hand(host: str, mode: str, model: str | None, virt_type: str) -> bool:
    """virsh create of a firmware-only guest with that <cpu>: did it start and keep running?"""
    cpu = ""
    if model:
        cpu = f"<cpu mode='custom' match='exact'><model fallback='forbid'>{model}</model></cpu>"
    elif mode != "hypervisor-default":
        cpu = f"<cpu mode='{mode}'/>"
    name = f"by-hand-{uuid.uuid4().hex[:8]}"
    path = RUN_DIR / f"{name}.xml"
    path.write_text(
        f"<domain type='{virt_type}'><name>{name}</name><memory unit='MiB'>64</memory>"
        f"<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>{cpu}"
        "</domain>"
    )
    try:
        virsh = ("virsh", "-c", "qemu:///system")
        if on_host(host, *virsh, "create", str(path), check=False).returncode != 0:
            return False
        time.sleep(3)
        state = on_host(host, *virsh, "domstate", name, check=False).stdout.strip()
        on_host(host, *virsh, "destroy", name, check=False)
        return state == "running"
    finally:
        path.unlink()


def test_guest_cpu_trials_are_recorded_and_tell_the_truth(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any]
) -> None:
    """Each host proves which guest CPUs start; each verdict is checked again by hand."""
    for name in hosts:
        status = cluster.json("get", "kh", name)["status"]
        guest_cpu = status["guestCpu"]
        trials = [(t["mode"], t.get("model")) for t in guest_cpu["trials"]]
        kvm = host_by_name(testbed, name)["virtualization"] == "kvm"
        assert trials == (KVM_TRIALS if kvm else [("hypervisor-default", None)]), guest_cpu
        for trial in guest_cpu["trials"]:
            by_hand = started_by_hand(
                name, trial["mode"], trial.get("model"), "kvm" if kvm else "qemu"
            )
            assert by_hand == trial["works"], (name, trial)
            assert trial["works"] or trial["message"], trial
        working = [t for t in guest_cpu["trials"] if t["works"]]
        assert guest_cpu["working"] == [
            f"{t['mode']}/{t['model']}" if t.get("model") else t["mode"] for t in working
        ]
        assert guest_cpu["default"] in guest_cpu["working"], guest_cpu
        assert guest_cpu["default"] != "host-passthrough"
        assert "qemuVersion" in status["capabilities"]
        assert status["capabilities"]["qemuVersion"] in guest_cpu["probedFor"]
        virt = condition(cluster.json("get", "kh", name), "VirtualizationCapable")
        if kvm:
            assert f"starts with CPU {guest_cpu['default']}" in virt["message"], virt
        leftovers = on_host(name, "virsh", "-c", "qemu:///system", "list", "--all", "--name")
        assert "kvmfleet-cpu-trial-" not in leftovers.stdout
    wide = cluster.run("get", "kh", "-o", "wide").stdout
    assert "GUEST CPU" in wide


def test_bridge_is_made_on_the_host_and_reapplying_changes_nothing(
    cluster: Kubectl, operator: OperatorProcess, hosts: list[str], testbed: dict[str, Any]
) -> None:
    name = hosts[0]
    address = host_by_name(testbed, name)["address"]
    link = json.loads(on_host(name, "ip", "-j", "-d", "link", "show", "br0").stdout)[0]
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert link["linkinfo"]["info_data"]["forward_delay"] == 0
    eth0 = json.loads(on_host(name, "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert eth0["master"] == "br0"
    addrs = json.loads(on_host(name, "ip", "-j", "addr", "show", "br0").stdout)[0]["addr_info"]
    assert any(a["local"] == address for a in addrs)
    routes = json.loads(on_host(name, "ip", "-j", "route", "show", "default").stdout)
    assert routes and routes[0]["dev"] == "br0"

    before = cluster.json("get", "kh", name)
    cluster.apply(host_manifests(testbed, [name]))
    operator.wait_probes(name, 2)
    after = cluster.json("get", "kh", name)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    again = json.loads(on_host(name, "ip", "-j", "-d", "link", "show", "br0").stdout)[0]
    assert again["ifindex"] == link["ifindex"], "br0 was recreated"
    assert condition(after, "Ready")["status"] == "True"
    assert (
        condition(after, "Reachable")["lastTransitionTime"]
        == condition(before, "Reachable")["lastTransitionTime"]
    )


def test_bridge_deleted_by_hand_comes_back(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any]
) -> None:
    name = hosts[-1]
    host = host_by_name(testbed, name)
    for leftover in ("brtest", "kvmd0"):
        on_host(name, "ip", "link", "del", leftover, check=False)
    on_host(name, "ip", "link", "add", "kvmd0", "type", "veth", "peer", "name", "kvmd0p")
    try:
        bridges = [{"name": "br0", "interface": "eth0"}, {"name": "brtest", "interface": "kvmd0"}]
        cluster.apply(kvmhost(host, testbed, bridges=bridges))
        cluster.wait_for(
            lambda o: any(
                b["name"] == "brtest" and b["ready"] for b in o["status"].get("bridges", [])
            ),
            "kh",
            name,
            timeout=60,
        )
        first = json.loads(on_host(name, "ip", "-j", "link", "show", "brtest").stdout)[0]
        on_host(name, "ip", "link", "del", "brtest")
        deadline = time.monotonic() + 60
        while on_host(name, "ip", "link", "show", "brtest", check=False).returncode != 0:
            assert time.monotonic() < deadline, "brtest was not restored by a probe"
            time.sleep(1)
        restored = json.loads(on_host(name, "ip", "-j", "link", "show", "brtest").stdout)[0]
        assert restored["ifindex"] != first["ifindex"]
        port = json.loads(on_host(name, "ip", "-j", "link", "show", "kvmd0").stdout)[0]
        assert port["master"] == "brtest"
        events = cluster.json(
            "get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}"
        )["items"]
        assert sum(e["reason"] == "BridgeCreated" and "brtest" in e["message"] for e in events) >= 1
        cluster.wait_for(is_("Ready", "True"), "kh", name, timeout=60)
    finally:
        cluster.apply(host_manifests(testbed, [name]))
        on_host(name, "ip", "link", "del", "brtest", check=False)
        on_host(name, "ip", "link", "del", "kvmd0", check=False)


def test_storage_pools_direct_nfs_and_dir_are_ready(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any]
) -> None:
    for name in hosts:
        pools = {p["name"]: p for p in cluster.json("get", "kh", name)["status"]["storagePools"]}
        assert pools["shared"]["url"] == testbed["nfs"]["url"]
        assert pools["shared"]["capacityBytes"] > pools["shared"]["availableBytes"] > 0
        assert pools["local"]["path"] == "/var/lib/kvmfleet/images"
        assert pools["local"]["capacityBytes"] > 0
        listing = on_host(
            name, "virsh", "-c", "qemu:///system", "pool-list", "--all", "--name"
        ).stdout
        assert any(line.startswith("kvmfleet-") for line in listing.split())

    # The Direct probe leaves nothing behind on the export. A probe file seen now may
    # belong to a probe in progress (every host probes every 60 s); a leak is one that
    # is still there after the probe's own deadline. Each file is followed by name.
    def probe_files() -> set[str]:
        listing = run_testbed("exec", "kvmf-mn", "--", "ls", "-a", "/srv/vms", check=False)
        return {f for f in listing.stdout.split() if f.startswith(".kvmfleet-probe")}

    seen = probe_files()
    deadline = time.monotonic() + 45
    while seen and time.monotonic() < deadline:
        time.sleep(1)
        seen &= probe_files()  # a name that disappeared once was removed by its probe
    assert not seen, f"probe files left on the export: {sorted(seen)}"


def test_mount_nfs_and_missing_block_device_are_reported_clearly(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any]
) -> None:
    host = host_by_name(testbed, hosts[-1])
    manifest = kvmhost(
        host,
        testbed,
        name="storage-check",
        bridges=[],
        nfsAccess="Mount",
        storagePools=[
            {"name": "nfs", "url": testbed["nfs"]["url"]},
            {"name": "disk", "url": "phy:/dev/kvmfleet-missing"},
        ],
    )
    cluster.apply(manifest)
    try:
        obj = cluster.wait_for(is_("StorageReady", "False"), "kh", "storage-check", timeout=90)
        message = condition(obj, "StorageReady")["message"]
        assert "cannot mount NFS" in message and "nfsAccess: Direct" in message
        assert "/dev/kvmfleet-missing does not exist" in message
        assert condition(obj, "Ready")["status"] == "False"
        assert condition(obj, "Reachable")["status"] == "True"
    finally:
        cluster.run("delete", "kh", "storage-check", "--timeout=60s", check=False)


def test_wrong_host_key_is_refused_and_nothing_runs_on_the_host(
    cluster: Kubectl, operator: OperatorProcess, hosts: list[str], testbed: dict[str, Any]
) -> None:
    target, other = host_by_name(testbed, hosts[-1]), host_by_name(testbed, hosts[0])
    on_host(target["name"], "ip", "link", "del", "kvmd1", check=False)
    on_host(target["name"], "ip", "link", "add", "kvmd1", "type", "veth", "peer", "name", "kvmd1p")
    try:
        manifest = kvmhost(
            target,
            testbed,
            name="wrong-key",
            hostKey=other["hostKey"],
            bridges=[{"name": "brwrong", "interface": "kvmd1"}],
            storagePools=[],
        )
        cluster.apply(manifest)
        obj = cluster.wait_for(is_("HostKeyVerified", "False"), "kh", "wrong-key", timeout=60)
        assert condition(obj, "HostKeyVerified")["reason"] == "HostKeyMismatch"
        assert condition(obj, "Stalled")["status"] == "True"
        assert condition(obj, "Ready")["status"] == "False"
        operator.wait_probes("wrong-key", 1)  # probed again, refused again
        # The bridge the spec asks for was never made: no command ran on the host.
        assert on_host(target["name"], "ip", "link", "show", "brwrong", check=False).returncode != 0
    finally:
        cluster.run("delete", "kh", "wrong-key", "--timeout=60s", check=False)
        on_host(target["name"], "ip", "link", "del", "kvmd1", check=False)


def test_trust_on_first_use_records_the_key_and_refuses_another(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any]
) -> None:
    target, other = host_by_name(testbed, hosts[-1]), host_by_name(testbed, hosts[0])
    manifest = kvmhost(
        target,
        testbed,
        name="tofu",
        hostKey=None,
        hostKeyPolicy="TrustOnFirstUse",
        bridges=[],
        storagePools=[],
    )
    cluster.apply(manifest)
    try:
        obj = cluster.wait_for(is_("Ready", "True"), "kh", "tofu", timeout=60)
        assert obj["status"]["hostKey"] == target["hostKey"]
        # Pretend the host we trusted had another key: the real one must now be refused.
        cluster.run(
            "replace",
            "--raw",
            "/apis/kvmfleet.io/v1alpha1/kvmhosts/tofu/status",
            "-f",
            "-",
            input=json.dumps({**obj, "status": {**obj["status"], "hostKey": other["hostKey"]}}),
        )
        obj = cluster.wait_for(is_("HostKeyVerified", "False"), "kh", "tofu", timeout=60)
        assert condition(obj, "HostKeyVerified")["reason"] == "HostKeyMismatch"
        assert obj["status"]["hostKey"] == other["hostKey"], "the recorded key must not be replaced"
    finally:
        cluster.run("delete", "kh", "tofu", "--timeout=60s", check=False)


@pytest.mark.parametrize(("down", "up"), [("sshd-stop", "sshd-start"), ("link-down", "link-up")])
def test_unreachable_host_is_reported_then_recovers(
    cluster: Kubectl, hosts: list[str], down: str, up: str
) -> None:
    name = hosts[-1]
    run_testbed(down, name)
    try:
        obj = cluster.wait_for(is_("Reachable", "False"), "kh", name, timeout=90)
        assert condition(obj, "Ready")["status"] == "False"
        assert condition(obj, "Stalled")["status"] == "False"
        assert condition(obj, "LibvirtReady")["status"] == "Unknown"
    finally:
        run_testbed(up, name)
    cluster.wait_for(is_("Ready", "True"), "kh", name, timeout=120)


def test_metrics_report_hosts(operator: OperatorProcess, hosts: list[str]) -> None:
    text = operator.metrics()
    for name in hosts:
        assert f'kvmfleet_host_up{{host="{name}"}} 1.0' in text
        assert f'kvmfleet_host_cpus{{host="{name}",kind="allocatable"}}' in text
        assert f'kvmfleet_host_probe_duration_seconds_count{{host="{name}"}}' in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bridges", [{"name": "br0;touch /tmp/kvmfleet-pwned", "interface": "eth0"}]),
        ("bridges", [{"name": "br0", "interface": "eth0\ntouch"}]),
        ("bridges", [{"name": "..", "interface": "eth0"}]),
        ("storagePools", [{"name": "x", "url": "dir:///tmp/$(touch /tmp/kvmfleet-pwned)"}]),
        ("storagePools", [{"name": "x", "url": "dir:///var/../etc"}]),
        ("address", "10.77.0.11;touch /tmp/kvmfleet-pwned"),
    ],
)
def test_bad_input_is_refused_and_never_executed(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any], field: str, value: Any
) -> None:
    manifest = kvmhost(host_by_name(testbed, hosts[0]), testbed, name="bad-input", **{field: value})
    result = cluster.run(
        "apply", "--validate=false", "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode != 0 and "spec." in result.stderr
    for name in hosts:
        assert on_host(name, "test", "-e", "/tmp/kvmfleet-pwned", check=False).returncode != 0
