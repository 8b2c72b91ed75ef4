"""Serial consoles of domains through libvirt (``virDomainOpenConsole``): read, or bridge a tty.

xCAT's ``rcons`` / ``wcons`` go through conserver; kvmfleet opens the console on a libvirt
stream over the host's libvirt connection (qemu+ssh with the host key pinned), so nothing
but that connection is needed: no conserver, no SSH session to the host's pty.

* :func:`open_console` - a :class:`ConsoleStream`: ``read`` with a timeout, ``write``,
  ``capture`` (read until a pattern, a timeout or a size), ``close``.
* :func:`read_console` / :func:`capture_console` - open, capture, close in one call.
* :func:`bridge` - an interactive session: input fd -> console, console -> output fd,
  until the escape byte (Ctrl-], like ``virsh console``), the end of the console or of
  the input.

Every call BLOCKS (like the rest of :mod:`kvmfleet.virt`): callers on an event loop run
them in a thread. The stream is opened in blocking mode and a daemon thread per console
sits in ``virStreamRecv``; reads with a timeout wait on that thread's queue. (A
``VIR_STREAM_NONBLOCK`` stream would only receive data while a libvirt event loop
services the connection; kvmfleet runs none, and such a stream answers "no data" (-2)
forever.) :meth:`ConsoleStream.close` aborts the stream, which makes the blocked
``virStreamRecv`` return at once; the connection stays usable.

libvirt allows one console session per domain: a second one fails with
:class:`ConsoleBusyError` unless ``force`` (``VIR_DOMAIN_CONSOLE_FORCE``) takes the
console over, which ends the other session (its reads fail with
:class:`ConsoleLostError`). When the domain stops, the console ends (EOF). A domain that
is not running raises :class:`~kvmfleet.virt.errors.OperationInvalidError`, a missing one
:class:`~kvmfleet.virt.errors.LibvirtNotFoundError`.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import select
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import libvirt

from kvmfleet.errors import KvmfleetError
from kvmfleet.virt.connection import LibvirtConnection
from kvmfleet.virt.errors import (
    LibvirtPermanentError,
    LibvirtTemporaryError,
    LibvirtUnavailableError,
    classify,
    error_details,
    libvirt_errors,
)

ESCAPE = b"\x1d"
"""Ctrl-]: ends an interactive session (as in ``virsh console`` and telnet)."""

CHUNK = 64 * 1024
"""Bytes asked of ``virStreamRecv`` at a time."""

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
"""What :func:`capture_console` keeps at most unless told otherwise."""

LINE_GRACE = 2.0
"""Seconds ``whole_line`` waits for the rest of a matched line."""

_POLL = 0.05
"""Seconds the bridge waits for input before it looks at the console's output again."""

_DEVICE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")

Until = bytes | re.Pattern[bytes] | None
"""What to wait for: a byte string, a compiled bytes regular expression, or nothing."""


class ConsoleBusyError(LibvirtTemporaryError):
    """Another session holds the domain's console (open with ``force`` to take it over)."""

    reason = "ConsoleBusy"


class ConsoleLostError(LibvirtUnavailableError):
    """The console stream failed: taken over by another session, or the connection broke."""

    reason = "ConsoleLost"


class NoSuchConsoleError(LibvirtPermanentError):
    """The domain has no console device of that name (or no console at all)."""

    reason = "NoSuchConsole"


def _open_error(error: Any, context: str) -> KvmfleetError:
    """The classified error of ``virDomainOpenConsole``, with the console cases named."""
    classified = classify(error, context)
    _, _, message = error_details(error)
    kind: type[LibvirtTemporaryError | LibvirtPermanentError] | None = None
    if "console session exists" in message:
        kind, message = ConsoleBusyError, f"{message} (force takes the console over)"
    elif "cannot find character device" in message or "cannot find default console" in message:
        kind = NoSuchConsoleError
    if kind is None:
        return classified
    result = kind(f"{context}: {message}")
    result.code, result.domain, result.libvirt_message = error_details(error)
    return result


@dataclass(frozen=True)
class ConsoleOutput:
    """What :meth:`ConsoleStream.capture` read, and why it stopped.

    ``matched``: the pattern appeared (``data`` may go a little past it: it holds every
    chunk received). ``ended``: the console closed (the domain stopped). ``truncated``:
    ``max_bytes`` was reached. None of them: the timeout passed.
    """

    data: bytes
    matched: bool = False
    ended: bool = False
    truncated: bool = False

    @property
    def timed_out(self) -> bool:
        """True when the capture stopped only because its time was up."""
        return not (self.matched or self.ended or self.truncated)


