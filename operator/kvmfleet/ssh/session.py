"""SSH sessions to hypervisor hosts: an argv in, a CommandResult out; pooled and reused.

* :class:`SshTarget` - where to connect (address, port, user), validated.
* :class:`SshCredentials` - the private key (never logged, never in a repr or an error).
* :class:`SshSession` - one paramiko ``SSHClient``: host key verified in the handshake
  (before authentication), keepalive on the transport, :meth:`SshSession.run` runs one
  argv per channel (quoted once by :func:`~kvmfleet.ssh.quoting.quote_argv`), reads
  stdout and stderr together (no pipe deadlock), bounds the output and enforces a
  deadline: the command runs under coreutils ``timeout`` on the host, so it is killed
  there (TERM, then KILL) when its time is up, not only abandoned.
* :class:`SshHost` - the connections to one host: at most ``max_connections`` sessions
  with at most ``max_channels_per_connection`` channels each (below a stock sshd's
  MaxSessions 10 and MaxStartups 10). A burst beyond that waits in a queue; a refused
  channel is retried and never closes the connection other commands use.
* :class:`SshPool` - one :class:`SshHost` per (target, key fingerprint, host key check),
  thread-safe, reconnecting when a transport died.

Every call blocks: callers on an event loop run them in a thread. Failures are
classified as in :mod:`kvmfleet.ssh.errors`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kvmfleet.domain.validation import validate_host_address, validate_port, validate_user_name
from kvmfleet.errors import TemporaryError
from kvmfleet.ssh.errors import (
    AuthenticationError,
    ChannelRefusedError,
    CommandError,
    CommandTimeoutError,
    HostBusyError,
    HostKeyMismatchError,
    HostKeyUnknownError,
    HostUnreachableError,
    InvalidPrivateKeyError,
    OutputTooLargeError,
    SessionClosedError,
)
from kvmfleet.ssh.hostkeys import HostKey, HostKeyCheck, fingerprint_of_blob, policy_for
from kvmfleet.ssh.quoting import quote_argv

log = logging.getLogger(__name__)

_READ_CHUNK = 65536
_WRITE_CHUNK = 32768
_POLL_INTERVAL = 0.5
_STDERR_IN_MESSAGE = 2000
TIMEOUT_EXIT_STATUS = 124
"""What coreutils ``timeout`` exits with when it stopped the command (137 if it had to KILL)."""
_KILLED_EXIT_STATUS = 128 + 9
_LOCAL_MARGIN = 5.0


# --- target and credentials ---------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """Where to connect: a validated host address (canonical form), TCP port and user."""

    address: str
    port: int = 22
    user: str = "root"

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", validate_host_address(self.address, "address"))
        object.__setattr__(self, "port", validate_port(self.port, "port"))
        object.__setattr__(self, "user", validate_user_name(self.user, "user"))

    @property
    def host_port(self) -> str:
        """``address:port`` (``[v6]:port`` for IPv6), for messages."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.host_port}"


@dataclass(frozen=True, eq=False)
class SshCredentials:
    """A private key (OpenSSH or PEM bytes: ed25519, ecdsa or rsa) and its passphrase.

    The key is parsed when the object is built (InvalidPrivateKeyError if it cannot be
    used). Neither the key nor the passphrase ever appears in a repr, a log line or an
    exception; only the public key's fingerprint does.
    """

    private_key: bytes = field(repr=False)
    passphrase: bytes | None = field(default=None, repr=False)
    _pkey: paramiko.PKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pkey", load_private_key(self.private_key, self.passphrase))

    @property
    def pkey(self) -> paramiko.PKey:
        """The parsed paramiko key (for this package only)."""
        return self._pkey

    @property
    def key_type(self) -> str:
        """The public key's type, e.g. ``ssh-ed25519``."""
        return HostKey.from_paramiko(self._pkey).key_type

    @property
    def public_key(self) -> str:
        """The public key in authorized_keys form without comment: ``ssh-ed25519 AAAA...``."""
        return HostKey.from_paramiko(self._pkey).line

    @property
    def fingerprint(self) -> str:
        """The public key's SHA256 fingerprint (safe to log)."""
        return fingerprint_of_blob(self._pkey.asbytes())

    def __repr__(self) -> str:
        return f"SshCredentials({self.key_type} {self.fingerprint})"


