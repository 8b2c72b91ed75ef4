"""The hypervisor testbed (hack/testbed.sh): real hosts, real NFS, a real PXE boot.

Every check goes through the interfaces the operator uses: SSH with strict host key
checking, libvirt over qemu+ssh / qemu+libssh, QEMU's own NFS client, and DHCP + iPXE +
HTTP from the management namespace to a diskless VM. The testbed comes from the session
fixture ``testbed`` (tests/integration/conftest.py), which brings it up when it is not.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from support.testbed import BRIDGE, HOSTS_JSON, NET, RUN_DIR, run_testbed

# A fresh machine installs libvirt, QEMU and nfs-ganesha first: allow for it.
pytestmark = [pytest.mark.testbed, pytest.mark.timeout(1800)]

Host = dict[str, Any]


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def known_hosts(testbed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A known_hosts file made only from hosts.json (not the testbed's own copy)."""
    path = tmp_path_factory.mktemp("ssh") / "known_hosts"
    path.write_text(
        "".join(f"{h['name']},{h['address']} {h['hostKey']}\n" for h in testbed["hosts"])
    )
    return path


@pytest.fixture(scope="session")
def strict_ssh(known_hosts: Path) -> Path:
    """An ssh wrapper with strict host key checking, usable as libvirt's ssh binary."""
    path = known_hosts.parent / "ssh-strict"
    path.write_text(
        "#!/bin/sh\n"
        "exec ssh -o BatchMode=yes -o StrictHostKeyChecking=yes"
        f" -o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null"
        ' -o IdentitiesOnly=yes -o ConnectTimeout=10 "$@"\n'
    )
    path.chmod(0o755)
    return path


def ssh_argv(host: Host, known_hosts: Path) -> list[str]:
    return [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=10",
        "-i", host["privateKeyPath"],
        "-p", str(host["port"]),
        f"{host['user']}@{host['address']}",
    ]  # fmt: skip


