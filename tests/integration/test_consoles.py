"""Consoles for real: serial consoles of testbed domains, QEMU's VNC server, kubectl kvm.

* Serial console (kvmfleet.virt.console) of a diskless TCG domain on kvmhost1 that
  PXE-boots the testbed's tiny Linux: the console is opened while the domain is still
  paused, so everything from the firmware on is seen, and KVMFLEET-GUEST-READY must
  appear within 90 s. Then: reads until a regex, reads that time out, input through the
  bridge echoed by the guest's tty, one session per console unless forced, the end of
  the console when the domain stops.
* VNC: QEMU's VNC server of a tiny domain, checked with tests/support/vnc.py (a real RFB
  3.8 client with VNC authentication): the right password is accepted, a wrong one
  rejected, and after Guests.set_vnc_password the old one is rejected and the new one
  accepted; an expired password is rejected.
* ``kubectl-kvm`` (the installed console script) against the real API server: argument
  errors, lsvm, and the errors of VirtualNodes that are not placed. The full path through
  a running VirtualNode is tested with the VirtualNode reconciler.

Every domain is named ``t-cons-<run>-...`` and destroyed and undefined afterwards, also
when a test fails (fixtures, plus a sweep of the run's prefix at the end). Traffic goes to
10.77.0.0/24 (the testbed) and 127.0.0.1 (the API server) only.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmfleet.virt.connection import LibvirtConnection, open_connection
from kvmfleet.virt.console import (
    ESCAPE,
    BridgeEnd,
    ConsoleBusyError,
    ConsoleLostError,
    bridge,
    capture_console,
    open_console,
    read_console,
)
from kvmfleet.virt.errors import LibvirtNotFoundError, OperationInvalidError
from kvmfleet.virt.guest import Guests
from support.cluster import Kubectl
from support.testbed import libvirt_target, on_host
from support.vnc import vnc_login

KUBECTL_KVM = Path(sys.executable).with_name("kubectl-kvm")

RUN = secrets.token_hex(2)
PREFIX = f"t-cons-{RUN}-"
READY = re.compile(rb"^KVMFLEET-GUEST-READY hostname=(\S+) mac=(\S*)[^\n]*\n", re.M)
TICK = re.compile(rb"^KVMFLEET-TICK (\d+)\r?\n", re.M)
on_testbed = pytest.mark.testbed


# ------------------------------------------------------------------ the testbed


@pytest.fixture(scope="module")
def kvmhost1(testbed: dict[str, Any]) -> dict[str, Any]:
    """kvmhost1 of hosts.json, with the testbed's "pxe" (the session fixture ``testbed``
    brings the testbed up; it FAILS when it cannot, KVMFLEET_NO_TESTBED=1 skips)."""
    host = dict(next(h for h in testbed["hosts"] if h["name"] == "kvmhost1"))
    host["pxe"] = testbed["pxe"]  # on a copy: the session's hosts.json stays as it is
    return host


@pytest.fixture(scope="module")
def connection(kvmhost1: dict[str, Any]) -> Iterator[LibvirtConnection]:
    """kvmfleet's own libvirt connection to kvmhost1 (qemu+ssh, host key pinned)."""
    with open_connection(libvirt_target(kvmhost1)) as conn:
        yield conn
        sweep(conn)


def sweep(conn: LibvirtConnection) -> None:
    """Destroy and undefine whatever this run left behind (a failed teardown, a crash)."""
    guests = Guests(conn)
    for name in conn.conn.listDefinedDomains() + [d.name() for d in conn.conn.listAllDomains()]:
        if name.startswith(PREFIX):
            remove(guests, name)


def remove(guests: Guests, name: str) -> None:
    try:
        guests.destroy(name)
    except LibvirtNotFoundError:
        return
    guests.undefine(name)


@pytest.fixture
def guests(connection: LibvirtConnection) -> Guests:
    return Guests(connection)


