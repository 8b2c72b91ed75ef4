"""Tenancy and data safety on the real testbed: what a VirtualNode may use, pauses, VNC Secrets.

* Authorization, every pass: ``phy:/dev/sda``, ``dir:///etc``, a bridge the host does not
  list and a host whose ``allowedNamespaces`` leaves the VM's namespace out are refused at
  first placement (no domain, no file) AND as an edit of a running VM: the VM keeps
  running, its libvirt definition is unchanged (``virsh dumpxml --inactive``, ``domid``),
  no file appears, and the VirtualNode says why (``Authorized=False``, reason NotAllowed,
  an Event).
* A guest that fills a tiny storage pool: a tmpfs mounted in the test host's mount
  namespace is a dir pool; the VM boots from its disk a 512-byte boot sector that writes
  to the disk through the BIOS (int 13h) forever; the pool fills, QEMU pauses the guest
  on ENOSPC, and the VirtualNode is ``Ready=False`` with reason ``PausedNoSpace``, phase
  ``Paused``.
* A VNC password rotated while the VM is off is the one QEMU accepts once it starts (a
  real RFB client), and a ``<vm>-vnc`` Secret that is not the VirtualNode's is left
  alone (condition ``ConsoleReady=False``, reason SecretNotOwned).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from support.cluster import Kubectl, OperatorProcess
from support.objects import apply_testbed_hosts, condition, events, is_, scratch_namespace, vm
from support.testbed import RUN_DIR, on_host
from support.vnc import vnc_password_accepted

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(900)]

VIRSH = ("virsh", "-c", "qemu:///system")

# The boot sector of the pool-filling guest (GNU as, .code16, linked at 0x7c00):
#   cli; xor ax,ax; mov ds,ax; mov ss,ax; mov sp,0x7c00; sti; mov [drive],dl
#   es=0x1000; di=0; al=0xa5; cx=0xfe00; rep stosb        ; a 65024-byte pattern buffer
# again: si=dap; dl=[drive]; ax=0x4300; int 0x13          ; EDD write 127 sectors
#   add dword [lba],127; adc dword [lba+4],0; jmp again   ; next 127 sectors, forever
# drive: .byte 0x80; dap: 0x10,0, .word 127, .word 0,0x1000; lba: .long 2048,0
BOOT_CODE = bytes.fromhex(
    "fa31c08ed88ed0bc007cfb8816377cb800108ec031ffb0a5b900fef3aabe387c8a16377cb80043"
    "cd13668306407c7f668316447c00ebe68010007f00000000100008"
)
BOOT_SECTOR = BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa"


def virsh(host: str, *args: str, check: bool = True) -> str:
    return on_host(host, *VIRSH, *args, check=check).stdout


def domain_names(host: str) -> list[str]:
    return [n.strip() for n in virsh(host, "list", "--all", "--name").splitlines() if n.strip()]


def patch_vn(cluster: Kubectl, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.run(
        "patch", "vn", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def patch_kh(cluster: Kubectl, name: str, spec: dict[str, Any]) -> None:
    cluster.run("patch", "kh", name, "--type=merge", "-p", json.dumps({"spec": spec}))


def files_named(host: str, directory: str, name: str) -> list[str]:
    out = on_host(host, "find", directory, "-maxdepth", "1", "-name", f"{name}*", check=False)
    return [line for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def hosts(cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any]) -> list[str]:
    return apply_testbed_hosts(cluster, testbed)


@pytest.fixture
def ns(cluster: Kubectl) -> Iterator[str]:
    yield from scratch_namespace(cluster, "tn")


@pytest.fixture
def closed_host(cluster: Kubectl, hosts: list[str]) -> Iterator[str]:
    """kvmhost3 open to one other namespace only (restored afterwards)."""
    patch_kh(cluster, "kvmhost3", {"allowedNamespaces": ["somebody-else"]})
    yield "kvmhost3"
    patch_kh(cluster, "kvmhost3", {"allowedNamespaces": None})


# --- authorization at first placement ---------------------------------------------------------

REFUSED_AT_PLACEMENT = [
    ("phy", {"disks": [{"name": "hda", "size": "1Gi", "storage": "phy:/dev/sda"}]}, "phy:/dev/sda"),
    ("etc", {"disks": [{"name": "hda", "size": "1Gi", "storage": "dir:///etc"}]}, "dir:///etc"),
    ("bridge", {"nics": [{"bridge": "brmgmt"}]}, "bridge brmgmt"),
]


@pytest.mark.parametrize(
    ("case", "spec", "words"), REFUSED_AT_PLACEMENT, ids=[c[0] for c in REFUSED_AT_PLACEMENT]
)
def test_refused_at_first_placement(
    cluster: Kubectl, hosts: list[str], ns: str, case: str, spec: dict[str, Any], words: str
) -> None:
    pinned, anywhere = f"a-{case}-{ns[-6:]}", f"b-{case}-{ns[-6:]}"
    cluster.apply(vm(pinned, ns, hostRef="kvmhost1", **spec))
    cluster.apply(vm(anywhere, ns, **spec))
    for name in (pinned, anywhere):
        obj = cluster.wait_for(is_("Scheduled", "False", "NotAllowed"), "vn", name, "-n", ns)
        assert words in condition(obj, "Scheduled")["message"], obj["status"]
        assert condition(obj, "Ready")["status"] == "False"
        assert not obj["status"].get("host")
    time.sleep(3)  # a few more passes: still nothing made anywhere
    for host in hosts:
        names = domain_names(host)
        assert pinned not in names and anywhere not in names
        assert files_named(host, "/etc", pinned) == []


def test_host_outside_allowed_namespaces_refused_at_first_placement(
    cluster: Kubectl, ns: str, closed_host: str
) -> None:
    name = f"c-ns-{ns[-6:]}"
    cluster.apply(vm(name, ns, hostRef=closed_host))
    obj = cluster.wait_for(is_("Scheduled", "False", "NotAllowed"), "vn", name, "-n", ns)
    assert (
        f"namespace {ns} may not use KvmHost {closed_host}"
        in condition(obj, "Scheduled")["message"]
    )
    assert name not in domain_names(closed_host)


# --- authorization as an edit of a running VM --------------------------------------------------


def _running_vm(cluster: Kubectl, ns: str, name: str, host: str) -> tuple[str, str]:
    cluster.apply(vm(name, ns, hostRef=host, disks=[{"name": "hda", "size": "64Mi"}]))
    cluster.wait_for(
        lambda o: is_("Ready", "True")(o) and o["status"].get("phase") == "Running",
        "vn",
        name,
        "-n",
        ns,
        timeout=180,
    )
    return virsh(host, "domid", name).strip(), virsh(host, "dumpxml", "--inactive", name)


def _refused_and_untouched(
    cluster: Kubectl, ns: str, name: str, host: str, domid: str, definition: str, words: str
) -> None:
    obj = cluster.wait_for(
        is_("Authorized", "False", "NotAllowed"), "vn", name, "-n", ns, timeout=60
    )
    assert words in condition(obj, "Authorized")["message"], obj["status"]
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NotAllowed", ready
    assert obj["status"]["powerState"] == "On" and obj["status"]["phase"] == "Running"
    assert any(e["reason"] == "NotAllowed" for e in events(cluster, ns, name))
    time.sleep(4)  # more passes (every 3 s here) must not change anything either
    assert virsh(host, "domstate", name).strip() == "running"
    assert virsh(host, "domid", name).strip() == domid  # never restarted
    assert virsh(host, "dumpxml", "--inactive", name) == definition  # never redefined
    assert files_named(host, "/etc", name) == []


def test_edits_of_a_running_vm_are_refused_and_it_keeps_running(
    cluster: Kubectl, hosts: list[str], ns: str
) -> None:
    host, name = "kvmhost1", f"edit-{ns[-6:]}"
    domid, definition = _running_vm(cluster, ns, name, host)
    good_disks = [{"name": "hda", "size": "64Mi"}]
    edits = [
        (
            {"disks": [*good_disks, {"name": "hdb", "size": "1Gi", "storage": "phy:/dev/sda"}]},
            "phy:/dev/sda is not a block device KvmHost kvmhost1 lists",
            {"disks": good_disks},
        ),
        (
            {"disks": [*good_disks, {"name": "hdb", "size": "1Gi", "storage": "dir:///etc"}]},
            "dir:///etc is not a storage pool of KvmHost kvmhost1",
            {"disks": good_disks},
        ),
        (
            {"nics": [{"bridge": "br0"}, {"bridge": "brmgmt"}]},
            "bridge brmgmt is not one of KvmHost kvmhost1's spec.bridges",
            {"nics": [{"bridge": "br0"}]},
        ),
    ]
    for edit, words, revert in edits:
        patch_vn(cluster, ns, name, edit)
        _refused_and_untouched(cluster, ns, name, host, domid, definition, words)
        patch_vn(cluster, ns, name, revert)
        cluster.wait_for(
            lambda o: is_("Authorized", "True")(o) and is_("Ready", "True")(o),
            "vn",
            name,
            "-n",
            ns,
            timeout=60,
        )
    assert virsh(host, "domid", name).strip() == domid


def test_tightening_allowed_namespaces_flags_the_vms_there_and_never_stops_them(
    cluster: Kubectl, hosts: list[str], ns: str
) -> None:
    host, name = "kvmhost3", f"tight-{ns[-6:]}"
    domid, definition = _running_vm(cluster, ns, name, host)
    try:
        patch_kh(cluster, host, {"allowedNamespaces": ["somebody-else"]})
        _refused_and_untouched(
            cluster, ns, name, host, domid, definition, f"namespace {ns} may not use KvmHost"
        )
    finally:
        patch_kh(cluster, host, {"allowedNamespaces": None})
    cluster.wait_for(is_("Ready", "True"), "vn", name, "-n", ns, timeout=60)
    assert virsh(host, "domid", name).strip() == domid


# --- a guest that fills a tiny pool -------------------------------------------------------------

TINY_DIR = "/var/lib/kvmfleet/tiny"
TINY_POOL = f"dir://{TINY_DIR}"


@pytest.fixture
def tiny_pool(cluster: Kubectl, hosts: list[str], testbed: dict[str, Any]) -> Iterator[str]:
    """A 1200 MiB tmpfs on kvmhost2, added to its storagePools (removed afterwards).

    Large enough for placement's free-space threshold (1 GiB by default, compared with the
    probe's whole-GiB figure); the test fills most of it from the host side before the
    guest starts writing.
    """
    host = "kvmhost2"
    kh = cluster.json("get", "kh", host)
    pools = kh["spec"]["storagePools"]
    on_host(host, "mkdir", "-p", TINY_DIR)
    on_host(host, "mount", "-t", "tmpfs", "-o", "size=1200m,mode=0755", "tmpfs", TINY_DIR)
    try:
        patch_kh(cluster, host, {"storagePools": [*pools, {"name": "tiny", "url": TINY_POOL}]})
        cluster.wait_for(
            lambda o: (
                is_("StorageReady", "True")(o)
                and any(p.get("url") == TINY_POOL for p in o["status"].get("storagePools", []))
            ),
            "kh",
            host,
            timeout=60,
        )
        yield host
    finally:
        patch_kh(cluster, host, {"storagePools": pools})
        for name in domain_names(host):
            if name.startswith("fill-"):
                virsh(host, "destroy", name, check=False)
        on_host(host, "umount", "-l", TINY_DIR, check=False)


def test_a_guest_filling_a_tiny_pool_is_paused_and_not_ready(
    cluster: Kubectl, tiny_pool: str, ns: str
) -> None:
    host, name = tiny_pool, f"fill-{ns[-6:]}"
    image = f"{TINY_DIR}/{name}.hda.qcow2"
    cluster.apply(
        vm(
            name,
            ns,
            hostRef=host,
            nics=[],
            bootOrder=["hd"],
            vnc={"enabled": False},
            runStrategy="Halted",
            shutdownGracePeriodSeconds=0,
            disks=[{"name": "hda", "size": "4Gi", "storage": TINY_POOL}],
        )
    )
    cluster.wait_for(
        lambda o: is_("DisksReady", "True")(o) and is_("Defined", "True")(o),
        "vn",
        name,
        "-n",
        ns,
        timeout=120,
    )
    # The boot sector goes into the (stopped) VM's own image, through qemu-img.
    boot = RUN_DIR / "tmp" / f"{name}-boot.bin"
    boot.parent.mkdir(parents=True, exist_ok=True)
    boot.write_bytes(BOOT_SECTOR)
    try:
        on_host(host, "qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(boot), image)
    finally:
        boot.unlink()
    # Fill the pool from the host side, leaving 8 MiB for the guest.
    free = int(on_host(host, "df", "-B1", "--output=avail", TINY_DIR).stdout.split()[-1])
    filler = free - 8 * 1024 * 1024
    on_host(host, "fallocate", "-l", str(filler), f"{TINY_DIR}/filler")

    patch_vn(cluster, ns, name, {"runStrategy": "Always"})
    obj = cluster.wait_for(
        lambda o: o.get("status", {}).get("phase") == "Paused", "vn", name, "-n", ns, timeout=180
    )
    assert "I/O error" in on_host(host, *VIRSH, "domstate", "--reason", name).stdout
    status = obj["status"]
    assert status["powerState"] == "Paused"
    assert status["pauseReason"] == "NoSpace", status
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PausedNoSpace", ready
    assert "no space left" in ready["message"], ready
    running = condition(obj, "Running")
    assert running["status"] == "False" and running["reason"] == "PausedNoSpace", running
    # The image is still there and readable; nothing was recreated or removed.
    assert on_host(host, "qemu-img", "info", "-U", "-f", "qcow2", image).returncode == 0


# --- VNC Secrets ------------------------------------------------------------------------------------


def _secret_password(cluster: Kubectl, ns: str, name: str) -> str:
    secret = cluster.json("get", "secret", f"{name}-vnc", "-n", ns)
    return base64.b64decode(secret["data"]["password"]).decode()


def test_vnc_password_rotated_while_off_is_the_one_qemu_accepts(
    cluster: Kubectl, hosts: list[str], ns: str
) -> None:
    name = f"vncoff-{ns[-6:]}"
    cluster.apply(vm(name, ns, hostRef="kvmhost1", runStrategy="Halted"))
    cluster.wait_for(
        lambda o: is_("Ready", "True")(o) and o["status"].get("phase") == "Stopped",
        "vn",
        name,
        "-n",
        ns,
        timeout=120,
    )
    before = _secret_password(cluster, ns, name)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.run(
        "annotate",
        "vn",
        name,
        "-n",
        ns,
        "--overwrite",
        f"kvmfleet.io/console-credentials-requested-at={stamp}",
    )
    cluster.wait_for(
        lambda o: o.get("status", {}).get("lastActions", {}).get("consoleCredentials") == stamp,
        "vn",
        name,
        "-n",
        ns,
        timeout=60,
    )
    after = _secret_password(cluster, ns, name)
    assert after != before

    patch_vn(cluster, ns, name, {"runStrategy": "Always"})
    obj = cluster.wait_for(
        lambda o: (
            o.get("status", {}).get("phase") == "Running"
            and o["status"].get("console", {}).get("vnc", {}).get("port")
        ),
        "vn",
        name,
        "-n",
        ns,
        timeout=120,
    )
    vnc = obj["status"]["console"]["vnc"]
    assert _secret_password(cluster, ns, name) == after
    # The port in status is this domain's own VNC server (not another VM's on the host).
    display = virsh("kvmhost1", "vncdisplay", name).strip()
    assert display and 5900 + int(display.rsplit(":", 1)[1]) == vnc["port"], (display, vnc)
    accepted = vnc_password_accepted(vnc["host"], vnc["port"], after)
    assert accepted, (
        f"QEMU refused the Secret's password; domain state: "
        f"{virsh('kvmhost1', 'domstate', '--reason', name).strip()}; "
        f"graphics: {re.findall(r'<graphics[^>]*>', virsh('kvmhost1', 'dumpxml', name))}"
    )
    assert not vnc_password_accepted(vnc["host"], vnc["port"], before)
    assert condition(obj, "ConsoleReady")["status"] == "True"


def test_a_vnc_secret_that_is_not_the_vms_is_never_replaced(
    cluster: Kubectl, hosts: list[str], ns: str
) -> None:
    name = f"vncforeign-{ns[-6:]}"
    theirs = secrets.token_hex(8)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-vnc", "namespace": ns},
            "stringData": {"password": theirs, "note": "someone else's"},
        }
    )
    original = cluster.json("get", "secret", f"{name}-vnc", "-n", ns)
    cluster.apply(vm(name, ns, hostRef="kvmhost1", runStrategy="Halted"))
    obj = cluster.wait_for(
        is_("ConsoleReady", "False", "SecretNotOwned"), "vn", name, "-n", ns, timeout=120
    )
    assert "not owned by this VirtualNode" in condition(obj, "ConsoleReady")["message"]
    assert "passwordSecretRef" not in obj["status"].get("console", {}).get("vnc", {})
    assert any(e["reason"] == "SecretNotOwned" for e in events(cluster, ns, name))
    time.sleep(4)
    now = cluster.json("get", "secret", f"{name}-vnc", "-n", ns)
    assert now["metadata"]["resourceVersion"] == original["metadata"]["resourceVersion"]
    assert not now["metadata"].get("ownerReferences")
    assert base64.b64decode(now["data"]["password"]).decode() == theirs
    # The domain still has a password (a random one nobody was told), never none: libvirt
    # shows its expiry, not the password.
    assert "passwdValidTo=" in virsh("kvmhost1", "dumpxml", "--inactive", name)
