"""The VNC console: listen address, automatic port, password and its expiry.

``passwdValidTo`` is written in UTC as libvirt expects (``YYYY-MM-DDTHH:MM:SS``); the
time is passed in (an aware datetime), never read from a clock here. QEMU uses only the
first 8 characters of a VNC password.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

from kvmfleet.domain.domainxml.xmlutil import child, element, yes_no

DEFAULT_VNC_LISTEN = "0.0.0.0"  # noqa: S104 - clients connect to the host directly
"""Where VNC listens by default: all host addresses (password-protected, expiring)."""


def format_valid_to(moment: datetime) -> str:
    """An aware datetime as libvirt's ``passwdValidTo`` value (UTC, seconds)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("passwdValidTo needs a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class VncGraphics:
    """``<graphics type='vnc'>`` with an automatic port unless ``port`` is given."""

    listen: str = DEFAULT_VNC_LISTEN
    port: int | None = None
    password: str | None = None
    password_valid_to: datetime | None = None

    def to_element(self) -> ET.Element:
        """The ``<graphics>`` element."""
        graphics = element(
            "graphics",
            {
                "type": "vnc",
                "port": str(self.port) if self.port is not None else "-1",
                "autoport": yes_no(self.port is None),
                "listen": self.listen,
                "passwd": self.password,
                "passwdValidTo": (
                    format_valid_to(self.password_valid_to)
                    if self.password is not None and self.password_valid_to is not None
                    else None
                ),
            },
        )
        child(graphics, "listen", {"type": "address", "address": self.listen})
        return graphics
