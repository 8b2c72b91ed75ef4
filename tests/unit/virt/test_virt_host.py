"""Host: facts, domains and storage pools on libvirt's test driver."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest
from virt_testdriver import domain_xml

from kvmfleet.domain.cpugroup import host_cpu_xml, parse_baseline
from kvmfleet.domain.guestcpu import HostCpuModel
from kvmfleet.errors import InvalidSpecError, NotFoundError, PermanentError
from kvmfleet.virt.guest import PowerState
from kvmfleet.virt.host import (
    Host,
    NfsMountUnsupportedError,
    dir_pool_xml,
    format_version,
    host_cpu_model,
    kvm_in_capabilities,
    netfs_pool_xml,
)


def test_format_version() -> None:
    assert format_version(9_000_000) == "9.0.0"
    assert format_version(7_002_022) == "7.2.22"


def test_facts(connection) -> None:
    facts = Host(connection).facts()
    assert (facts.cpus, facts.memory_mib, facts.libvirt_version) == (
        4,
        4096,
        format_version(libvirt.getVersion()),
    )
    assert facts.hostname
    assert facts.kvm_domain_supported is False and facts.virtualization == "emulated"


CAPABILITIES = """<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
<guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch></guest>
<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/>{kvm}</arch></guest>
</capabilities>"""


@pytest.mark.parametrize(("kvm", "expected"), [("<domain type='kvm'/>", True), ("", False)])
def test_kvm_in_capabilities(kvm: str, expected: bool) -> None:
    assert kvm_in_capabilities(ET.fromstring(CAPABILITIES.format(kvm=kvm)), "x86_64") is expected


def test_list_domains_with_owner_and_state(connection) -> None:
    conn = connection.conn
    conn.defineXML(domain_xml("b-ours")).create()
    conn.defineXML(domain_xml("a-foreign", owned=False))
    domains = Host(connection).list_domains()
    assert [(d.name, d.state) for d in domains] == [
        ("a-foreign", PowerState.OFF),
        ("b-ours", PowerState.ON),
    ]
    assert domains[0].uid is None
    assert domains[1].uid == "0b0c1d2e-1111-2222-3333-444455556666"
    assert domains[1].owner is not None and domains[1].owner.serial_speed == 115200


def test_dir_pool_is_idempotent(connection) -> None:
    host = Host(connection)
    first = host.ensure_dir_pool("kvmfleet-abc", "/var/lib/kvmfleet//images/")
    second = host.ensure_dir_pool("kvmfleet-abc", "/var/lib/kvmfleet/images")
    assert first.path == second.path == "/var/lib/kvmfleet/images"
    assert second.active and second.capacity_bytes > 0
    assert second.available_bytes <= second.capacity_bytes
    [summary] = host.list_pools()
    assert (summary.name, summary.type, summary.active, summary.autostart) == (
        "kvmfleet-abc",
        "dir",
        True,
        True,
    )
    host.refresh_pool("kvmfleet-abc")


def test_an_inactive_pool_is_started_again(connection) -> None:
    host = Host(connection)
    host.ensure_dir_pool("p", "/srv/p")
    connection.conn.storagePoolLookupByName("p").destroy()
    assert host.pool_info("p").active is False and host.pool_info("p").capacity_bytes == 0
    assert host.ensure_dir_pool("p", "/srv/p").active


def test_a_pool_with_another_path_is_a_conflict(connection) -> None:
    host = Host(connection)
    host.ensure_dir_pool("p", "/srv/p")
    with pytest.raises(PermanentError, match="another layout") as caught:
        host.ensure_dir_pool("p", "/srv/other")
    assert caught.value.reason == "StoragePoolConflict"


def test_delete_pool_twice(connection) -> None:
    host = Host(connection)
    host.ensure_dir_pool("p", "/srv/p")
    assert host.delete_pool("p") is True
    assert host.delete_pool("p") is False
    assert host.list_pools() == []
    with pytest.raises(NotFoundError):
        host.pool_info("p")


def test_netfs_pool_on_a_driver_that_can_mount(connection) -> None:
    info = Host(connection).ensure_netfs_pool(
        "nfs1", "10.77.0.2", "/srv/vms", "/var/lib/kvmfleet/pools/x"
    )
    assert info.path == "/var/lib/kvmfleet/pools/x" and info.active


class _Pool:
    """A pool whose start fails like libvirt's netfs backend on a host without NFS."""

    def __init__(self, message: str) -> None:
        self.message = message

    def XMLDesc(self, flags: int) -> str:
        return netfs_pool_xml("nfs1", "10.77.0.2", "/srv/vms", "/mnt/x")

    def isActive(self) -> int:
        return 0

    def autostart(self) -> int:
        return 0

    def build(self, flags: int) -> int:
        return 0

    def create(self, flags: int) -> int:
        error = libvirt.libvirtError(self.message)
        error.err = (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_STORAGE,
            self.message,
            2,
            None,
            None,
            None,
            0,
            0,
        )
        raise error


