"""Serial consoles (kvmfleet.virt.console) against a fake blocking libvirt stream.

libvirt's test driver has no consoles; the fake below behaves as a remote blocking stream
does on the testbed: ``recv`` blocks, returns b"" at the end, and fails with "stream is
closed" once aborted from another thread. tests/integration/test_consoles.py runs the
same code against real domains.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from typing import Any

import libvirt
import pytest

from kvmfleet.errors import NotFoundError, PermanentError, TemporaryError
from kvmfleet.virt.connection import LibvirtConnection
from kvmfleet.virt.console import (
    ESCAPE,
    BridgeEnd,
    ConsoleBusyError,
    ConsoleLostError,
    NoSuchConsoleError,
    bridge,
    capture_console,
    open_console,
    read_console,
)
from kvmfleet.virt.errors import OperationInvalidError


def made(code: int, message: str, domain: int = libvirt.VIR_FROM_QEMU) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, domain, message, 2, None, None, None, 0, 0)
    return error


class FakeStream:
    """A blocking stream: chunks fed by the test, EOF, failure, abort from another thread."""

    def __init__(self) -> None:
        self.items: list[bytes | libvirt.libvirtError] = []
        self.sent = bytearray()
        self.cond = threading.Condition()
        self.aborted = False
        self.finished = False
        self.short_writes = False

    def feed(self, *items: bytes | libvirt.libvirtError) -> None:
        with self.cond:
            self.items.extend(items)
            self.cond.notify_all()

    def recv(self, size: int) -> bytes:
        with self.cond:
            while not self.items and not self.aborted:
                self.cond.wait()
            if self.aborted:
                raise made(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: stream is closed")
            item = self.items.pop(0)
        if isinstance(item, libvirt.libvirtError):
            raise item
        return item[:size]

    def send(self, data: bytes) -> int:
        if self.aborted:
            raise made(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: stream is closed")
        count = 1 if self.short_writes else len(data)
        self.sent += data[:count]
        return count

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def finish(self) -> None:
        self.finished = True


class FakeDomain:
    def __init__(self, conn: FakeConn, name: str) -> None:
        self.conn = conn
        self.name = name

    def openConsole(self, device: str | None, stream: FakeStream, flags: int) -> None:
        self.conn.opened.append((self.name, device, flags))
        if self.conn.open_error is not None:
            raise self.conn.open_error
        self.conn.stream = stream


class FakeConn:
    def __init__(self) -> None:
        self.domains = {"vm1"}
        self.opened: list[tuple[str, str | None, int]] = []
        self.open_error: libvirt.libvirtError | None = None
        self.stream: FakeStream | None = None
        self.streams: list[FakeStream] = []

    def lookupByName(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise made(libvirt.VIR_ERR_NO_DOMAIN, f"Domain not found: no domain with name '{name}'")
        return FakeDomain(self, name)

    def newStream(self, flags: int) -> FakeStream:
        assert flags == 0, "consoles use blocking streams"
        stream = FakeStream()
        self.streams.append(stream)
        return stream


@pytest.fixture
def fake() -> FakeConn:
    return FakeConn()


@pytest.fixture
def connection(fake: FakeConn) -> LibvirtConnection:
    return LibvirtConnection(fake, "qemu+ssh://root@h1/system")


def feed_later(fake: FakeConn, *items: bytes | libvirt.libvirtError, delay: float = 0.05) -> None:
    def run() -> None:
        deadline = time.monotonic() + 5
        while fake.stream is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.stream is not None
        for item in items:
            time.sleep(delay)
            fake.stream.feed(item)

    threading.Thread(target=run, daemon=True).start()


# ------------------------------------------------------------------ reading


def test_read_until_a_byte_string_split_over_chunks(fake, connection) -> None:
    feed_later(fake, b"SeaBIOS\r\nKVMFLEET-GU", b"EST-READY hostname=vm1\r\n", b"never read")
    started = time.monotonic()
    data = read_console(connection, "vm1", until=b"KVMFLEET-GUEST-READY", timeout=5)
    assert data == b"SeaBIOS\r\nKVMFLEET-GUEST-READY hostname=vm1\r\n"
    assert time.monotonic() - started < 2
    assert fake.opened == [("vm1", None, 0)]
    assert fake.streams[0].aborted, "the stream is aborted when the read ends"


def test_read_until_a_regex_spanning_chunks_and_anchored_per_line(fake, connection) -> None:
    feed_later(fake, b"KVMFLEET-TICK 1\r\nKVMFLEET-TI", b"CK 2", b"3\r\n")
    output = capture_console(
        connection, "vm1", until=re.compile(rb"^KVMFLEET-TICK (\d{2,})\r$", re.M), timeout=5
    )
    assert output.matched and not output.timed_out
    assert output.data.endswith(b"KVMFLEET-TICK 23\r\n")


def test_the_timeout_returns_what_was_read(fake, connection) -> None:
    feed_later(fake, b"boot\r\n", b"tick\r\n")
    started = time.monotonic()
    output = capture_console(connection, "vm1", until=b"never", timeout=0.6)
    took = time.monotonic() - started
    assert output.data == b"boot\r\ntick\r\n"
    assert output.timed_out and not output.matched
    assert 0.5 < took < 2.5


def test_no_pattern_reads_for_the_whole_timeout(fake, connection) -> None:
    feed_later(fake, b"a", b"b")
    assert read_console(connection, "vm1", until=None, timeout=0.4) == b"ab"


def test_max_bytes_cuts_the_output(fake, connection) -> None:
    feed_later(fake, b"0123456789", b"abcdef")
    output = capture_console(connection, "vm1", timeout=5, max_bytes=12)
    assert output.truncated and output.data == b"0123456789ab"


def test_the_end_of_the_console_ends_the_read_and_finishes_the_stream(fake, connection) -> None:
    feed_later(fake, b"reboot: Power down\r\n", b"")
    output = capture_console(connection, "vm1", until=b"never", timeout=5)
    assert output.ended and output.data == b"reboot: Power down\r\n"
    assert fake.streams[0].finished and not fake.streams[0].aborted


def test_sink_sees_every_chunk_as_it_comes(fake, connection) -> None:
    seen: list[bytes] = []
    feed_later(fake, b"one ", b"two ", b"three")
    output = capture_console(connection, "vm1", until=b"three", timeout=5, sink=seen.append)
    assert seen == [b"one ", b"two ", b"three"] and output.matched


def test_device_and_force_are_passed_to_libvirt(fake, connection) -> None:
    with open_console(connection, "vm1", device="serial0", force=True):
        pass
    assert fake.opened == [("vm1", "serial0", libvirt.VIR_DOMAIN_CONSOLE_FORCE)]


@pytest.mark.parametrize("device", ["", "serial 0", "../x", "-x"])
def test_odd_device_names_are_refused(connection, device) -> None:
    with pytest.raises(ValueError):
        open_console(connection, "vm1", device=device)


@pytest.mark.parametrize(
    ("until", "error"),
    [(b"", ValueError), ("text", TypeError), (re.compile("text"), TypeError)],
)
def test_bad_patterns_are_refused(fake, connection, until, error) -> None:
    with pytest.raises(error), open_console(connection, "vm1") as console:
        console.capture(until=until, timeout=1)


def test_close_unblocks_the_reader_thread(fake, connection) -> None:
    console = open_console(connection, "vm1")
    assert console.read(0.1) == b""  # nothing yet: the reader sits in recv
    console.close()
    assert not console._thread.is_alive()
    assert console.read(1) is None
    console.close()  # idempotent


# ------------------------------------------------------------------ errors


def test_a_missing_domain_is_not_found(connection) -> None:
    with pytest.raises(NotFoundError, match="domain 'vm2': console: Domain not found"):
        read_console(connection, "vm2", timeout=1)


def test_a_stopped_domain_is_operation_invalid(fake, connection) -> None:
    fake.open_error = made(
        libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running"
    )
    with pytest.raises(OperationInvalidError, match="domain is not running"):
        read_console(connection, "vm1", timeout=1)
    assert fake.streams[0].aborted, "the unused stream is released"


def test_a_busy_console_says_force_takes_it_over(fake, connection) -> None:
    fake.open_error = made(
        libvirt.VIR_ERR_OPERATION_FAILED,
        "operation failed: Active console session exists for this domain",
    )
    with pytest.raises(ConsoleBusyError, match="force takes the console over") as caught:
        read_console(connection, "vm1", timeout=1)
    assert isinstance(caught.value, TemporaryError)
    assert caught.value.reason == "ConsoleBusy"
    assert caught.value.code == libvirt.VIR_ERR_OPERATION_FAILED


def test_an_unknown_device_is_no_such_console(fake, connection) -> None:
    fake.open_error = made(
        libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: cannot find character device nosuch0"
    )
    with pytest.raises(NoSuchConsoleError) as caught:
        read_console(connection, "vm1", device="nosuch0", timeout=1)
    assert isinstance(caught.value, PermanentError)


def test_a_stream_failure_is_console_lost(fake, connection) -> None:
    failure = made(libvirt.VIR_ERR_RPC, "stream had I/O failure", libvirt.VIR_FROM_STREAMS)
    feed_later(fake, b"partial", failure)
    with open_console(connection, "vm1") as console:
        assert console.read(5) == b"partial"
        with pytest.raises(ConsoleLostError, match="taken over by another session"):
            console.read(5)
        assert console.read(0) is None and console.ended


# ------------------------------------------------------------------ writing and bridging


def test_write_sends_everything_even_on_short_writes(fake, connection) -> None:
    with open_console(connection, "vm1") as console:
        assert fake.stream is not None
        fake.stream.short_writes = True
        console.write(b"root\r")
        assert bytes(fake.stream.sent) == b"root\r"


def test_bridge_copies_both_ways_and_stops_at_the_escape(fake, connection) -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    opened = threading.Event()
    result: dict[str, Any] = {}

    def session() -> None:
        result["end"] = bridge(
            connection, "vm1", input_fd=in_read, output_fd=out_write, on_open=opened.set
        )

    thread = threading.Thread(target=session, daemon=True)  # a failure must not hang pytest
    thread.start()
    try:
        assert opened.wait(5)
        assert fake.stream is not None
        fake.stream.feed(b"login: ")
        readable, _, _ = select.select([out_read], [], [], 5)
        assert readable, "the console's output never reached the output fd"
        assert os.read(out_read, 100) == b"login: "
        os.write(in_write, b"root\r")
        deadline = time.monotonic() + 5
        while bytes(fake.stream.sent) != b"root\r" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bytes(fake.stream.sent) == b"root\r"
        os.write(in_write, b"ls" + ESCAPE + b"never sent")
        thread.join(5)
        assert result["end"] is BridgeEnd.ESCAPE
        assert bytes(fake.stream.sent) == b"root\rls"
        assert fake.stream.aborted
    finally:
        for fd in (in_read, in_write, out_read, out_write):
            os.close(fd)


def test_bridge_ends_with_the_console(fake, connection) -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    try:
        feed_later(fake, b"bye\r\n", b"")
        end = bridge(connection, "vm1", input_fd=in_read, output_fd=out_write)
        assert end is BridgeEnd.CONSOLE_CLOSED
        assert os.read(out_read, 100) == b"bye\r\n"
    finally:
        for fd in (in_read, in_write, out_read, out_write):
            os.close(fd)


def test_bridge_ends_with_its_input(fake, connection) -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    try:
        os.write(in_write, b"x")
        os.close(in_write)
        end = bridge(connection, "vm1", input_fd=in_read, output_fd=out_write)
        assert end is BridgeEnd.INPUT_CLOSED
        assert fake.stream is not None and bytes(fake.stream.sent) == b"x"
    finally:
        for fd in (in_read, out_read, out_write):
            os.close(fd)


def test_whole_line_reads_on_to_the_end_of_the_matching_line(fake, connection) -> None:
    feed_later(fake, b"KVMFLEET-GUEST-READY host", b"name=vm1\r", b"\n", b"KVMFLEET-TICK 1\r\n")
    output = capture_console(
        connection, "vm1", until=b"KVMFLEET-GUEST-READY", timeout=5, whole_line=True
    )
    assert output.matched and output.data == b"KVMFLEET-GUEST-READY hostname=vm1\r\n"


def test_whole_line_is_satisfied_by_a_match_ending_in_a_newline(fake, connection) -> None:
    feed_later(fake, b"login: root\n", b"never needed")
    output = capture_console(
        connection, "vm1", until=re.compile(rb"login: \w+\n"), timeout=5, whole_line=True
    )
    assert output.matched and output.data == b"login: root\n"


def test_whole_line_waits_only_a_little_for_a_line_that_does_not_end(fake, connection) -> None:
    feed_later(fake, b"login: ")
    started = time.monotonic()
    output = capture_console(connection, "vm1", until=b"login:", timeout=30, whole_line=True)
    assert output.matched and not output.timed_out and output.data == b"login: "
    assert time.monotonic() - started < 5
