"""The SSH adapter against the real hypervisor testbed (hack/testbed.sh).

Each test talks to the hosts of ``.run/testbed/hosts.json`` through kvmfleet.ssh only;
what happened on a host is checked independently with ``hack/testbed.sh exec``. The
testbed comes from the session fixture ``testbed`` (tests/integration/conftest.py): brought
up when it is not; when that fails the tests FAIL, unless ``KVMFLEET_NO_TESTBED=1`` is set:
then they are skipped.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmfleet.errors import PermanentError, TemporaryError
from kvmfleet.ssh import facts, hostcmds
from kvmfleet.ssh.errors import (
    AuthenticationError,
    CommandError,
    CommandTimeoutError,
    HostKeyMismatchError,
    HostKeyUnknownError,
    HostUnreachableError,
)
from kvmfleet.ssh.hostkeys import HostKeyCheck, fingerprint
from kvmfleet.ssh.session import SshCredentials, SshOptions, SshPool, SshSession, SshTarget
from support.testbed import current_virtualization, on_host, other_host, run_testbed

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]

Host = dict[str, Any]
OPTIONS = SshOptions(connect_timeout=5, banner_timeout=10, auth_timeout=10)


def exists_on(host: Host, path: str) -> bool:
    """Whether ``path`` exists on the host, asked through the testbed (not through SSH)."""
    result = on_host(host["name"], "test", "-e", path, check=False)
    assert result.returncode in (0, 1), f"testbed exec failed: {result.stderr}"
    return result.returncode == 0


@pytest.fixture(scope="module")
def hosts(testbed: dict[str, Any]) -> list[Host]:
    """The testbed's hosts (every test here goes through this fixture)."""
    assert len(testbed["hosts"]) >= 2, "the SSH adapter tests need two hosts"
    return list(testbed["hosts"])


@pytest.fixture(scope="module")
def credentials(hosts: list[Host]) -> SshCredentials:
    return SshCredentials(Path(hosts[0]["privateKeyPath"]).read_bytes())


def target(host: Host) -> SshTarget:
    return SshTarget(host["address"], host["port"], host["user"])


def strict(host: Host) -> HostKeyCheck:
    return HostKeyCheck.strict(host["hostKey"])


@pytest.fixture
def session(hosts: list[Host], credentials: SshCredentials) -> Iterator[SshSession]:
    with SshSession(target(hosts[0]), credentials, strict(hosts[0]), OPTIONS) as s:
        yield s


def test_hostname_on_each_host(hosts: list[Host], credentials: SshCredentials) -> None:
    for host in hosts:
        with SshSession(target(host), credentials, strict(host), OPTIONS) as s:
            result = s.run(hostcmds.hostname(), timeout=30)
            assert facts.parse_hostname(result.stdout) == host["name"]
            assert s.host_key == " ".join(host["hostKey"].split()[:2])
            assert s.fingerprint == fingerprint(host["hostKey"])


def test_metacharacters_reach_the_host_literally(hosts: list[Host], session: SshSession) -> None:
    host = hosts[0]
    marker = f"/tmp/pwned-{uuid.uuid4().hex}"
    assert not exists_on(host, marker)
    for literal in (
        f"a;touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"x && touch {marker} || touch {marker}",
        f"x\ntouch {marker}",
        f"x | touch {marker} > {marker}",
    ):
        assert session.run(["echo", literal], timeout=30).stdout == literal + "\n"
    result = session.run(["printf", "%s|", "two words", "..", "'q'", '"d"', "*"], timeout=30)
    assert result.stdout == "two words|..|'q'|\"d\"|*|"
    assert not exists_on(host, marker)


