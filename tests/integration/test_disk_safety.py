"""Disks are never lost, overwritten or handed to another tenant (real API server + testbed).

Each test damages or confuses what the operator sees on a real host, then checks on the
host itself (sha256sum, ls, virsh) that nothing was created, changed or deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from support.cluster import Kubectl, OperatorProcess
from support.objects import (
    apply_testbed_hosts,
    condition,
    events,
    gone,
    is_,
    poke,
    scratch_namespace,
    vm,
)
from support.testbed import RUN_DIR, kvmhost, on_host

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(900)]

IMAGES = "/var/lib/kvmfleet/images"
LOCAL = f"dir://{IMAGES}"
VIRSH = ("virsh", "-c", "qemu:///system")


def sha256(host: str, path: str) -> str:
    return on_host(host, "sha256sum", path).stdout.split()[0]


def exists(host: str, path: str) -> bool:
    return on_host(host, "test", "-e", path, check=False).returncode == 0


def domain_state(host: str, name: str) -> str:
    result = on_host(host, *VIRSH, "domstate", name, check=False)
    return result.stdout.strip() if result.returncode == 0 else "absent"


@pytest.fixture(scope="module")
def hosts(cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any]) -> list[str]:
    return apply_testbed_hosts(cluster, testbed)


def _namespace(cluster: Kubectl) -> Iterator[str]:
    yield from scratch_namespace(cluster, "ds", timeout=120)


@pytest.fixture
def ns(cluster: Kubectl) -> Iterator[str]:
    yield from _namespace(cluster)


@pytest.fixture
def ns_b(cluster: Kubectl) -> Iterator[str]:
    yield from _namespace(cluster)


EXCHANGE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
if libc.renameat2(AT_FDCWD, sys.argv[1].encode(), AT_FDCWD, sys.argv[2].encode(), RENAME_EXCHANGE):
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
"""


def test_corrupt_header_or_directory_in_place_of_an_image_is_never_replaced(
    cluster: Kubectl, hosts: list[str], ns: str
) -> None:
    name = f"corrupt-{ns[-6:]}"
    disks = [
        {"name": "hda", "size": "64Mi", "storage": LOCAL},
        {"name": "hdb", "size": "64Mi", "storage": LOCAL},
    ]
    cluster.apply(
        vm(name, ns, hostRef="kvmhost1", disks=disks, runStrategy="Halted", reclaimPolicy="Delete")
    )
    cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=90)
    hda, hdb = f"{IMAGES}/{name}.hda.qcow2", f"{IMAGES}/{name}.hdb.qcow2"
    owner = json.loads(on_host("kvmhost1", "cat", f"{hda}.owner.json").stdout)
    assert owner["namespace"] == ns and owner["name"] == name
    # Garbage over the qcow2 header of hda; hdb replaced by a directory holding a file.
    # The operator passes every few seconds: hdb is swapped for the directory in one
    # rename (RENAME_EXCHANGE), so no pass sees it missing (which would rightly create it).
    on_host("kvmhost1", "dd", "if=/dev/urandom", f"of={hda}", "bs=512", "count=1", "conv=notrunc")
    on_host("kvmhost1", "mkdir", f"{hdb}.swap")
    on_host("kvmhost1", "touch", f"{hdb}.swap/keep")
    on_host("kvmhost1", "python3", "-c", EXCHANGE, f"{hdb}.swap", hdb)
    on_host("kvmhost1", "rm", "-f", f"{hdb}.swap")
    before = sha256("kvmhost1", hda)
    poke(cluster, ns, name)
    obj = cluster.wait_for(
        lambda o: (
            "disk hda" in condition(o, "DisksReady").get("message", "")
            and "is a directory" in condition(o, "DisksReady").get("message", "")
            and is_("DisksReady", "False", "DiskUnreadable")(o)
        ),
        "vn",
        name,
        "-n",
        ns,
        timeout=60,
    )
    message = condition(obj, "DisksReady")["message"]
    assert "disk hda" in message and "nothing is created or changed" in message, message
    assert "is a directory" in message, message
    time.sleep(8)  # several more passes (sync every 3 s): still nothing touched
    assert sha256("kvmhost1", hda) == before
    assert on_host("kvmhost1", "ls", hdb).stdout.split() == ["keep"]
    assert condition(cluster.json("get", "vn", name, "-n", ns), "Ready")["status"] == "False"
    # An unknown disk blocks its deletion (the finalizer stays, and says why) ...
    cluster.run("delete", "vn", name, "-n", ns, "--wait=false")
    obj = cluster.wait_for(
        is_("Ready", "False", "DeletionBlocked"), "vn", name, "-n", ns, timeout=60
    )
    assert hdb in condition(obj, "Ready")["message"]
    assert hda not in condition(obj, "Ready")["message"]  # its own disk: deleted as asked
    assert any(e["reason"] == "DeletionBlocked" for e in events(cluster, ns, name))
    assert exists("kvmhost1", f"{hdb}/keep") and not exists("kvmhost1", hda)
    # ... until the user says to leave it: kvmfleet.io/orphan.
    cluster.run("annotate", "vn", name, "-n", ns, "kvmfleet.io/orphan=true")
    gone(cluster, ns, name)
    orphaned = [e["message"] for e in events(cluster, ns, name) if e["reason"] == "Orphaned"]
    assert orphaned and hdb in orphaned[-1] and hda not in orphaned[-1], orphaned
    assert exists("kvmhost1", f"{hdb}/keep")
    on_host("kvmhost1", "rm", "-rf", hdb, f"{hdb}.owner.json")


