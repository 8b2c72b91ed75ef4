"""Helpers shared by the XML device classes: element building and pretty serialization."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

INDENT = "  "


def element(
    tag: str,
    attributes: Mapping[str, str | None] | None = None,
    text: str | None = None,
) -> ET.Element:
    """A new element; attributes whose value is None are left out (order is kept)."""
    node = ET.Element(tag)
    for name, value in (attributes or {}).items():
        if value is not None:
            node.set(name, value)
    if text is not None:
        node.text = text
    return node


def child(
    parent: ET.Element,
    tag: str,
    attributes: Mapping[str, str | None] | None = None,
    text: str | None = None,
) -> ET.Element:
    """Append a new element to ``parent`` (see :func:`element`) and return it."""
    node = element(tag, attributes, text)
    parent.append(node)
    return node


def to_xml(node: ET.Element) -> str:
    """Serialize deterministically: two-space indentation, a final newline, no declaration."""
    ET.indent(node, space=INDENT)
    return ET.tostring(node, encoding="unicode") + "\n"


def yes_no(value: bool) -> str:
    """libvirt's spelling of a boolean attribute."""
    return "yes" if value else "no"
