"""The VNC password Secret: created only when absent, changed only when owned, never adopted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kvmfleet.domain.conditions import rfc3339
from kvmfleet.domain.domainxml.graphics import format_valid_to
from kvmfleet.errors import TemporaryError
from kvmfleet.kube.api import SecretView
from kvmfleet.reconcile import vmconsole
from kvmfleet.reconcile.resource import Resource
from kvmfleet.settings import Settings

UID = "0b0c1d2e-1111-2222-3333-444455556666"


@dataclass
class FakeKube:
    secret: SecretView | None = None
    calls: list[str] = field(default_factory=list)
    exists_on_create: bool = False

    def read_secret(self, namespace: str, name: str) -> SecretView | None:
        self.calls.append(f"get {namespace}/{name}")
        return self.secret

    def create_owned_secret(
        self, namespace: str, name: str, data: dict[str, bytes], owner: dict[str, Any]
    ) -> bool:
        self.calls.append(f"create {namespace}/{name}")
        if self.exists_on_create:
            return False
        self.secret = SecretView(dict(data), (owner["uid"],), "1")
        return True

    def replace_owned_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, bytes],
        owner: dict[str, Any],
        resource_version: str,
    ) -> None:
        self.calls.append(f"replace {namespace}/{name}@{resource_version}")
        self.secret = SecretView(dict(data), (owner["uid"],), "2")


@dataclass
class FakeContext:
    kube: FakeKube
    settings: Settings = field(default_factory=Settings)

    async def blocking(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def node() -> Resource:
    return Resource("VirtualNode", "kvm1", "lab", UID, 1, {}, {})


def credentials(kube: FakeKube, *, rotate: bool = False) -> vmconsole.VncCredentials:
    ctx: Any = FakeContext(kube)
    return asyncio.run(vmconsole.ensure_credentials(ctx, node(), rotate=rotate))


def later(hours: int) -> bytes:
    return rfc3339(datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours)).encode()


def test_absent_secret_is_created_owned_by_the_node() -> None:
    kube = FakeKube()
    creds = credentials(kube)
    assert creds.rotated and creds.conflict is None
    assert kube.calls == ["get lab/kvm1-vnc", "create lab/kvm1-vnc"]
    assert kube.secret is not None and kube.secret.owner_uids == (UID,)


def test_owned_valid_secret_is_kept_and_rotation_replaces_it_with_its_version() -> None:
    kube = FakeKube(SecretView({"password": b"abcdefgh", "expiresAt": later(5)}, (UID,), "7"))
    creds = credentials(kube)
    assert (creds.password, creds.rotated) == ("abcdefgh", False)
    assert kube.calls == ["get lab/kvm1-vnc"]
    creds = credentials(kube, rotate=True)
    assert creds.rotated and creds.password != "abcdefgh"
    assert kube.calls[-1] == "replace lab/kvm1-vnc@7"


@pytest.mark.parametrize("owners", [(), ("another-uid",)])
def test_a_secret_not_owned_by_the_node_is_never_written_or_used(owners: tuple[str, ...]) -> None:
    theirs = SecretView({"password": b"theirs00", "expiresAt": later(5)}, owners, "3")
    kube = FakeKube(theirs)
    for rotate in (False, True):
        creds = credentials(kube, rotate=rotate)
        assert creds.conflict is not None and "not owned by this VirtualNode" in creds.conflict
        assert creds.password != "theirs00" and not creds.rotated
    assert kube.calls == ["get lab/kvm1-vnc", "get lab/kvm1-vnc"]
    assert kube.secret is theirs
    status = vmconsole.console_status("10.0.0.1", creds, 5900, None, "kvmhost1")
    assert "vnc" not in status  # no passwordSecretRef pointing at someone else's Secret


def test_a_secret_that_appears_between_read_and_create_is_judged_again() -> None:
    with pytest.raises(TemporaryError):
        credentials(FakeKube(exists_on_create=True))


def test_the_domain_holds_the_credentials_whose_expiry_it_shows() -> None:
    creds = credentials(FakeKube())
    assert vmconsole.domain_has(creds, format_valid_to(creds.expires_at))
    assert not vmconsole.domain_has(creds, None)
    assert not vmconsole.domain_has(creds, format_valid_to(creds.expires_at - timedelta(1)))


def test_two_rotations_within_one_second_end_at_different_seconds() -> None:
    """The domain's passwdValidTo (whole seconds) says which password it holds: a second
    rotation in the same second must not look like the password the domain already has."""
    kube = FakeKube()
    first = credentials(kube)
    seconds = {format_valid_to(first.expires_at)}
    for _ in range(3):  # well within one second
        creds = credentials(kube, rotate=True)
        assert creds.rotated and format_valid_to(creds.expires_at) not in seconds
        assert not vmconsole.domain_has(creds, format_valid_to(first.expires_at))
        seconds.add(format_valid_to(creds.expires_at))
