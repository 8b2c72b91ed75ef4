"""Guest target devs of VM disks."""

from __future__ import annotations

import pytest

from kvmfleet.domain.devicenames import index_to_letters, letters_to_index, target_devs
from kvmfleet.errors import InvalidSpecError


@pytest.mark.parametrize(
    ("index", "letters"),
    [
        (0, "a"),
        (1, "b"),
        (25, "z"),
        (26, "aa"),
        (27, "ab"),
        (51, "az"),
        (52, "ba"),
        (701, "zz"),
        (702, "aaa"),
    ],
)
def test_letters(index: int, letters: str) -> None:
    assert index_to_letters(index) == letters
    assert letters_to_index(letters) == index


def test_index_to_letters_rejects_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        index_to_letters(-1)


@pytest.mark.parametrize(
    ("disks", "targets"),
    [
        ([], []),
        ([("hda", "virtio")], ["vda"]),
        ([("hda", "ide")], ["hda"]),
        ([("hda", "scsi")], ["sda"]),
        ([("hda", "virtio"), ("hdb", "virtio")], ["vda", "vdb"]),
        ([("vdb", "virtio"), ("vda", "virtio")], ["vdb", "vda"]),
        ([("hda", "virtio"), ("hdb", "ide")], ["vda", "hdb"]),
        ([("hda", "virtio"), ("hda2", "virtio")], ["vda", "vdb"]),
        ([("root", "virtio"), ("data", "virtio")], ["vda", "vdb"]),
        ([("root", "virtio"), ("hda", "virtio")], ["vdb", "vda"]),
        ([("root", "virtio"), ("data", "scsi")], ["vda", "sda"]),
        ([("xvdc", "virtio")], ["vdc"]),
        ([("hdd", "ide")], ["hdd"]),
        ([("sdaa", "scsi")], ["sdaa"]),
    ],
)
def test_target_devs(disks: list[tuple[str, str]], targets: list[str]) -> None:
    assert target_devs(disks) == targets


@pytest.mark.parametrize(
    ("disks", "fragment"),
    [
        (
            [("hda", "virtio"), ("vda", "virtio")],
            "spec.disks[1].name: disks 'hda' and 'vda' would both be the guest device vda",
        ),
        ([("hda", "scsi"), ("sda", "scsi")], "both be the guest device sda"),
        ([("hde", "ide")], "spec.disks[0]: the ide bus holds at most 4 disks"),
        ([(f"d{i}", "ide") for i in range(5)], "spec.disks[4]: the ide bus holds at most 4"),
        ([("hda", "usb")], "spec.disks[0].bus: unknown bus 'usb'"),
    ],
)
def test_target_devs_rejects(disks: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        target_devs(disks)
    assert fragment in caught.value.message
