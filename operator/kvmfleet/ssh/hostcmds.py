"""Pure argv builders for the commands reconcilers run on a host; no I/O here.

Each builder returns a fresh ``list[str]`` for :meth:`kvmfleet.ssh.session.SshSession.run`
(which quotes it once). Every user-given value is validated first with
:mod:`kvmfleet.domain.validation` and refused with InvalidSpecError otherwise; paths are
absolute and normalized, so no argument can start with ``-`` and be read as an option.
The parsers of their output are in :mod:`kvmfleet.ssh.facts`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kvmfleet.domain.storage_urls import StorageKind, parse_storage_url
from kvmfleet.domain.validation import (
    fail,
    show,
    validate_absolute_path,
    validate_host_address,
    validate_interface_name,
)

DEV_KVM = "/dev/kvm"
IMAGE_FORMATS = frozenset({"qcow2", "raw"})
"""Image formats kvmfleet creates and reads."""

_IP_BATCH_OBJECTS = frozenset({"link", "addr", "address", "route"})
_IP_BATCH_TOKEN = re.compile(r"[A-Za-z0-9_.:/@+-]+")
"""What one word of an ``ip -batch`` line may hold: no blanks, quotes, ``#`` or ``\\``."""


# --- facts about the host ---------------------------------------------------------------------


def hostname() -> list[str]:
    """The host's name (``hostname``)."""
    return ["hostname"]


def uname_machine() -> list[str]:
    """The machine architecture (``uname -m``), e.g. ``x86_64``."""
    return ["uname", "-m"]


def cpuinfo_flags() -> list[str]:
    """The first ``flags`` line of /proc/cpuinfo (vmx/svm tell hardware virtualization)."""
    return ["grep", "-m1", "-E", "^flags", "/proc/cpuinfo"]


def nproc() -> list[str]:
    """The number of CPUs available (``nproc``)."""
    return ["nproc"]


def meminfo() -> list[str]:
    """/proc/meminfo (MemTotal, MemAvailable)."""
    return ["cat", "/proc/meminfo"]


def dev_kvm_usable() -> list[str]:
    """Exit 0 if /dev/kvm is a character device the SSH user may read and write.

    Not sufficient alone: a bind mount of /dev/null over /dev/kvm passes it too; pair it
    with :func:`dev_kvm_device` (or libvirt's domain capabilities).
    """
    return ["test", "-c", DEV_KVM, "-a", "-r", DEV_KVM, "-a", "-w", DEV_KVM]


def dev_kvm_device() -> list[str]:
    """File type and major:minor (hex) of /dev/kvm; the real device is ``a:e8`` (10:232)."""
    return ["stat", "-L", "-c", "%F %t:%T", DEV_KVM]


def virsh_version() -> list[str]:
    """Library and hypervisor versions as the host's own virsh reports them."""
    return ["virsh", "--connect", "qemu:///system", "version"]


# --- network ------------------------------------------------------------------------------


def ip_links() -> list[str]:
    """All links with details, JSON (bridge/port kinds, master)."""
    return ["ip", "-j", "-d", "link", "show"]


def ip_link(name: str) -> list[str]:
    """One link with details, JSON (exit status 1 if it does not exist)."""
    return ["ip", "-j", "-d", "link", "show", "dev", validate_interface_name(name, "name")]


def ip_addrs() -> list[str]:
    """All addresses per link, JSON."""
    return ["ip", "-j", "addr", "show"]


def ip_routes() -> list[str]:
    """The main routing table, JSON (the default route names the uplink)."""
    return ["ip", "-j", "route", "show"]


TCP_CHECK_SECONDS = 5
"""How long :func:`tcp_connect` waits for an answer before it calls the port unreachable."""


