"""Pure parsers of the output of :mod:`kvmfleet.ssh.hostcmds` commands; no I/O here.

Unreadable output raises :class:`UnexpectedOutputError` (permanent: the host runs a tool
that does not speak the expected format, e.g. an ``ip`` without ``-j``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvmfleet.errors import PermanentError

KVM_DEVICE = (10, 232)
"""major, minor of the real /dev/kvm (a misc device)."""


class UnexpectedOutputError(PermanentError):
    """A command's output is not in the format the parser knows."""

    reason = "UnexpectedOutput"


def _unexpected(what: str, detail: str) -> UnexpectedOutputError:
    return UnexpectedOutputError(f"cannot read the output of {what}: {detail}")


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _unexpected(what, f"not JSON ({error})") from None


def _json_list(text: str, what: str) -> list[Mapping[str, Any]]:
    data = _json(text, what)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise _unexpected(what, "expected a JSON list of objects")
    return data


# --- CPU, memory, /dev/kvm ----------------------------------------------------------------


def parse_cpu_flags(text: str) -> frozenset[str]:
    """The flags of a ``flags : fpu vme ... vmx ...`` line of /proc/cpuinfo."""
    for line in text.splitlines():
        name, colon, flags = line.partition(":")
        if colon and name.strip() == "flags":
            return frozenset(flags.split())
    raise _unexpected("grep ^flags /proc/cpuinfo", "no 'flags' line")


def hardware_virtualization(flags: Iterable[str]) -> str | None:
    """``"vmx"`` (Intel VT-x), ``"svm"`` (AMD-V) or None (only emulation is possible)."""
    present = set(flags)
    for extension in ("vmx", "svm"):
        if extension in present:
            return extension
    return None


@dataclass(frozen=True)
class MemInfo:
    """Memory of the host in MiB (``available`` is None on kernels without MemAvailable)."""

    total_mib: int
    available_mib: int | None
    free_mib: int | None = None


def parse_meminfo(text: str) -> MemInfo:
    """Read MemTotal / MemAvailable / MemFree (kB) from /proc/meminfo."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+):\s+(\d+)(?:\s+kB)?\s*", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    if "MemTotal" not in values:
        raise _unexpected("cat /proc/meminfo", "no MemTotal line")

    def mib(key: str) -> int | None:
        return None if key not in values else values[key] // 1024

    return MemInfo(values["MemTotal"] // 1024, mib("MemAvailable"), mib("MemFree"))


def parse_nproc(text: str) -> int:
    """The CPU count printed by ``nproc``."""
    try:
        count = int(text.strip())
    except ValueError:
        raise _unexpected("nproc", f"not a number: {text.strip()[:40]!r}") from None
    if count < 1:
        raise _unexpected("nproc", f"{count} CPUs")
    return count


def parse_dev_kvm_device(text: str) -> bool:
    """True if ``stat -L -c '%F %t:%T' /dev/kvm`` shows the real KVM device (10:232).

    False for anything else, e.g. /dev/null bind-mounted over /dev/kvm (1:3).
    """
    match = re.fullmatch(r"character special file ([0-9a-f]+):([0-9a-f]+)", text.strip())
    if not match:
        return False
    return (int(match.group(1), 16), int(match.group(2), 16)) == KVM_DEVICE


@dataclass(frozen=True)
class TcpReach:
    """What :func:`kvmfleet.ssh.hostcmds.tcp_connect` found: whether the address answered
    (a listener, or a refusal from the host itself) and, when not, why."""

    answered: bool
    listening: bool
    detail: str


_TIMEOUT_STATUS = 124


def parse_tcp_connect(exit_status: int, stderr: str) -> TcpReach:
    """Read the exit status and error output of a ``tcp_connect`` command."""
    if exit_status == 0:
        return TcpReach(answered=True, listening=True, detail="connected")
    if "Connection refused" in stderr:
        return TcpReach(answered=True, listening=False, detail="connection refused")
    if exit_status == _TIMEOUT_STATUS:
        return TcpReach(answered=False, listening=False, detail="no answer within the deadline")
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    reason = lines[-1].rsplit(": ", 1)[-1] if lines else f"exit status {exit_status}"
    return TcpReach(answered=False, listening=False, detail=reason)


def parse_hostname(text: str) -> str:
    """The first line of ``hostname``."""
    name = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not name:
        raise _unexpected("hostname", "empty output")
    return name


@dataclass(frozen=True)
class VirshVersion:
    """What ``virsh version`` reports: ``9.0.0``, ``QEMU``, ``7.2.0``."""

    libvirt: str | None
    hypervisor: str | None
    hypervisor_version: str | None


def parse_virsh_version(text: str) -> VirshVersion:
    """Read "Using library: libvirt X" and "Running hypervisor: NAME Y"."""
    library = re.search(r"^Using library: libvirt (\S+)", text, re.MULTILINE)
    running = re.search(r"^Running hypervisor: (\S+) (\S+)", text, re.MULTILINE)
    if library is None and running is None:
        raise _unexpected("virsh version", "no library or hypervisor line")
    return VirshVersion(
        libvirt=library.group(1) if library else None,
        hypervisor=running.group(1) if running else None,
        hypervisor_version=running.group(2) if running else None,
    )


# --- network ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One network link from ``ip -j -d link show``.

    ``kind`` is the link type (``bridge``, ``veth``, ``vlan``...; None for plain NICs);
    ``master`` the bridge (or bond) it is enslaved to; ``port_kind`` what kind of master
    it is a port of (``bridge``).
    """

    name: str
    index: int
    mac: str | None
    mtu: int | None
    operstate: str
    flags: frozenset[str]
    kind: str | None = None
    master: str | None = None
    port_kind: str | None = None

    @property
    def is_up(self) -> bool:
        """Administratively up (the UP flag)."""
        return "UP" in self.flags

    @property
    def has_carrier(self) -> bool:
        """The link has carrier (LOWER_UP)."""
        return "LOWER_UP" in self.flags

    @property
    def is_bridge(self) -> bool:
        """The link is a Linux bridge."""
        return self.kind == "bridge"

    @property
    def is_loopback(self) -> bool:
        """The link is the loopback device."""
        return "LOOPBACK" in self.flags