def load_private_key(data: bytes, passphrase: bytes | None = None) -> paramiko.PKey:
    """Parse an ed25519, ecdsa or rsa private key (OpenSSH, PEM or PKCS#8, maybe encrypted).

    The key is decrypted in memory only. Raises InvalidPrivateKeyError whose message never
    contains key material.
    """
    if not isinstance(data, bytes) or not data.strip():
        raise InvalidPrivateKeyError("the SSH private key is empty")
    loaded = _load_with_cryptography(data, passphrase)
    key_class: type[paramiko.PKey]
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    elif isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    else:
        raise InvalidPrivateKeyError(
            f"unsupported SSH private key type {type(loaded).__name__}: use ed25519, ecdsa or rsa"
        )
    # One form paramiko reads for every key type: unencrypted OpenSSH, in memory.
    text = loaded.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    try:
        return key_class.from_private_key(io.StringIO(text))
    except (paramiko.SSHException, ValueError, TypeError) as error:
        raise InvalidPrivateKeyError(
            f"cannot load the SSH private key ({type(error).__name__})"
        ) from None


def _load_with_cryptography(data: bytes, passphrase: bytes | None) -> object:
    encrypted = _is_encrypted(data)
    if encrypted and not passphrase:
        raise InvalidPrivateKeyError("the SSH private key is encrypted and no passphrase is given")
    password = passphrase if encrypted else None
    try:
        try:
            return serialization.load_ssh_private_key(data, password=password)
        except ValueError:
            if b"BEGIN OPENSSH PRIVATE KEY" in data:
                raise
            return serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        hint = " (wrong passphrase?)" if encrypted else ""
        raise InvalidPrivateKeyError(
            f"cannot read the SSH private key: not an OpenSSH or PEM private key{hint} "
            f"({type(error).__name__})"
        ) from None


def _is_encrypted(data: bytes) -> bool:
    """True if the key is passphrase-protected (OpenSSH: a cipher other than none; PEM)."""
    if b"BEGIN OPENSSH PRIVATE KEY" not in data:
        return b"ENCRYPTED" in data
    body = b"".join(line.strip() for line in data.splitlines() if not line.startswith(b"-----"))
    try:
        raw = base64.b64decode(body)
    except ValueError:
        return False
    # "openssh-key-v1\0", then the cipher name as an SSH string.
    offset = len(b"openssh-key-v1\x00")
    length = int.from_bytes(raw[offset : offset + 4], "big")
    return raw[offset + 4 : offset + 4 + length] != b"none"


# --- options and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class SshOptions:
    """Timeouts and keepalive of SSH sessions (seconds)."""

    connect_timeout: float = 10.0
    """TCP connect, and then the key exchange."""
    banner_timeout: float = 15.0
    """Waiting for the server's SSH banner after the TCP connection is up."""
    auth_timeout: float = 15.0
    """Waiting for the server's answer to authentication."""
    channel_timeout: float = 15.0
    """Opening a channel for one command on an established session."""
    keepalive_interval: int = 15
    """Seconds between keepalive packets on an idle transport (0: none)."""
    default_command_timeout: float = 60.0
    """The timeout of :meth:`SshPool.run` when none is given."""
    remote_timeout: bool = True
    """Run every command under ``timeout -k <kill_grace> <timeout>`` on the host."""
    kill_grace: float = 5.0
    """Seconds between TERM and KILL when a command outlives its timeout."""
    max_output_bytes: int = 16 * 1024 * 1024
    """stdout + stderr kept of one command; beyond it the command is stopped."""
    max_channels_per_connection: int = 8
    """Commands at once on one connection (a stock sshd allows MaxSessions 10)."""
    max_connections: int = 2
    """SSH connections per host (libvirt's own qemu+ssh connection comes on top)."""
    queue_timeout: float = 300.0
    """How long a command may wait for a free channel before HostBusyError."""
    channel_retries: int = 5
    """Attempts after a refused channel or a connection that closed before sending."""


@dataclass(frozen=True)
class CommandResult:
    """What a remote command did: exit status, its output (UTF-8, undecodable bytes replaced)."""

    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        """True if the command exited with status 0."""
        return self.exit_status == 0


# --- session ----------------------------------------------------------------------------------


def _transport_factory(preferred: Sequence[str]) -> Any:
    """A paramiko transport factory that asks for ``preferred`` host key algorithms first.

    The server picks the first algorithm of our list that it supports, so a host holding
    the expected key's type proves that key, and one that does not shows another key
    (which the policy then refuses with both fingerprints).
    """

    def build(sock: socket.socket, **kwargs: Any) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        if preferred:
            options = transport.get_security_options()
            available = list(options.key_types)
            first = [name for name in preferred if name in available]
            options.key_types = first + [name for name in available if name not in first]
        return transport

    return build


