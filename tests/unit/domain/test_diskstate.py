"""kvmfleet.domain.diskstate: existence, ownership and backing-chain decisions (tables)."""

from __future__ import annotations

from typing import Any

import pytest

from kvmfleet.domain.diskstate import (
    Action,
    ChainLink,
    Existence,
    Owner,
    chain_problem,
    decide_ownership,
    judge_probe,
    parse_owner,
)

ME = Owner("ns-a", "vm1", "uid-1")
RECORD = {"text": ME.to_json()}
DIR_OK = {"pool": {"type": "directory"}, "fstype": "ext4"}
NFS_OK = {"pool": {"type": "directory"}, "fstype": "nfs4"}
ENOENT = {"errno": "ENOENT"}


def probe(**parts: Any) -> dict[str, Any]:
    data: dict[str, Any] = {**DIR_OK, "image": {"type": "file"}, "owner": RECORD}
    data.update(parts)
    return data


@pytest.mark.parametrize(
    ("data", "nfs_mount", "existence", "reason"),
    [
        (probe(), False, Existence.PRESENT, ""),
        (probe(owner=ENOENT), False, Existence.PRESENT, ""),
        (probe(image=ENOENT, owner=ENOENT), False, Existence.ABSENT, ""),
        (probe(image=ENOENT), False, Existence.ABSENT, ""),
        # Only ENOENT of the image itself means absent.
        (probe(image={"errno": "EACCES"}), False, Existence.UNKNOWN, "DiskUnreadable"),
        (probe(image={"errno": "EIO"}), False, Existence.UNKNOWN, "DiskUnreadable"),
        (probe(image={"errno": "ESTALE"}), False, Existence.UNKNOWN, "DiskUnreadable"),
        (probe(image=None), False, Existence.UNKNOWN, "DiskUnreadable"),
        (probe(image={"type": "directory"}), False, Existence.UNKNOWN, "DiskNotAFile"),
        (probe(image={"type": "symlink"}), False, Existence.UNKNOWN, "DiskNotAFile"),
        # The pool must be verified ready in the same probe.
        (probe(pool=ENOENT, image=ENOENT), False, Existence.UNKNOWN, "StorageNotReady"),
        (probe(pool={"type": "file"}, image=ENOENT), False, Existence.UNKNOWN, "StorageNotReady"),
        (probe(pool=None, image=ENOENT), False, Existence.UNKNOWN, "StorageNotReady"),
        ({"error": "cannot reach the export"}, False, Existence.UNKNOWN, "StorageNotReady"),
        # NFS Mount: the mountpoint must really be a mounted NFS filesystem.
        (probe(image=ENOENT, fstype=None), True, Existence.UNKNOWN, "StorageNotReady"),
        (probe(image=ENOENT, fstype="ext4"), True, Existence.UNKNOWN, "StorageNotReady"),
        (probe(image=ENOENT, fstype="tmpfs"), True, Existence.UNKNOWN, "StorageNotReady"),
        ({**probe(image=ENOENT), **NFS_OK}, True, Existence.ABSENT, ""),
        ({**probe(), **NFS_OK, "fstype": "nfs"}, True, Existence.PRESENT, ""),
        # An unreadable owner record is not "no owner".
        (probe(owner={"errno": "EIO"}), False, Existence.UNKNOWN, "OwnerRecordUnreadable"),
        (probe(owner={"text": "garbage"}), False, Existence.UNKNOWN, "OwnerRecordUnreadable"),
        (probe(owner={"text": '{"name": "x"}'}), False, Existence.UNKNOWN, "OwnerRecordUnreadable"),
        (probe(image=ENOENT, owner={"errno": "EISDIR"}), False, Existence.UNKNOWN, "OwnerRecordUnreadable"),
    ],
)  # fmt: skip
def test_judge_probe(
    data: dict[str, Any], nfs_mount: bool, existence: Existence, reason: str
) -> None:
    verdict = judge_probe(data, image="/p/vm1.hda.qcow2", pool="/p", nfs_mount=nfs_mount)
    assert verdict.existence is existence, verdict
    assert verdict.reason == reason
    if existence is Existence.UNKNOWN:
        assert verdict.message


