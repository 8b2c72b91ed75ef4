"""Is a host's sshd taking new connections right now? (A pooled session may outlive it.)

An established SSH session survives sshd being stopped, and libvirt's qemu+ssh opens new
connections: so reachability is a fresh TCP connection that gets an SSH banner, checked
on every probe. No authentication happens here, so nothing runs on the host.

Each check is an unauthenticated connection, which counts against sshd's MaxStartups
(stock: 10:30:100, random drops beyond 10): :class:`BannerChecks` makes at most one
check per host at a time and lets concurrent callers share its result for a few seconds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from kvmfleet.ssh.errors import HostUnreachableError
from kvmfleet.ssh.session import SshTarget


def check_banner(target: SshTarget, timeout: float = 10.0) -> str:
    """The server's SSH identification line; HostUnreachableError if there is none."""
    try:
        with socket.create_connection((target.address, target.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError as error:
        raise HostUnreachableError(
            f"{target.host_port}: cannot connect: {error.strerror or error}"
        ) from error
    line = data.split(b"\n", 1)[0].strip().decode("ascii", errors="replace")
    if not line.startswith("SSH-"):
        raise HostUnreachableError(f"{target.host_port}: no SSH server answers ({line[:60]!r})")
    return line


class BannerChecks:
    """:func:`check_banner`, at most one at a time per target, its result reused for ``ttl``
    seconds (a burst of 200 VM passes makes one connection per host, not 200). Thread-safe."""

    def __init__(
        self,
        ttl: float = 5.0,
        checker: Callable[[SshTarget, float], str] = check_banner,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._checker = checker
        self._clock = clock
        self._lock = threading.Lock()
        self._locks: dict[SshTarget, threading.Lock] = {}
        self._results: dict[SshTarget, tuple[float, str | None, str]] = {}

    def check(self, target: SshTarget, timeout: float = 10.0) -> str:
        """The banner line, or HostUnreachableError (fresh or shared)."""
        with self._lock:
            lock = self._locks.setdefault(target, threading.Lock())
        with lock:
            cached = self._results.get(target)
            if cached is not None and self._clock() - cached[0] < self.ttl:
                _, line, failure = cached
                if line is None:
                    raise HostUnreachableError(failure)
                return line
            try:
                line = self._checker(target, timeout)
            except HostUnreachableError as error:
                self._results[target] = (self._clock(), None, error.message)
                raise
            self._results[target] = (self._clock(), line, "")
            return line

    def forget(self, target: SshTarget) -> None:
        """Drop the cached result of ``target``."""
        with self._lock:
            self._results.pop(target, None)
