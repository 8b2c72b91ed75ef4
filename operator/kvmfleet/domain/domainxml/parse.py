"""Reading back what the reconcilers need from a live domain's XML (``virsh dumpxml``).

:func:`parse_domain` extracts identity (name, UUID, the kvmfleet metadata), size (vCPUs,
memory in KiB), NICs (MAC, bridge, model), disks (target, bus, source), the serial pty
and the VNC port. It reads any libvirt domain, not only those kvmfleet built: missing
parts come back as None or empty.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kvmfleet.domain.domainxml.metadata import NodeMetadata
from kvmfleet.errors import PermanentError

_MEMORY_UNITS: dict[str, int] = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}


@dataclass(frozen=True)
class LiveNic:
    """One ``<interface>``: its MAC, the bridge it is on (if any) and its model."""

    mac: str | None
    bridge: str | None = None
    model: str | None = None
    type: str = "bridge"


@dataclass(frozen=True)
class LiveDisk:
    """One ``<disk>``: target dev and bus, and where its data is.

    ``source``: the file path (``file``), the device (``block``) or the name on the
    server (``network``, with ``protocol`` and ``host``). ``name``: the spec disk's name
    when kvmfleet's metadata maps this target, else None.
    """

    target: str
    bus: str | None = None
    device: str = "disk"
    source_type: str = "file"
    source: str | None = None
    protocol: str | None = None
    host: str | None = None
    driver_type: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class LiveDomainInfo:
    """The parts of a live domain definition kvmfleet compares with the spec."""

    name: str
    uuid: str | None
    virt_type: str | None
    vcpus: int | None
    memory_kib: int | None
    node: NodeMetadata | None = None
    nics: tuple[LiveNic, ...] = ()
    disks: tuple[LiveDisk, ...] = ()
    serial_pty: str | None = None
    vnc_port: int | None = None
    vnc_listen: str | None = None
    vnc_valid_to: str | None = None
    """``passwdValidTo`` of the VNC password (libvirt shows it without the password itself):
    which password the domain holds, as kvmfleet sets one expiry per password."""
    boot: tuple[str, ...] = ()

    @property
    def uid(self) -> str | None:
        """The owning VirtualNode's uid from the kvmfleet metadata, if any."""
        return self.node.uid if self.node else None

    @property
    def namespace(self) -> str | None:
        """The owning VirtualNode's namespace from the kvmfleet metadata, if any."""
        return self.node.namespace if self.node else None

    @property
    def node_name(self) -> str | None:
        """The owning VirtualNode's name from the kvmfleet metadata, if any."""
        return self.node.name if self.node else None

    @property
    def macs(self) -> tuple[str, ...]:
        """The MACs of all NICs, in order."""
        return tuple(nic.mac for nic in self.nics if nic.mac)


def parse_domain(xml: str) -> LiveDomainInfo:
    """Parse a domain XML document; raises PermanentError (InvalidDomainXML) if unreadable."""
    try:
        # The document comes from libvirtd on a managed host; ElementTree resolves no
        # external entities and expat bounds entity expansion.
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError as error:
        raise PermanentError(
            f"cannot parse domain XML: {error}", reason="InvalidDomainXML"
        ) from error
    if root.tag != "domain":
        raise PermanentError(
            f"not a domain XML document (root element <{root.tag}>)", reason="InvalidDomainXML"
        )
    node = NodeMetadata.from_metadata(root.find("metadata"))
    names = {disk.target: disk.name for disk in node.disks} if node else {}
    devices = root.find("devices")
    graphics = _vnc(devices)
    return LiveDomainInfo(
        name=(root.findtext("name") or "").strip(),
        uuid=_text(root, "uuid"),
        virt_type=root.get("type"),
        vcpus=_int(_text(root, "vcpu")),
        memory_kib=_memory_kib(root.find("memory")),
        node=node,
        nics=tuple(_nic(item) for item in _all(devices, "interface")),
        disks=tuple(_disk(item, names) for item in _all(devices, "disk")),
        serial_pty=_serial_pty(devices),
        vnc_port=_vnc_port(graphics),
        vnc_listen=None if graphics is None else graphics.get("listen"),
        vnc_valid_to=None if graphics is None else graphics.get("passwdValidTo"),
        boot=tuple(boot.get("dev", "") for boot in root.findall("os/boot")),
    )


def _all(parent: ET.Element | None, tag: str) -> list[ET.Element]:
    return [] if parent is None else parent.findall(tag)


def _text(parent: ET.Element, path: str) -> str | None:
    text = parent.findtext(path)
    return text.strip() if text and text.strip() else None


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _memory_kib(memory: ET.Element | None) -> int | None:
    if memory is None:
        return None
    amount = _int(_text(memory, "."))
    factor = _MEMORY_UNITS.get(memory.get("unit", "KiB").lower())
    if amount is None or factor is None:
        return None
    return amount * factor // 1024


def _nic(interface: ET.Element) -> LiveNic:
    mac = interface.find("mac")
    source = interface.find("source")
    model = interface.find("model")
    return LiveNic(
        mac=None if mac is None else (mac.get("address") or "").lower() or None,
        bridge=None if source is None else source.get("bridge"),
        model=None if model is None else model.get("type"),
        type=interface.get("type", ""),
    )


def _disk(disk: ET.Element, names: dict[str, str]) -> LiveDisk:
    target = disk.find("target")
    source = disk.find("source")
    driver = disk.find("driver")
    host = None if source is None else source.find("host")
    target_dev = "" if target is None else target.get("dev", "")
    source_type = disk.get("type", "file")
    location = None
    if source is not None:
        location = {"file": source.get("file"), "block": source.get("dev")}.get(
            source_type, source.get("name")
        )
    return LiveDisk(
        target=target_dev,
        bus=None if target is None else target.get("bus"),
        device=disk.get("device", "disk"),
        source_type=source_type,
        source=location,
        protocol=None if source is None else source.get("protocol"),
        host=None if host is None else host.get("name"),
        driver_type=None if driver is None else driver.get("type"),
        name=names.get(target_dev),
    )


def _serial_pty(devices: ET.Element | None) -> str | None:
    for serial in _all(devices, "serial"):
        source = serial.find("source")
        if serial.get("type") == "pty" and source is not None and source.get("path"):
            return source.get("path")
    for console in _all(devices, "console"):
        if console.get("type") == "pty" and console.get("tty"):
            return console.get("tty")
    return None


def _vnc(devices: ET.Element | None) -> ET.Element | None:
    for graphics in _all(devices, "graphics"):
        if graphics.get("type") == "vnc":
            return graphics
    return None


def _vnc_port(graphics: ET.Element | None) -> int | None:
    port = None if graphics is None else _int(graphics.get("port"))
    return port if port is not None and port > 0 else None