NO_NFS = (
    "internal error: Child process (/bin/mount -o nodev,nosuid,noexec -t nfs 10.77.0.2:/srv/vms "
    "/var/lib/kvmfleet/pools/probe) unexpected exit status 32: mount.nfs: No such device"
)


@pytest.mark.parametrize(
    "message",
    [
        NO_NFS,
        "mount: /mnt/x: unknown filesystem type 'nfs'.",
        "mount: /mnt/x: bad option; for several filesystems (e.g. nfs, cifs) you might need a "
        "/sbin/mount.<type> helper program.",
    ],
)
def test_a_host_without_nfs_gets_a_clear_permanent_error(
    connection, monkeypatch, message: str
) -> None:
    host = Host(connection)
    monkeypatch.setattr(host, "_pool_or_none", lambda name: _Pool(message))
    with pytest.raises(NfsMountUnsupportedError) as caught:
        host.ensure_netfs_pool("nfs1", "10.77.0.2", "/srv/vms", "/mnt/x")
    error = caught.value
    assert isinstance(error, PermanentError)
    assert error.reason == "NFSMountUnsupported"
    assert "cannot mount NFS" in error.message and "nfsAccess: Direct" in error.message
    assert message.split(":", maxsplit=1)[0] in error.message


def test_other_netfs_start_failures_keep_their_classification(connection, monkeypatch) -> None:
    host = Host(connection)
    monkeypatch.setattr(host, "_pool_or_none", lambda name: _Pool("Connection timed out"))
    with pytest.raises(Exception) as caught:
        host.ensure_netfs_pool("nfs1", "10.77.0.2", "/srv/vms", "/mnt/x")
    assert not isinstance(caught.value, NfsMountUnsupportedError)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("p;reboot", "/srv/p"),
        ("../p", "/srv/p"),
        ("p", "srv/p"),
        ("p", "/srv/../etc"),
        ("p\n", "/srv/p"),
        ("p", "/srv/p q"),
    ],
)
def test_pool_inputs_are_validated(connection, name: str, path: str) -> None:
    with pytest.raises(InvalidSpecError):
        Host(connection).ensure_dir_pool(name, path)
    assert connection.conn.listAllStoragePools() == []


def test_pool_xml_is_escaped() -> None:
    xml = dir_pool_xml("a&b", "/x")
    assert "<name>a&amp;b</name>" in xml


# --- migration groups: libvirt's own CPU driver computes the baseline ---------------------

SKYLAKE = HostCpuModel("x86_64", "Skylake-Client", "Intel", ("vmx", "avx512f"))
HASWELL = HostCpuModel("x86_64", "Haswell", "Intel", ("vmx",))


def test_baseline_of_two_hosts_is_the_older_model_with_their_common_features(
    connection,
) -> None:
    xml = Host(connection).baseline_cpu([host_cpu_xml(SKYLAKE), host_cpu_xml(HASWELL)])
    choice = parse_baseline(xml)
    assert choice.model == "Haswell" and "+vmx" in choice.features
    assert "+avx512f" not in choice.features


def test_baseline_over_cpus_of_two_vendors_is_a_permanent_error(connection) -> None:
    epyc = HostCpuModel("x86_64", "EPYC", "AMD", ())
    with pytest.raises(PermanentError, match="vendors do not match"):
        Host(connection).baseline_cpu([host_cpu_xml(SKYLAKE), host_cpu_xml(epyc)])


def test_the_host_cpu_is_read_from_the_capabilities() -> None:
    caps = ET.fromstring(
        "<capabilities><host><cpu><arch>x86_64</arch><model>kvm64</model><vendor>AMD</vendor>"
        "<microcode version='1'/><feature name='vme'/><feature name='sse4.1'/>"
        "<pages unit='KiB' size='4'/></cpu></host></capabilities>"
    )
    assert host_cpu_model(caps.find("host/cpu")) == HostCpuModel(
        "x86_64", "kvm64", "AMD", ("vme", "sse4.1")
    )
    assert host_cpu_model(ET.fromstring("<cpu><arch>i686</arch></cpu>")) is None
