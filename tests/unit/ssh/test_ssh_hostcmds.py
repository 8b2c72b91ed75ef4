"""hostcmds: argv builders validate their inputs and build exactly one argument per value."""

from __future__ import annotations

import pytest

from kvmfleet.domain.bridges import HostNetwork, Link, plan_bridge
from kvmfleet.errors import InvalidSpecError
from kvmfleet.ssh import hostcmds
from kvmfleet.ssh.quoting import quote_argv

BAD_PATHS = [
    "relative/x",
    "../x",
    "/var/../etc",
    "/a\nb",
    "/a b",
    "/a;reboot",
    "/$(id)",
    "",
    "/a\0b",
]


def test_fixed_probes() -> None:
    assert hostcmds.cpuinfo_flags() == ["grep", "-m1", "-E", "^flags", "/proc/cpuinfo"]
    assert hostcmds.nproc() == ["nproc"]
    assert hostcmds.meminfo() == ["cat", "/proc/meminfo"]
    assert hostcmds.dev_kvm_usable() == [
        "test",
        "-c",
        "/dev/kvm",
        "-a",
        "-r",
        "/dev/kvm",
        "-a",
        "-w",
        "/dev/kvm",
    ]
    assert hostcmds.dev_kvm_device() == ["stat", "-L", "-c", "%F %t:%T", "/dev/kvm"]
    assert hostcmds.ip_links() == ["ip", "-j", "-d", "link", "show"]
    assert hostcmds.ip_addrs() == ["ip", "-j", "addr", "show"]
    assert hostcmds.ip_routes() == ["ip", "-j", "route", "show"]
    assert hostcmds.ip_batch() == ["ip", "-batch", "-"]
    assert hostcmds.virsh_version()[-1] == "version"


def test_builders_return_fresh_lists() -> None:
    first = hostcmds.nproc()
    first.append("--all")
    assert hostcmds.nproc() == ["nproc"]


def test_paths_are_normalized_and_end_options() -> None:
    assert hostcmds.mkdir_p("/var/lib//kvmfleet/./pools/") == [
        "mkdir",
        "-p",
        "--",
        "/var/lib/kvmfleet/pools",
    ]
    assert hostcmds.rm_file("/var/lib/x.qcow2") == ["rm", "-f", "--", "/var/lib/x.qcow2"]
    assert hostcmds.test_block_device("/dev/sdb") == ["test", "-b", "/dev/sdb"]
    assert hostcmds.test_exists("/srv") == ["test", "-e", "/srv"]


@pytest.mark.parametrize("path", BAD_PATHS)
@pytest.mark.parametrize(
    "builder",
    [hostcmds.mkdir_p, hostcmds.rm_file, hostcmds.test_block_device, hostcmds.qemu_img_info],
)
def test_unsafe_paths_are_refused(builder, path: str) -> None:
    with pytest.raises(InvalidSpecError):
        builder(path)


def test_rm_refuses_the_root() -> None:
    with pytest.raises(InvalidSpecError):
        hostcmds.rm_file("//")


def test_qemu_img_create() -> None:
    assert hostcmds.qemu_img_create("/var/lib/vm.hda.qcow2", 20 * 2**30) == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "/var/lib/vm.hda.qcow2",
        str(20 * 2**30),
    ]
    assert hostcmds.qemu_img_create(
        "nfs://10.77.0.2/srv/vms/vm.hda.qcow2", None, backing="nfs://10.77.0.2/srv/vms/m.qcow2"
    ) == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "nfs://10.77.0.2/srv/vms/m.qcow2",
        "nfs://10.77.0.2/srv/vms/vm.hda.qcow2",
    ]
    assert hostcmds.qemu_img_create("/x.raw", 1024, fmt="raw")[4] == "raw"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("/x.qcow2", 0), {}),
        (("/x.qcow2", -1), {}),
        (("/x.qcow2", True), {}),
        (("/x.qcow2", "10G"), {}),
        (("/x.qcow2", None), {}),
        (("/x.qcow2", 1), {"fmt": "vmdk"}),
        (("/x.qcow2", 1), {"fmt": "qcow2;reboot"}),
        (("/x.raw", None), {"fmt": "raw", "backing": "/m.qcow2"}),
        (("/x.qcow2", None), {"backing": "../m.qcow2"}),
        (("nfs://10.0.0.1/srv/../etc/x", 1), {}),
        (("nfs://bad host/srv/x", 1), {}),
        (("nfs://10.0.0.1", 1), {}),
        (("-o/x", 1), {}),
    ],
)
def test_qemu_img_create_refuses(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidSpecError):
        hostcmds.qemu_img_create(*args, **kwargs)  # type: ignore[arg-type]


