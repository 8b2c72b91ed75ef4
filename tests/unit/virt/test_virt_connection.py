"""LibvirtTarget, the private files and the ssh wrapper, open_connection, LibvirtPool."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt
import pytest
from virt_testdriver import DOMAIN_XML

from kvmfleet.errors import InvalidSpecError, PermanentError, TemporaryError
from kvmfleet.virt.connection import (
    SSH_WRAPPER,
    LibvirtConnection,
    LibvirtPool,
    LibvirtTarget,
    SerializedCalls,
    open_connection,
    quiet_libvirt,
    runtime_base,
)
from kvmfleet.virt.guest import Guests


def keygen(directory: Path, name: str, passphrase: str = "") -> tuple[bytes, str]:
    """A new ed25519 key: (private key bytes, public key in known_hosts form)."""
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "", "-f", str(path)],
        check=True,
    )
    return path.read_bytes(), " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    return keygen(tmp_path, "client")[0]


@pytest.fixture
def host_key(tmp_path: Path) -> str:
    return keygen(tmp_path, "host")[1]


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return directory


def test_default_uri_and_known_hosts_line(key: bytes, host_key: str) -> None:
    target = LibvirtTarget.for_host("10.77.0.11", key, host_key)
    assert target.uri == "qemu+ssh://root@10.77.0.11:22/system"
    assert target.known_hosts_line() == f"10.77.0.11 {host_key}\n"
    other = LibvirtTarget.for_host("KVM1.example.org", key, host_key, port=2222, user="admin")
    assert other.uri == "qemu+ssh://admin@KVM1.example.org:2222/system"
    assert other.known_hosts_line() == f"[kvm1.example.org]:2222 {host_key}\n"
    v6 = LibvirtTarget.for_host("fd00::11", key, host_key, port=2200)
    assert v6.uri == "qemu+ssh://root@[fd00::11]:2200/system"
    assert v6.known_hosts_line().startswith("[fd00::11]:2200 ")


def test_repr_hides_the_key(key: bytes, host_key: str) -> None:
    target = LibvirtTarget.for_host("10.77.0.11", key, host_key)
    body = b"".join(key.splitlines()[1:-1]).decode()
    assert body[:20] not in repr(target) and body[:20] not in str(target)


def test_connect_uri_for_ssh_uses_the_wrapper(key: bytes, host_key: str, private_dir: Path) -> None:
    target = LibvirtTarget.for_host(
        "10.77.0.11", key, host_key, libvirt_uri="qemu+ssh://root@10.77.0.11/system?mode=legacy"
    )
    uri = target.connect_uri(private_dir)
    query = parse_qs(urlsplit(uri).query)
    assert uri.startswith("qemu+ssh://root@10.77.0.11/system?")
    assert query == {"mode": ["legacy"], "command": [str(private_dir / "ssh")], "no_tty": ["1"]}


def test_connect_uri_for_libssh_pins_the_key(key: bytes, host_key: str, private_dir: Path) -> None:
    target = LibvirtTarget("qemu+libssh://root@10.77.0.11/system", key, host_key)
    query = parse_qs(urlsplit(target.connect_uri(private_dir)).query)
    assert query["known_hosts"] == [str(private_dir / "known_hosts")]
    assert query["known_hosts_verify"] == ["normal"]
    assert query["sshauth"] == ["privkey"]
    assert query["keyfile"] == [str(private_dir / "id")]


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ssh://root@10.77.0.11/system?no_verify=1",
        "qemu+ssh://root@10.77.0.11/system?command=/bin/sh",
        "qemu+ssh://root@10.77.0.11/system?keyfile=/etc/shadow",
        "qemu+ssh://root@10.77.0.11/system?known_hosts=/dev/null",
        "qemu+ext:///system?command=/bin/sh",
        "qemu:///system",
        "qemu+tcp://10.77.0.11/system",
        "qemu+ssh://root@host;reboot/system",
    ],
)
def test_unsafe_uris_are_refused(key: bytes, host_key: str, uri: str) -> None:
    with pytest.raises(InvalidSpecError):
        LibvirtTarget(uri, key, host_key)


def test_bad_host_key_and_encrypted_private_key_are_refused(tmp_path: Path, host_key: str) -> None:
    encrypted, _ = keygen(tmp_path, "encrypted", "pass-phrase")
    with pytest.raises(PermanentError, match="unencrypted"):
        LibvirtTarget.for_host("10.77.0.11", encrypted, host_key)
    plain, _ = keygen(tmp_path, "plain")
    with pytest.raises(InvalidSpecError):
        LibvirtTarget.for_host("10.77.0.11", plain, "ssh-ed25519 nope")
    with pytest.raises(PermanentError):
        LibvirtTarget.for_host("10.77.0.11", b"not a key", host_key)


def ssh_config(wrapper: Path, *extra: str) -> dict[str, str]:
    """What ssh would do (``ssh -G`` prints the resolved configuration; no connection)."""
    out = subprocess.run(
        [str(wrapper), *extra, "-G", "-p", "22", "-l", "root", "--", "10.77.0.11"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        name, _, value = line.partition(" ")
        config.setdefault(name, value)
    return config


def test_the_wrapper_enforces_strict_checking(private_dir: Path) -> None:
    wrapper = private_dir / "ssh"
    wrapper.write_text(SSH_WRAPPER)
    wrapper.chmod(0o700)
    config = ssh_config(wrapper)
    assert config["stricthostkeychecking"] == "true"
    assert config["userknownhostsfile"] == str(private_dir / "known_hosts")
    assert config["globalknownhostsfile"] == "/dev/null"
    assert config["batchmode"] == "yes"
    assert config["identitiesonly"] == "yes"
    assert config["identityfile"] == str(private_dir / "id")
    assert config["serveraliveinterval"] == "5"
    # What libvirt appends for no_verify=1 cannot weaken it: ssh keeps the first value.
    weakened = ssh_config(wrapper, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/x")
    assert weakened["stricthostkeychecking"] == "true"
    assert weakened["userknownhostsfile"] == str(private_dir / "known_hosts")


def test_the_wrapper_is_fixed_text() -> None:
    assert "@" not in SSH_WRAPPER.replace('"$@"', "")
    assert "{" not in SSH_WRAPPER.replace("${0%/*}", "")
    assert SSH_WRAPPER.count("exec ") == 1  # ssh replaces the shell: libvirt signals ssh
    assert '2>"$dir/ssh.err"' in SSH_WRAPPER


def test_open_failure_is_classified_and_leaves_no_files(
    key: bytes, host_key: str, private_dir: Path
) -> None:
    # Port 1 on loopback: refused at once (no traffic leaves the machine).
    target = LibvirtTarget.for_host("127.0.0.1", key, host_key, port=1)
    with pytest.raises(TemporaryError) as caught:
        open_connection(target, runtime_dir=private_dir)
    assert "127.0.0.1" in caught.value.message
    assert list(private_dir.iterdir()) == []


def test_private_files_while_connected(
    monkeypatch: pytest.MonkeyPatch, key: bytes, host_key: str, private_dir: Path, test_uri: str
) -> None:
    seen: dict[str, object] = {}
    real_open = libvirt.open

    def fake_open(uri: str) -> object:
        workdir = Path(parse_qs(urlsplit(uri).query)["command"][0]).parent
        seen["workdir"] = workdir
        seen["modes"] = {p.name: stat.S_IMODE(p.stat().st_mode) for p in workdir.iterdir()}
        seen["dir_mode"] = stat.S_IMODE(workdir.stat().st_mode)
        seen["id"] = (workdir / "id").read_bytes()
        seen["known_hosts"] = (workdir / "known_hosts").read_text()
        return real_open(test_uri)

    monkeypatch.setattr(libvirt, "open", fake_open)
    target = LibvirtTarget.for_host("10.77.0.11", key.rstrip(b"\n"), host_key)
    connection = open_connection(target, runtime_dir=private_dir)
    workdir = seen["workdir"]
    assert isinstance(workdir, Path)
    assert seen["dir_mode"] == 0o700
    assert seen["modes"] == {"id": 0o600, "known_hosts": 0o600, "ssh": 0o700}
    assert seen["id"] == key.rstrip(b"\n") + b"\n"
    assert seen["known_hosts"] == target.known_hosts_line()
    assert sorted(p.name for p in workdir.iterdir()) == ["known_hosts", "ssh"]  # key removed
    assert connection.is_alive()
    connection.close()
    assert not workdir.exists()
    assert not connection.is_alive()


def test_runtime_base_refuses_shared_directories(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    monkeypatch.setenv("KVMFLEET_RUNTIME_DIR", str(shared))
    with pytest.raises(PermanentError, match="accessible to other users"):
        runtime_base()
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("KVMFLEET_RUNTIME_DIR", str(fresh))
    assert runtime_base() == fresh
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700


# --- pool --------------------------------------------------------------------------------


@pytest.fixture
def opened() -> list[LibvirtConnection]:
    return []


@pytest.fixture
def pool(test_uri: str, opened: list[LibvirtConnection]) -> LibvirtPool:
    quiet_libvirt()

    def opener(target: LibvirtTarget) -> LibvirtConnection:
        connection = LibvirtConnection(libvirt.open(test_uri), target.label)
        opened.append(connection)
        return connection

    return LibvirtPool(opener)


def test_pool_reuses_a_live_connection(pool, opened, key: bytes, host_key: str) -> None:
    target = LibvirtTarget.for_host("10.77.0.11", key, host_key)
    first = pool.connection(target)
    assert pool.connection(LibvirtTarget.for_host("10.77.0.11", key, host_key)) is first
    assert len(opened) == 1 and len(pool) == 1


def test_pool_reopens_a_dead_connection(pool, opened, key: bytes, host_key: str) -> None:
    target = LibvirtTarget.for_host("10.77.0.11", key, host_key)
    first = pool.connection(target)
    first.conn.close()  # the connection dies under the pool
    assert not first.is_alive()
    second = pool.connection(target)
    assert second is not first and second.is_alive()


def test_pool_replaces_a_connection_when_the_host_key_changes(
    pool, opened, tmp_path: Path, key: bytes, host_key: str
) -> None:
    first = pool.connection(LibvirtTarget.for_host("10.77.0.11", key, host_key))
    _, new_host_key = keygen(tmp_path, "reinstalled-host")
    second = pool.connection(LibvirtTarget.for_host("10.77.0.11", key, new_host_key))
    assert second is not first and first.closed and len(pool) == 1
    pool.invalidate("qemu+ssh://root@10.77.0.11:22/system")
    assert second.closed and len(pool) == 0


def test_pool_opens_once_under_concurrency(pool, opened, key: bytes, host_key: str) -> None:
    target = LibvirtTarget.for_host("10.77.0.11", key, host_key)
    threads = [threading.Thread(target=pool.connection, args=(target,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1
    pool.close_all()
    assert opened[0].closed and len(pool) == 0


def test_pool_stops_waiting_for_an_open_that_does_not_answer(
    test_uri: str, key: bytes, host_key: str
) -> None:
    # A hung libvirtd accepts the connection and never answers it (no keepalive yet).
    quiet_libvirt()
    answer = threading.Event()
    opens: list[LibvirtConnection] = []

    def opener(target: LibvirtTarget) -> LibvirtConnection:
        answer.wait(10)
        connection = LibvirtConnection(libvirt.open(test_uri), target.label, serialize=True)
        opens.append(connection)
        return connection

    pool = LibvirtPool(opener, open_timeout=0.2)
    target = LibvirtTarget.for_host("10.77.0.11", key, host_key)
    for _ in range(3):  # the callers after the first wait for the same opening
        with pytest.raises(TemporaryError, match=r"did not answer a new connection within 0\.2s"):
            pool.connection(target)
    answer.set()  # the daemon resumes: the opening ends and its connection is pooled
    for _ in range(100):
        if len(pool):
            break
        threading.Event().wait(0.05)
    assert len(opens) == 1 and pool.connection(target) is opens[0]
    pool.close_all()
    assert opens[0].closed


def test_pool_hands_the_open_error_to_its_callers(key: bytes, host_key: str) -> None:
    def opener(target: LibvirtTarget) -> LibvirtConnection:
        raise TemporaryError(f"{target.label}: no route to host")

    pool = LibvirtPool(opener)
    with pytest.raises(TemporaryError, match="no route to host"):
        pool.connection(LibvirtTarget.for_host("10.77.0.11", key, host_key))
    assert len(pool) == 0


CHANGED_BANNER = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:kQMxKxkSy4nn2LHDpBLk8Z5/7hiBzMo3/bHr5+dFOVk.
Please contact your system administrator.
Add correct host key in /a/very/long/runtime/directory/libvirt-abcdefgh/known_hosts to get rid of this message.
Offending ED25519 key in /a/very/long/runtime/directory/libvirt-abcdefgh/known_hosts:1
  remove with:
  ssh-keygen -f "/a/very/long/runtime/directory/libvirt-abcdefgh/known_hosts" -R "10.77.0.11"
Host key for 10.77.0.11 has changed and you have requested strict checking.
Host key verification failed.
"""