def test_removed_dir_pool_directory_is_not_recreated_and_no_disk_is_made(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any], ns: str
) -> None:
    name = f"nodir-{ns[-6:]}"
    scratch = f"/var/lib/kvmfleet/scratch-{ns[-6:]}"
    host = next(h for h in testbed["hosts"] if h["name"] == "kvmhost3")
    pools = [
        {"name": "shared", "url": testbed["nfs"]["url"]},
        {"name": "local", "url": LOCAL},
        {"name": "scratch", "url": f"dir://{scratch}"},
    ]
    cluster.apply(kvmhost(host, testbed, storagePools=pools))
    try:
        cluster.wait_for(
            lambda o: any(
                p.get("url") == f"dir://{scratch}" for p in o["status"].get("storagePools", [])
            ),
            "kh",
            "kvmhost3",
            timeout=60,
        )
        disk = {"name": "hda", "size": "64Mi", "storage": f"dir://{scratch}"}
        cluster.apply(vm(name, ns, hostRef="kvmhost3", disks=[disk], runStrategy="Halted"))
        cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=90)
        # The filesystem behind the pool goes away (as an unmounted disk would).
        on_host("kvmhost3", "rm", "-rf", scratch)
        poke(cluster, ns, name)
        obj = cluster.wait_for(
            is_("DisksReady", "False", "StorageNotReady"), "vn", name, "-n", ns, timeout=60
        )
        assert scratch in condition(obj, "DisksReady")["message"]
        # The host's next probe (every 3 s) reports the pool, naming it.
        kh = cluster.wait_for(is_("StorageReady", "False"), "kh", "kvmhost3", timeout=90)
        assert scratch in condition(kh, "StorageReady")["message"]
        time.sleep(10)  # several more host probes and VM passes (every 3 s)
        assert not exists("kvmhost3", scratch)
        found = on_host(
            "kvmhost3", "find", "/var/lib/kvmfleet", "-name", f"{name}.*", check=False
        ).stdout
        assert found.strip() == "", found
    finally:
        cluster.run("delete", "vn", name, "-n", ns, "--timeout=90s", check=False, timeout=120)
        cluster.apply(kvmhost(host, testbed))
        on_host("kvmhost3", "rm", "-rf", scratch, check=False)


