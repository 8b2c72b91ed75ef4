"""The serial console: a pty-backed serial port plus the ``<console>`` that points at it.

The port number N makes the guest's ttySN the console (xCAT's serialport). The speed
(xCAT's serialspeed) is deliberately absent here: a pty has no baud rate and libvirt has
no setting for it. It matters only to the guest, whose kernel command line must say
``console=ttyS0,115200``; kvmfleet records it in the domain's metadata (see
metadata.py) so that tools and the console plugin can read it back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kvmfleet.domain.domainxml.xmlutil import child, element


@dataclass(frozen=True)
class SerialConsole:
    """``<serial type='pty'>`` on ``port`` and the matching ``<console type='pty'>``."""

    port: int = 0

    def to_elements(self) -> list[ET.Element]:
        """The ``<serial>`` and ``<console>`` elements, in that order."""
        serial = element("serial", {"type": "pty"})
        child(serial, "target", {"port": str(self.port)})
        console = element("console", {"type": "pty"})
        child(console, "target", {"type": "serial", "port": str(self.port)})
        return [serial, console]