def nic_xml(host: dict[str, Any], mac: str) -> str:
    """A virtio NIC on the management LAN: the bridge over eth0 if the host has one (the
    KvmHost reconciler makes br0; it is reused, never removed), else macvtap on eth0."""
    link = on_host(host["name"], "ip", "-o", "link", "show", "dev", "eth0")
    master = re.search(r" master (\S+) ", link.stdout)
    if master:
        source = f"<interface type='bridge'><source bridge='{master.group(1)}'/>"
    else:
        source = "<interface type='direct'><source dev='eth0' mode='bridge'/>"
    return f"{source}<mac address='{mac}'/><model type='virtio'/></interface>"


def serial_xml() -> str:
    return (
        "<serial type='pty'><target port='0'/></serial>"
        "<console type='pty'><target type='serial' port='0'/></console>"
    )


def bios_domain_xml(name: str) -> str:
    """A diskless 64 MiB TCG guest: SeaBIOS prints to the serial port and finds no disk."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/><bios useserial='yes'/></os>
  <devices>{serial_xml()}</devices>
</domain>"""


# ------------------------------------------------------------------ the PXE guest


class PxeGuest:
    """A diskless TCG domain PXE-booting the testbed guest, its console opened while paused."""

    def __init__(self, host: dict[str, Any], guests: Guests) -> None:
        self.host = host
        self.guests = guests
        self.name = f"{PREFIX}pxe"
        self.mac = "52:54:00:78:{:02x}:{:02x}".format(*secrets.token_bytes(2))
        self.dhcp_entry = Path(host["pxe"]["dhcpHostsDir"]) / self.name
        self.boot = b""
        self.boot_seconds = 0.0

    def xml(self) -> str:
        return f"""<domain type='qemu'>
  <name>{self.name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/><bios useserial='yes'/>
  </os>
  <devices>{nic_xml(self.host, self.mac)}{serial_xml()}</devices>
</domain>"""

    def boot_and_capture(self, connection: LibvirtConnection) -> None:
        self.dhcp_entry.write_text(f"{self.mac},{self.name}\n")  # its DHCP host name
        self.guests.define(self.xml())
        domain = connection.conn.lookupByName(self.name)
        domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        with open_console(connection, self.name) as console:
            domain.resume()
            started = time.monotonic()
            output = console.capture(until=READY, timeout=90)
            self.boot_seconds = time.monotonic() - started
        self.boot = output.data

    def cleanup(self) -> None:
        remove(self.guests, self.name)
        self.dhcp_entry.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def pxe_guest(kvmhost1: dict[str, Any], connection: LibvirtConnection) -> Iterator[PxeGuest]:
    guest = PxeGuest(kvmhost1, Guests(connection))
    try:
        guest.boot_and_capture(connection)
        yield guest
    finally:
        guest.cleanup()


@pytest.fixture
def bios_guest(guests: Guests) -> Iterator[str]:
    name = f"{PREFIX}bios-{secrets.token_hex(2)}"
    try:
        guests.define(bios_domain_xml(name))
        yield name
    finally:
        remove(guests, name)


def tail(data: bytes, lines: int = 25) -> str:
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# ------------------------------------------------------------------ serial console


@on_testbed
def test_the_serial_console_shows_the_pxe_guest_marker(pxe_guest: PxeGuest) -> None:
    ready = READY.search(pxe_guest.boot)
    assert ready, f"no KVMFLEET-GUEST-READY within 90 s; console:\n{tail(pxe_guest.boot)}"
    assert ready.group(1).decode() == pxe_guest.name, "the guest's DHCP host name"
    assert ready.group(2).decode() == pxe_guest.mac
    # Opened before the guest ran: the firmware's and the whole kernel's output are there.
    before = pxe_guest.boot.split(b"KVMFLEET-GUEST-READY")[0]
    assert b"SeaBIOS" in before and b"iPXE" in before, tail(before)
    assert re.search(rb"\[ +0\.000000\] Linux version", before), tail(before)
    print(f"\nPXE guest: marker {pxe_guest.boot_seconds:.1f} s after resume")