def parse_ip_links(text: str) -> list[Link]:
    """Links of ``ip -j -d link show`` (also works without ``-d``: no kinds then)."""
    links = []
    for item in _json_list(text, "ip -j link show"):
        info = item.get("linkinfo") or {}
        try:
            links.append(
                Link(
                    name=str(item["ifname"]),
                    index=int(item["ifindex"]),
                    mac=item.get("address"),
                    mtu=item.get("mtu"),
                    operstate=str(item.get("operstate", "UNKNOWN")),
                    flags=frozenset(item.get("flags") or ()),
                    kind=info.get("info_kind"),
                    master=item.get("master"),
                    port_kind=info.get("info_slave_kind"),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise _unexpected("ip -j link show", f"a link without {error}") from None
    return links


def find_link(links: Sequence[Link], name: str) -> Link | None:
    """The link called ``name``, if present."""
    return next((link for link in links if link.name == name), None)


def bridge_ports(links: Sequence[Link], bridge: str) -> list[str]:
    """Names of the links enslaved to ``bridge``."""
    return [link.name for link in links if link.master == bridge]


@dataclass(frozen=True)
class Address:
    """One address on a link: family ``inet``/``inet6``, the address and its prefix."""

    family: str
    local: str
    prefixlen: int
    scope: str = "global"

    @property
    def cidr(self) -> str:
        """``10.0.0.5/24``."""
        return f"{self.local}/{self.prefixlen}"


def parse_ip_addrs(text: str) -> dict[str, tuple[Address, ...]]:
    """Addresses per link name from ``ip -j addr show`` (links without any: empty)."""
    result: dict[str, tuple[Address, ...]] = {}
    for item in _json_list(text, "ip -j addr show"):
        name = item.get("ifname")
        if not isinstance(name, str):
            raise _unexpected("ip -j addr show", "a link without ifname")
        addresses = []
        for info in item.get("addr_info") or ():
            if "local" not in info or "prefixlen" not in info:
                continue
            addresses.append(
                Address(
                    family=str(info.get("family", "")),
                    local=str(info["local"]),
                    prefixlen=int(info["prefixlen"]),
                    scope=str(info.get("scope", "global")),
                )
            )
        result[name] = tuple(addresses)
    return result


def link_with_address(addresses: Mapping[str, Sequence[Address]], address: str) -> str | None:
    """The link that carries ``address`` (the NIC a KvmHost is reached through)."""
    for name, items in addresses.items():
        if any(item.local == address for item in items):
            return name
    return None


def global_addresses(addresses: Sequence[Address]) -> list[Address]:
    """The addresses that move with a bridge takeover (scope global, not link-local)."""
    return [item for item in addresses if item.scope == "global"]


@dataclass(frozen=True)
class Route:
    """One route of ``ip -j route show``."""

    dst: str
    dev: str | None
    gateway: str | None = None
    protocol: str | None = None
    metric: int | None = None
    prefsrc: str | None = None

    @property
    def is_default(self) -> bool:
        """The default route."""
        return self.dst in {"default", "0.0.0.0/0", "::/0"}


def parse_ip_routes(text: str) -> list[Route]:
    """Routes of ``ip -j route show``."""
    routes = []
    for item in _json_list(text, "ip -j route show"):
        if "dst" not in item:
            raise _unexpected("ip -j route show", "a route without dst")
        metric = item.get("metric")
        routes.append(
            Route(
                dst=str(item["dst"]),
                dev=item.get("dev"),
                gateway=item.get("gateway"),
                protocol=item.get("protocol"),
                metric=int(metric) if isinstance(metric, int) else None,
                prefsrc=item.get("prefsrc"),
            )
        )
    return routes


def default_route(routes: Sequence[Route]) -> Route | None:
    """The default route with the lowest metric, if any."""
    defaults = [route for route in routes if route.is_default]
    return min(defaults, key=lambda route: route.metric or 0, default=None)


# --- images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info --output=json`` says about one image."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None = None
    backing_filename: str | None = None
    backing_format: str | None = None


def _image(item: Mapping[str, Any]) -> ImageInfo:
    try:
        return ImageInfo(
            filename=str(item["filename"]),
            format=str(item["format"]),
            virtual_size=int(item["virtual-size"]),
            actual_size=None if item.get("actual-size") is None else int(item["actual-size"]),
            backing_filename=item.get("full-backing-filename") or item.get("backing-filename"),
            backing_format=item.get("backing-filename-format"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise _unexpected("qemu-img info", f"missing or bad {error}") from None


def parse_qemu_img_info(text: str) -> ImageInfo:
    """One image (the first of a ``--backing-chain`` list)."""
    return parse_qemu_img_chain(text)[0]


def parse_qemu_img_chain(text: str) -> list[ImageInfo]:
    """The image and its backing chain (``--backing-chain``), top image first."""
    data = _json(text, "qemu-img info")
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise _unexpected("qemu-img info", "expected a JSON object or a list of objects")
    return [_image(item) for item in items]
