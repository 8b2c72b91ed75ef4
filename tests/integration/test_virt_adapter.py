"""The libvirt adapter against the real hypervisor testbed (hack/testbed.sh).

Connections go through kvmfleet.virt only (qemu+ssh with the host key pinned, and
qemu+libssh); what happened on a host is checked independently with ``hack/testbed.sh
exec``. The testbed comes from the session fixture ``testbed``
(tests/integration/conftest.py): brought up when it is not; when that fails the tests FAIL,
unless ``KVMFLEET_NO_TESTBED=1`` is set: then they are skipped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kvmfleet.errors import NotFoundError, PermanentError
from kvmfleet.virt.connection import LibvirtConnection, LibvirtPool, open_connection
from kvmfleet.virt.errors import LibvirtHostKeyError, OperationInvalidError
from kvmfleet.virt.guest import Guests, PowerState
from kvmfleet.virt.host import Host, NfsMountUnsupportedError
from kvmfleet.virt.stats import all_domain_stats
from support.testbed import current_virtualization, libvirt_target, on_host, other_host

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]

TestbedHost = dict[str, Any]
XMLNS = "https://kvmfleet.io/xmlns/domain/1.0"


@pytest.fixture(scope="module")
def hosts(testbed: dict[str, Any]) -> list[TestbedHost]:
    """The testbed's hosts (every test here goes through this fixture)."""
    assert len(testbed["hosts"]) >= 2, "the libvirt adapter tests need two hosts"
    return list(testbed["hosts"])


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture(scope="module")
def pool() -> Iterator[LibvirtPool]:
    libvirt_pool = LibvirtPool()
    yield libvirt_pool
    libvirt_pool.close_all()


def test_facts_of_each_host_with_the_key_pinned(
    hosts: list[TestbedHost], runtime_dir: Path
) -> None:
    for host in hosts:
        with open_connection(libvirt_target(host), runtime_dir=runtime_dir) as connection:
            assert connection.is_alive()
            facts = Host(connection).facts()
        assert facts.hostname == host["name"]
        assert facts.arch == "x86_64"
        assert facts.cpus > 0 and facts.memory_mib > 0
        assert facts.libvirt_version.startswith("9.0."), facts.libvirt_version
        assert facts.qemu_version.startswith("7.2."), facts.qemu_version
        assert facts.virtualization == current_virtualization(host)
        if host.get("hostUUID"):
            assert facts.host_uuid == host["hostUUID"]
    assert list(runtime_dir.iterdir()) == []  # every private directory is gone


@pytest.mark.parametrize("scheme", ["qemu+ssh", "qemu+libssh2", "qemu+libssh"])
def test_a_wrong_host_key_is_refused(
    hosts: list[TestbedHost], runtime_dir: Path, scheme: str
) -> None:
    host = hosts[0]
    wrong = other_host(hosts, host)["hostKey"]  # a real key, of another host
    uri = f"{scheme}://{host['user']}@{host['address']}:{host['port']}/system"
    with pytest.raises(LibvirtHostKeyError) as caught:
        open_connection(libvirt_target(host, host_key=wrong, uri=uri), runtime_dir=runtime_dir)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "HostKeyMismatch"
    assert list(runtime_dir.iterdir()) == []
    # The right key on the same transport connects: the refusal above is the key's.
    # (Only a small call: Debian's libvirt 9.0 libssh transport stalls ~30 s on every
    # reply above a few KB, e.g. the capabilities; see docs/security.md.)
    with open_connection(libvirt_target(host, uri=uri), runtime_dir=runtime_dir) as connection:
        assert connection.conn.getHostname() == host["name"]


def test_the_pool_reuses_and_reopens(hosts: list[TestbedHost], pool: LibvirtPool) -> None:
    host = hosts[0]
    first = pool.connection(libvirt_target(host))
    assert pool.connection(libvirt_target(host)) is first
    first.conn.close()  # the connection dies under the pool
    second = pool.connection(libvirt_target(host))
    assert second is not first and second.is_alive()
    assert Host(second).facts().hostname == host["name"]


def test_dir_pool_is_idempotent(hosts: list[TestbedHost], pool: LibvirtPool) -> None:
    host = hosts[1]
    name = f"kvmfleet-test-{uuid.uuid4().hex[:8]}"
    path = f"/var/lib/kvmfleet/test-pools/{name}"
    libvirt_host = Host(pool.connection(libvirt_target(host)))
    try:
        first = libvirt_host.ensure_dir_pool(name, path)
        second = libvirt_host.ensure_dir_pool(name, path)
        assert first.path == second.path == path
        assert second.active and second.capacity_bytes > 0
        assert 0 < second.available_bytes <= second.capacity_bytes
        assert on_host(host["name"], "test", "-d", path, check=False).returncode == 0
        summary = next(p for p in libvirt_host.list_pools() if p.name == name)
        assert (summary.type, summary.active, summary.autostart) == ("dir", True, True)
        libvirt_host.refresh_pool(name)
        assert libvirt_host.pool_info(name).path == path
    finally:
        assert libvirt_host.delete_pool(name) in (True, False)
    assert libvirt_host.delete_pool(name) is False
    assert name not in {p.name for p in libvirt_host.list_pools()}
    assert on_host(host["name"], "test", "-d", path, check=False).returncode == 0  # the data stays
    on_host(host["name"], "rmdir", path, check=False)