def tcp_connect(address: str, port: int) -> list[str]:
    """Open (and close) a TCP connection from the host to ``address:port`` (bash /dev/tcp).

    Exit 0: something listens; "Connection refused": the address answers, nothing listens
    there now; 124: no answer within TCP_CHECK_SECONDS. Read it with
    :func:`kvmfleet.ssh.facts.parse_tcp_connect`. The address and port are the script's
    arguments, never part of the script itself.
    """
    host = validate_host_address(address, "address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        fail("port", f"must be a TCP port 1-65535 (got {show(port)})")
    script = 'exec 3<>"/dev/tcp/$1/$2"'
    return ["timeout", str(TCP_CHECK_SECONDS), "bash", "-c", script, "tcp-check", host, str(port)]


def ip_batch() -> list[str]:
    """``ip -batch -``: several ``ip`` commands from stdin, run by ONE process.

    Used where the commands cut the very network path of the SSH session running them
    (moving the host's address onto a bridge): a single process finishes the whole
    sequence even while the connection is briefly interrupted. Plan the commands with
    :mod:`kvmfleet.domain.bridges`, build the stdin with :func:`ip_batch_input`; ``ip``
    stops at the first failing command.
    """
    return ["ip", "-batch", "-"]


def ip_batch_input(commands: Sequence[str | Sequence[str]]) -> bytes:
    """The stdin of :func:`ip_batch`: one validated command per line.

    A command is a line (``"link set dev eth0 up"``, as :mod:`kvmfleet.domain.bridges`
    plans them) or a list of words, without the leading ``ip``. It must start with
    link/addr/route, and every word must match ``[A-Za-z0-9_.:/@+-]+``: ``ip -batch``
    splits on blanks and gives quotes, ``#`` and ``\\`` a meaning, so none may appear.
    """
    if isinstance(commands, str) or not commands:
        raise ValueError("ip batch: expected a non-empty list of commands")
    lines = []
    for number, command in enumerate(commands):
        words = command.split(" ") if isinstance(command, str) else list(command)
        if not words or words == [""]:
            raise ValueError(f"ip batch command {number}: empty")
        if words[0] not in _IP_BATCH_OBJECTS:
            raise ValueError(f"ip batch command {number}: {show(words[0])} is not link/addr/route")
        for word in words:
            if not isinstance(word, str) or not _IP_BATCH_TOKEN.fullmatch(word):
                raise ValueError(f"ip batch command {number}: unsafe word {show(word)}")
        lines.append(" ".join(words) + "\n")
    return "".join(lines).encode("ascii")


# --- files --------------------------------------------------------------------------------


def mkdir_p(path: str) -> list[str]:
    """Create a directory and its parents (no error if it exists)."""
    return ["mkdir", "-p", "--", validate_absolute_path(path, "path")]


def test_block_device(path: str) -> list[str]:
    """Exit 0 if ``path`` is a block device (a ``phy:`` disk)."""
    return ["test", "-b", validate_absolute_path(path, "path")]


def test_directory(path: str) -> list[str]:
    """Exit 0 if ``path`` is a directory (following symlinks)."""
    return ["test", "-d", validate_absolute_path(path, "path")]


def test_exists(path: str) -> list[str]:
    """Exit 0 if ``path`` exists (any type)."""
    return ["test", "-e", validate_absolute_path(path, "path")]


def rm_file(path: str) -> list[str]:
    """Remove one file; no error if it is already gone (never a directory: no ``-r``)."""
    checked = validate_absolute_path(path, "path")
    if checked == "/":
        fail("path", "refusing to remove '/'")
    return ["rm", "-f", "--", checked]


# --- disk images --------------------------------------------------------------------------


def image_location(value: object, field: str = "path") -> str:
    """An image as qemu-img names it: an absolute path, or ``nfs://server/path`` (libnfs)."""
    if isinstance(value, str) and value.startswith("nfs://"):
        url = parse_storage_url(value, field)
        if url.kind is not StorageKind.NFS or url.path == "/":
            fail(field, f"{show(value)} does not name a file on an NFS export")
        return str(url)
    path = validate_absolute_path(value, field)
    if path == "/":
        fail(field, "'/' is not an image file")
    return path


def _format(fmt: object, field: str = "format") -> str:
    if fmt not in IMAGE_FORMATS:
        fail(field, f"{show(fmt)} is not one of {', '.join(sorted(IMAGE_FORMATS))}")
    return str(fmt)


def _size(size: object, field: str = "size") -> str:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        fail(field, f"{show(size)} must be a positive number of bytes")
    return str(size)


def qemu_img_create(
    path_or_url: str,
    size_bytes: int | None,
    fmt: str = "qcow2",
    backing: str | None = None,
    backing_fmt: str = "qcow2",
) -> list[str]:
    """Create an image; with ``backing`` a qcow2 overlay (size None: the backing's size)."""
    argv = ["qemu-img", "create", "-q", "-f", _format(fmt)]
    if backing is not None:
        if fmt != "qcow2":
            fail("format", "only qcow2 images can have a backing file")
        argv += ["-F", _format(backing_fmt, "backingFormat"), "-b", image_location(backing)]
    elif size_bytes is None:
        fail("size", "is required for an image without a backing file")
    argv.append(image_location(path_or_url))
    if size_bytes is not None:
        argv.append(_size(size_bytes))
    return argv


def qemu_img_info(path_or_url: str, backing_chain: bool = False, fmt: str = "qcow2") -> list[str]:
    """Image facts as JSON; ``-U`` (no lock) so it works while a VM uses the image.

    The format is always named (``-f``): qemu-img never probes it, so garbage over a
    qcow2 header is an error, not a "raw" image. With ``backing_chain`` qemu-img follows
    the backing files with the formats their overlays record.
    """
    argv = ["qemu-img", "info", "--output=json", "-U", "-f", _format(fmt)]
    if backing_chain:
        argv.append("--backing-chain")
    return [*argv, image_location(path_or_url)]


def qemu_img_resize(path_or_url: str, size_bytes: int, fmt: str = "qcow2") -> list[str]:
    """Grow an image to ``size_bytes`` (qemu-img refuses to shrink without --shrink)."""
    return [
        "qemu-img",
        "resize",
        "-q",
        "-f",
        _format(fmt),
        image_location(path_or_url),
        _size(size_bytes),
    ]


def qemu_img_convert(
    source: str, destination: str, fmt: str = "qcow2", source_fmt: str = "qcow2"
) -> list[str]:
    """A full, independent copy (flattening any backing chain): VmMaster capture, ``-d``."""
    return [
        "qemu-img",
        "convert",
        "-q",
        "-f",
        _format(source_fmt, "sourceFormat"),
        "-O",
        _format(fmt),
        image_location(source, "source"),
        image_location(destination, "destination"),
    ]


def qemu_img_rebase(
    path_or_url: str, backing: str, backing_fmt: str = "qcow2", *, unsafe: bool = False
) -> list[str]:
    """Point a qcow2 image at a new backing file (``unsafe``: only rewrite the header)."""
    argv = ["qemu-img", "rebase", "-q", "-f", "qcow2"]
    if unsafe:
        argv.append("-u")
    return [
        *argv,
        "-F",
        _format(backing_fmt, "backingFormat"),
        "-b",
        image_location(backing),
        image_location(path_or_url),
    ]


def qemu_img_compare(
    first: str, second: str, fmt: str = "qcow2", second_fmt: str = "qcow2"
) -> list[str]:
    """Exit 0 when both images (with their backing chains) hold the same guest data, 1 when
    they differ, 2 on error; ``-U`` is not used: neither image may be in use."""
    return [
        "qemu-img",
        "compare",
        "-q",
        "-f",
        _format(fmt),
        "-F",
        _format(second_fmt, "secondFormat"),
        image_location(first, "first"),
        image_location(second, "second"),
    ]


def rename_file(source: str, destination: str) -> list[str]:
    """Rename one file within its directory (``mv -T``: never into a directory)."""
    src = image_location(source, "source")
    dst = image_location(destination, "destination")
    if src.startswith("nfs://") or dst.startswith("nfs://"):
        fail("source", "an nfs:// file is renamed with kvmfleet.ssh.nfsdirect")
    return ["mv", "-f", "-T", "--", src, dst]


def chmod_file(path: str, mode: int) -> list[str]:
    """Set one file's permission bits (``mode`` at most 0o777, never recursive)."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        fail("mode", f"{show(mode)} is not a permission mode")
    return ["chmod", f"{mode:o}", "--", image_location(path)]
