"""Moving VirtualNodes between real testbed hosts (xCAT rmigrate) and draining a host.

* xCAT's kvm1 (the testbed's tiny Linux, PXE-booted, disk on the NFS export) runs on
  kvmhost1; ``kubectl kvm migrate kvm1 kvmhost2 --wait`` moves it live: it then runs on
  kvmhost2 only (virsh on both hosts), persistent there, and its serial counter goes on
  from where it was with no new boot marker (the guest was not restarted); status and
  metrics record the migration.
* Pre-flight refusals: the target in maintenance, no room on the target, no path from the
  source to the target's migration port, a disk on a host's own dir pool: nothing moves, the VM keeps running on its source, the Migration
  condition names the reason; once the cause is gone the move happens.
* The operator killed just before the job starts and just after it ended (failpoints):
  after the restart exactly one copy runs and the status converges.
* The target's libvirtd killed while the memory is copied: the VM keeps running on the
  source, the condition says the target stopped answering; a retry moves it.
* ``kubectl kvm drain kvmhost1 --wait``: its movable VM moves to kvmhost2, a VM pinned by
  ``hostRef`` stays and is named; ``uncordon`` ends the maintenance.

Both hosts are of the same kind (emulated by default in the testbed).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cluster import Kubectl, OperatorProcess
from support.objects import apply_testbed_hosts, scratch_namespace
from support.testbed import RUN_DIR, on_host, run_testbed

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(600)]

KUBECTL_KVM = str(Path(sys.executable).with_name("kubectl-kvm"))
TICK = re.compile(r"KVMFLEET-TICK (\d+)")
DIR_POOL = "dir:///var/lib/kvmfleet/images"


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def is_(type_: str, status: str) -> Any:
    return lambda obj: condition(obj, type_).get("status") == status


def vm(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cpus": 1,
        "memory": "256Mi",
        "nics": [{"bridge": "br0", "model": "virtio"}],
        "serial": {"port": 0, "speed": 115200},
        "reclaimPolicy": "Delete",
        "shutdownGracePeriodSeconds": 0,
    }
    body.update(spec)
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def virsh(host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return on_host(host, "virsh", "-c", "qemu:///system", *args, check=check)


def state(host: str, name: str) -> str:
    result = virsh(host, "domstate", name, check=False)
    return result.stdout.strip() if result.returncode == 0 else "absent"


def persistent(host: str, name: str) -> bool:
    info = virsh(host, "dominfo", name).stdout
    return bool(re.search(r"^Persistent:\s+yes", info, re.M))


def kvm(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL_KVM, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def ticks(namespace: str, name: str, timeout: float = 150) -> tuple[list[int], str]:
    """The serial counter values seen until the next tick, and everything read."""
    try:
        result = kvm("console", name, "-n", namespace, "--read-only",
                     "--until", "KVMFLEET-TICK [0-9]+", "--timeout", str(timeout),
                     timeout=timeout + 60)  # fmt: skip
        text = result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:
        text = (expired.stdout or b"").decode(errors="replace")  # type: ignore[union-attr]
    return [int(n) for n in TICK.findall(text)], text


@pytest.fixture(scope="module")
def hosts(cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any]) -> list[str]:
    kinds = {h["virtualization"] for h in testbed["hosts"] if h["name"] in ("kvmhost1", "kvmhost2")}
    assert len(kinds) == 1, f"kvmhost1 and kvmhost2 must be of one kind: {testbed['hosts']}"
    return apply_testbed_hosts(cluster, testbed)


@pytest.fixture
def ns(cluster: Kubectl) -> Iterator[str]:
    namespace = scratch_namespace(cluster, "mig")
    yield next(namespace)
    for host in ("kvmhost1", "kvmhost2"):
        cluster.run("patch", "kh", host, "--type=merge", "-p",
                    '{"spec":{"maintenance":false,"overcommit":{"cpu":16,"memory":1}}}',
                    check=False)  # fmt: skip
    next(namespace, None)


def test_kvm1_moves_live_to_kvmhost2_without_a_restart(
    cluster: Kubectl, operator: OperatorProcess, hosts: list[str], testbed: dict[str, Any], ns: str
) -> None:
    name = f"kvm1-{ns[-6:]}"
    nfs = testbed["nfs"]["url"]
    cluster.apply(vm(name, ns, hostRef="kvmhost1",
                     disks=[{"name": "hda", "size": "1Gi", "storage": nfs}]))  # fmt: skip
    cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=120)
    before, text = ticks(ns, name)
    assert before, f"no KVMFLEET-TICK before the migration:\n{text[-2000:]}"

    started = time.monotonic()
    moved = kvm("migrate", name, "kvmhost2", "-n", ns, "--wait", "--timeout", "180")
    took = time.monotonic() - started
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"{name}: migrated to kvmhost2" in moved.stdout
    assert "Succeeded: kvmhost1 -> kvmhost2" in moved.stderr, moved.stderr

    assert state("kvmhost2", name) == "running"
    assert persistent("kvmhost2", name)
    assert state("kvmhost1", name) == "absent", "the source definition must be gone"
    obj = cluster.json("get", "vn", name, "-n", ns)
    migration = obj["status"]["migration"]
    assert migration["phase"] == "Succeeded" and migration["kind"] == "Live"
    assert (migration["source"], migration["target"]) == ("kvmhost1", "kvmhost2")
    assert migration["startTime"] and migration["endTime"]
    assert obj["status"]["host"] == "kvmhost2"
    assert obj["metadata"]["labels"]["kvmfleet.io/host"] == "kvmhost2"
    assert condition(obj, "Migration")["reason"] == "Migrated"
    assert re.search(
        r'^kvmfleet_migrations_total\{kind="Live",result="succeeded"\} [1-9]',
        operator.metrics(),
        re.M,
    )
    # The guest was not restarted: the counter goes on, no boot marker, no firmware.
    obj = cluster.wait_for(
        lambda o: (o["status"].get("console") or {}).get("serial", {}).get("host") == "kvmhost2",
        "vn", name, "-n", ns, timeout=60,
    )  # fmt: skip
    after, text = ticks(ns, name)
    assert after and min(after) > max(before), (before, after, text[-2000:])
    assert "KVMFLEET-GUEST-READY" not in text and "iPXE" not in text, text[-2000:]
    print(f"\nlive migration of {name}: {took:.1f} s (kubectl kvm migrate --wait), "
          f"ticks {max(before)} -> {min(after)}")  # fmt: skip


def test_preflight_refusals_leave_the_vm_where_it_is(
    cluster: Kubectl, hosts: list[str], ns: str, testbed: dict[str, Any]
) -> None:
    diskless, local, hog = f"pf-{ns[-6:]}", f"pfdir-{ns[-6:]}", f"hog-{ns[-6:]}"
    cluster.apply(vm(diskless, ns, hostRef="kvmhost1"))
    cluster.apply(vm(local, ns, hostRef="kvmhost1",
                     disks=[{"name": "hda", "size": "1Gi", "storage": DIR_POOL}]))  # fmt: skip
    # 3 GiB allocated on kvmhost2 (defined, never started): room is counted from requests.
    cluster.apply(vm(hog, ns, hostRef="kvmhost2", memory="3Gi", runStrategy="Halted"))
    for name in (diskless, local, hog):
        cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=120)

    def refused(name: str, reason: str) -> dict[str, Any]:
        obj = cluster.wait_for(
            lambda o: condition(o, "Migration").get("reason") == reason,
            "vn", name, "-n", ns, timeout=60,
        )  # fmt: skip
        assert obj["status"]["host"] == "kvmhost1"
        assert obj["status"]["migration"]["phase"] == "Refused"
        assert condition(obj, "Ready")["reason"] == reason
        assert state("kvmhost1", name) == "running" and state("kvmhost2", name) == "absent"
        return obj

    # The target in maintenance.
    cluster.run("patch", "kh", "kvmhost2", "--type=merge", "-p", '{"spec":{"maintenance":true}}')
    cluster.run("patch", "vn", diskless, "-n", ns, "--type=merge", "-p",
                '{"spec":{"hostRef":"kvmhost2"}}')  # fmt: skip
    refused(diskless, "TargetInMaintenance")
    # No room on the target: memory overcommit 0.1 leaves about 2.4 GiB, the hog takes 3.
    cluster.run("patch", "kh", "kvmhost2", "--type=merge", "-p",
                '{"spec":{"maintenance":false,"overcommit":{"cpu":16,"memory":0.1}}}')  # fmt: skip
    obj = refused(diskless, "TargetInsufficientMemory")
    assert "MiB requested" in condition(obj, "Migration")["message"]
    # kvmhost1 gets no answer from kvmhost2 (the operator still reaches both): the memory
    # would have no path, so nothing starts.
    target = next(h["address"] for h in testbed["hosts"] if h["name"] == "kvmhost2")
    on_host("kvmhost1", "ip", "route", "add", "unreachable", f"{target}/32")
    try:
        cluster.run("patch", "kh", "kvmhost2", "--type=merge", "-p",
                    '{"spec":{"overcommit":{"cpu":16,"memory":1}}}')  # fmt: skip
        obj = refused(diskless, "MigrationPortUnreachable")
        message = condition(obj, "Migration")["message"]
        assert f"kvmhost1 cannot reach kvmhost2's migration port {target}:49152" in message
    finally:
        on_host("kvmhost1", "ip", "route", "del", "unreachable", f"{target}/32", check=False)
    # The cause gone, the diskless VM moves (the dir one never does).
    cluster.wait_for(
        lambda o: o["status"].get("host") == "kvmhost2" and is_("Ready", "True")(o),
        "vn", diskless, "-n", ns, timeout=90,
    )  # fmt: skip
    assert state("kvmhost2", diskless) == "running" and state("kvmhost1", diskless) == "absent"
    # A disk on kvmhost1's own dir pool: never moved.
    cluster.run("patch", "vn", local, "-n", ns, "--type=merge", "-p",
                '{"spec":{"hostRef":"kvmhost2"}}')  # fmt: skip
    obj = refused(local, "StorageNotShared")
    assert condition(obj, "Stalled")["status"] == "True"
    assert state("kvmhost1", local) == "running"


@pytest.mark.parametrize("failpoint", ["before-migrate", "after-migrate"])
def test_operator_killed_mid_migration_leaves_one_copy(
    cluster: Kubectl, operator: OperatorProcess, hosts: list[str], ns: str, failpoint: str
) -> None:
    name = f"crash-{failpoint.split('-', maxsplit=1)[0]}-{ns[-6:]}"
    cluster.apply(vm(name, ns, hostRef="kvmhost1"))
    cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=120)
    operator.stop()
    crashing = OperatorProcess(
        cluster.kubeconfig,
        RUN_DIR / "logs" / f"operator-{failpoint}.log",
        extra_env={**operator.extra_env, "KVMFLEET_FAILPOINTS": failpoint},
    )
    try:
        crashing.start()
        cluster.run("patch", "vn", name, "-n", ns, "--type=merge", "-p",
                    '{"spec":{"hostRef":"kvmhost2"}}')  # fmt: skip
        assert crashing.proc is not None
        crashing.proc.wait(timeout=90)
        assert crashing.proc.returncode == 86, crashing.log()[-2000:]
    finally:
        crashing.stop(kill=True)
    interrupted = cluster.json("get", "vn", name, "-n", ns)["status"]
    assert interrupted["migration"]["phase"] == "Running"
    assert interrupted["host"] == "kvmhost1"
    operator.start()
    obj = cluster.wait_for(
        lambda o: o["status"].get("host") == "kvmhost2"
        and o["status"].get("migration", {}).get("phase") == "Succeeded"
        and is_("Ready", "True")(o),
        "vn", name, "-n", ns, timeout=120,
    )  # fmt: skip
    running = [h for h in ("kvmhost1", "kvmhost2") if state(h, name) == "running"]
    assert running == ["kvmhost2"]
    assert state("kvmhost1", name) == "absent"
    assert obj["status"]["migration"]["phase"] == "Succeeded"


def test_target_libvirtd_killed_mid_migration_then_a_retry_succeeds(
    cluster: Kubectl, operator: OperatorProcess, hosts: list[str], ns: str
) -> None:
    """The target's libvirtd dies while the memory is copied: the VM keeps running on
    kvmhost1 and the condition says why; once libvirtd is back the move is retried and
    succeeds. The job is kept from converging (1 MiB/s, at most 1 ms of guest pause, a
    booted guest that keeps dirtying memory), so the kill always lands mid-copy."""
    name = f"kill-{ns[-6:]}"
    cluster.apply(vm(name, ns, hostRef="kvmhost1"))
    cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=120)
    seen, text = ticks(ns, name)  # booted: a guest still in its firmware dirties nothing
    assert seen, f"the guest never ticked:\n{text[-1500:]}"
    operator.stop()
    slow = OperatorProcess(
        cluster.kubeconfig,
        RUN_DIR / "logs" / "operator-slow-migration.log",
        extra_env={
            **operator.extra_env,
            "KVMFLEET_MIGRATION_BANDWIDTH_MIB": "1",
            "KVMFLEET_MIGRATION_MAX_DOWNTIME_MS": "1",
        },
    )
    killed: float | None = None
    try:
        slow.start()
        cluster.run("patch", "vn", name, "-n", ns, "--type=merge", "-p",
                    '{"spec":{"hostRef":"kvmhost2"}}')  # fmt: skip
        cluster.wait_for(
            lambda o: (o["status"].get("migration") or {}).get("dataRemaining"),
            "vn", name, "-n", ns, timeout=120, interval=0.5,
        )  # fmt: skip
        status = run_testbed("status", check=False).stdout
        found = re.search(r"^kvmhost2/libvirtd\s+up\s+pid (\d+)", status, re.M)
        assert found, status
        killed = time.monotonic()
        os.kill(int(found.group(1)), signal.SIGKILL)
        obj = cluster.wait_for(
            lambda o: condition(o, "Migration").get("reason") == "MigrationFailed",
            "vn", name, "-n", ns, timeout=120,
        )  # fmt: skip
        noticed = time.monotonic() - killed
        message = condition(obj, "Migration")["message"]
        assert obj["status"]["host"] == "kvmhost1"
        assert obj["status"]["migration"]["phase"] == "Failed"
        assert "the libvirtd of kvmhost2 stopped answering" in message, message
        assert state("kvmhost1", name) == "running"
        print(f"\nfailed {noticed:.1f} s after the kill: {message[:300]}")
    finally:
        slow.stop()
        operator.start()
        if killed is not None:
            run_testbed("up", timeout=600)  # libvirtd on kvmhost2 again
    cluster.wait_for(
        lambda o: o["status"].get("host") == "kvmhost2"
        and (o["status"].get("migration") or {}).get("phase") == "Succeeded",
        "vn", name, "-n", ns, timeout=400,
    )  # fmt: skip
    assert state("kvmhost2", name) == "running" and state("kvmhost1", name) == "absent"


def test_drain_moves_the_movable_vms_and_names_the_pinned_ones(
    cluster: Kubectl, hosts: list[str], ns: str
) -> None:
    free, pinned = f"free-{ns[-6:]}", f"pin-{ns[-6:]}"
    cluster.apply(vm(free, ns, hostRef="kvmhost1"))
    cluster.apply(vm(pinned, ns, hostRef="kvmhost1"))
    for name in (free, pinned):
        cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=120)
    # Placed on kvmhost1, not pinned to it any more: it stays there until a drain.
    cluster.run("patch", "vn", free, "-n", ns, "--type=json", "-p",
                '[{"op":"remove","path":"/spec/hostRef"}]')  # fmt: skip
    time.sleep(5)
    assert state("kvmhost1", free) == "running"
    drained = kvm("drain", "kvmhost1", "--wait", "--timeout", "180")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert f"{ns}/{pinned}: PinnedByHostRef" in drained.stdout, drained.stdout
    assert free not in drained.stdout
    assert state("kvmhost2", free) == "running" and state("kvmhost1", free) == "absent"
    assert state("kvmhost1", pinned) == "running"
    assert cluster.json("get", "kh", "kvmhost1")["spec"]["maintenance"] is True
    back = kvm("uncordon", "kvmhost1")
    assert back.returncode == 0, back.stderr
    assert cluster.json("get", "kh", "kvmhost1")["spec"]["maintenance"] is False
