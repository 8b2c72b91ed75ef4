"""kvmfleet.reconcile.vmremove on an in-memory host: what deletion removes, keeps, or waits for.

Status is forged on purpose: deletion must compute its paths from the spec and the
host's pools and ignore status.disks. Real hosts: tests/integration/test_disk_safety.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from kvmfleet.domain.diskstate import Owner
from kvmfleet.domain.specs import KvmHostSpec
from kvmfleet.reconcile import vmremove
from kvmfleet.reconcile.resource import Resource
from kvmfleet.ssh.session import CommandResult
from kvmfleet.virt.guest import PowerState

ME = Owner("ns-a", "vm1", "uid-1")
IMAGES = "/var/lib/kvmfleet/images"
IMAGE = f"{IMAGES}/vm1.hda.qcow2"
POOL = {"pool": {"type": "directory"}, "fstype": "ext4"}


@dataclass
class FakeSession:
    probe: dict[str, Any]
    backing: list[dict[str, str]] = field(default_factory=list)
    ran: list[list[str]] = field(default_factory=list)

    async def run(
        self, argv: list[str], *, input: bytes | None = None, check: bool = True
    ) -> CommandResult:
        self.ran.append(list(argv))
        out = ""
        if argv[0] == "python3" and argv[3] == "probe":
            out = json.dumps(self.probe)
        elif argv[0] == "python3" and argv[3] == "backing":
            out = json.dumps({"ok": True, "images": self.backing})
        return CommandResult(tuple(argv), 0, out, "", 0.0)

    def removed(self) -> list[str]:
        return [a[-1] for a in self.ran if a[0] == "rm"]


class FakeGuests:
    def state(self, name: str) -> PowerState:
        return PowerState.OFF

    def undefine(self, name: str) -> bool:
        return True


def host_spec() -> KvmHostSpec:
    return KvmHostSpec.from_dict(
        {
            "address": "10.0.0.5",
            "hostKeyPolicy": "TrustOnFirstUse",
            "sshKeySecretRef": {"name": "k", "namespace": "kvmfleet-system"},
            "storagePools": [{"name": "local", "url": f"dir://{IMAGES}"}],
        }
    )


def node(storage: str = f"dir://{IMAGES}", **annotations: str) -> Resource:
    forged = [{"name": "hda", "url": storage, "path": "/etc/passwd", "format": "qcow2"}]
    return Resource(
        kind="VirtualNode",
        name="vm1",
        namespace="ns-a",
        uid="uid-1",
        generation=1,
        spec={
            "disks": [{"name": "hda", "size": "1Gi", "storage": storage}],
            "reclaimPolicy": "Delete",
            "shutdownGracePeriodSeconds": 0,
        },
        status={"host": "kvmhost1", "disks": forged},
        annotations=annotations,
        deleting=True,
    )


def remove(
    monkeypatch: pytest.MonkeyPatch, session: FakeSession, resource: Resource
) -> vmremove.Outcome:
    async def blocking(fn: Any, *args: Any) -> Any:
        return fn(*args)

    ctx = SimpleNamespace(
        blocking=blocking,
        settings=SimpleNamespace(
            mount_root="/var/lib/kvmfleet/pools", delete_host_unreachable_timeout=300
        ),
        kube=SimpleNamespace(list_cluster_objects=lambda kind: []),
    )
    session.ctx = ctx  # type: ignore[attr-defined]

    async def guests() -> FakeGuests:
        return FakeGuests()

    host = SimpleNamespace(name="kvmhost1", spec=host_spec(), session=session, guests=guests)

    async def open_host(ctx: Any, name: str) -> Any:
        return host

    monkeypatch.setattr(vmremove, "open_host", open_host)
    return asyncio.run(vmremove.remove(ctx, resource))  # type: ignore[arg-type]


def reasons(outcome: Any) -> list[str]:
    return [event.reason for event in outcome.events]


def test_own_disk_is_deleted_from_the_spec_path_never_the_status_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = FakeSession({**POOL, "image": {"type": "file"}, "owner": {"text": ME.to_json()}})
    outcome = remove(monkeypatch, session, node())
    assert session.removed() == [IMAGE, f"{IMAGE}.owner.json"]
    assert outcome.requeue_after is None and "DisksDeleted" in reasons(outcome)


@pytest.mark.parametrize(
    ("owner", "why"),
    [
        ({"errno": "ENOENT"}, "no owner record"),
        ({"text": Owner("ns-b", "vm1", "uid-2").to_json()}, "owned by ns-b/vm1"),
        ({"text": Owner("ns-a", "vm1", "uid-0").to_json()}, "owned by ns-a/vm1 (uid uid-0)"),
    ],
)
def test_a_disk_that_is_not_ours_is_kept(
    monkeypatch: pytest.MonkeyPatch, owner: dict[str, Any], why: str
) -> None:
    session = FakeSession({**POOL, "image": {"type": "file"}, "owner": owner})
    outcome = remove(monkeypatch, session, node())
    assert session.removed() == []
    kept = next(e.message for e in outcome.events if e.reason == "DisksKept")
    assert why in kept and outcome.requeue_after is None


def test_a_backing_file_of_another_image_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    session = FakeSession(
        {**POOL, "image": {"type": "file"}, "owner": {"text": ME.to_json()}},
        backing=[{"image": "clone.qcow2", "backing": "vm1.hda.qcow2"}],
    )
    outcome = remove(monkeypatch, session, node())
    assert session.removed() == []
    assert "backing file of /var/lib/kvmfleet/images/clone.qcow2" in outcome.events[-1].message


def test_storage_outside_the_pools_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    session = FakeSession({**POOL, "image": {"type": "file"}, "owner": {"text": ME.to_json()}})
    outcome = remove(monkeypatch, session, node("dir:///etc"))
    assert session.removed() == [] and not [a for a in session.ran if a[0] == "python3"]
    assert "not a storage pool" in outcome.events[-1].message


def test_unknown_state_keeps_the_finalizer_until_orphaned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = FakeSession({**POOL, "image": {"errno": "EIO"}, "owner": {"errno": "EIO"}})
    outcome = remove(monkeypatch, session, node())
    assert session.removed() == []
    assert outcome.requeue_after == vmremove.BLOCKED_RETRY
    ready = next(c for c in outcome.conditions if c.type == "Ready")
    assert ready.reason == "DeletionBlocked" and IMAGE in ready.message
    assert "DeletionBlocked" in reasons(outcome)
    # With the annotation: released at once, disks untouched, and the Event says what stayed.
    session = FakeSession({**POOL, "image": {"errno": "EIO"}, "owner": {"errno": "EIO"}})
    outcome = remove(monkeypatch, session, node(**{"kvmfleet.io/orphan": "true"}))
    assert outcome.requeue_after is None and session.removed() == []
    orphaned = next(e.message for e in outcome.events if e.reason == "Orphaned")
    assert IMAGE in orphaned  # its state is unknown: it may well be there
    # Only a definitively absent image is not listed as left.
    session = FakeSession({**POOL, "image": {"errno": "ENOENT"}, "owner": {"errno": "ENOENT"}})
    outcome = remove(monkeypatch, session, node(**{"kvmfleet.io/orphan": "true"}))
    orphaned = next(e.message for e in outcome.events if e.reason == "Orphaned")
    assert IMAGE not in orphaned and session.removed() == []
