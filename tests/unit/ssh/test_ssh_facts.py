"""facts: parsers of the hostcmds' output, on outputs captured from real hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmfleet.ssh import facts
from kvmfleet.ssh.facts import UnexpectedOutputError

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_cpu_flags() -> None:
    flags = facts.parse_cpu_flags(sample("flags.txt"))
    assert {"fpu", "sse2", "lm"} <= flags
    assert facts.hardware_virtualization(flags) is None
    assert facts.hardware_virtualization(facts.parse_cpu_flags("flags\t\t: fpu vmx lm\n")) == "vmx"
    assert facts.hardware_virtualization(facts.parse_cpu_flags("flags : svm sse")) == "svm"
    with pytest.raises(UnexpectedOutputError):
        facts.parse_cpu_flags("")


def test_meminfo() -> None:
    info = facts.parse_meminfo(sample("meminfo.txt"))
    assert info.total_mib == 24684092 // 1024
    assert info.available_mib == 23698604 // 1024
    old_kernel = facts.parse_meminfo("MemTotal: 2048000 kB\nMemFree: 1024000 kB\n")
    assert (old_kernel.total_mib, old_kernel.available_mib) == (2000, None)
    with pytest.raises(UnexpectedOutputError):
        facts.parse_meminfo("nothing here")


def test_nproc() -> None:
    assert facts.parse_nproc("2\n") == 2
    for bad in ("", "two", "0"):
        with pytest.raises(UnexpectedOutputError):
            facts.parse_nproc(bad)


@pytest.mark.parametrize(
    ("output", "usable"),
    [
        ("character special file a:e8\n", True),
        ("character special file 1:3\n", False),  # /dev/null bound over /dev/kvm
        ("regular empty file 0:0", False),
        ("", False),
    ],
)
def test_dev_kvm_device(output: str, usable: bool) -> None:
    assert facts.parse_dev_kvm_device(output) is usable


def test_virsh_version() -> None:
    version = facts.parse_virsh_version(sample("virsh_version.txt"))
    assert version == facts.VirshVersion("9.0.0", "QEMU", "7.2.22")
    with pytest.raises(UnexpectedOutputError):
        facts.parse_virsh_version("error: failed to connect")


def test_hostname() -> None:
    assert facts.parse_hostname("kvmhost1\n") == "kvmhost1"
    with pytest.raises(UnexpectedOutputError):
        facts.parse_hostname("\n")


def test_links_of_a_plain_host() -> None:
    links = facts.parse_ip_links(sample("links.json"))
    assert [link.name for link in links] == ["lo", "eth0"]
    eth0 = facts.find_link(links, "eth0")
    assert eth0 is not None
    assert (eth0.mac, eth0.mtu, eth0.kind, eth0.master) == ("02:77:00:00:00:0b", 1500, "veth", None)
    assert eth0.is_up and eth0.has_carrier and not eth0.is_bridge
    assert facts.find_link(links, "lo").is_loopback  # type: ignore[union-attr]


def test_links_of_a_bridged_host() -> None:
    links = facts.parse_ip_links(sample("br_links.json"))
    br0, eth0 = facts.find_link(links, "br0"), facts.find_link(links, "eth0")
    assert br0 is not None and eth0 is not None
    assert br0.is_bridge and br0.is_up
    assert (eth0.master, eth0.port_kind) == ("br0", "bridge")
    assert facts.bridge_ports(links, "br0") == ["eth0"]
    assert br0.mac == eth0.mac


def test_addresses() -> None:
    plain = facts.parse_ip_addrs(sample("addrs.json"))
    assert [a.cidr for a in plain["eth0"]] == ["10.77.0.11/24"]
    assert facts.link_with_address(plain, "10.77.0.11") == "eth0"
    assert facts.link_with_address(plain, "10.9.9.9") is None
    bridged = facts.parse_ip_addrs(sample("br_addrs.json"))
    assert [a.cidr for a in facts.global_addresses(bridged["br0"])] == [
        "10.99.0.5/24",
        "fd00::5/64",
    ]
    assert facts.global_addresses(bridged["eth0"]) == []
    assert facts.link_with_address(bridged, "10.99.0.5") == "br0"


def test_routes() -> None:
    route = facts.default_route(facts.parse_ip_routes(sample("routes.json")))
    assert route is not None
    assert (route.gateway, route.dev) == ("10.77.0.1", "eth0")
    bridged = facts.default_route(facts.parse_ip_routes(sample("br_routes.json")))
    assert bridged is not None and bridged.dev == "br0"
    assert facts.default_route(facts.parse_ip_routes("[]")) is None
    two = (
        '[{"dst":"default","gateway":"10.0.0.2","dev":"a","metric":200},'
        '{"dst":"default","gateway":"10.0.0.1","dev":"b","metric":100}]'
    )
    assert facts.default_route(facts.parse_ip_routes(two)).dev == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "parser", [facts.parse_ip_links, facts.parse_ip_addrs, facts.parse_ip_routes]
)
@pytest.mark.parametrize("bad", ["", 'Object "j" is unknown', "{}", "[1, 2]", '[{"x": 1}]'])
def test_network_parsers_refuse_garbage(parser, bad: str) -> None:
    with pytest.raises(UnexpectedOutputError):
        parser(bad)


def test_qemu_img_info() -> None:
    info = facts.parse_qemu_img_info(sample("qemu_img_info.json"))
    assert (info.format, info.virtual_size) == ("qcow2", 2**30)
    assert info.backing_filename == "/tmp/samples/base.qcow2"
    assert info.backing_format == "qcow2"
    chain = facts.parse_qemu_img_chain(sample("qemu_img_chain.json"))
    assert [item.backing_filename for item in chain] == ["/tmp/samples/base.qcow2", None]
    with pytest.raises(UnexpectedOutputError):
        facts.parse_qemu_img_info('{"format": "qcow2"}')


@pytest.mark.parametrize(
    ("status", "stderr", "answered", "detail"),
    [
        (0, "", True, "connected"),
        (
            1,
            "tcp-check: connect: Connection refused\n"
            "tcp-check: line 1: /dev/tcp/10.77.0.12/49152: Connection refused\n",
            True,
            "connection refused",
        ),
        (124, "", False, "no answer within the deadline"),
        (
            1,
            "tcp-check: connect: No route to host\n"
            "tcp-check: line 1: /dev/tcp/10.77.0.12/49152: No route to host\n",
            False,
            "No route to host",
        ),
        (1, "", False, "exit status 1"),
    ],
)
def test_tcp_connect_result(status: int, stderr: str, answered: bool, detail: str) -> None:
    reach = facts.parse_tcp_connect(status, stderr)
    assert (reach.answered, reach.detail) == (answered, detail)
