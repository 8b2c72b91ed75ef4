"""Connections to a host's libvirtd over SSH, with the host key pinned; pooled.

libvirt's ``qemu+ssh`` transport runs the ``ssh`` binary. That binary ignores the
``known_hosts`` URI parameter (it is for the libssh/libssh2 transports) and ``no_verify=0``
pins nothing, so for ``qemu+ssh`` every connection gets a private directory (0700, under
:func:`runtime_base`) holding:

* ``id`` - the private key (0600), deleted as soon as the connection is open;
* ``known_hosts`` - one line: the expected host key for ``host`` / ``[host]:port``;
* ``ssh`` - a FIXED wrapper script (no value of any URI or spec is written into it) that
  runs ``ssh -F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile=<its dir>/
  known_hosts -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes ...`` with the key of
  its own directory, and keepalives so a dead link ends the connection;
* ``ssh.err`` - ssh's stderr. libvirt keeps at most 1024 bytes of it and reports
  EOVERFLOW instead when there is more (OpenSSH's "host key changed" banner alone is
  about that long), so ssh's reason is read from this file when opening fails.

The URI gets ``command=<dir>/ssh`` and ``no_tty=1``. A user-given ``spec.libvirtURI``
cannot carry ``no_verify``, ``keyfile``, ``known_hosts`` or ``command`` (refused by
:func:`~kvmfleet.domain.validation.validate_libvirt_uri`, and dropped here as well), and
ssh keeps the FIRST value of an option, so the wrapper's options win over anything
libvirt appends. For ``qemu+libssh`` / ``qemu+libssh2`` URIs the library checks the key
itself: ``known_hosts=<dir>/known_hosts&known_hosts_verify=normal&sshauth=privkey&
keyfile=<dir>/id``. docs/security.md explains the choice.

The directory is removed when the connection is closed. Paths appear in URIs and logs;
file contents never do. All calls block (callers run them in threads); a
:class:`LibvirtConnection` may be shared by threads.

Deadlines: libvirt's default event loop implementation runs in one daemon thread
(:func:`start_event_loop`, before the first connection), so every connection gets client
keepalive (``setKeepAlive``): a libvirtd that stops answering (hung, SIGSTOPped, its link
gone) is disconnected after ``interval * count`` seconds and every call waiting on it
fails (temporary) instead of blocking forever. The caller adds a per-call deadline.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import libvirt

from kvmfleet.domain.validation import (
    host_for_uri,
    validate_host_public_key,
    validate_libvirt_uri,
)
from kvmfleet.errors import PermanentError
from kvmfleet.virt.errors import classify

log = logging.getLogger(__name__)

SSH_WRAPPER = """#!/bin/sh
# kvmfleet: ssh for libvirt's qemu+ssh transport, strict host key checking against the
# known_hosts file next to this script, with the key next to this script. Fixed text:
# nothing of any URI or spec is written into it.
dir=${0%/*}
umask 077
exec ssh -F /dev/null \\
    -o StrictHostKeyChecking=yes \\
    -o "UserKnownHostsFile=$dir/known_hosts" \\
    -o GlobalKnownHostsFile=/dev/null \\
    -o CheckHostIP=no \\
    -o UpdateHostKeys=no \\
    -o BatchMode=yes \\
    -o IdentitiesOnly=yes \\
    -o IdentityAgent=none \\
    -o "IdentityFile=$dir/id" \\
    -o ConnectTimeout=10 \\
    -o ServerAliveInterval=5 \\
    -o ServerAliveCountMax=3 \\
    "$@" 2>"$dir/ssh.err"
"""

SSH_SCHEMES = frozenset({"qemu+ssh"})
LIBSSH_SCHEMES = frozenset({"qemu+libssh", "qemu+libssh2"})
_OVERRIDDEN_PARAMETERS = frozenset(
    {"command", "keyfile", "known_hosts", "known_hosts_verify", "no_verify", "no_tty", "sshauth"}
)

_error_handler_lock = threading.Lock()
_error_handler_installed = False
_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


def quiet_libvirt() -> None:
    """Stop libvirt printing every error to stderr (errors still raise). Process-wide."""
    global _error_handler_installed  # noqa: PLW0603 - one process-wide libvirt setting
    with _error_handler_lock:
        if not _error_handler_installed:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _error_handler_installed = True


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError as error:  # pragma: no cover - logged, the loop goes on
            log.warning("libvirt event loop: %s", error)


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per
    process). Keepalive needs it; it must run before the first connection is opened."""
    global _event_loop_thread  # noqa: PLW0603 - one process-wide libvirt event loop
    with _event_loop_lock:
        if _event_loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _event_loop_thread = threading.Thread(
            target=_run_event_loop, name="libvirt-events", daemon=True
        )
        _event_loop_thread.start()


@dataclass(frozen=True)
class Keepalive:
    """Client keepalive of libvirt connections: a message every ``interval`` seconds; after
    ``count`` unanswered ones the connection is closed (interval 0: no keepalive)."""

    interval: int = 5
    count: int = 3


# --- where private files live -----------------------------------------------------------------


def runtime_base() -> Path:
    """The private directory for connection files, created 0700 if needed.

    ``$KVMFLEET_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/kvmfleet``, else ``/run/kvmfleet``
    (when /run is writable), else ``<tmp>/kvmfleet-<uid>``. A directory that is not ours
    or is open to others is refused.
    """
    candidates = []
    if os.environ.get("KVMFLEET_RUNTIME_DIR"):
        candidates.append(Path(os.environ["KVMFLEET_RUNTIME_DIR"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "kvmfleet")
    if os.access("/run", os.W_OK):
        candidates.append(Path("/run/kvmfleet"))
    candidates.append(Path(tempfile.gettempdir()) / f"kvmfleet-{os.getuid()}")
    for base in candidates:
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        return _checked_private(base)
    raise PermanentError("no writable runtime directory for libvirt connection files")


def _checked_private(path: Path) -> Path:
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermanentError(f"{path} is not a directory owned by this user; refusing to use it")
    if info.st_mode & 0o077:
        raise PermanentError(f"{path} is accessible to other users; refusing to use it")
    return path


def _write_private(path: Path, data: bytes, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


# --- target -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LibvirtTarget:
    """A host's libvirtd: URI, the SSH private key and the host key it must present.

    ``uri`` is ``qemu+ssh://user@address:port/system`` (``KvmHostSpec.
    effective_libvirt_uri``) or another remote qemu URI; ``expected_host_key`` is in
    known_hosts form without host name. The key never shows in a repr.
    """

    uri: str
    private_key: bytes = field(repr=False)
    expected_host_key: str

    def __post_init__(self) -> None:
        validate_libvirt_uri(self.uri, "libvirtURI")
        object.__setattr__(
            self, "expected_host_key", validate_host_public_key(self.expected_host_key)
        )
        _require_unencrypted(self.private_key)

    @classmethod
    def for_host(
        cls,
        address: str,
        private_key: bytes,
        expected_host_key: str,
        *,
        port: int = 22,
        user: str = "root",
        libvirt_uri: str | None = None,
    ) -> LibvirtTarget:
        """The target for a KvmHost: ``libvirt_uri`` or ``qemu+ssh://user@address:port/system``."""
        uri = libvirt_uri or f"qemu+ssh://{user}@{host_for_uri(address)}:{port}/system"
        return cls(uri, private_key, expected_host_key)

    @property
    def scheme(self) -> str:
        """``qemu+ssh``, ``qemu+libssh``, ``qemu+tls``..."""
        return urlsplit(self.uri).scheme

    @property
    def host(self) -> str:
        """The host part of the URI (IPv6 without brackets), lower case."""
        return (urlsplit(self.uri).hostname or "").lower()

    @property
    def port(self) -> int:
        """The URI's port, 22 when absent."""
        return urlsplit(self.uri).port or 22

    @property
    def label(self) -> str:
        """The URI without its query, for messages."""
        return self.uri.partition("?")[0]

    @property
    def key_digest(self) -> str:
        """A SHA-256 of the private key: identifies it in the pool without holding it."""
        return hashlib.sha256(self.private_key).hexdigest()

    @property
    def pool_key(self) -> tuple[str, str, str]:
        """What makes two targets the same connection."""
        return (self.uri, self.expected_host_key, self.key_digest)

    def known_hosts_line(self) -> str:
        """The known_hosts line ssh/libssh look up: ``host key`` or ``[host]:port key``."""
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.expected_host_key}\n"

    def connect_uri(self, workdir: Path) -> str:
        """The URI actually opened, pointing at the files in ``workdir``."""
        base, _, query = self.uri.partition("?")
        kept = [
            (key, value)
            for key, value in parse_qsl(query, keep_blank_values=True)
            if key not in _OVERRIDDEN_PARAMETERS
        ]
        if self.scheme in SSH_SCHEMES:
            ours = [("command", str(workdir / "ssh")), ("no_tty", "1")]
        else:
            ours = [
                ("known_hosts", str(workdir / "known_hosts")),
                ("known_hosts_verify", "normal"),
                ("sshauth", "privkey"),
                ("keyfile", str(workdir / "id")),
                ("no_tty", "1"),
            ]
        return base + "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in kept + ours)

    def __repr__(self) -> str:
        return f"LibvirtTarget({self.label!r}, host key {self.expected_host_key.split()[0]})"


def _require_unencrypted(private_key: bytes) -> None:
    if not isinstance(private_key, bytes) or b"PRIVATE KEY" not in private_key:
        raise PermanentError("the SSH private key for libvirt is not a PEM/OpenSSH private key")
    if _is_encrypted(private_key):
        raise PermanentError(
            "libvirt connections need an unencrypted SSH private key (ssh runs in batch "
            "mode and cannot ask for a passphrase)"
        )


def _is_encrypted(data: bytes) -> bool:
    if b"BEGIN OPENSSH PRIVATE KEY" not in data:
        return b"ENCRYPTED" in data
    body = b"".join(line.strip() for line in data.splitlines() if not line.startswith(b"-----"))
    try:
        raw = base64.b64decode(body)
    except ValueError:
        return False
    offset = len(b"openssh-key-v1\x00")
    length = int.from_bytes(raw[offset : offset + 4], "big")
    return raw[offset + 4 : offset + 4 + length] != b"none"


def _read_tail(path: Path, limit: int = 8192) -> str:
    """The last ``limit`` bytes of a file, as text ("" if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


_SSH_NOISE = (
    "@",
    "IT IS POSSIBLE",
    "Someone could be",
    "It is also possible",
    "Please contact",
    "Add correct host key",
    "Offending",
    "remove with",
    "ssh-keygen -f",
    "The fingerprint for",
    "SHA256:",
)


def _fingerprint(host_key: str) -> str:
    blob = base64.b64decode(host_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ssh_failure(stderr: str, expected_host_key: str) -> str:
    """A short reason from ssh's stderr: its last lines without the warning banner.

    For a refused host key, the fingerprints the host presented and the one expected.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(_SSH_NOISE)]
    text = "; ".join(kept[-2:])[:500]
    seen = next(
        (word.rstrip(".") for line in lines for word in line.split() if word.startswith("SHA256:")),
        None,
    )
    if seen:
        text += f" (the host presented {seen}, expected {_fingerprint(expected_host_key)})"
    return text


# --- connection -------------------------------------------------------------------------------


def _release(conn: Any, label: str, workdir: Path | None) -> None:
    """Close a retired connection once nothing references its wrapper any more."""
    try:
        conn.close()
    except libvirt.libvirtError as error:
        log.debug("libvirt %s: close failed: %s", label, error)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


class LibvirtConnection:
    """An open libvirt connection (``conn``) and the private directory behind it.

    Thread-safe (libvirt multiplexes calls on one connection). Closing it removes the
    directory.
    """

    def __init__(self, conn: Any, label: str, workdir: Path | None = None) -> None:
        self.conn = conn
        self.label = label
        self._workdir = workdir
        self._closed = False

    def is_alive(self) -> bool:
        """True while the connection is usable (``virConnectIsAlive``)."""
        if self._closed:
            return False
        try:
            return bool(self.conn.isAlive() == 1)
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        """Close the connection and remove its private files (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.conn.close()
        except libvirt.libvirtError as error:
            log.debug("libvirt %s: close failed: %s", self.label, error)
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def retire(self) -> None:
        """Stop handing this connection out, but close it only once no one uses it.

        A call may still run on it in another thread (one that hung on a SIGSTOPped
        libvirtd returns when the daemon resumes): closing the libvirt connection under
        a call in flight is not safe in libvirt's client.
        The real close, and the removal of the private directory, happen when the last
        user drops this object.
        """
        if self._closed:
            return
        self._closed = True
        weakref.finalize(self, _release, self.conn, self.label, self._workdir)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` or :meth:`retire`."""
        return self._closed

    def __enter__(self) -> LibvirtConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LibvirtConnection({self.label!r}, {'closed' if self._closed else 'open'})"


def open_connection(
    target: LibvirtTarget,
    runtime_dir: Path | None = None,
    keepalive: Keepalive | None = Keepalive(),
) -> LibvirtConnection:
    """Open a connection to ``target`` with its host key pinned; classified errors.

    With ``keepalive`` (the default) the event loop is started and the connection gets
    client keepalive, so a libvirtd that stops answering ends it.

    A refused host key raises LibvirtHostKeyError (permanent), a refused SSH key
    LibvirtAuthError (permanent), an unreachable host LibvirtUnavailableError (temporary).
    """
    quiet_libvirt()
    if keepalive is not None and keepalive.interval > 0:
        start_event_loop()
    if target.scheme == "qemu+libssh":
        log.warning(
            "libvirt %s: the libssh transport of libvirt 9.0 stalls ~30 s on large replies; "
            "prefer qemu+ssh (the default) or qemu+libssh2",
            target.label,
        )
    base = _checked_private(runtime_dir) if runtime_dir else runtime_base()
    workdir = Path(tempfile.mkdtemp(prefix="libvirt-", dir=base))
    try:
        key = target.private_key
        _write_private(workdir / "id", key if key.endswith(b"\n") else key + b"\n", 0o600)
        _write_private(workdir / "known_hosts", target.known_hosts_line().encode(), 0o600)
        _write_private(workdir / "ssh", SSH_WRAPPER.encode(), 0o700)
        uri = target.connect_uri(workdir)
        log.debug("libvirt: opening %s", uri)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as error:
            context = f"{target.label}: cannot connect to libvirt"
            detail = ssh_failure(_read_tail(workdir / "ssh.err"), target.expected_host_key)
            raise classify(error, context, detail=detail) from error
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        # ssh / libssh read the key while connecting only: do not keep it on disk.
        (workdir / "id").unlink(missing_ok=True)
    if keepalive is not None and keepalive.interval > 0:
        try:
            conn.setKeepAlive(keepalive.interval, keepalive.count)
        except libvirt.libvirtError as error:
            log.warning("libvirt %s: no keepalive: %s", target.label, error)
    return LibvirtConnection(conn, target.label, workdir)


# --- pool -------------------------------------------------------------------------------------


Opener = Callable[[LibvirtTarget], LibvirtConnection]
"""What :class:`LibvirtPool` calls to open a connection (:func:`open_connection`)."""


class LibvirtPool:
    """One live connection per target (URI, host key, private key); thread-safe.

    :meth:`connection` returns the pooled connection while ``isAlive()`` says so and opens
    a new one otherwise. When the expected host key or the key of a URI changes, the old
    connection to that URI is closed. All calls block.
    """

    def __init__(self, opener: Opener | None = None) -> None:
        self._open: Opener = opener or open_connection
        self._lock = threading.Lock()
        self._open_locks: dict[str, threading.Lock] = {}
        self._connections: dict[tuple[str, str, str], LibvirtConnection] = {}

    def connection(self, target: LibvirtTarget) -> LibvirtConnection:
        """A live connection to ``target`` (reopened if the pooled one died)."""
        key = target.pool_key
        with self._lock:
            open_lock = self._open_locks.setdefault(target.uri, threading.Lock())
        with open_lock:
            with self._lock:
                existing = self._connections.get(key)
            if existing is not None and existing.is_alive():
                return existing
            connection = self._open(target)
            with self._lock:
                stale = [k for k in self._connections if k[0] == target.uri]
                old = [self._connections.pop(k) for k in stale]
                self._connections[key] = connection
        for previous in old:
            previous.retire()  # a hung call may still run on it: closed when it is done
        return connection

    def invalidate(self, target: LibvirtTarget | str) -> None:
        """Close and forget the connections to a target (or to a URI)."""
        uri = target if isinstance(target, str) else target.uri
        with self._lock:
            stale = [k for k in self._connections if k[0] == uri]
            old = [self._connections.pop(k) for k in stale]
        for connection in old:
            connection.retire()

    def close_all(self) -> None:
        """Close every connection (operator shutdown)."""
        with self._lock:
            old = list(self._connections.values())
            self._connections.clear()
        for connection in old:
            connection.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._connections)
