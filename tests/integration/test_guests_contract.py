"""The in-memory libvirt host of the use-case unit tests against a real libvirtd.

tests/contracts/guests_contract.check_guests runs here on the real Guests adapter of a
testbed host, and in tests/unit/test_virtualnode_usecase.py on MemoryGuests: the fake the
fast tests rely on answers as the real adapter does (not-found, idempotent power calls,
no duplicate definitions).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_virt_adapter import tiny_domain

from contracts.guests_contract import check_guests
from contracts.memory_guests import MemoryGuests
from kvmfleet.virt.connection import LibvirtPool, open_connection
from kvmfleet.virt.guest import Guests
from support.testbed import libvirt_target

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pool() -> Iterator[LibvirtPool]:
    pool = LibvirtPool(open_connection)
    yield pool
    pool.close_all()


def test_the_real_guests_adapter_keeps_the_contract(
    testbed: dict[str, Any], pool: LibvirtPool
) -> None:
    guests = Guests(pool.connection(libvirt_target(testbed["hosts"][0])))
    name = f"kvmfleet-contract-{uuid.uuid4().hex[:8]}"
    try:
        check_guests(guests, tiny_domain(name, str(uuid.uuid4())), name)
    finally:
        if guests.exists(name):
            guests.destroy(name)
            guests.undefine(name)


def test_the_memory_guests_keep_the_same_contract() -> None:
    name = "kvmfleet-contract-memory"
    check_guests(MemoryGuests(), tiny_domain(name, str(uuid.uuid4())), name)
