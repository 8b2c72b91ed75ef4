"""An in-memory libvirt host: the domain operations of kvmfleet.virt.guest.Guests, in a dict.

Same method names, return values and error classes as the real adapter (what
tests/contracts/guests_contract.py states, and tests/integration/test_guests_contract.py
runs against a real libvirtd on the testbed). Faults are injected per method: ``fail``
raises the given errors on the next calls, in order; ``calls`` records every call.
"""

from __future__ import annotations

import uuid as _uuid
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from kvmfleet.domain.domainxml.parse import LiveDomainInfo, parse_domain
from kvmfleet.virt.errors import LibvirtNotFoundError, OperationInvalidError
from kvmfleet.virt.guest import Pause, PowerState


@dataclass
class _Domain:
    uuid: str
    xml: str
    state: PowerState = PowerState.OFF


@dataclass
class MemoryGuests:
    """Domains of one in-memory host."""

    label: str = "memory"
    domains: dict[str, _Domain] = field(default_factory=dict)
    fail: dict[str, list[Exception]] = field(default_factory=lambda: defaultdict(list))
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _enter(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        if self.fail.get(method):
            raise self.fail[method].pop(0)

    def _get(self, name: str) -> _Domain:
        for key, domain in self.domains.items():
            if name in (key, domain.uuid):
                return domain
        raise LibvirtNotFoundError(f"{self.label}: domain {name!r}: Domain not found")

    def count(self, method: str) -> int:
        """How many times ``method`` was called."""
        return sum(1 for called, _ in self.calls if called == method)

    # -- definition --

    def define(self, xml: str) -> str:
        root = ET.fromstring(xml)
        name = (root.findtext("name") or "").strip()
        self._enter("define", name)
        given = (root.findtext("uuid") or "").strip()
        if name in self.domains:
            self.domains[name].xml = xml
            return self.domains[name].uuid
        self.domains[name] = _Domain(given or str(_uuid.uuid4()), xml)
        return self.domains[name].uuid

    def exists(self, name: str) -> bool:
        self._enter("exists", name)
        try:
            self._get(name)
        except LibvirtNotFoundError:
            return False
        return True

    def state(self, name: str) -> PowerState:
        self._enter("state", name)
        return self._get(name).state

    def pause(self, name: str) -> Pause | None:
        self._enter("pause", name)
        self._get(name)
        return None

    def xml(self, name: str, live: bool = True) -> str:
        self._enter("xml", name)
        return self._get(name).xml

    def info(self, name: str) -> LiveDomainInfo:
        return parse_domain(self.xml(name, live=True))

    # -- power --

    def start(self, name: str) -> bool:
        self._enter("start", name)
        domain = self._get(name)
        if domain.state in (PowerState.ON, PowerState.PAUSED):
            return False
        domain.state = PowerState.ON
        return True

    def shutdown(self, name: str) -> bool:
        self._enter("shutdown", name)
        domain = self._get(name)
        if domain.state in (PowerState.OFF, PowerState.CRASHED):
            return False
        domain.state = PowerState.OFF  # an obedient guest
        return True

    def destroy(self, name: str) -> bool:
        self._enter("destroy", name)
        domain = self._get(name)
        if domain.state is PowerState.OFF:
            return False
        domain.state = PowerState.OFF
        return True

    def _running(self, name: str, action: str) -> _Domain:
        domain = self._get(name)
        if domain.state is not PowerState.ON:
            raise OperationInvalidError(f"{self.label}: domain {name!r}: {action}: not running")
        return domain

    def reboot(self, name: str) -> None:
        self._enter("reboot", name)
        self._running(name, "reboot")

    def reset(self, name: str) -> None:
        self._enter("reset", name)
        self._running(name, "reset")

    def undefine(self, name: str) -> bool:
        self._enter("undefine", name)
        try:
            domain = self._get(name)
        except LibvirtNotFoundError:
            return False
        if domain.state is PowerState.OFF:
            del self.domains[next(k for k, d in self.domains.items() if d is domain)]
        return True

    def set_vnc_password(self, name: str, password: str, valid_to: datetime | None = None) -> bool:
        self._enter("set_vnc_password", name)
        self._get(name)
        return True