class _Matcher:
    """Finds ``until`` in a growing buffer without searching it all again for every chunk.

    A byte string is looked for where it could straddle the old and the new data. A
    regular expression is tried from the beginning of the line in which the new data
    starts: its match may run over any number of later lines (a ``^`` with ``re.M``
    works), but a match that must begin on an earlier, complete line is not found.
    """

    def __init__(self, until: Until) -> None:
        if until is not None and not isinstance(until, bytes | re.Pattern):
            raise TypeError("until must be bytes, a compiled bytes pattern or None")
        if isinstance(until, re.Pattern) and not isinstance(until.pattern, bytes):
            raise TypeError("until must be a bytes pattern (re.compile(rb'...'))")
        if isinstance(until, bytes) and not until:
            raise ValueError("until must not be empty")
        self.until = until

    def search(self, buffer: bytes | bytearray, old_length: int) -> int | None:
        """Where the first match ends, or None; ``old_length``: what was searched before."""
        if self.until is None:
            return None
        if isinstance(self.until, bytes):
            start = buffer.find(self.until, max(0, old_length - len(self.until) + 1))
            return None if start < 0 else start + len(self.until)
        match = self.until.search(buffer, buffer.rfind(b"\n", 0, old_length) + 1)
        return None if match is None else match.end()