def test_a_wrong_host_key_executes_nothing(hosts: list[Host], credentials: SshCredentials) -> None:
    host = hosts[0]
    wrong = other_host(hosts, host)["hostKey"]  # a real key, of another host
    marker = f"/tmp/marker-{uuid.uuid4().hex}"
    wrong_check = HostKeyCheck.strict(wrong)
    with (
        pytest.raises(HostKeyMismatchError) as caught,
        SshSession(target(host), credentials, wrong_check, OPTIONS) as s,
    ):
        s.run(["touch", marker], timeout=30)
    error = caught.value
    assert isinstance(error, PermanentError) and error.reason == "HostKeyMismatch"
    assert error.expected_fingerprint == fingerprint(wrong)
    assert error.seen_fingerprint == fingerprint(host["hostKey"])
    assert fingerprint(wrong) in error.message and fingerprint(host["hostKey"]) in error.message
    assert not exists_on(host, marker)
    # The same command with the right key does run: the check above is meaningful.
    with SshSession(target(host), credentials, strict(host), OPTIONS) as s:
        s.run(["touch", marker], timeout=30)
        assert exists_on(host, marker)
        s.run(hostcmds.rm_file(marker), timeout=30)
    assert not exists_on(host, marker)


def test_strict_without_a_host_key_does_not_connect(
    hosts: list[Host], credentials: SshCredentials
) -> None:
    with pytest.raises(HostKeyUnknownError) as caught:
        SshSession(target(hosts[0]), credentials, HostKeyCheck.strict(None), OPTIONS)
    assert caught.value.reason == "HostKeyMissing"


def test_trust_on_first_use_records_then_refuses_another_key(
    hosts: list[Host], credentials: SshCredentials
) -> None:
    host = hosts[1]
    with SshSession(target(host), credentials, HostKeyCheck.trust_on_first_use(), OPTIONS) as s:
        recorded = s.host_key
        assert s.run(["hostname"], timeout=30).stdout.strip() == host["name"]
    assert recorded == " ".join(host["hostKey"].split()[:2])
    with SshSession(
        target(host), credentials, HostKeyCheck.trust_on_first_use(recorded), OPTIONS
    ) as s:
        assert s.run(["true"], timeout=30).ok
    # Another key on record (the host "changed"): refused before authentication.
    different = other_host(hosts, host)["hostKey"]
    with pytest.raises(HostKeyMismatchError):
        SshSession(target(host), credentials, HostKeyCheck.trust_on_first_use(different), OPTIONS)