def test_ssh_failure_keeps_the_reason_and_both_fingerprints(host_key: str) -> None:
    from kvmfleet.virt.connection import ssh_failure

    text = ssh_failure(CHANGED_BANNER, host_key)
    assert text.startswith("Host key for 10.77.0.11 has changed")
    assert "Host key verification failed." in text
    assert "the host presented SHA256:kQMxKxkSy4nn2LHDpBLk8Z5/7hiBzMo3/bHr5+dFOVk" in text
    assert "@@@" not in text and "known_hosts" not in text and len(text) < 400
    refused = ssh_failure("ssh: connect to host 10.77.0.11 port 22: Connection refused\n", host_key)
    assert refused == "ssh: connect to host 10.77.0.11 port 22: Connection refused"
    assert ssh_failure("", host_key) == ""


def test_ssh_stderr_decides_the_classification() -> None:
    from kvmfleet.virt.errors import LibvirtAuthError, LibvirtHostKeyError, classify

    # What libvirt reports when ssh's stderr exceeds its 1024-byte buffer.
    error = libvirt.libvirtError("Cannot recv data: Value too large for defined data type")
    error.err = (
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_FROM_RPC,
        "Cannot recv data: Value too large for defined data type",
        2,
        None,
        None,
        None,
        0,
        0,
    )
    assert isinstance(classify(error, "ctx"), TemporaryError)
    keyed = classify(error, "ctx", detail="Host key verification failed.")
    assert isinstance(keyed, LibvirtHostKeyError)
    assert keyed.message.endswith("(ssh: Host key verification failed.)")
    auth = classify(error, "ctx", detail="root@10.77.0.11: Permission denied (publickey).")
    assert isinstance(auth, LibvirtAuthError)