class ConsoleStream:
    """An open serial console: a blocking libvirt stream read by a daemon thread.

    Use it as a context manager (or call :meth:`close`). :meth:`read` and :meth:`write`
    may be called from different threads; one reader at a time.
    """

    def __init__(self, stream: Any, label: str) -> None:
        self.label = label
        self._stream = stream
        self._queue: queue.Queue[bytes | KvmfleetError | None] = queue.Queue()
        self._closing = threading.Event()
        self._eof = False
        self._ended = False
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name=f"console {label}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        """The reader thread: every chunk into the queue, then None (end) or an error."""
        item: KvmfleetError | None = None
        try:
            while True:
                data = self._stream.recv(CHUNK)
                if isinstance(data, int):  # -2: "try again", only for non-blocking streams
                    time.sleep(_POLL)
                    continue
                if not data:
                    self._eof = True
                    break
                self._queue.put(bytes(data))
        except libvirt.libvirtError as error:
            if not self._closing.is_set():
                item = _read_error(error, f"{self.label}: read")
        self._queue.put(item)

    @property
    def ended(self) -> bool:
        """True once :meth:`read` returned the end of the console (or raised)."""
        return self._ended

    def read(self, timeout: float | None = None) -> bytes | None:
        """The next data received: b"" if none came within ``timeout`` seconds (None: wait),
        None once the console has ended (the domain stopped, or the stream was closed).

        Raises ConsoleLostError (once) when the stream failed.
        """
        if self._ended:
            return None
        try:
            if timeout is not None and timeout <= 0:
                item = self._queue.get_nowait()
            else:
                item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return b""
        if isinstance(item, bytes):
            return item
        self._ended = True
        if item is not None:
            raise item
        return None

    def write(self, data: bytes) -> None:
        """Send bytes to the console (the guest's serial input); blocks until all are sent."""
        view = memoryview(data)
        with libvirt_errors(f"{self.label}: write"):
            while view:
                sent = self._stream.send(bytes(view))
                if sent == -2:  # non-blocking streams only
                    time.sleep(_POLL)
                    continue
                if sent < 0:
                    raise ConsoleLostError(f"{self.label}: write failed", delay=15.0)
                view = view[sent:]

    def capture(
        self,
        *,
        until: Until = None,
        timeout: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sink: Callable[[bytes], None] | None = None,
        whole_line: bool = False,
    ) -> ConsoleOutput:
        """Read until ``until`` appears, ``timeout`` seconds pass (``math.inf``: no limit),
        ``max_bytes`` were read or the console ends; ``sink`` gets every chunk as it comes.

        ``whole_line``: after a match, go on reading to the end of its line (for at most
        :data:`LINE_GRACE` seconds more), so that the line is complete. See
        :class:`_Matcher` for how a regular expression is searched.
        """
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if timeout < 0 or math.isnan(timeout):
            raise ValueError("timeout must be >= 0")
        matcher = _Matcher(until)
        deadline = time.monotonic() + timeout
        buffer = bytearray()
        matched_at: int | None = None
        while True:
            if matched_at is not None and (not whole_line or b"\n" in buffer[matched_at - 1 :]):
                return ConsoleOutput(bytes(buffer), matched=True)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ConsoleOutput(bytes(buffer), matched=matched_at is not None)
            chunk = self.read(min(remaining, 1.0))
            if chunk is None:
                return ConsoleOutput(bytes(buffer), matched=matched_at is not None, ended=True)
            if not chunk:
                continue
            chunk = chunk[: max_bytes - len(buffer)]
            old_length = len(buffer)
            buffer += chunk
            if sink is not None:
                sink(chunk)
            if matched_at is None:
                matched_at = matcher.search(buffer, old_length)
                if matched_at is not None and whole_line:
                    deadline = min(deadline, time.monotonic() + LINE_GRACE)
            if len(buffer) >= max_bytes:
                return ConsoleOutput(bytes(buffer), matched=matched_at is not None, truncated=True)

    def close(self) -> None:
        """End the session (finish after the end of the console, abort otherwise); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        try:
            if self._eof:
                self._stream.finish()
            else:
                self._stream.abort()
        except libvirt.libvirtError:
            pass  # already failed or finished: nothing left to release
        self._thread.join(timeout=10)

    def __enter__(self) -> ConsoleStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ConsoleStream({self.label!r}, {'closed' if self._closed else 'open'})"


def _read_error(error: Any, context: str) -> KvmfleetError:
    classified = classify(error, context)
    if not isinstance(classified, LibvirtUnavailableError):
        return classified
    message = (
        f"{classified.message} (the console was taken over by another session, "
        "or the connection to the host broke)"
    )
    result = ConsoleLostError(message, delay=classified.delay)
    result.code, result.domain, result.libvirt_message = error_details(error)
    return result


def open_console(
    connection: LibvirtConnection,
    domain_name: str,
    *,
    device: str | None = None,
    force: bool = False,
) -> ConsoleStream:
    """Open the serial console of a running domain on a blocking stream.

    ``device``: None for the domain's first console (its serial port), else a device
    alias such as ``serial0``. ``force`` takes the console over from another session.
    """
    if device is not None and not _DEVICE.fullmatch(device):
        raise ValueError(f"not a console device alias: {device!r}")
    context = f"{connection.label}: domain {domain_name!r}: console"
    with libvirt_errors(context):
        domain = connection.conn.lookupByName(domain_name)
        stream = connection.conn.newStream(0)
    flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else 0
    try:
        domain.openConsole(device, stream, flags)
    except libvirt.libvirtError as error:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise _open_error(error, context) from error
    return ConsoleStream(stream, f"{connection.label}: domain {domain_name!r}: console")


def capture_console(
    connection: LibvirtConnection,
    domain_name: str,
    *,
    until: Until = None,
    timeout: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    device: str | None = None,
    force: bool = False,
    sink: Callable[[bytes], None] | None = None,
    whole_line: bool = False,
) -> ConsoleOutput:
    """Open the console, :meth:`~ConsoleStream.capture` from it, close it."""
    with open_console(connection, domain_name, device=device, force=force) as console:
        return console.capture(
            until=until, timeout=timeout, max_bytes=max_bytes, sink=sink, whole_line=whole_line
        )


def read_console(
    connection: LibvirtConnection,
    domain_name: str,
    *,
    until: Until = None,
    timeout: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    device: str | None = None,
    force: bool = False,
) -> bytes:
    """What the console shows until ``until`` appeared or ``timeout`` seconds passed.

    Only output produced while the console is open is seen (QEMU drops a pty's output
    while nobody reads it). See :func:`capture_console` to learn why it stopped.
    """
    return capture_console(
        connection,
        domain_name,
        until=until,
        timeout=timeout,
        max_bytes=max_bytes,
        device=device,
        force=force,
    ).data


# --- interactive ------------------------------------------------------------------------------


class BridgeEnd(StrEnum):
    """Why :func:`bridge` returned."""

    ESCAPE = "escape"
    """The user typed the escape byte."""
    CONSOLE_CLOSED = "console-closed"
    """The console ended (the domain stopped)."""
    INPUT_CLOSED = "input-closed"
    """The input reached its end."""


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode (keys go to the guest as typed); restore it.

    Does nothing when ``fd`` is not a terminal.
    """
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(console: ConsoleStream, *, input_fd: int, output_fd: int, escape: bytes) -> BridgeEnd:
    """Copy ``input_fd`` to the console and the console to ``output_fd`` until an end."""
    if len(escape) != 1:
        raise ValueError("the escape must be one byte")
    while True:
        while (chunk := console.read(0)) is not None and chunk:
            _write_all(output_fd, chunk)
        if chunk is None:
            return BridgeEnd.CONSOLE_CLOSED
        readable, _, _ = select.select([input_fd], [], [], _POLL)
        if not readable:
            continue
        data = os.read(input_fd, 4096)
        if not data:
            return BridgeEnd.INPUT_CLOSED
        before, found, _ = data.partition(escape)
        if before:
            console.write(before)
        if found:
            return BridgeEnd.ESCAPE


def bridge(
    connection: LibvirtConnection,
    domain_name: str,
    *,
    input_fd: int,
    output_fd: int,
    escape: bytes = ESCAPE,
    device: str | None = None,
    force: bool = False,
    on_open: Callable[[], None] | None = None,
) -> BridgeEnd:
    """An interactive console session between two file descriptors (a terminal usually).

    A terminal on ``input_fd`` is put in raw mode for the session and restored after.
    ``on_open`` is called once the console is open (e.g. to print "Escape character is
    ^]"). Returns why the session ended; raises ConsoleLostError when another session
    took the console over.
    """
    with open_console(connection, domain_name, device=device, force=force) as console:
        if on_open is not None:
            on_open()
        with raw_terminal(input_fd):
            return pump(console, input_fd=input_fd, output_fd=output_fd, escape=escape)
