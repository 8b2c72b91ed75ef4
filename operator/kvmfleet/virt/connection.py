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
import functools
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
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
from kvmfleet.virt.errors import UNAVAILABLE_DELAY, LibvirtUnavailableError, classify

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


_LIBVIRT_CLASSES = tuple(
    getattr(libvirt, name)
    for name in (
        "virConnect",
        "virDomain",
        "virDomainSnapshot",
        "virDomainCheckpoint",
        "virStoragePool",
        "virStorageVol",
        "virNetwork",
        "virNetworkPort",
        "virInterface",
        "virNodeDevice",
        "virSecret",
        "virNWFilter",
        "virNWFilterBinding",
        "virStream",
    )
    if hasattr(libvirt, name)
)


class SerializedCalls:
    """A libvirt object (the connection, or a domain, pool, volume... of it) whose method
    calls run one at a time on their connection.

    Each call holds the connection's call lock; what a call returns (a domain, a list of
    domains, ``getAllDomainStats``' pairs) is wrapped the same way, and wrapped
    arguments are unwrapped. Attributes that are not methods are read as they are.
    """

    __slots__ = ("_libvirt_object", "_owner")

    def __init__(self, obj: Any, owner: LibvirtConnection) -> None:
        self._libvirt_object = obj
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._libvirt_object, name)
        if not callable(value):
            return value
        owner = self._owner

        def call(*args: Any, **kwargs: Any) -> Any:
            plain = tuple(_unwrap(arg) for arg in args)
            named = {key: _unwrap(arg) for key, arg in kwargs.items()}
            return _wrap(owner.call(value, *plain, **named), owner)

        call.__name__ = name
        return call

    def __repr__(self) -> str:
        return f"SerializedCalls({self._libvirt_object!r})"


def _unwrap(value: Any) -> Any:
    if isinstance(value, SerializedCalls):
        return value._libvirt_object  # the wrapper's own object
    return value


def _wrap(value: Any, owner: LibvirtConnection) -> Any:
    if isinstance(value, _LIBVIRT_CLASSES):
        return SerializedCalls(value, owner)
    if isinstance(value, list):
        return [_wrap(item, owner) for item in value]
    if isinstance(value, tuple):
        return tuple(_wrap(item, owner) for item in value)
    return value


class LibvirtConnection:
    """An open libvirt connection (``conn``) and the private directory behind it.

    May be shared by threads. With ``serialize`` (what :class:`LibvirtPool` hands out)
    the calls on it run one at a time: ``conn`` and every object it returns are
    :class:`SerializedCalls`. libvirt 9.0's client is not safe with several threads
    waiting on one connection: a thread that waits for a reply runs the connection's
    private event loop with a socket watch pointing into its own stack, and when another
    thread (or the keepalive timer) interrupts that loop the watch stays registered after
    the call returned; the next thread that runs the loop calls it with a dead stack
    frame and the process segfaults in ``virNetClientIOEventFD``. That is what happened
    when a hung (SIGSTOPped) libvirtd resumed and the calls queued behind it all ran at
    once. One call at a time leaves a single waiter per connection; the libvirt event
    loop thread still sends the keepalive beside it, as libvirt intends.

    :meth:`close` never closes the libvirt connection under a call in flight (a call
    may wait on a hung libvirtd until the keepalive ends it): the call closes it when it
    returns. Closing removes the directory. Unserialized connections (a console, whose
    stream is read and written from two threads) close at once.
    """

    def __init__(
        self, conn: Any, label: str, workdir: Path | None = None, *, serialize: bool = False
    ) -> None:
        self._raw = conn
        self.label = label
        self._workdir = workdir
        self._closed = False
        self._released = False
        self._lock = threading.Lock()
        self.serialized = serialize
        self.conn: Any = SerializedCalls(conn, self) if serialize else conn

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one libvirt call while no other runs on this connection."""
        with self._lock:
            if self._released:
                raise LibvirtUnavailableError(
                    f"{self.label}: the connection was closed", delay=UNAVAILABLE_DELAY
                )
            try:
                return fn(*args, **kwargs)
            finally:
                if self._closed:
                    self._release()

    def is_alive(self) -> bool:
        """True while the connection is usable (``virConnectIsAlive``: local, never
        waits for the daemon nor for a call in flight)."""
        if self._closed:
            return False
        try:
            return bool(self._raw.isAlive() == 1)
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        """Close the connection and remove its private files (idempotent). With a call in
        flight on a serialized connection, that call closes it when it returns."""
        if self._closed:
            return
        self._closed = True
        if not self.serialized:
            with self._lock:
                self._release()
            return
        if self._lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._lock.release()

    def retire(self) -> None:
        """Stop using this connection: closed now, or by the call in flight when it
        returns (:meth:`close`)."""
        self.close()

    def _release(self) -> None:
        """Close the libvirt connection (the call lock is held)."""
        if self._released:
            return
        self._released = True
        try:
            self._raw.close()
        except libvirt.libvirtError as error:
            log.debug("libvirt %s: close failed: %s", self.label, error)
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

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
    *,
    serialize: bool = False,
) -> LibvirtConnection:
    """Open a connection to ``target`` with its host key pinned; classified errors.

    With ``keepalive`` (the default) the event loop is started and the connection gets
    client keepalive, so a libvirtd that stops answering ends it. Keepalive starts once
    the connection is open: opening itself waits as long as libvirtd does not answer
    (:class:`LibvirtPool` bounds the wait). ``serialize``: see :class:`LibvirtConnection`.

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
    return LibvirtConnection(conn, target.label, workdir, serialize=serialize)