def on_host(host: Host, known_hosts: Path, command: str, check: bool = True) -> str:
    result = subprocess.run(
        [*ssh_argv(host, known_hosts), command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{host['name']}: {command!r} failed: {result.stderr}"
    return result.stdout


def libvirt_uri(host: Host, strict_ssh: Path) -> str:
    return (
        f"qemu+ssh://{host['user']}@{host['address']}:{host['port']}/system"
        f"?keyfile={host['privateKeyPath']}&command={strict_ssh}"
    )


def virsh(uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, f"virsh {' '.join(args)} on {uri}: {result.stderr}"
    return result


def tcp_connect(address: str, port: int, timeout: float = 2.0) -> None:
    with socket.create_connection((address, port), timeout=timeout):
        pass


def wait_for_tcp(address: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            tcp_connect(address, port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def random_host_key_line(tmp_path: Path) -> str:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


# ------------------------------------------------------------------ the inventory


def test_hosts_json_describes_every_host(testbed: dict[str, Any]) -> None:
    hosts = testbed["hosts"]
    assert hosts, "no hosts in hosts.json"
    for i, host in enumerate(hosts, start=1):
        assert host["name"] == f"kvmhost{i}"
        assert host["address"] == f"{NET}.{10 + i}"
        assert host["port"] == 22
        assert host["user"] == "root"
        assert host["virtualization"] in {"kvm", "emulated"}
        assert re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/]+=*", host["hostKey"]), host["hostKey"]
        key = Path(host["privateKeyPath"])
        assert key.is_file() and (key.stat().st_mode & 0o077) == 0, "private key must be 0600"
    assert len({h["hostKey"] for h in hosts}) == len(hosts), "hosts share a host key"
    assert testbed["nfs"]["server"] == f"{NET}.2"
    assert testbed["nfs"]["export"].startswith("/")
    assert Path(testbed["nfs"]["directory"]).is_dir()
    assert testbed["pxe"]["httpUrl"] == f"http://{NET}.2:8088"
    assert testbed["pxe"]["dhcpRange"] == [f"{NET}.100", f"{NET}.199"]
    assert testbed["mgmtBridge"] == BRIDGE
    addrs = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", BRIDGE],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f" {NET}.1/24 " in addrs


def test_status_reports_every_component_up(testbed: dict[str, Any]) -> None:
    result = run_testbed("status")
    states = {
        parts[0]: parts[1]
        for parts in (line.split() for line in result.stdout.splitlines())
        if len(parts) >= 2
    }
    expected = [BRIDGE, "kvmf-mn", "kvmf-mn/rpcbind", "kvmf-mn/nfs-ganesha",
                "kvmf-mn/dnsmasq", "kvmf-mn/http"]  # fmt: skip
    for host in testbed["hosts"]:
        expected += [
            host["name"],
            *(f"{host['name']}/{d}" for d in ("virtlogd", "libvirtd", "sshd")),
        ]
    for component in expected:
        assert states.get(component) == "up", f"{component}: {result.stdout}"


# ------------------------------------------------------------------ SSH and libvirt


def test_ssh_with_strict_host_key_checking_reaches_each_host(
    testbed: dict[str, Any], known_hosts: Path
) -> None:
    for host in testbed["hosts"]:
        assert on_host(host, known_hosts, "hostname").strip() == host["name"]


def test_ssh_refuses_a_host_whose_key_does_not_match(
    testbed: dict[str, Any], tmp_path: Path
) -> None:
    host = testbed["hosts"][0]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{host['address']} {random_host_key_line(tmp_path)}\n")
    result = subprocess.run(
        [*ssh_argv(host, wrong), "hostname"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Host key verification failed" in result.stderr


def test_each_host_has_its_own_libvirtd_over_qemu_ssh(
    testbed: dict[str, Any], strict_ssh: Path
) -> None:
    uuids = []
    for host in testbed["hosts"]:
        uri = libvirt_uri(host, strict_ssh)
        assert "Running hypervisor: QEMU" in virsh(uri, "version").stdout
        assert virsh(uri, "hostname").stdout.strip() == host["name"]
        caps = ET.fromstring(virsh(uri, "capabilities").stdout)
        uuid = caps.findtext("host/uuid")
        assert uuid == host["hostUUID"]
        uuids.append(uuid)
        # The advertised virtualization matches what libvirt on that host can run.
        domain_types = {d.get("type") for d in caps.iterfind("guest/arch/domain")}
        assert "qemu" in domain_types
        assert ("kvm" in domain_types) == (host["virtualization"] == "kvm"), (
            f"{host['name']}: {host['virtualization']} but libvirt offers {domain_types}"
        )
    assert len(set(uuids)) == len(uuids), f"libvirt host UUIDs are not distinct: {uuids}"


def test_libvirt_libssh_transport_checks_known_hosts(
    testbed: dict[str, Any], known_hosts: Path, tmp_path: Path
) -> None:
    host = testbed["hosts"][0]
    base = (
        f"qemu+libssh://{host['user']}@{host['address']}/system"
        f"?keyfile={host['privateKeyPath']}&sshauth=privkey&known_hosts_verify=normal"
    )
    ok = virsh(f"{base}&known_hosts={known_hosts}", "hostname")
    assert ok.stdout.strip() == host["name"]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{host['address']} {random_host_key_line(tmp_path)}\n")
    refused = virsh(f"{base}&known_hosts={wrong}", "hostname", check=False)
    assert refused.returncode != 0, "libssh accepted a host key that does not match"


def test_hidden_kvm_is_really_unusable_on_emulated_hosts(
    testbed: dict[str, Any], known_hosts: Path
) -> None:
    for host in testbed["hosts"]:
        # Opening /dev/kvm (even as root) fails on emulated hosts, works on kvm hosts.
        probe = "if (: <>/dev/kvm) 2>/dev/null; then echo usable; else echo unusable; fi"
        out = on_host(host, known_hosts, probe).strip()
        expected = "usable" if host["virtualization"] == "kvm" else "unusable"
        assert out == expected, f"{host['name']} ({host['virtualization']}): /dev/kvm {out}"


# ------------------------------------------------------------------ NFS


def test_nfs_server_offers_v3_and_v4(testbed: dict[str, Any]) -> None:
    out = subprocess.run(
        ["rpcinfo", "-p", testbed["nfs"]["server"]],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    registered = {tuple(line.split()[:3]) for line in out.splitlines()[1:]}
    assert ("100003", "3", "tcp") in registered  # NFSv3
    assert ("100003", "4", "tcp") in registered  # NFSv4
    assert ("100005", "3", "tcp") in registered  # MOUNT v3 (what libnfs uses)


def test_qemu_img_creates_images_on_the_nfs_export_from_each_host(
    testbed: dict[str, Any], known_hosts: Path
) -> None:
    nfs = testbed["nfs"]
    for host in testbed["hosts"]:
        name = f"probe-{host['name']}-{secrets.token_hex(4)}.qcow2"
        url = f"nfs://{nfs['server']}{nfs['export']}/{name}"
        on_disk = Path(nfs["directory"]) / name
        try:
            on_host(host, known_hosts, f"qemu-img create -q -f qcow2 {url} 16M")
            assert on_disk.is_file(), f"{name} did not appear in {nfs['directory']}"
            info = json.loads(on_host(host, known_hosts, f"qemu-img info --output=json {url}"))
            assert info["format"] == "qcow2"
            assert info["virtual-size"] == 16 * 1024 * 1024
            # The file is what QEMU wrote: a local reader sees the same qcow2 header.
            assert on_disk.read_bytes()[:4] == b"QFI\xfb"
        finally:
            on_disk.unlink(missing_ok=True)


# ------------------------------------------------------------------ PXE boot


def _nic_xml(host: Host, known_hosts: Path, mac: str) -> str:
    """A virtio NIC on the management network: eth0's bridge if there is one, else
    a macvtap (direct, bridge mode) on eth0 (no change to the host's network)."""
    link = on_host(host, known_hosts, "ip -o link show dev eth0")
    master = re.search(r" master (\S+) ", link)
    if master:
        source = f"<interface type='bridge'><source bridge='{master.group(1)}'/>"
    else:
        source = "<interface type='direct'><source dev='eth0' mode='bridge'/>"
    return f"{source}<mac address='{mac}'/><model type='virtio'/></interface>"


class PxeGuest:
    """A diskless TCG VM that PXE-boots the testbed guest, its console in a file."""

    def __init__(
        self, testbed: dict[str, Any], host: Host, known_hosts: Path, strict_ssh: Path
    ) -> None:
        self.host = host
        self.known_hosts = known_hosts
        self.strict_ssh = strict_ssh
        self.name = f"tb-pxe-{secrets.token_hex(3)}"
        self.mac = "52:54:00:77:{:02x}:{:02x}".format(*secrets.token_bytes(2))
        self.serial_log = f"/var/log/libvirt/qemu/{self.name}.serial.log"
        self.dhcp_entry = Path(testbed["pxe"]["dhcpHostsDir"]) / self.name
        self.hosts_seen = [host]

    def xml(self) -> str:
        # TCG (type qemu): the tiny guest kernel does not boot under nested KVM here.
        return f"""<domain type='qemu'>
  <name>{self.name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
  <devices>
    {_nic_xml(self.host, self.known_hosts, self.mac)}
    <serial type='file'><source path='{self.serial_log}'/><target port='0'/></serial>
  </devices>
</domain>
"""

    def start(self, tmp_path: Path) -> None:
        self.dhcp_entry.write_text(f"{self.mac},{self.name}\n")  # its DHCP host name
        domain = tmp_path / f"{self.name}.xml"
        domain.write_text(self.xml())
        uri = libvirt_uri(self.host, self.strict_ssh)
        virsh(uri, "define", str(domain))
        virsh(uri, "start", self.name)

    def console(self, host: Host | None = None) -> str:
        return on_host(
            host or self.host, self.known_hosts, f"cat {self.serial_log} 2>/dev/null || true"
        )

    def wait_ticks(self, count: int, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        text = ""
        while time.monotonic() < deadline:
            time.sleep(1)
            text = self.console()
            if len(ticks_of(text)) >= count:
                break
        return text

    def cleanup(self) -> None:
        for host in self.hosts_seen:
            uri = libvirt_uri(host, self.strict_ssh)
            virsh(uri, "destroy", self.name, check=False)
            virsh(uri, "undefine", self.name, check=False)
            on_host(host, self.known_hosts, f"rm -f {self.serial_log}", check=False)
        self.dhcp_entry.unlink(missing_ok=True)


def ticks_of(console: str) -> list[int]:
    return [int(n) for n in re.findall(r"^KVMFLEET-TICK (\d+)\r?$", console, re.M)]


def emulated_first(testbed: dict[str, Any]) -> list[Host]:
    hosts: list[Host] = testbed["hosts"]
    return sorted(hosts, key=lambda h: h["virtualization"] != "emulated")


def test_pxe_boot_of_a_diskless_vm_prints_the_guest_marker(
    testbed: dict[str, Any], known_hosts: Path, strict_ssh: Path, tmp_path: Path
) -> None:
    host = emulated_first(testbed)[0]
    guest = PxeGuest(testbed, host, known_hosts, strict_ssh)
    try:
        started = time.monotonic()
        guest.start(tmp_path)
        ready_at = None
        text = ""
        while time.monotonic() - started < 90 and len(ticks_of(text)) < 2:
            time.sleep(1)
            text = guest.console()
            if ready_at is None and "KVMFLEET-GUEST-READY" in text:
                ready_at = time.monotonic() - started
        tail = "\n".join(text.splitlines()[-25:])
        assert ready_at is not None, f"no KVMFLEET-GUEST-READY within 90 s; console:\n{tail}"
        ready = re.search(r"^KVMFLEET-GUEST-READY hostname=(\S+) mac=(\S*)", text, re.M)
        assert ready, tail
        assert ready.group(1) == guest.name, "the guest did not get its host name from DHCP"
        assert ready.group(2) == guest.mac
        ticks = ticks_of(text)
        assert len(ticks) >= 2, f"fewer than two KVMFLEET-TICK lines; console:\n{tail}"
        assert ticks == sorted(set(ticks)) and ticks[-1] > ticks[0]
        # The address came from the testbed's DHCP range.
        ip = re.search(rf"kvmfleet\.ip=({re.escape(NET)}\.(\d+))", text)
        assert ip and 100 <= int(ip.group(2)) <= 199, "no DHCP address on the kernel command line"
        print(f"\nPXE boot on {host['name']}: marker after {ready_at:.1f} s")
    finally:
        guest.cleanup()


def test_live_migration_between_hosts_keeps_the_guest_running(
    testbed: dict[str, Any], known_hosts: Path, strict_ssh: Path, tmp_path: Path
) -> None:
    if len(testbed["hosts"]) < 2:
        pytest.skip("live migration needs two hosts (hack/testbed.sh up --hosts 2)")
    source, target = emulated_first(testbed)[:2]
    guest = PxeGuest(testbed, source, known_hosts, strict_ssh)
    guest.hosts_seen.append(target)
    try:
        guest.start(tmp_path)
        before = ticks_of(guest.wait_ticks(2, 90))
        assert len(before) >= 2, f"the guest did not boot on {source['name']}"
        migrated = time.monotonic()
        virsh(
            libvirt_uri(source, strict_ssh),
            "migrate", "--live", "--persistent", "--undefinesource", guest.name,
            libvirt_uri(target, strict_ssh), f"tcp://{target['address']}",
        )  # fmt: skip
        took = time.monotonic() - migrated
        target_uri = libvirt_uri(target, strict_ssh)
        assert virsh(target_uri, "domstate", guest.name).stdout.strip() == "running"
        job = virsh(target_uri, "domjobinfo", "--completed", guest.name).stdout
        assert "Incoming migration" in job
        deadline = time.monotonic() + 30
        after: list[int] = []
        while time.monotonic() < deadline and len(after) < 2:
            time.sleep(1)
            after = ticks_of(guest.console(target))
        console = guest.console(target)
        assert len(after) >= 2, f"the guest stopped counting on {target['name']}:\n{console}"
        # The counter went on where it was: the guest was moved, not restarted.
        assert "KVMFLEET-GUEST-READY" not in console
        assert after[0] > before[-1] and after == sorted(set(after))
        print(f"\nlive migration {source['name']} -> {target['name']}: {took:.1f} s")
    finally:
        guest.cleanup()


def test_kvm_hosts_run_guests_with_hardware_acceleration(
    testbed: dict[str, Any], known_hosts: Path, strict_ssh: Path, tmp_path: Path
) -> None:
    kvm_hosts = [h for h in testbed["hosts"] if h["virtualization"] == "kvm"]
    if not kvm_hosts:
        if not Path("/dev/kvm").exists():
            pytest.skip("this machine has no /dev/kvm (no hardware virtualization to test)")
        pytest.skip("the testbed has no KVM host (hack/testbed.sh up --kvm-hosts N adds one)")
    qemu_user = testbed["qemuUser"]
    for host in kvm_hosts:
        # /dev/kvm as udev makes it on a Debian host, and QEMU's user may open it.
        assert on_host(host, known_hosts, "stat -c '%U:%G %a' /dev/kvm").strip() == "root:kvm 660"
        opened = on_host(
            host,
            known_hosts,
            f"runuser -u {qemu_user} -- sh -c ': <>/dev/kvm' && echo usable",
            check=False,
        )
        assert opened.strip() == "usable", f"{host['name']}: {qemu_user} cannot open /dev/kvm"
        uri = libvirt_uri(host, strict_ssh)
        name = f"tb-kvm-{secrets.token_hex(3)}"
        serial_log = f"/var/log/libvirt/qemu/{name}.serial.log"
        domain = tmp_path / f"{name}.xml"
        # Firmware only (SeaBIOS, then the NIC's iPXE ROM), and no <cpu> element (QEMU's
        # default model: host-model aborts under nested KVM here): runs under KVM.
        domain.write_text(f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/><bios useserial='yes'/></os>
  <devices>
    {_nic_xml(host, known_hosts, f"52:54:00:77:fe:{secrets.randbelow(256):02x}")}
    <serial type='file'><source path='{serial_log}'/><target port='0'/></serial>
  </devices>
</domain>
""")
        try:
            virsh(uri, "create", str(domain))
            deadline = time.monotonic() + 60
            text = ""
            while "iPXE" not in text and time.monotonic() < deadline:
                time.sleep(1)
                text = on_host(host, known_hosts, f"cat {serial_log} 2>/dev/null || true")
            assert "SeaBIOS" in text and "iPXE" in text, f"no firmware output under KVM:\n{text}"
            qemu_log = on_host(host, known_hosts, f"cat /var/log/libvirt/qemu/{name}.log")
            assert "-accel kvm" in qemu_log
        finally:
            virsh(uri, "destroy", name, check=False)
            on_host(host, known_hosts, f"rm -f {serial_log}", check=False)


# ------------------------------------------------------------------ commands


def test_exec_runs_commands_inside_a_hosts_namespaces(testbed: dict[str, Any]) -> None:
    for host in testbed["hosts"]:
        assert run_testbed("exec", host["name"], "--", "hostname").stdout.strip() == host["name"]
    mn = run_testbed("exec", "kvmf-mn", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert f" {NET}.2/24 " in mn.stdout


def _holder_pids() -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in (RUN_DIR / "testbed" / "pids").glob("*.pid")}


def test_up_again_keeps_what_is_running(testbed: dict[str, Any]) -> None:
    before = _holder_pids()
    result = run_testbed("up", timeout=600)
    assert "already up" in result.stderr
    assert "starting" not in result.stderr, result.stderr
    assert _holder_pids() == before
    assert json.loads(HOSTS_JSON.read_text())["hosts"] == testbed["hosts"]


# ------------------------------------------------------------------ fault injection


def test_sshd_stop_refuses_connections_and_sshd_start_restores_them(
    testbed: dict[str, Any], known_hosts: Path
) -> None:
    host = testbed["hosts"][0]
    try:
        run_testbed("sshd-stop", host["name"])
        with pytest.raises(ConnectionRefusedError):
            tcp_connect(host["address"], host["port"])
        status = run_testbed("status", check=False)
        assert status.returncode == 1
        assert re.search(rf"^{host['name']}/sshd\s+down", status.stdout, re.M), status.stdout
    finally:
        run_testbed("sshd-start", host["name"])
    assert on_host(host, known_hosts, "hostname").strip() == host["name"]
    assert run_testbed("status", check=False).returncode == 0


def test_link_down_makes_a_host_unreachable_and_link_up_restores_it(
    testbed: dict[str, Any], known_hosts: Path
) -> None:
    host = testbed["hosts"][-1]
    try:
        run_testbed("link-down", host["name"])
        with pytest.raises(OSError):  # a timeout or "no route to host", never an answer
            tcp_connect(host["address"], host["port"], timeout=3)
        status = run_testbed("status", check=False)
        assert status.returncode == 1
        assert re.search(rf"^{host['name']}\s+down", status.stdout, re.M), status.stdout
    finally:
        run_testbed("link-up", host["name"])
    wait_for_tcp(host["address"], host["port"], 30)
    assert on_host(host, known_hosts, "hostname").strip() == host["name"]


@pytest.mark.skipif(
    not os.environ.get("KVMFLEET_TESTBED_DOWN_UP"),
    reason="stops the shared testbed; set KVMFLEET_TESTBED_DOWN_UP=1 to run it",
)
def test_down_then_up_restores_the_same_hosts(testbed: dict[str, Any]) -> None:
    run_testbed("down", timeout=600)
    assert run_testbed("status", check=False).returncode == 3
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    kvm = [str(i) for i, h in enumerate(testbed["hosts"], 1) if h["virtualization"] == "kvm"]
    shape = ["--hosts", str(len(testbed["hosts"])), "--kvm-hosts", ",".join(kvm)]
    run_testbed("up", *shape, timeout=1500)
    again = json.loads(HOSTS_JSON.read_text())
    # Identity (host keys, libvirt host UUIDs) survives down/up.
    assert again["hosts"] == testbed["hosts"]
    assert run_testbed("status", check=False).returncode == 0
