"""The kvmfleet ``<metadata>`` entry that ties a libvirt domain to its VirtualNode.

Written as::

    <metadata>
      <kvmfleet:node xmlns:kvmfleet="https://kvmfleet.io/xmlns/domain/1.0"
                     uid="..." namespace="..." name="..." generation="3">
        <kvmfleet:serial port="0" speed="115200"/>
        <kvmfleet:cpu choice="custom/kvm64"/>
        <kvmfleet:disk name="hda" target="vda"/>
      </kvmfleet:node>
    </metadata>

``uid`` identifies the owner even after a rename or a re-creation with the same name;
``generation`` is the VirtualNode's ``metadata.generation`` the definition was built from;
the serial speed is recorded here because libvirt has no place for it (see serial.py);
the disk entries map each target back to the disk's name in the spec; the CPU choice
(guestcpu.py) is recorded because libvirt expands ``host-model`` into a named model in a
running domain's XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kvmfleet.domain.domainxml.xmlutil import child, element

XMLNS = "https://kvmfleet.io/xmlns/domain/1.0"
"""The XML namespace of kvmfleet's domain metadata."""

PREFIX = "kvmfleet"


def _q(tag: str) -> str:
    """The tag as ElementTree reads it back: ``{namespace}tag``."""
    return f"{{{XMLNS}}}{tag}"


@dataclass(frozen=True)
class DiskMetadata:
    """Which spec disk a target dev is."""

    name: str
    target: str


@dataclass(frozen=True)
class NodeMetadata:
    """What the domain records about the VirtualNode it belongs to."""

    uid: str
    namespace: str
    name: str
    generation: int | None = None
    serial_port: int | None = None
    serial_speed: int | None = None
    disks: tuple[DiskMetadata, ...] = ()
    cpu: str | None = None

    def to_element(self) -> ET.Element:
        """The ``<metadata>`` element holding ``<kvmfleet:node>``."""
        # Tags with a literal prefix and an explicit xmlns attribute: the declaration then
        # sits on <kvmfleet:node> itself, as libvirt writes it back, and no global
        # ElementTree namespace registration is needed.
        metadata = element("metadata")
        node = child(
            metadata,
            f"{PREFIX}:node",
            {
                f"xmlns:{PREFIX}": XMLNS,
                "uid": self.uid,
                "namespace": self.namespace,
                "name": self.name,
                "generation": None if self.generation is None else str(self.generation),
            },
        )
        if self.serial_port is not None or self.serial_speed is not None:
            child(
                node,
                f"{PREFIX}:serial",
                {
                    "port": None if self.serial_port is None else str(self.serial_port),
                    "speed": None if self.serial_speed is None else str(self.serial_speed),
                },
            )
        if self.cpu is not None:
            child(node, f"{PREFIX}:cpu", {"choice": self.cpu})
        for disk in self.disks:
            child(node, f"{PREFIX}:disk", {"name": disk.name, "target": disk.target})
        return metadata

    @classmethod
    def from_metadata(cls, metadata: ET.Element | None) -> NodeMetadata | None:
        """Read back from a parsed ``<metadata>`` element; None if kvmfleet's is absent."""
        node = None if metadata is None else metadata.find(_q("node"))
        if node is None:
            return None
        serial = node.find(_q("serial"))
        cpu = node.find(_q("cpu"))
        return cls(
            uid=node.get("uid", ""),
            namespace=node.get("namespace", ""),
            name=node.get("name", ""),
            generation=_int_or_none(node.get("generation")),
            serial_port=_int_or_none(None if serial is None else serial.get("port")),
            serial_speed=_int_or_none(None if serial is None else serial.get("speed")),
            cpu=None if cpu is None else cpu.get("choice"),
            disks=tuple(
                DiskMetadata(disk.get("name", ""), disk.get("target", ""))
                for disk in node.findall(_q("disk"))
            ),
        )


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