class SshSession:
    """One authenticated SSH connection (a paramiko SSHClient) to one host.

    Connects in the constructor (to ``target``, or over ``sock`` when one is given: an
    already connected stream socket, e.g. from a proxy). Thread-safe: each :meth:`run`
    uses its own channel on the shared transport. After a failure of the transport the
    session stays closed (``is_active()`` is False); :class:`SshPool` replaces it.
    """

    def __init__(
        self,
        target: SshTarget,
        credentials: SshCredentials,
        host_key_check: HostKeyCheck,
        options: SshOptions | None = None,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self.target = target
        self.host_key_check = host_key_check
        self.options = options or SshOptions()
        self._client = self._connect(credentials, sock)
        transport = self._client.get_transport()
        assert transport is not None
        self._transport = transport
        self._host_key = HostKey.from_paramiko(transport.get_remote_server_key())
        if self.options.keepalive_interval > 0:
            transport.set_keepalive(self.options.keepalive_interval)
        log.debug("ssh %s: connected, host key %s", target, self._host_key.fingerprint)

    # -- connection --

    def _connect(
        self, credentials: SshCredentials, sock: socket.socket | None
    ) -> paramiko.SSHClient:
        where = self.target.host_port
        self.host_key_check.require_verifiable(where)
        if sock is None:
            sock = self._open_socket()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(policy_for(self.host_key_check))
        try:
            client.connect(
                hostname=self.target.address,
                port=self.target.port,
                username=self.target.user,
                pkey=credentials.pkey,
                sock=sock,
                timeout=self.options.connect_timeout,
                banner_timeout=self.options.banner_timeout,
                auth_timeout=self.options.auth_timeout,
                channel_timeout=self.options.channel_timeout,
                allow_agent=False,
                look_for_keys=False,
                transport_factory=_transport_factory(self.host_key_check.preferred_algorithms()),
            )
        except (HostKeyMismatchError, HostKeyUnknownError):
            client.close()
            raise
        except paramiko.AuthenticationException as error:
            client.close()
            raise AuthenticationError(
                f"{where}: the host refused the SSH key {credentials.fingerprint} for user "
                f"{self.target.user!r} ({error})"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as error:
            client.close()
            raise HostUnreachableError(
                f"{where}: the SSH handshake failed: {_describe(error)}"
            ) from error
        except BaseException:
            client.close()
            raise
        return client

    def _open_socket(self) -> socket.socket:
        where = self.target.host_port
        try:
            return socket.create_connection(
                (self.target.address, self.target.port), timeout=self.options.connect_timeout
            )
        except TimeoutError:
            raise HostUnreachableError(
                f"{where}: connection timed out after {self.options.connect_timeout:g}s"
            ) from None
        except socket.gaierror as error:
            raise HostUnreachableError(f"{where}: cannot resolve the address: {error}") from None
        except OSError as error:
            raise HostUnreachableError(f"{where}: cannot connect: {_describe(error)}") from None

    # -- state --

    @property
    def host_key(self) -> str:
        """The key the host presented, known_hosts form (``ssh-ed25519 AAAA...``)."""
        return self._host_key.line

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint of :attr:`host_key`."""
        return self._host_key.fingerprint

    def is_active(self) -> bool:
        """True while the transport is up (a keepalive or a failed call may end it)."""
        return self._transport.is_active()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._client.close()

    def __enter__(self) -> SshSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "active" if self.is_active() else "closed"
        return f"SshSession({self.target}, {self.fingerprint}, {state})"

    # -- commands --

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: bytes | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` on the host; its stdin gets ``input`` (then EOF), or just EOF.

        Raises CommandError on a non-zero exit when ``check``; CommandTimeoutError when the
        command outlives ``timeout`` (``timeout`` on the host stops it with TERM, then KILL
        after ``kill_grace``; the channel is closed if even that does not end it);
        OutputTooLargeError beyond ``max_output_bytes``; ChannelRefusedError or
        SessionClosedError if no channel could be opened (nothing was sent);
        HostUnreachableError if the transport died while it ran.
        """
        command = quote_argv(self.remote_argv(argv, timeout))
        started = time.monotonic()
        local = timeout + (self.options.kill_grace + _LOCAL_MARGIN) * self.options.remote_timeout
        channel = self._open_channel(argv)
        try:
            try:
                channel.exec_command(command)
            except (paramiko.SSHException, EOFError, OSError) as error:
                raise HostUnreachableError(
                    f"{self.target.host_port}: cannot start {argv[0]!r}: {_describe(error)}"
                ) from error
            stdout, stderr = self._communicate(channel, argv, input, started + local, timeout)
            status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        finally:
            # A transport that died meanwhile cannot send the close: what went wrong
            # before (or the result) stands, the next command finds the session closed.
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                channel.close()
        elapsed = time.monotonic() - started
        if self.options.remote_timeout and (
            status == TIMEOUT_EXIT_STATUS or (status == _KILLED_EXIT_STATUS and elapsed >= timeout)
        ):
            raise CommandTimeoutError(
                f"{self.target.host_port}: {argv[0]!r} did not finish within {timeout:g}s "
                "(stopped on the host)",
                argv=argv,
                timeout=timeout,
            )
        result = CommandResult(
            argv=tuple(argv),
            exit_status=status,
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
            duration=time.monotonic() - started,
        )
        log.debug("ssh %s: %s exited %d in %.3fs", self.target, argv[0], status, result.duration)
        if check and status != 0:
            raise command_error(result, self.target)
        return result

    def remote_argv(self, argv: Sequence[str], timeout: float) -> list[str]:
        """``argv`` as sent: under coreutils ``timeout`` (its own process group, so the
        command's children are stopped too) unless ``remote_timeout`` is off."""
        if not self.options.remote_timeout:
            return list(argv)
        seconds = f"{max(timeout, 0.1):.3f}".rstrip("0").rstrip(".")
        grace = f"{max(self.options.kill_grace, 0.1):.3f}".rstrip("0").rstrip(".")
        return ["timeout", f"--kill-after={grace}s", f"{seconds}s", *argv]

    def _open_channel(self, argv: Sequence[str]) -> paramiko.Channel:
        if not self._transport.is_active():
            raise SessionClosedError(f"{self.target.host_port}: the SSH connection is closed")
        try:
            return self._transport.open_session(timeout=self.options.channel_timeout)
        except paramiko.ChannelException as error:
            # Refused by the host (e.g. beyond sshd's MaxSessions): the connection is fine.
            raise ChannelRefusedError(
                f"{self.target.host_port}: the host refused a channel for {argv[0]!r}: "
                f"{_describe(error)}"
            ) from error
        except (paramiko.SSHException, EOFError, OSError) as error:
            # EOFError/OSError come from writing the request to the socket: the
            # connection is dead even if paramiko's reader has not noticed yet.
            if isinstance(error, paramiko.SSHException) and self._transport.is_active():
                raise ChannelRefusedError(
                    f"{self.target.host_port}: no channel for {argv[0]!r} within "
                    f"{self.options.channel_timeout:g}s: {_describe(error)}"
                ) from error
            self.close()
            raise SessionClosedError(
                f"{self.target.host_port}: cannot open a channel for {argv[0]!r}: "
                f"{_describe(error)}"
            ) from error

    def _communicate(
        self,
        channel: paramiko.Channel,
        argv: Sequence[str],
        data: bytes | None,
        deadline: float,
        timeout: float,
    ) -> tuple[bytes, bytes]:
        """Feed stdin and drain stdout and stderr together until EOF and exit status."""
        out: list[bytes] = []
        err: list[bytes] = []
        size = 0
        pending = memoryview(data or b"")
        if not pending:
            channel.shutdown_write()
        while True:
            while channel.recv_ready():
                out.append(channel.recv(_READ_CHUNK))
                size += len(out[-1])
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(_READ_CHUNK))
                size += len(err[-1])
            if size > self.options.max_output_bytes:
                raise OutputTooLargeError(
                    f"{self.target.host_port}: {argv[0]!r} printed more than "
                    f"{self.options.max_output_bytes} bytes; it was stopped"
                )
            if pending:
                pending = self._feed(channel, pending)
            if _finished(channel):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeoutError(
                    f"{self.target.host_port}: {argv[0]!r} did not finish within {timeout:g}s",
                    argv=argv,
                    timeout=timeout,
                )
            wait = min(remaining, 0.05 if pending else _POLL_INTERVAL)
            select.select([channel], [], [], wait)
        if not channel.eof_received and not self._transport.is_active():
            raise HostUnreachableError(
                f"{self.target.host_port}: the connection was lost while {argv[0]!r} ran "
                "(it may or may not have completed)"
            )
        return b"".join(out), b"".join(err)

    @staticmethod
    def _feed(channel: paramiko.Channel, pending: memoryview) -> memoryview:
        try:
            while pending and channel.send_ready():
                sent = channel.send(bytes(pending[:_WRITE_CHUNK]))
                pending = pending[sent:]
        except OSError:
            return memoryview(b"")  # the remote side stopped reading stdin
        if not pending:
            channel.shutdown_write()
        return pending


def _finished(channel: paramiko.Channel) -> bool:
    """True when no more output can come and the exit status (if any) is known."""
    drained = not channel.recv_ready() and not channel.recv_stderr_ready()
    done = (channel.eof_received and channel.exit_status_ready()) or channel.closed
    return bool(drained and done)


def command_error(result: CommandResult, target: SshTarget | str) -> CommandError:
    """The CommandError for a failed :class:`CommandResult` (stderr included, truncated)."""
    stderr = result.stderr.strip()
    if len(stderr) > _STDERR_IN_MESSAGE:
        stderr = stderr[:_STDERR_IN_MESSAGE] + "..."
    where = target.host_port if isinstance(target, SshTarget) else target
    status = (
        f"exited with status {result.exit_status}"
        if result.exit_status >= 0
        else "ended without an exit status (killed by a signal?)"
    )
    message = f"{where}: {quote_argv(result.argv)} {status}"
    if stderr:
        message += f": {stderr}"
    return CommandError(
        message,
        argv=result.argv,
        exit_status=result.exit_status,
        stderr=result.stderr,
        stdout=result.stdout,
    )


def _describe(error: BaseException) -> str:
    """A short text for a connection failure: the errno name when there is one."""
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        errors = list(error.errors.values())
        if errors:
            return _describe(errors[0])
    code = getattr(error, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({getattr(error, 'strerror', None) or error})"
    text = str(error) or type(error).__name__
    return text


# --- connections to one host ------------------------------------------------------------------


_PoolKey = tuple[SshTarget, str, HostKeyCheck]
SessionFactory = Callable[[SshTarget, SshCredentials, HostKeyCheck, SshOptions], SshSession]
"""What :class:`SshPool` calls to connect (``SshSession`` itself by default)."""

Observer = Callable[[str, int, int, int], None]
"""Told ``(host:port, commands waiting, channels in use, connections)`` on every change."""


@dataclass(eq=False)
class _Slot:
    session: SshSession
    limit: int
    busy: int = 0


class SshHost:
    """The SSH connections to one host under one key and host key check. Thread-safe.

    At most ``options.max_connections`` sessions, each carrying at most
    ``options.max_channels_per_connection`` commands at once; a command beyond that waits
    (up to ``options.queue_timeout``, then HostBusyError). A channel the host refuses
    (sshd's MaxSessions: "administratively prohibited") lowers that connection's limit
    and is retried with backoff; the connection stays open for the commands on it. A
    connection that cannot be made while others are up only makes the command wait for
    them. Under TrustOnFirstUse, later connections must show the key the first one saw.
    """

    def __init__(
        self,
        target: SshTarget,
        credentials: SshCredentials,
        host_key_check: HostKeyCheck,
        options: SshOptions,
        *,
        factory: SessionFactory,
        observer: Observer | None = None,
    ) -> None:
        self.target = target
        self.credentials = credentials
        self.host_key_check = host_key_check
        self.options = options
        self._factory = factory
        self._observer = observer
        self._cond = threading.Condition()
        self._slots: list[_Slot] = []
        self._connecting = 0
        self._waiting = 0
        self._closed = False
        self._connect_backoff_until = 0.0
        self._seen_key: str | None = None

    # -- state --

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def primary(self) -> SshSession:
        """A live session; connects the first one (host key and key errors surface here)."""
        with self._cond:
            for slot in self._slots:
                if slot.session.is_active():
                    return slot.session
        slot = self._acquire(time.monotonic() + self.options.queue_timeout)
        self._release(slot)
        return slot.session

    @property
    def host_key(self) -> str:
        """The key the host presented, known_hosts form."""
        return self.primary().host_key

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint of :attr:`host_key`."""
        return self.primary().fingerprint

    def is_active(self) -> bool:
        """True while at least one connection is up."""
        with self._cond:
            return any(slot.session.is_active() for slot in self._slots)

    def sessions(self) -> list[SshSession]:
        """The live sessions (for tests and diagnostics)."""
        with self._cond:
            return [slot.session for slot in self._slots if slot.session.is_active()]

    def rekey(self, host_key_check: HostKeyCheck) -> None:
        """Use ``host_key_check`` for new connections (a first-use key was recorded)."""
        self.host_key_check = host_key_check

    def close(self) -> None:
        """Close every connection; waiting commands fail with SessionClosedError."""
        with self._cond:
            self._closed = True
            slots, self._slots = self._slots, []
            self._cond.notify_all()
        for slot in slots:
            slot.session.close()
        self._observe()

    # -- commands --

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: bytes | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` on a free channel (waiting for one if all are busy); see
        :meth:`SshSession.run`. Retried only when nothing was sent."""
        deadline = time.monotonic() + self.options.queue_timeout
        attempt = 0
        while True:
            slot = self._acquire(deadline)
            refused = False
            try:
                return slot.session.run(argv, timeout=timeout, input=input, check=check)
            except ChannelRefusedError:
                refused = True
                attempt += 1
                if attempt > self.options.channel_retries or time.monotonic() > deadline:
                    raise
            except SessionClosedError:
                attempt += 1
                if attempt > self.options.channel_retries:
                    raise
            finally:
                self._release(slot, refused=refused)
            if refused:
                time.sleep(min(2.0, 0.05 * 2**attempt))

    def _acquire(self, deadline: float) -> _Slot:
        """A slot with a free channel: on a live connection, or on a new one if allowed."""
        while True:
            with self._cond:
                self._waiting += 1
                try:
                    slot = self._wait_for_slot(deadline)
                finally:
                    self._waiting -= 1
            if slot is not None:
                self._observe()
                return slot
            # Our turn to connect (counted in _connecting), outside the lock.
            try:
                session = self._factory(
                    self.target, self.credentials, self._check_for_new(), self.options
                )
            except BaseException as error:
                with self._cond:
                    self._connecting -= 1
                    others = any(s.session.is_active() for s in self._slots)
                    wait = others and isinstance(error, TemporaryError)
                    if wait:
                        self._connect_backoff_until = time.monotonic() + 10.0
                    self._cond.notify_all()
                if not wait:
                    raise
                continue  # e.g. sshd's MaxStartups: wait for the connections that are up
            with self._cond:
                self._connecting -= 1
                if self._closed:
                    session.close()
                    raise SessionClosedError(f"{self.target.host_port}: the pool was closed")
                self._seen_key = self._seen_key or session.host_key
                slot = _Slot(session, max(1, self.options.max_channels_per_connection), busy=1)
                self._slots.append(slot)
                self._cond.notify_all()
            self._observe()
            return slot

    def _wait_for_slot(self, deadline: float) -> _Slot | None:
        """Under the lock: a slot (busy counted), or None when the caller must connect."""
        observed = False
        while True:
            if self._closed:
                raise SessionClosedError(f"{self.target.host_port}: the pool was closed")
            self._prune()
            live = [slot for slot in self._slots if slot.session.is_active()]
            free = [slot for slot in live if slot.busy < slot.limit]
            if free:
                best = min(free, key=lambda slot: slot.busy)
                best.busy += 1
                return best
            now = time.monotonic()
            room = len(live) + self._connecting < max(1, self.options.max_connections)
            if (room and now >= self._connect_backoff_until) or (not live and not self._connecting):
                self._connecting += 1
                return None
            remaining = deadline - now
            if remaining <= 0:
                raise HostBusyError(
                    f"{self.target.host_port}: no SSH channel became free within "
                    f"{self.options.queue_timeout:g}s ({self._waiting} commands waiting)"
                )
            if not observed:
                self._observe()  # the backlog grew (the lock is reentrant)
                observed = True
            self._cond.wait(min(remaining, 1.0))

    def _release(self, slot: _Slot, *, refused: bool = False) -> None:
        with self._cond:
            slot.busy -= 1
            if refused:
                # The host allows fewer channels per connection than configured.
                slot.limit = max(1, min(slot.limit, slot.busy))
            self._prune()
            self._cond.notify_all()
        self._observe()

    def _prune(self) -> None:
        """Under the lock: drop connections that died and carry no command."""
        dead = [slot for slot in self._slots if not slot.session.is_active() and slot.busy <= 0]
        for slot in dead:
            self._slots.remove(slot)
            slot.session.close()

    def _check_for_new(self) -> HostKeyCheck:
        check = self.host_key_check
        if check.expected is None and self._seen_key is not None:
            return HostKeyCheck.trust_on_first_use(self._seen_key)
        return check

    def _observe(self) -> None:
        if self._observer is None:
            return
        with self._cond:
            busy = sum(max(0, slot.busy) for slot in self._slots)
            counts = (self._waiting, busy, len(self._slots))
        self._observer(self.target.host_port, *counts)

    def __repr__(self) -> str:
        return f"SshHost({self.target}, {len(self.sessions())} connections)"


# --- pool -------------------------------------------------------------------------------------


class SshPool:
    """Reusable connections: one :class:`SshHost` per (target, key fingerprint, host key
    check). Thread-safe.

    :meth:`host` returns the connected :class:`SshHost` for the key (connecting its first
    session if none is up). When the host key check of a (target, key) changes (a new
    ``spec.hostKey``, a key recorded on first use), the older connections of that
    (target, key) are closed; a TrustOnFirstUse connection whose verified key is the one
    now expected is kept and reused.
    """

    def __init__(
        self,
        options: SshOptions | None = None,
        *,
        session_factory: SessionFactory | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.options = options or SshOptions()
        self._factory: SessionFactory = session_factory or SshSession
        self._observer = observer
        self._lock = threading.Lock()
        self._connect_locks: dict[tuple[SshTarget, str], threading.Lock] = {}
        self._hosts: dict[_PoolKey, SshHost] = {}

    def host(
        self, target: SshTarget, credentials: SshCredentials, host_key_check: HostKeyCheck
    ) -> SshHost:
        """The connections to ``target``, with at least one session up."""
        identity = (target, credentials.fingerprint)
        key: _PoolKey = (target, credentials.fingerprint, host_key_check)
        with self._lock:
            connect_lock = self._connect_locks.setdefault(identity, threading.Lock())
        with connect_lock:
            with self._lock:
                existing = self._hosts.get(key) or self._adopt(key)
            if existing is not None and not existing.closed:
                existing.primary()
                return existing
            group = SshHost(
                target,
                credentials,
                host_key_check,
                self.options,
                factory=self._factory,
                observer=self._observer,
            )
            group.primary()
            with self._lock:
                stale = [k for k in self._hosts if (k[0], k[1]) == identity]
                old = [self._hosts.pop(k) for k in stale]
                self._hosts[key] = group
        for previous in old:
            previous.close()
        return group

    def session(
        self, target: SshTarget, credentials: SshCredentials, host_key_check: HostKeyCheck
    ) -> SshSession:
        """A connected session for ``target`` (the first live one of its :class:`SshHost`)."""
        return self.host(target, credentials, host_key_check).primary()

    def _adopt(self, key: _PoolKey) -> SshHost | None:
        """Reuse first-use connections whose verified key is the one now expected."""
        target, fp, check = key
        if check.expected is None:
            return None
        first_use = HostKeyCheck.trust_on_first_use(None)
        group = self._hosts.get((target, fp, first_use))
        if group is None or not group.is_active() or group.host_key != check.expected:
            return None
        del self._hosts[(target, fp, first_use)]
        group.rekey(check)
        self._hosts[key] = group
        return group

    def run(
        self,
        target: SshTarget,
        credentials: SshCredentials,
        host_key_check: HostKeyCheck,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        input: bytes | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` on a pooled connection (see :meth:`SshHost.run`)."""
        limit = self.options.default_command_timeout if timeout is None else timeout
        group = self.host(target, credentials, host_key_check)
        return group.run(argv, timeout=limit, input=input, check=check)

    def invalidate(self, target: SshTarget) -> None:
        """Close and forget every connection to ``target`` (e.g. after its key changed)."""
        with self._lock:
            keys = [key for key in self._hosts if key[0] == target]
            groups = [self._hosts.pop(key) for key in keys]
        for group in groups:
            group.close()

    def close_all(self) -> None:
        """Close every connection (operator shutdown)."""
        with self._lock:
            groups = list(self._hosts.values())
            self._hosts.clear()
        for group in groups:
            group.close()

    def __len__(self) -> int:
        """The number of live sessions."""
        with self._lock:
            groups = list(self._hosts.values())
        return sum(len(group.sessions()) for group in groups)
