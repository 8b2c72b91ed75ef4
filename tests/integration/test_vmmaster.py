"""VmMaster capture and clones on the real testbed: xCAT's ``clonevm -t`` / ``-b`` flow.

The guide's flow on the NFS export (nfsAccess Direct, backing files as nfs:// URLs): kvm2
is captured into kvmm (Attached) and keeps its data as an overlay of kvmm; kvm4 is an
attached clone on the other host; kvm3 is a detached clone of the detached master kvmmd.
Deleting kvmm waits while kvm4 and kvm2 exist and completes once they are gone. Capture
of a running node is refused; an operator killed mid-capture converges with no partial
master and no dangling backing file. Disks are 64 MiB and VMs Halted except where a
running one is the point, to keep the module short.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cluster import Kubectl, OperatorProcess
from support.objects import apply_testbed_hosts, condition, is_, scratch_namespace
from support.testbed import RUN_DIR, on_host

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(600)]

PATTERN = "0x5a"


def vm(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cpus": 1, "memory": "128Mi", "nics": [{"bridge": "br0"}]}
    body.update(spec)
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def master(name: str, namespace: str, source: str, mode: str = "Attached") -> dict[str, Any]:
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VmMaster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"sourceNode": source, "mode": mode},
    }


def qemu(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)


def info(path: Path) -> dict[str, Any]:
    out = qemu("qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path)).stdout
    return dict(json.loads(out))


def write_pattern(url: str) -> None:
    """Guest data, written through the NFS server as a guest's QEMU would (a write to the
    export's directory behind the server's back is not seen by its NFS clients at once)."""
    on_host("kvmhost1", "qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} 0 1M", url)


def has_pattern(path: Path) -> bool:
    """The guest data written before the capture reads back (through any backing chain)."""
    result = qemu(
        "qemu-io",
        "-r",
        "-U",
        "-f",
        "qcow2",
        "-c",
        f"read -P {PATTERN} 0 1M",
        str(path),
        check=False,
    )
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout


def gone(cluster: Kubectl, kind: str, namespace: str, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while cluster.run("get", kind, name, "-n", namespace, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{kind} {namespace}/{name} was not deleted"
        time.sleep(1)


def events(cluster: Kubectl, namespace: str, name: str) -> list[str]:
    items = cluster.json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [f"{e['reason']}: {e['message']}" for e in items]


@pytest.fixture(scope="module")
def hosts(cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any]) -> list[str]:
    return apply_testbed_hosts(cluster, testbed)


@pytest.fixture
def ns(cluster: Kubectl) -> Iterator[str]:
    yield from scratch_namespace(cluster, "vmm", kinds="vmm,vn", timeout=120)


def nfs_dir(testbed: dict[str, Any]) -> Path:
    return Path(testbed["nfs"]["directory"])


def test_guide_flow_capture_clone_and_guarded_deletion(
    cluster: Kubectl, hosts: list[str], ns: str, testbed: dict[str, Any]
) -> None:
    export, url = nfs_dir(testbed), testbed["nfs"]["url"]
    # VirtualNode names are unique in the cluster: the guide's names with this run's suffix.
    kvm2, kvm3, kvm4 = (f"kvm{n}-{ns[-6:]}" for n in (2, 3, 4))
    disk = [{"name": "hda", "size": "64Mi"}]  # the hosts' first pool: the NFS export
    cluster.apply(
        vm(
            kvm2,
            ns,
            hostRef="kvmhost1",
            disks=disk,
            runStrategy="Halted",
            reclaimPolicy="Delete",
            os="rhels6",
            arch="x86_64",
            profile="compute",
        )
    )
    cluster.wait_for(is_("Ready", "True"), "vn", kvm2, "-n", ns, timeout=120)
    kvm2_disk = export / f"{kvm2}.hda.qcow2"
    write_pattern(f"{url}/{kvm2}.hda.qcow2")

    # clonevm kvm2 -t kvmm
    cluster.apply(master("kvmm", ns, kvm2))
    kvmm = cluster.wait_for(is_("Ready", "True", "Captured"), "vmm", "kvmm", "-n", ns, timeout=180)
    master_file = export / f"vmmaster.{ns}.kvmm.hda.qcow2"
    status = kvmm["status"]
    assert status["phase"] == "Ready" and status["host"] == "kvmhost1"
    assert status["os"] == "rhels6" and status["profile"] == "compute"
    assert status["vintage"] and status["originator"] and status["storage"] == url
    [mdisk] = status["disks"]
    assert mdisk["path"] == f"{url}/{master_file.name}"
    assert mdisk["virtualSizeBytes"] == 64 * 1024**2 and mdisk["actualSizeBytes"] > 0
    assert "backing-filename" not in info(master_file)
    assert master_file.stat().st_mode & 0o777 == 0o444
    assert not (export / f"{master_file.name}.partial").exists()
    # kvm2 is now an overlay of kvmm (xCAT: "Rebasing kvm2.hda.qcow2 from master") ...
    assert info(kvm2_disk)["backing-filename"] == mdisk["path"]
    assert has_pattern(kvm2_disk)  # ... and its data is unchanged

    # clonevm kvm4 -b kvmm, on the other host: an overlay, grown; kvm2 boots again too.
    cluster.apply(
        vm(
            kvm4,
            ns,
            hostRef="kvmhost2",
            source={"vmMaster": "kvmm"},
            disks=[{"name": "hda", "size": "96Mi"}],
            reclaimPolicy="Delete",
        )
    )
    cluster.run(
        "patch", "vn", kvm2, "-n", ns, "--type=merge", "-p", '{"spec":{"runStrategy":"Always"}}'
    )
    kvm4_obj = cluster.wait_for(is_("Ready", "True", "Running"), "vn", kvm4, "-n", ns, timeout=180)
    kvm4_disk = export / f"{kvm4}.hda.qcow2"
    assert info(kvm4_disk)["backing-filename"] == mdisk["path"]
    assert info(kvm4_disk)["virtual-size"] == 96 * 1024**2
    assert kvm4_obj["status"]["disks"][0]["backingFile"] == mdisk["path"]
    kvm2_obj = cluster.wait_for(is_("Ready", "True", "Running"), "vn", kvm2, "-n", ns, timeout=180)
    macs = {kvm2_obj["status"]["nics"][0]["mac"], kvm4_obj["status"]["nics"][0]["mac"]}
    assert len(macs) == 2
    assert kvm2_obj["status"]["domainUUID"] != kvm4_obj["status"]["domainUUID"]

    # clonevm kvm2 -t kvmmd -d, then clonevm kvm3 -b kvmmd -d: standalone images.
    cluster.run(
        "patch", "vn", kvm2, "-n", ns, "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}'
    )
    cluster.wait_for(
        lambda o: o.get("status", {}).get("powerState") == "Off",
        "vn",
        kvm2,
        "-n",
        ns,
        timeout=120,
    )
    cluster.apply(master("kvmmd", ns, kvm2, mode="Detached"))
    cluster.wait_for(is_("Ready", "True", "Captured"), "vmm", "kvmmd", "-n", ns, timeout=180)
    kvmmd_file = export / f"vmmaster.{ns}.kvmmd.hda.qcow2"
    assert "backing-filename" not in info(kvmmd_file) and has_pattern(kvmmd_file)
    assert info(kvm2_disk)["backing-filename"] == mdisk["path"]  # detached: kvm2 untouched
    cluster.apply(
        vm(
            kvm3,
            ns,
            hostRef="kvmhost2",
            source={"vmMaster": "kvmmd", "mode": "Detached"},
            disks=[{"name": "hda"}],
            reclaimPolicy="Delete",
        )
    )
    cluster.wait_for(is_("Ready", "True", "Running"), "vn", kvm3, "-n", ns, timeout=180)
    kvm3_disk = export / f"{kvm3}.hda.qcow2"
    assert "backing-filename" not in info(kvm3_disk)
    kvmm = cluster.json("get", "vmm", "kvmm", "-n", ns)
    assert kvmm["status"]["clones"] == 1
    assert sorted(d.split(" ")[0] for d in kvmm["status"]["dependants"]) == [kvm2, kvm4]

    # Deleting kvmm while kvm4 and kvm2 depend on it waits and says who.
    cluster.run("delete", "vmm", "kvmm", "-n", ns, "--wait=false")
    waiting = cluster.wait_for(
        is_("Ready", "False", "DependantsExist"), "vmm", "kvmm", "-n", ns, timeout=60
    )
    message = condition(waiting, "Ready")["message"]
    assert kvm4 in message and kvm2 in message
    assert master_file.exists()
    # Purging the clones never removes the master image.
    cluster.run("delete", "vn", kvm4, kvm2, "-n", ns, "--wait=false")
    gone(cluster, "vn", ns, kvm4, timeout=180)
    gone(cluster, "vn", ns, kvm2, timeout=180)
    assert not kvm4_disk.exists() and not kvm2_disk.exists()
    gone(cluster, "vmm", ns, "kvmm", timeout=120)
    # kvm3 (detached) is standalone and kvmmd is untouched by all of it.
    assert kvmmd_file.exists() and has_pattern(kvm3_disk)
    said = events(cluster, ns, "kvmm")
    assert any(e.startswith("DependantsExist") for e in said), said
    assert any(e.startswith(("MasterDeleted", "MasterKept")) for e in said), said


def test_capture_of_a_running_node_is_refused(
    cluster: Kubectl, hosts: list[str], ns: str, testbed: dict[str, Any]
) -> None:
    kvmr = f"kvmr-{ns[-6:]}"
    cluster.apply(
        vm(
            kvmr,
            ns,
            hostRef="kvmhost1",
            disks=[{"name": "hda", "size": "64Mi"}],
            reclaimPolicy="Delete",
        )
    )
    cluster.wait_for(is_("Ready", "True", "Running"), "vn", kvmr, "-n", ns, timeout=180)
    cluster.apply(master("kvmmr", ns, kvmr))
    obj = cluster.wait_for(
        is_("Stalled", "True", "SourceRunning"), "vmm", "kvmmr", "-n", ns, timeout=60
    )
    assert "powered off" in condition(obj, "Ready")["message"]
    assert not list(nfs_dir(testbed).glob(f"vmmaster.{ns}.kvmmr.*"))
    assert "backing-filename" not in info(nfs_dir(testbed) / f"{kvmr}.hda.qcow2")


@pytest.mark.parametrize("failpoint", ["capture-after-copy", "capture-after-rebase"])
def test_operator_killed_mid_capture_recovers(
    cluster: Kubectl,
    operator: OperatorProcess,
    hosts: list[str],
    ns: str,
    testbed: dict[str, Any],
    failpoint: str,
) -> None:
    export = nfs_dir(testbed)
    kvmc = f"kvmc-{ns[-6:]}"
    cluster.apply(
        vm(
            kvmc,
            ns,
            hostRef="kvmhost1",
            disks=[{"name": "hda", "size": "64Mi"}],
            runStrategy="Halted",
            reclaimPolicy="Delete",
        )
    )
    cluster.wait_for(is_("Ready", "True"), "vn", kvmc, "-n", ns, timeout=120)
    disk = export / f"{kvmc}.hda.qcow2"
    write_pattern(f"{testbed['nfs']['url']}/{kvmc}.hda.qcow2")
    final = export / f"vmmaster.{ns}.kvmmc.hda.qcow2"
    operator.stop()
    crashing = OperatorProcess(
        cluster.kubeconfig,
        RUN_DIR / "logs" / f"operator-{failpoint}.log",
        extra_env={**operator.extra_env, "KVMFLEET_FAILPOINTS": failpoint},
    )
    try:
        crashing.start()
        cluster.apply(master("kvmmc", ns, kvmc))
        assert crashing.proc is not None
        crashing.proc.wait(timeout=120)
        assert crashing.proc.returncode == 86, crashing.log()[-2000:]
    finally:
        crashing.stop(kill=True)
    # Killed: never a half-written master under its final name, never a dangling backing.
    backing = info(disk).get("backing-filename")
    if failpoint == "capture-after-copy":
        assert not final.exists() and backing is None
    else:
        assert final.exists() and backing == f"{testbed['nfs']['url']}/{final.name}"
    assert has_pattern(disk)
    obj = cluster.json("get", "vmm", "kvmmc", "-n", ns)
    assert condition(obj, "Ready").get("status") != "True"
    operator.start()
    cluster.wait_for(is_("Ready", "True", "Captured"), "vmm", "kvmmc", "-n", ns, timeout=180)
    assert info(disk)["backing-filename"] == f"{testbed['nfs']['url']}/{final.name}"
    assert has_pattern(disk) and has_pattern(final)
    assert not (export / f"{final.name}.partial").exists()