def test_a_refused_key_is_an_authentication_error(hosts: list[Host], tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    stranger = SshCredentials(key.read_bytes())
    with pytest.raises(AuthenticationError) as caught:
        SshSession(target(hosts[0]), stranger, strict(hosts[0]), OPTIONS)
    assert caught.value.reason == "AuthenticationFailed"
    assert stranger.fingerprint in caught.value.message


def test_stopped_sshd_is_unreachable(hosts: list[Host], credentials: SshCredentials) -> None:
    host = next((h for h in hosts if h["name"] == "kvmhost2"), hosts[-1])
    stopped = run_testbed("sshd-stop", host["name"], check=False)
    assert stopped.returncode == 0, stopped.stderr
    try:
        started = time.monotonic()
        with pytest.raises(HostUnreachableError) as caught:
            SshSession(target(host), credentials, strict(host), OPTIONS)
        assert isinstance(caught.value, TemporaryError)
        assert "ECONNREFUSED" in caught.value.message
        assert time.monotonic() - started < 5
    finally:
        restarted = run_testbed("sshd-start", host["name"], check=False)
    assert restarted.returncode == 0, restarted.stderr
    deadline = time.monotonic() + 30
    while True:
        try:
            with SshSession(target(host), credentials, strict(host), OPTIONS) as s:
                assert s.run(["true"], timeout=30).ok
            break
        except HostUnreachableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_the_pool_reuses_one_connection(hosts: list[Host], credentials: SshCredentials) -> None:
    host = hosts[0]
    pool = SshPool(OPTIONS)
    try:
        # $SSH_CONNECTION holds the client's address and port: one TCP connection.
        script = ["sh", "-c", "echo $SSH_CONNECTION"]
        first = pool.run(target(host), credentials, strict(host), script).stdout
        second = pool.run(target(host), credentials, strict(host), script).stdout
        assert first == second and first.split()[2] == host["address"]
        session = pool.session(target(host), credentials, strict(host))
        assert pool.session(target(host), credentials, strict(host)) is session
        assert len(pool) == 1
        session.close()  # the transport dies: the pool reconnects by itself
        third = pool.run(target(host), credentials, strict(host), script).stdout
        assert third.split()[1] != first.split()[1]
    finally:
        pool.close_all()


def test_stdin_exit_status_and_timeout(session: SshSession) -> None:
    result = session.run(
        ["sh", "-c", "cat; echo oops >&2; exit 3"], timeout=30, input=b"x" * 1_000_000, check=False
    )
    assert (len(result.stdout), result.stderr, result.exit_status) == (1_000_000, "oops\n", 3)
    with pytest.raises(CommandError) as caught:
        session.run(["false"], timeout=30)
    assert caught.value.exit_status == 1
    with pytest.raises(CommandTimeoutError):
        session.run(["sleep", "10"], timeout=1)
    assert session.run(["true"], timeout=30).ok


def test_probes_parse_on_real_hosts(hosts: list[Host], credentials: SshCredentials) -> None:
    for host in hosts:
        with SshSession(target(host), credentials, strict(host), OPTIONS) as s:

            def run(argv: list[str]) -> str:
                return s.run(argv, timeout=30).stdout

            assert facts.parse_nproc(run(hostcmds.nproc())) >= 1
            assert facts.parse_meminfo(run(hostcmds.meminfo())).total_mib > 0
            assert "fpu" in facts.parse_cpu_flags(run(hostcmds.cpuinfo_flags()))
            kvm = facts.parse_dev_kvm_device(run(hostcmds.dev_kvm_device()))
            assert kvm is (current_virtualization(host) == "kvm")
            links = facts.parse_ip_links(run(hostcmds.ip_links()))
            addresses = facts.parse_ip_addrs(run(hostcmds.ip_addrs()))
            uplink = facts.link_with_address(addresses, host["address"])
            assert uplink is not None and facts.find_link(links, uplink) is not None
            route = facts.default_route(facts.parse_ip_routes(run(hostcmds.ip_routes())))
            assert route is not None and route.dev == uplink
            version = facts.parse_virsh_version(run(hostcmds.virsh_version()))
            assert version.libvirt is not None and version.libvirt.startswith("9.0.")
            assert version.hypervisor_version is not None
            assert version.hypervisor_version.startswith("7.2.")


def test_qemu_img_round_trip(hosts: list[Host], session: SshSession) -> None:
    base = f"/tmp/kvmfleet-test-{uuid.uuid4().hex}"
    image, overlay = f"{base}.qcow2", f"{base}-overlay.qcow2"
    try:
        session.run(hostcmds.qemu_img_create(image, 64 * 2**20), timeout=60)
        session.run(hostcmds.qemu_img_create(overlay, None, backing=image), timeout=60)
        session.run(hostcmds.qemu_img_resize(overlay, 128 * 2**20), timeout=60)
        info = facts.parse_qemu_img_info(
            session.run(hostcmds.qemu_img_info(overlay), timeout=60).stdout
        )
        assert (info.format, info.virtual_size, info.backing_filename) == (
            "qcow2",
            128 * 2**20,
            image,
        )
        chain = facts.parse_qemu_img_chain(
            session.run(hostcmds.qemu_img_info(overlay, backing_chain=True), timeout=60).stdout
        )
        assert [item.virtual_size for item in chain] == [128 * 2**20, 64 * 2**20]
    finally:
        for path in (overlay, image):
            session.run(hostcmds.rm_file(path), timeout=30)
    assert not exists_on(hosts[0], image)
    assert session.run(hostcmds.test_exists(image), timeout=30, check=False).exit_status == 1
