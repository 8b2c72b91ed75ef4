"""Network interfaces: a NIC on a host bridge (``<interface type='bridge'>``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kvmfleet.domain.domainxml.xmlutil import child, element


@dataclass(frozen=True)
class BridgeInterface:
    """A virtual NIC with a fixed MAC, plugged into a Linux bridge of the host."""

    bridge: str
    mac: str
    model: str = "virtio"

    def to_element(self) -> ET.Element:
        """The ``<interface>`` element."""
        interface = element("interface", {"type": "bridge"})
        child(interface, "mac", {"address": self.mac})
        child(interface, "source", {"bridge": self.bridge})
        child(interface, "model", {"type": self.model})
        return interface