def test_other_qemu_img_commands() -> None:
    assert hostcmds.qemu_img_info("/v/x.qcow2") == [
        "qemu-img",
        "info",
        "--output=json",
        "-U",
        "-f",
        "qcow2",
        "/v/x.qcow2",
    ]
    assert hostcmds.qemu_img_info("/v/x.raw", fmt="raw")[5] == "raw"
    assert "--backing-chain" in hostcmds.qemu_img_info("/v/x.qcow2", backing_chain=True)
    assert hostcmds.qemu_img_resize("/v/x.qcow2", 2**31) == [
        "qemu-img",
        "resize",
        "-q",
        "-f",
        "qcow2",
        "/v/x.qcow2",
        str(2**31),
    ]
    assert hostcmds.qemu_img_convert("/v/a.qcow2", "/v/b.qcow2")[-2:] == [
        "/v/a.qcow2",
        "/v/b.qcow2",
    ]
    assert hostcmds.qemu_img_rebase("/v/a.qcow2", "/v/m.qcow2", unsafe=True) == [
        "qemu-img",
        "rebase",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-F",
        "qcow2",
        "-b",
        "/v/m.qcow2",
        "/v/a.qcow2",
    ]


def test_ip_batch_input_from_words_and_lines() -> None:
    data = hostcmds.ip_batch_input(
        [
            ["link", "add", "name", "br0", "type", "bridge"],
            "addr add 10.0.0.5/24 dev br0",
            "route replace default via 10.0.0.1 dev br0",
        ]
    )
    assert data == (
        b"link add name br0 type bridge\n"
        b"addr add 10.0.0.5/24 dev br0\n"
        b"route replace default via 10.0.0.1 dev br0\n"
    )


def test_ip_batch_input_takes_the_bridge_planners_lines() -> None:
    net = HostNetwork(links={"eth0": Link("eth0", up=True)})
    plan = plan_bridge(net, "br0", "eth0")
    assert plan.commands
    assert hostcmds.ip_batch_input(plan.commands).decode().splitlines() == plan.commands


@pytest.mark.parametrize(
    "commands",
    [
        [],
        "link add br0",
        [["link", "add", "br0;reboot"]],
        ["link add br0\nlink del eth0"],
        ["link  add br0"],
        ["link add br0 # comment"],
        [["link", "add", '"br0"']],
        [["link", "add", "br 0"]],
        [["netns", "exec", "x", "sh"]],
        [["-force", "link"]],
        [[]],
        [""],
    ],
)
def test_ip_batch_input_refuses(commands: object) -> None:
    with pytest.raises(ValueError):
        hostcmds.ip_batch_input(commands)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["br0;reboot", "../x", "..", "br\n0", "-br", "a" * 16, "br 0", "$(id)", "", None]
)
def test_interface_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidSpecError):
        hostcmds.ip_link(name)  # type: ignore[arg-type]


def test_interface_name() -> None:
    assert hostcmds.ip_link("br0") == ["ip", "-j", "-d", "link", "show", "dev", "br0"]


def test_every_builder_output_quotes_cleanly() -> None:
    for argv in (
        hostcmds.cpuinfo_flags(),
        hostcmds.dev_kvm_device(),
        hostcmds.qemu_img_create("/v/a b.qcow2".replace(" ", "_"), 1),
    ):
        assert quote_argv(argv)


def _run_locally(argv: list[str]) -> tuple[int, str]:
    """The argv as the host's shell gets it (quoted once), run here."""
    import subprocess

    done = subprocess.run(
        ["sh", "-c", quote_argv(argv)], capture_output=True, text=True, timeout=30, check=False
    )
    return done.returncode, done.stderr


def test_tcp_connect_tells_a_listener_and_a_refusal_from_silence() -> None:
    """The migration-port pre-flight's command, run for real against local ports."""
    import socket

    from kvmfleet.ssh import facts

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        reach = facts.parse_tcp_connect(*_run_locally(hostcmds.tcp_connect("127.0.0.1", port)))
        assert reach.answered and reach.listening
    # Closed now: the address answers with a refusal, nothing listens.
    reach = facts.parse_tcp_connect(*_run_locally(hostcmds.tcp_connect("127.0.0.1", port)))
    assert reach.answered and not reach.listening and reach.detail == "connection refused"
    argv = hostcmds.tcp_connect("10.77.0.12", 49152)
    assert argv[:2] == ["timeout", str(hostcmds.TCP_CHECK_SECONDS)]
    assert argv[-2:] == ["10.77.0.12", "49152"]  # arguments of the script, not part of it


@pytest.mark.parametrize(
    ("address", "port"),
    [
        ("10.0.0.1;reboot", 49152),
        ("$(id)", 49152),
        ("10.0.0.1/x", 49152),
        ("-e", 49152),
        ("10.0.0.1", 0),
        ("10.0.0.1", 65536),
        ("10.0.0.1", True),
        ("10.0.0.1", "22"),
    ],
)
def test_tcp_connect_refuses_what_is_not_an_address_and_a_port(address: str, port: int) -> None:
    with pytest.raises(InvalidSpecError):
        hostcmds.tcp_connect(address, port)