# --- pool -------------------------------------------------------------------------------------


Opener = Callable[[LibvirtTarget], LibvirtConnection]
"""What :class:`LibvirtPool` calls to open a connection (:func:`open_connection`)."""


@dataclass(eq=False)
class _Opening:
    """A connection being opened in the background: its result once ``done`` is set."""

    done: threading.Event = field(default_factory=threading.Event)
    connection: LibvirtConnection | None = None
    error: BaseException | None = None


class LibvirtPool:
    """One live connection per target (URI, host key, private key); thread-safe.

    :meth:`connection` returns the pooled connection while ``isAlive()`` says so and opens
    a new one otherwise. Connections come from ``opener`` (:func:`open_connection`, with
    ``serialize=True``: one call at a time per connection, see :class:`LibvirtConnection`).

    Opening runs in a thread of its own, one at a time per target: a libvirtd that is
    hung accepts the connection and never answers, and keepalive only starts once it is
    open. A caller waits at most ``open_timeout`` seconds for it, then gets
    :class:`~kvmfleet.virt.errors.LibvirtUnavailableError`; the callers after it wait for
    the same opening instead of starting (and stranding) one each. When the daemon
    answers at last, the new connection goes into the pool. When the expected host key or
    the key of a URI changes, the old connection to that URI is closed (once no call
    runs on it).
    """

    def __init__(self, opener: Opener | None = None, open_timeout: float = 30.0) -> None:
        self._open: Opener = opener or functools.partial(open_connection, serialize=True)
        self._open_timeout = open_timeout
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, str, str], LibvirtConnection] = {}
        self._opening: dict[tuple[str, str, str], _Opening] = {}
        self._closed = False

    def connection(self, target: LibvirtTarget) -> LibvirtConnection:
        """A live connection to ``target`` (reopened if the pooled one died)."""
        key = target.pool_key
        with self._lock:
            existing = self._connections.get(key)
        if existing is not None and existing.is_alive():
            return existing
        with self._lock:
            opening = self._opening.get(key)
            if opening is None:
                opening = self._opening[key] = _Opening()
                threading.Thread(
                    target=self._open_in_background,
                    args=(target, opening),
                    name=f"libvirt-open-{target.host}"[:40],
                    daemon=True,
                ).start()
        if not opening.done.wait(self._open_timeout):
            raise LibvirtUnavailableError(
                f"{target.label}: libvirtd did not answer a new connection within "
                f"{self._open_timeout:g}s (hung?); still waiting for it",
                delay=UNAVAILABLE_DELAY,
            )
        if opening.error is not None:
            raise opening.error
        assert opening.connection is not None
        return opening.connection

    def _open_in_background(self, target: LibvirtTarget, opening: _Opening) -> None:
        key = target.pool_key
        old: list[LibvirtConnection] = []
        try:
            connection = self._open(target)
        except BaseException as error:  # handed to the callers waiting
            opening.error = error
        else:
            opening.connection = connection
            with self._lock:
                if self._closed:
                    old.append(connection)
                else:
                    stale = [k for k in self._connections if k[0] == target.uri]
                    old.extend(self._connections.pop(k) for k in stale)
                    self._connections[key] = connection
        finally:
            with self._lock:
                if self._opening.get(key) is opening:
                    del self._opening[key]
            opening.done.set()
        for previous in old:
            previous.retire()  # a call may still run on it: closed when it returns

    def dedicated(self, target: LibvirtTarget) -> LibvirtConnection:
        """A new connection to ``target`` outside the pool (the caller closes it), for one
        long call (a migration) that must not hold the pooled connection's calls
        (progress, abort) behind it. Opened in the calling thread: its deadline applies."""
        return self._open(target)

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
            self._closed = True
            old = list(self._connections.values())
            self._connections.clear()
        for connection in old:
            connection.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._connections)