def test_retained_disk_goes_to_the_same_name_or_an_adopter_only(
    cluster: Kubectl, hosts: list[str], ns: str, ns_b: str
) -> None:
    name = f"keep-{ns[-6:]}"
    image = f"{IMAGES}/{name}.hda.qcow2"
    disk = {"name": "hda", "size": "64Mi", "storage": LOCAL}
    cluster.apply(vm(name, ns, hostRef="kvmhost2", disks=[disk], runStrategy="Halted"))
    first = cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=90)
    cluster.run("delete", "vn", name, "-n", ns, "--timeout=90s", timeout=120)
    assert exists("kvmhost2", image)
    before = sha256("kvmhost2", image)
    # Another tenant, same VM name: the retained disk is not attached.
    cluster.apply(vm(name, ns_b, hostRef="kvmhost2", disks=[disk], runStrategy="Halted"))
    obj = cluster.wait_for(
        is_("DisksReady", "False", "DiskOwnedByOther"), "vn", name, "-n", ns_b, timeout=60
    )
    message = condition(obj, "DisksReady")["message"]
    assert f"{ns}/{name}" in message and first["metadata"]["uid"] in message, message
    time.sleep(5)
    assert domain_state("kvmhost2", name) == "absent"
    assert sha256("kvmhost2", image) == before
    owner = json.loads(on_host("kvmhost2", "cat", f"{image}.owner.json").stdout)
    assert owner["namespace"] == ns
    # With adopt: true it is attached, and now recorded as the adopter's.
    adopting = {**disk, "adopt": True}
    cluster.apply(vm(name, ns_b, hostRef="kvmhost2", disks=[adopting], runStrategy="Halted"))
    second = cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns_b, timeout=60)
    assert domain_state("kvmhost2", name) == "shut off"
    owner = json.loads(on_host("kvmhost2", "cat", f"{image}.owner.json").stdout)
    assert owner == {"namespace": ns_b, "name": name, "uid": second["metadata"]["uid"]}
    assert any(e["reason"] == "DiskClaimed" for e in events(cluster, ns_b, name))
    # Same namespace and name again (xCAT rmvm without -p, then mkvm): attached, no adopt.
    cluster.run("delete", "vn", name, "-n", ns_b, "--timeout=90s", timeout=120)
    cluster.apply(
        vm(
            name,
            ns_b,
            hostRef="kvmhost2",
            disks=[disk],
            runStrategy="Halted",
            reclaimPolicy="Delete",
        )
    )
    third = cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns_b, timeout=60)
    owner = json.loads(on_host("kvmhost2", "cat", f"{image}.owner.json").stdout)
    assert owner["uid"] == third["metadata"]["uid"]
    cluster.run("delete", "vn", name, "-n", ns_b, "--timeout=90s", timeout=120)
    assert not exists("kvmhost2", image) and not exists("kvmhost2", f"{image}.owner.json")