@on_testbed
def test_read_console_until_a_regex(pxe_guest: PxeGuest, connection: LibvirtConnection) -> None:
    started = time.monotonic()
    data = read_console(connection, pxe_guest.name, until=TICK, timeout=20)
    assert TICK.search(data), tail(data)
    assert time.monotonic() - started < 5  # a tick a second
    ticks = [int(n) for n in TICK.findall(data)]
    assert ticks and ticks[-1] > 0


@on_testbed
def test_read_console_returns_what_came_when_the_time_is_up(
    pxe_guest: PxeGuest, connection: LibvirtConnection
) -> None:
    started = time.monotonic()
    output = capture_console(connection, pxe_guest.name, until=b"NEVER-PRINTED", timeout=3.5)
    took = time.monotonic() - started
    assert output.timed_out and not output.ended
    assert 3.0 <= took < 8, took
    ticks = [int(n) for n in TICK.findall(output.data)]
    assert len(ticks) >= 2 and ticks == sorted(set(ticks)), tail(output.data)


@on_testbed
def test_the_bridge_sends_input_that_the_guest_tty_echoes(
    pxe_guest: PxeGuest, connection: LibvirtConnection
) -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    result: dict[str, Any] = {}
    opened = threading.Event()

    def session() -> None:
        try:
            result["end"] = bridge(
                connection,
                pxe_guest.name,
                input_fd=in_read,
                output_fd=out_write,
                on_open=opened.set,
            )
        except BaseException as error:  # reported by the assertion below
            result["error"] = error
            opened.set()

    token = f"kvmfleet-echo-{secrets.token_hex(4)}"
    thread = threading.Thread(target=session, daemon=True)
    thread.start()
    seen = b""
    try:
        assert opened.wait(30) and "error" not in result, result
        os.write(in_write, token.encode())
        os.set_blocking(out_read, False)
        deadline = time.monotonic() + 15
        while token.encode() not in seen and time.monotonic() < deadline:
            time.sleep(0.2)
            with contextlib.suppress(BlockingIOError):
                seen += os.read(out_read, 65536)
        os.write(in_write, ESCAPE)
        thread.join(10)
        assert result.get("end") is BridgeEnd.ESCAPE, result
        assert token.encode() in seen, f"the guest did not echo the input:\n{tail(seen)}"
    finally:
        os.write(in_write, ESCAPE)  # never leave the session thread running
        thread.join(10)
        for fd in (in_read, in_write, out_read, out_write):
            os.close(fd)


@on_testbed
def test_one_session_per_console_unless_forced(
    pxe_guest: PxeGuest, connection: LibvirtConnection
) -> None:
    with open_console(connection, pxe_guest.name) as first:
        with pytest.raises(ConsoleBusyError, match="force takes the console over"):
            open_console(connection, pxe_guest.name)
        with open_console(connection, pxe_guest.name, force=True) as second:
            assert TICK.search(second.capture(until=TICK, timeout=10).data)
            deadline = time.monotonic() + 10
            with pytest.raises(ConsoleLostError):  # the first session was taken over
                while time.monotonic() < deadline:
                    first.read(1)
    # Both closed: the console is free again.
    assert read_console(connection, pxe_guest.name, until=TICK, timeout=10)


@on_testbed
def test_the_console_ends_when_the_domain_stops(
    bios_guest: str, guests: Guests, connection: LibvirtConnection
) -> None:
    with pytest.raises(OperationInvalidError, match="not running"):
        read_console(connection, bios_guest, timeout=1)
    domain = connection.conn.lookupByName(bios_guest)
    domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    with open_console(connection, bios_guest) as console:
        domain.resume()
        booted = console.capture(until=b"No bootable device", timeout=30)
        assert booted.matched and b"SeaBIOS" in booted.data, tail(booted.data)
        guests.destroy(bios_guest)
        ended = console.capture(until=b"never", timeout=15)
        assert ended.ended, "the console did not end with the domain"


