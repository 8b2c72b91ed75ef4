"""libvirt's test driver: a real, in-process libvirt driver with a private state per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from virt_testdriver import NODE_XML

from kvmfleet.virt.connection import LibvirtConnection, quiet_libvirt


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    return f"test://{node}"


@pytest.fixture
def connection(test_uri: str) -> Iterator[LibvirtConnection]:
    quiet_libvirt()
    with LibvirtConnection(libvirt.open(test_uri), "test") as conn:
        yield conn
