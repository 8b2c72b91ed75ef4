"""virt.migration helpers on libvirt's test driver (a real in-process libvirt driver)."""

from __future__ import annotations

import libvirt

from kvmfleet.virt import migration
from kvmfleet.virt.connection import LibvirtConnection


def test_a_daemon_answers_until_its_connection_is_gone(test_uri: str) -> None:
    with LibvirtConnection(libvirt.open(test_uri), "test", serialize=True) as conn:
        assert migration.answers(conn)
        conn.close()
        assert not migration.answers(conn)