def test_a_serialized_connection_runs_one_call_at_a_time(test_uri: str) -> None:
    # libvirt 9.0's client segfaults when several threads wait on one connection and a
    # hung libvirtd resumes (virNetClientIOEventFD with a dead stack frame).
    quiet_libvirt()
    connection = LibvirtConnection(libvirt.open(test_uri), "test", serialize=True)
    running: list[int] = []
    overlaps: list[int] = []

    def slow() -> None:
        running.append(1)
        overlaps.append(len(running))
        threading.Event().wait(0.02)
        running.pop()

    threads = [threading.Thread(target=connection.call, args=(slow,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1] * 6
    defined = connection.conn.defineXML(
        DOMAIN_XML.format(name="one", metadata="")
    )  # what a call returns is serialized too
    domains = connection.conn.listAllDomains(0)
    assert isinstance(defined, SerializedCalls) and len(domains) == 1
    assert all(isinstance(d, SerializedCalls) for d in domains)
    assert domains[0].name() == defined.name()
    assert Guests(connection).exists(defined.name()) and not Guests(connection).exists("nope")
    connection.close()


def test_closing_under_a_call_in_flight_waits_for_that_call(test_uri: str) -> None:
    # A call hung on a SIGSTOPped libvirtd may still run when the pool replaces its
    # connection: it is never closed under that call, the call closes it when it returns.
    quiet_libvirt()
    raw = libvirt.open(test_uri)
    connection = LibvirtConnection(raw, "test", serialize=True)
    started, release = threading.Event(), threading.Event()

    def hung() -> int:
        started.set()
        release.wait(10)
        return int(raw.isAlive())

    results: list[int] = []
    caller = threading.Thread(target=lambda: results.append(connection.call(hung)))
    caller.start()
    assert started.wait(10)
    connection.retire()
    assert connection.closed and not connection.is_alive()
    assert raw._o is not None  # not closed under the call
    release.set()
    caller.join(10)
    assert results == [1] and raw._o is None  # closed by the call once it returned
    with pytest.raises(TemporaryError, match="connection was closed"):
        connection.conn.listAllDomains(0)
    gc.collect()
