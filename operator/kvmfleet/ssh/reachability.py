"""Is a host's sshd taking new connections right now? (A pooled session may outlive it.)

An established SSH session survives sshd being stopped, and libvirt's qemu+ssh opens new
connections: so reachability is a fresh TCP connection that gets an SSH banner, checked
on every probe. No authentication happens here, so nothing runs on the host.
"""

from __future__ import annotations

import socket

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