def test_a_disk_path_patched_into_status_is_never_deleted(
    cluster: Kubectl, hosts: list[str], ns: str
) -> None:
    name = f"victim-{ns[-6:]}"
    victim = str(RUN_DIR / f"victim-{ns}.txt")  # outside every storage pool
    image = f"{IMAGES}/{name}.hda.qcow2"
    on_host("kvmhost1", "sh", "-c", f"echo precious > {victim}")
    try:
        disk = {"name": "hda", "size": "64Mi", "storage": LOCAL}
        cluster.apply(
            vm(
                name,
                ns,
                hostRef="kvmhost1",
                disks=[disk],
                reclaimPolicy="Delete",
                shutdownGracePeriodSeconds=40,
            )
        )
        cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=90)
        # Deleting: the guest gets up to 40 s to shut down; meanwhile status is rewritten.
        cluster.run("delete", "vn", name, "-n", ns, "--wait=false")
        cluster.wait_for(
            lambda o: (o.get("status", {}).get("deletion") or {}).get("shutdownAt"),
            "vn",
            name,
            "-n",
            ns,
            timeout=60,
        )
        kconfig.load_kube_config(config_file=cluster.kubeconfig)
        forged = [{"name": "hda", "url": LOCAL, "path": victim, "format": "qcow2"}]
        kclient.CustomObjectsApi().patch_namespaced_custom_object_status(
            "kvmfleet.io",
            "v1alpha1",
            ns,
            "virtualnodes",
            name,
            {"status": {"disks": forged}},
            _content_type="application/merge-patch+json",
        )
        seen = cluster.json("get", "vn", name, "-n", ns)["status"]["disks"]
        assert seen[0]["path"] == victim
        gone(cluster, ns, name, timeout=120)
        assert on_host("kvmhost1", "cat", victim).stdout.strip() == "precious"
        assert not exists("kvmhost1", image)  # its own disk, recomputed from the spec, went
        deleted = [e["message"] for e in events(cluster, ns, name) if e["reason"] == "DisksDeleted"]
        assert deleted and image in deleted[-1] and victim not in deleted[-1]
    finally:
        on_host("kvmhost1", "rm", "-f", victim, check=False)


def test_second_host_does_not_start_an_image_running_elsewhere(
    cluster: Kubectl, hosts: list[str], testbed: dict[str, Any], ns: str
) -> None:
    name = f"twice-{ns[-6:]}"
    copy = f"{name}-copy"
    disk = {"name": "hda", "size": "64Mi", "storage": testbed["nfs"]["url"]}
    cluster.apply(
        vm(name, ns, hostRef="kvmhost2", disks=[disk], runStrategy="Halted", reclaimPolicy="Delete")
    )
    cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=90)
    # The same image defined and running on kvmhost1 (a copy left behind by a partition).
    xml = on_host("kvmhost2", *VIRSH, "dumpxml", name).stdout
    xml = xml.replace(f"<name>{name}</name>", f"<name>{copy}</name>")
    lines = [
        line for line in xml.splitlines() if "<uuid>" not in line and "mac address" not in line
    ]
    start, end = (
        next(i for i, line in enumerate(lines) if "<metadata" in line),
        next(i for i, line in enumerate(lines) if "</metadata>" in line),
    )
    path = RUN_DIR / f"{copy}.xml"
    path.write_text("\n".join(lines[:start] + lines[end + 1 :]))
    try:
        on_host("kvmhost1", *VIRSH, "define", str(path))
        on_host("kvmhost1", *VIRSH, "start", copy)
        cluster.wait_for(
            lambda o: any(
                d["name"] == copy and d.get("disks") for d in o["status"].get("domains", [])
            ),
            "kh",
            "kvmhost1",
            timeout=60,
        )
        cluster.run("patch", "vn", name, "-n", ns, "--type=merge", "-p",
                    '{"spec":{"runStrategy":"Always"}}')  # fmt: skip
        obj = cluster.wait_for(
            is_("DisksReady", "False", "DiskInUseElsewhere"), "vn", name, "-n", ns, timeout=60
        )
        assert copy in condition(obj, "DisksReady")["message"]
        assert "kvmhost1" in condition(obj, "DisksReady")["message"]
        time.sleep(8)
        assert domain_state("kvmhost2", name) == "shut off"
        assert domain_state("kvmhost1", copy) == "running"
        assert any(e["reason"] == "DiskInUseElsewhere" for e in events(cluster, ns, name))
    finally:
        on_host("kvmhost1", *VIRSH, "destroy", copy, check=False)
        on_host("kvmhost1", *VIRSH, "undefine", copy, check=False)
        path.unlink(missing_ok=True)
    # Once the other copy is gone, it starts.
    cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=90)
    assert domain_state("kvmhost2", name) == "running"
