"""What the use-cases rely on from kvmfleet.virt.guest.Guests, stated once.

``check_guests`` runs against tests/contracts/memory_guests.MemoryGuests in the unit tests
(tests/unit/test_virtualnode_usecase.py) and against the real Guests on a testbed host in
tests/integration/test_guests_contract.py: the in-memory host used by the fast use-case
tests behaves as libvirt does where the use-cases look.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvmfleet.errors import NotFoundError
from kvmfleet.virt.errors import OperationInvalidError
from kvmfleet.virt.guest import PowerState


def check_guests(guests: Any, xml: str, name: str) -> None:
    """The lifecycle of one domain named ``name`` defined from ``xml`` (not defined yet)."""
    # A missing domain is a definitive not-found (the only thing that may lead to creating).
    with pytest.raises(NotFoundError):
        guests.state(name)
    with pytest.raises(NotFoundError):
        guests.xml(name, False)
    assert guests.exists(name) is False
    assert guests.undefine(name) is False  # deleting what is gone is success
    uuid = guests.define(xml)
    assert guests.define(xml) == uuid  # a redefinition keeps the domain (no duplicate)
    assert guests.exists(name) is True
    assert guests.state(name) is PowerState.OFF
    assert guests.state(uuid) is PowerState.OFF
    # Power calls are idempotent: "already so" is success (False).
    assert guests.destroy(name) is False
    assert guests.shutdown(name) is False
    with pytest.raises(OperationInvalidError):
        guests.reset(name)
    assert guests.start(name) is True
    assert guests.start(name) is False
    assert guests.state(name) is PowerState.ON
    assert guests.pause(name) is None
    assert guests.info(name).node is not None
    assert guests.destroy(name) is True
    assert guests.state(name) is PowerState.OFF
    assert guests.undefine(name) is True
    assert guests.exists(name) is False
    assert guests.undefine(name) is False