def test_netfs_pool_reports_whether_the_host_can_mount_nfs(
    testbed: dict[str, Any], hosts: list[TestbedHost], pool: LibvirtPool
) -> None:
    host = hosts[0]
    nfs = testbed["nfs"]
    name = f"kvmfleet-test-nfs-{uuid.uuid4().hex[:8]}"
    libvirt_host = Host(pool.connection(libvirt_target(host)))
    try:
        info = libvirt_host.ensure_netfs_pool(
            name, nfs["server"], nfs["export"], f"/var/lib/kvmfleet/test-pools/{name}"
        )
    except NfsMountUnsupportedError as error:
        # The testbed's kernel has no NFS client: the error says so and what to do.
        assert error.reason == "NFSMountUnsupported"
        assert "cannot mount NFS" in error.message and "nfsAccess: Direct" in error.message
    else:  # a host with an NFS client mounts it
        assert info.active
    finally:
        libvirt_host.delete_pool(name)
    assert name not in {p.name for p in libvirt_host.list_pools()}


def tiny_domain(name: str, uid: str) -> str:
    """A diskless 64 MiB TCG guest: it sits in its firmware, which is all we need."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <metadata>
    <kvmfleet:node xmlns:kvmfleet="{XMLNS}" uid="{uid}" namespace="it" name="{name}"/>
  </metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='initial'/>
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>"""


@pytest.fixture(params=["first", "second"])
def libvirt_host(
    request: pytest.FixtureRequest, hosts: list[TestbedHost], pool: LibvirtPool
) -> LibvirtConnection:
    host = hosts[0] if request.param == "first" else hosts[1]
    return pool.connection(libvirt_target(host))


def test_domain_lifecycle(libvirt_host: LibvirtConnection) -> None:
    guests, host = Guests(libvirt_host), Host(libvirt_host)
    name = f"kvmfleet-test-{uuid.uuid4().hex[:8]}"
    uid = str(uuid.uuid4())
    try:
        domain_uuid = guests.define(tiny_domain(name, uid))
        listed = {d.name: d for d in host.list_domains()}
        assert listed[name].uuid == domain_uuid
        assert (listed[name].state, listed[name].uid) == (PowerState.OFF, uid)

        assert guests.start(name) is True
        assert guests.start(name) is False
        assert guests.state(name) is PowerState.ON
        assert {d.name: d for d in host.list_domains()}[name].state is PowerState.ON
        assert (guests.serial_pty(name) or "").startswith("/dev/pts/")
        assert guests.info(name).vnc_port is not None
        until = datetime.now(UTC) + timedelta(minutes=30)
        assert guests.set_vnc_password(name, "s3cret-1", until) is True
        assert "s3cret" not in guests.xml(name)  # secrets stay out of the normal XML
        guests.reset(name)

        assert guests.destroy(name) is True
        assert guests.destroy(name) is False  # already off: success
        assert guests.shutdown(name) is False
        assert guests.state(name) is PowerState.OFF
        with pytest.raises(OperationInvalidError):
            guests.reboot(name)

        assert guests.undefine(name) is True
        assert guests.undefine(name) is False  # already gone: success
        assert name not in {d.name for d in host.list_domains()}
        with pytest.raises(NotFoundError):
            guests.state(name)
    finally:
        if guests.exists(name):
            guests.destroy(name)
            guests.undefine(name)


def test_bulk_domain_statistics_of_a_running_guest(
    hosts: list[TestbedHost], pool: LibvirtPool
) -> None:
    """One getAllDomainStats call returns the running guest's CPU time (growing), its
    memory, and for a defined guest that is off only its state (the host's inventory)."""
    connection = pool.connection(libvirt_target(hosts[0]))
    guests = Guests(connection)
    name = f"kvmfleet-test-{uuid.uuid4().hex[:8]}"
    off = f"kvmfleet-test-{uuid.uuid4().hex[:8]}"
    try:
        guests.define(tiny_domain(name, str(uuid.uuid4())))
        guests.define(tiny_domain(off, str(uuid.uuid4())))
        guests.start(name)
        read = all_domain_stats(connection)
        first = {d.name: d for d in read.active}
        assert off not in first
        assert read.states[off] == (guests.lookup(off).uuid, PowerState.OFF)
        assert read.states[name] == (guests.lookup(name).uuid, PowerState.ON)
        stats = first[name]
        assert stats.cpu_seconds is not None and stats.cpu_seconds > 0
        assert stats.memory_domain_bytes == 64 * 1024**2
        assert stats.memory_resident_bytes and stats.memory_resident_bytes > 0
        deadline = time.monotonic() + 30
        while True:
            again = {d.name: d for d in all_domain_stats(connection).active}[name]
            assert again.cpu_seconds is not None
            if again.cpu_seconds > stats.cpu_seconds:
                break
            assert time.monotonic() < deadline, "the guest's CPU time did not grow"
            time.sleep(1)
    finally:
        for domain in (name, off):
            if guests.exists(domain):
                guests.destroy(domain)
                guests.undefine(domain)