@on_testbed
def test_a_missing_domain_is_not_found(connection: LibvirtConnection) -> None:
    with pytest.raises(LibvirtNotFoundError):
        read_console(connection, f"{PREFIX}missing", timeout=1)


# ------------------------------------------------------------------ VNC


@pytest.fixture
def vnc_guest(guests: Guests) -> Iterator[str]:
    name = f"{PREFIX}vnc-{secrets.token_hex(2)}"
    xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <graphics type='vnc' autoport='yes' listen='0.0.0.0' passwd='first-pw'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>
  </devices>
</domain>"""
    try:
        guests.define(xml)
        guests.start(name)
        yield name
    finally:
        remove(guests, name)


@on_testbed
def test_qemu_vnc_accepts_the_password_and_rotation_replaces_it(
    vnc_guest: str, guests: Guests, kvmhost1: dict[str, Any]
) -> None:
    port = guests.info(vnc_guest).vnc_port
    assert port is not None and 5900 <= port < 6000
    address = kvmhost1["address"]

    login = vnc_login(address, port, "first-pw")
    assert login.accepted, login
    assert login.server_version == b"RFB 003.008\n" and login.security_types == (2,)
    assert login.server_init is not None
    assert login.server_init.width > 0 and login.server_init.height > 0
    assert vnc_guest in login.server_init.name
    wrong = vnc_login(address, port, "not-it")
    assert not wrong and "Authentication failed" in wrong.reason

    valid_to = datetime.now(UTC) + timedelta(hours=1)
    assert guests.set_vnc_password(vnc_guest, "second!", valid_to) is True
    assert not vnc_login(address, port, "first-pw"), "the old password still works"
    assert vnc_login(address, port, "second!")
    # VNC passwords are 8 characters at most (libvirt refuses longer ones): a client
    # typing more is accepted, the DES key holding the first 8 only.
    assert guests.set_vnc_password(vnc_guest, "abcdefgh") is True
    assert vnc_login(address, port, "abcdefgh-typed-on")

    assert guests.set_vnc_password(vnc_guest, "expired", datetime.now(UTC) - timedelta(minutes=1))
    assert not vnc_login(address, port, "expired"), "an expired password still works"


# ------------------------------------------------------------------ kubectl kvm


def kubectl_kvm(
    kubeconfig: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    if not KUBECTL_KVM.exists():
        pytest.fail(
            f"{KUBECTL_KVM} is missing: reinstall the package (pip install -e .) so that the "
            "kubectl-kvm console script exists",
            pytrace=False,
        )
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    return subprocess.run(
        [str(KUBECTL_KVM), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCL7zp4LPOr5wIJw3G1q7zBqUYMx+W27rec+vx4Cz28"


def custom_api(kubeconfig: str) -> Any:
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=kubeconfig, persist_config=False)
    return kubernetes.client.CustomObjectsApi(client)


def delete_cleanly(cluster: Kubectl, kind: str, name: str, namespace: str | None = None) -> None:
    """Delete; if a finalizer holds it after 20 s (no operator to release it), drop it."""
    where = ["-n", namespace] if namespace else []
    cluster.run("delete", kind, name, *where, "--wait=false", "--ignore-not-found", check=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if cluster.run("get", kind, name, *where, check=False).returncode != 0:
            return
        time.sleep(1)
    cluster.run(
        "patch", kind, name, *where, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
        check=False,
    )  # fmt: skip


@pytest.fixture
def fake_host(cluster: Kubectl, namespace: str) -> Iterator[str]:
    """A KvmHost that cannot be reached: its key Secret does not exist (no traffic at all)."""
    name = f"t-kh-{secrets.token_hex(3)}"
    cluster.apply(
        {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "KvmHost",
            "metadata": {"name": name},
            "spec": {
                "address": "127.0.0.1",
                "port": 1,
                "sshKeySecretRef": {"name": "t-missing-key", "namespace": namespace},
                "hostKey": HOST_KEY,
            },
        }
    )
    try:
        yield name
    finally:
        delete_cleanly(cluster, "kvmhost", name)


def virtual_node(namespace: str, name: str, host: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"hostRef": host, "runStrategy": "Always"},
    }


@pytest.fixture
def unplaced(cluster: Kubectl, namespace: str) -> Iterator[str]:
    """A VirtualNode that cannot be placed (its hostRef names no KvmHost): status.host empty."""
    name = f"t-vn-{secrets.token_hex(3)}"
    cluster.apply(virtual_node(namespace, name, f"t-nohost-{secrets.token_hex(3)}"))
    try:
        yield name
    finally:
        delete_cleanly(cluster, "virtualnode", name, namespace)


def test_argument_errors_exit_2(cluster: Kubectl) -> None:
    for args in (["console"], ["migrate", "vm1"], ["console", "vm1", "--until", "("], ["nope"]):
        result = kubectl_kvm(cluster.kubeconfig, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage: kubectl kvm" in result.stderr


def test_a_missing_virtualnode_or_host_exits_3(cluster: Kubectl, namespace: str) -> None:
    for args in (["vnc", "t-none"], ["console", "t-none", "--read-only", "--timeout", "1"],
                 ["reboot", "t-none"]):  # fmt: skip
        result = kubectl_kvm(cluster.kubeconfig, *args, "-n", namespace)
        assert result.returncode == 3, result.stderr
        assert f'VirtualNode "t-none" not found in namespace "{namespace}"' in result.stderr
    result = kubectl_kvm(cluster.kubeconfig, "lsvm", "t-no-such-host")
    assert result.returncode == 3 and 'KvmHost "t-no-such-host" not found' in result.stderr


def test_consoles_of_an_unplaced_virtualnode_exit_4(
    cluster: Kubectl, namespace: str, unplaced: str
) -> None:
    for args in (["vnc", unplaced], ["vnc", unplaced, "--rotate"],
                 ["console", unplaced, "--until", "READY", "--timeout", "5"],
                 ["console", unplaced]):  # fmt: skip
        result = kubectl_kvm(cluster.kubeconfig, "-n", namespace, *args)
        assert result.returncode == 4, (args, result.stderr)
        assert f"VirtualNode {namespace}/{unplaced} is not placed on a host yet" in result.stderr
        assert result.stdout == ""
    # --rotate gave up before asking the operator for anything.
    node = cluster.json("get", "virtualnode", unplaced, "-n", namespace)
    assert "kvmfleet.io/console-credentials-requested-at" not in (
        node["metadata"].get("annotations") or {}
    )


def test_a_console_on_a_host_that_is_not_ready_exits_4(
    cluster: Kubectl, namespace: str, fake_host: str
) -> None:
    name = f"t-vn-{secrets.token_hex(3)}"
    cluster.apply(virtual_node(namespace, name, fake_host))
    try:
        api = custom_api(cluster.kubeconfig)
        api.patch_namespaced_custom_object_status(
            "kvmfleet.io", "v1alpha1", namespace, "virtualnodes", name,
            {"status": {"host": fake_host}},
        )  # fmt: skip
        result = kubectl_kvm(cluster.kubeconfig, "-n", namespace, "console", name, "--read-only",
                             "--timeout", "2")  # fmt: skip
        assert result.returncode == 4, result.stderr
        # A VirtualNode reconciler may have taken the placement back meanwhile.
        assert f"KvmHost {fake_host} is not ready" in result.stderr or "not placed" in result.stderr
    finally:
        delete_cleanly(cluster, "virtualnode", name, namespace)


def test_power_requests_set_rfc3339_annotations(
    cluster: Kubectl, namespace: str, unplaced: str
) -> None:
    first = kubectl_kvm(cluster.kubeconfig, "-n", namespace, "reboot", unplaced)
    assert first.returncode == 0, first.stderr
    stamp = re.fullmatch(
        rf"{unplaced}: reboot requested \(kvmfleet.io/reboot-requested-at="
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\)\n",
        first.stdout,
    )
    assert stamp, first.stdout
    annotations = cluster.json("get", "virtualnode", unplaced, "-n", namespace)["metadata"][
        "annotations"
    ]
    assert annotations["kvmfleet.io/reboot-requested-at"] == stamp.group(1)
    second = kubectl_kvm(cluster.kubeconfig, "-n", namespace, "reboot", unplaced)
    again = cluster.json("get", "virtualnode", unplaced, "-n", namespace)["metadata"]["annotations"]
    assert second.returncode == 0
    assert again["kvmfleet.io/reboot-requested-at"] > stamp.group(1), "not newer than the first"

    refused = kubectl_kvm(cluster.kubeconfig, "-n", namespace, "stop", unplaced)
    assert refused.returncode == 1 and "runStrategy Always" in refused.stderr
    waited = kubectl_kvm(cluster.kubeconfig, "-n", namespace, "start", unplaced, "--wait",
                         "--timeout", "3")  # fmt: skip
    assert waited.returncode == 5 and "timed out after 3 s waiting for start" in waited.stderr


def test_migrate_refuses_missing_and_unready_hosts(
    cluster: Kubectl, namespace: str, unplaced: str, fake_host: str
) -> None:
    missing = kubectl_kvm(cluster.kubeconfig, "-n", namespace, "migrate", unplaced, "t-nowhere")
    assert missing.returncode == 3 and 'KvmHost "t-nowhere" not found' in missing.stderr
    unready = kubectl_kvm(cluster.kubeconfig, "-n", namespace, "migrate", unplaced, fake_host)
    assert unready.returncode == 4 and f"KvmHost {fake_host} is not ready" in unready.stderr
    spec = cluster.json("get", "virtualnode", unplaced, "-n", namespace)["spec"]
    assert spec["hostRef"] != fake_host


def test_lsvm_lists_the_hosts_domains_and_its_virtualnodes(
    cluster: Kubectl, namespace: str, fake_host: str
) -> None:
    api = custom_api(cluster.kubeconfig)
    labelled = [f"t-vn-{secrets.token_hex(3)}" for _ in range(2)]
    orphan = f"{PREFIX}orphan"
    for name in labelled:
        cluster.apply(virtual_node(namespace, name, fake_host, **{"kvmfleet.io/host": fake_host}))
    try:
        api.patch_cluster_custom_object_status(
            "kvmfleet.io", "v1alpha1", "kvmhosts", fake_host,
            {"status": {"domains": [{"name": orphan, "state": "Off"},
                                    {"name": labelled[0], "state": "On"}]}},
        )  # fmt: skip
        result = kubectl_kvm(cluster.kubeconfig, "lsvm", fake_host)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["NAME", "STATE", "NAMESPACE", "PHASE", "POWER"]
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert rows[orphan][1:3] == ["Off", "-"], "a domain without VirtualNode"
        # What `kubectl get vn -l kvmfleet.io/host=<host>` shows is what lsvm shows.
        listed = cluster.json("get", "virtualnodes", "-A", "-l", f"kvmfleet.io/host={fake_host}")
        names = {item["metadata"]["name"] for item in listed["items"]}
        assert names == set(rows) - {orphan}
        if labelled[0] in rows:
            assert rows[labelled[0]][1:3] == ["On", namespace]
        if labelled[1] in rows:
            assert rows[labelled[1]][1:3] == ["-", namespace], "labelled, not defined on the host"
    finally:
        for name in labelled:
            delete_cleanly(cluster, "virtualnode", name, namespace)
