"""Reachability is a fresh TCP connection that gets an SSH banner (loopback servers)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from kvmfleet.ssh.errors import HostUnreachableError
from kvmfleet.ssh.reachability import BannerChecks, check_banner
from kvmfleet.ssh.session import SshTarget


@pytest.fixture
def server() -> Iterator[tuple[socket.socket, list[bytes]]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    greetings: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(greetings.pop(0) if greetings else b"")

    threading.Thread(target=serve, daemon=True).start()
    yield sock, greetings
    sock.close()


def test_banner_is_read(server: tuple[socket.socket, list[bytes]]) -> None:
    sock, greetings = server
    greetings.append(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    target = SshTarget("127.0.0.1", sock.getsockname()[1])
    assert check_banner(target, timeout=5) == "SSH-2.0-OpenSSH_9.2p1 Debian-2"


def test_not_ssh_is_unreachable(server: tuple[socket.socket, list[bytes]]) -> None:
    sock, greetings = server
    greetings.append(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(HostUnreachableError, match="no SSH server"):
        check_banner(SshTarget("127.0.0.1", sock.getsockname()[1]), timeout=5)


def test_closed_port_is_unreachable() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(HostUnreachableError, match="cannot connect"):
        check_banner(SshTarget("127.0.0.1", port), timeout=5)


def test_banner_checks_are_shared_per_host_for_a_moment() -> None:
    calls: list[SshTarget] = []
    now = [0.0]
    answer: list[Exception | str] = ["SSH-2.0-x"]

    def checker(target: SshTarget, timeout: float) -> str:
        calls.append(target)
        if isinstance(answer[0], Exception):
            raise answer[0]
        return answer[0]

    checks = BannerChecks(ttl=5.0, checker=checker, clock=lambda: now[0])
    a, b = SshTarget("10.0.0.1"), SshTarget("10.0.0.2")
    threads = [threading.Thread(target=checks.check, args=(a,)) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    checks.check(b)
    assert calls == [a, b]  # 50 callers, one connection to a
    now[0] = 6.0
    answer[0] = HostUnreachableError("10.0.0.1:22: cannot connect: refused")
    with pytest.raises(HostUnreachableError):
        checks.check(a)
    with pytest.raises(HostUnreachableError, match="refused"):
        checks.check(a)  # the failure is shared as well
    assert calls == [a, b, a]