def test_judge_probe_reads_the_owner() -> None:
    assert judge_probe(probe(), image="/p/x", pool="/p").owner == ME
    assert judge_probe(probe(owner=ENOENT), image="/p/x", pool="/p").owner is None


def test_owner_record_round_trip() -> None:
    assert parse_owner(ME.to_json()) == ME
    with pytest.raises(ValueError):
        parse_owner("[]")
    with pytest.raises(ValueError):
        parse_owner('{"namespace": "a", "name": "", "uid": "u"}')


OTHER_NS = Owner("ns-b", "vm1", "uid-9")
SAME_NEW_UID = Owner("ns-a", "vm1", "uid-0")


@pytest.mark.parametrize(
    ("existence", "record", "adopt", "ours", "action", "reason"),
    [
        (Existence.ABSENT, None, False, False, Action.CREATE, ""),
        (Existence.ABSENT, ME, False, False, Action.CREATE, ""),
        (Existence.ABSENT, SAME_NEW_UID, False, False, Action.CREATE, ""),
        (Existence.ABSENT, OTHER_NS, False, False, Action.REFUSE, "DiskOwnedByOther"),
        (Existence.ABSENT, OTHER_NS, True, False, Action.CREATE, ""),
        (Existence.PRESENT, ME, False, False, Action.USE, ""),
        (Existence.PRESENT, SAME_NEW_UID, False, False, Action.CLAIM, ""),
        (Existence.PRESENT, OTHER_NS, False, False, Action.REFUSE, "DiskOwnedByOther"),
        (Existence.PRESENT, OTHER_NS, False, True, Action.REFUSE, "DiskOwnedByOther"),
        (Existence.PRESENT, OTHER_NS, True, False, Action.CLAIM, ""),
        (Existence.PRESENT, None, False, False, Action.REFUSE, "DiskNotOwned"),
        (Existence.PRESENT, None, True, False, Action.CLAIM, ""),
        (Existence.PRESENT, None, False, True, Action.CLAIM, ""),
    ],
)
def test_decide_ownership(
    existence: Existence,
    record: Owner | None,
    adopt: bool,
    ours: bool,
    action: Action,
    reason: str,
) -> None:
    decision = decide_ownership(existence, record, ME, adopt=adopt, our_domain_uses_it=ours)
    assert (decision.action, decision.reason) == (action, reason)
    if record is not None and action is Action.REFUSE:
        assert "ns-b/vm1" in decision.message and "uid-9" in decision.message


def test_no_ownership_decision_on_unknown() -> None:
    with pytest.raises(ValueError):
        decide_ownership(Existence.UNKNOWN, None, ME)


TOP = ChainLink("/p/vm.qcow2", "qcow2")
OVERLAY = ChainLink("/p/vm.qcow2", "qcow2", "/p/base.qcow2", "qcow2")
BASE = ChainLink("/p/base.qcow2", "qcow2")
RAW_BASE = ChainLink("/p/base.img", "raw")


@pytest.mark.parametrize(
    ("chain", "problem"),
    [
        ([TOP], None),
        ([OVERLAY, BASE], None),
        ([ChainLink("/p/vm.qcow2", "qcow2", "/p/base.img", "raw"), RAW_BASE], None),
        ([], "no image"),
        ([ChainLink("/p/vm.qcow2", "raw")], "expected qcow2"),
        ([ChainLink("/p/vm.qcow2", "qcow2", "/p/base.qcow2", None), BASE], "does not record"),
        ([ChainLink("/p/vm.qcow2", "qcow2", "/p/base.img", "qcow2"), RAW_BASE], "records qcow2"),
        ([OVERLAY], "was not read"),
        ([TOP, BASE], "no backing file"),
        ([OVERLAY, ChainLink("/p/base.qcow2", "qcow2", "/p/vm.qcow2", "qcow2"), OVERLAY], "loops"),
        ([OVERLAY, ChainLink("/p/base.qcow2", "vmdk")], "vmdk"),
        (
            [ChainLink(f"/p/{i}", "qcow2", f"/p/{i + 1}", "qcow2") for i in range(16)]
            + [ChainLink("/p/16", "qcow2")],
            "at most 16",
        ),
    ],
)
def test_chain_problem(chain: list[ChainLink], problem: str | None) -> None:
    found = chain_problem(chain)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found
