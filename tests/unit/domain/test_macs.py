"""MAC validation and cluster-unique, stable allocation."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from kvmfleet.domain import macs
from kvmfleet.domain.macs import QEMU_PREFIX, allocate_mac, is_locally_administered, normalize_mac
from kvmfleet.errors import InvalidSpecError, PermanentError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("52:54:00:12:34:56", "52:54:00:12:34:56"),
        ("52:54:00:AB:CD:EF", "52:54:00:ab:cd:ef"),
        ("52-54-00-ab-cd-ef", "52:54:00:ab:cd:ef"),
        ("00:16:3e:00:00:01", "00:16:3e:00:00:01"),
        ("02:00:00:00:00:00", "02:00:00:00:00:00"),
    ],
)
def test_normalize_mac(value: str, expected: str) -> None:
    assert normalize_mac(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "must be a MAC address string"),
        (525400123456, "must be a MAC address string"),
        ("", "is not a MAC address"),
        ("52:54:00:12:34", "is not a MAC address"),
        ("52:54:00:12:34:56:78", "is not a MAC address"),
        ("52:54:00:12:34:5g", "is not a MAC address"),
        ("52:54:00-12:34:56", "is not a MAC address"),
        ("5254.0012.3456", "is not a MAC address"),
        ("525400123456", "is not a MAC address"),
        ("2:54:00:12:34:56", "is not a MAC address"),
        (" 52:54:00:12:34:56", "is not a MAC address"),
        ("52:54:00:12:34:56\n", "is not a MAC address"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("53:54:00:12:34:56", "multicast"),
        ("00:00:00:00:00:00", "all-zero"),
    ],
)
def test_normalize_mac_rejects(value: object, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        normalize_mac(value, "spec.nics[0].mac")
    assert caught.value.message.startswith("spec.nics[0].mac: ")
    assert fragment in caught.value.message


def test_allocated_mac_shape() -> None:
    mac = allocate_mac("0b5d5a32-8e4c-4d8a-9a53-2f1d3e0c6a11", 0, set())
    assert mac.startswith(QEMU_PREFIX + ":")
    assert normalize_mac(mac) == mac
    assert is_locally_administered(mac)


def test_allocation_is_stable_for_the_same_uid_and_index() -> None:
    uid = "0b5d5a32-8e4c-4d8a-9a53-2f1d3e0c6a11"
    first = allocate_mac(uid, 0, set())
    assert allocate_mac(uid, 0, set()) == first
    assert allocate_mac(uid, 0, {"52:54:00:00:00:01"}) == first
    assert allocate_mac(uid, 1, set()) != first
    assert allocate_mac("another-uid", 0, set()) != first


def test_allocation_is_pinned_across_versions() -> None:
    # A MAC re-derived after status was lost must equal the one handed out before.
    assert allocate_mac("uid-1", 0, set()) == allocate_mac("uid-1", 0, frozenset())
    digest = hashlib.sha256(b"uid-1/0").digest()
    assert allocate_mac("uid-1", 0, set()) == "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def test_collision_probes_deterministically() -> None:
    uid = "0b5d5a32-8e4c-4d8a-9a53-2f1d3e0c6a11"
    first = allocate_mac(uid, 0, set())
    second = allocate_mac(uid, 0, {first})
    assert second != first
    assert allocate_mac(uid, 0, {first}) == second
    third = allocate_mac(uid, 0, {first, second})
    assert third not in {first, second}


def test_in_use_is_compared_case_insensitively() -> None:
    uid = "u"
    first = allocate_mac(uid, 0, set())
    assert allocate_mac(uid, 0, {first.upper().replace(":", "-")}) != first


def test_thousand_allocations_are_unique_and_avoid_in_use() -> None:
    in_use = {f"52:54:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(1000)}
    preexisting = set(in_use)
    allocated: list[str] = []
    for n in range(1000):
        uid = str(uuid.UUID(int=n * 7919 + 1))
        for index in range(2):
            mac = allocate_mac(uid, index, in_use)
            assert mac not in in_use
            in_use.add(mac)
            allocated.append(mac)
    assert len(set(allocated)) == len(allocated) == 2000
    assert not preexisting & set(allocated)
    # Stability: the same (uid, index) derives the same MAC when nothing collides.
    for n in range(0, 1000, 97):
        uid = str(uuid.UUID(int=n * 7919 + 1))
        assert allocate_mac(uid, 0, preexisting) == allocate_mac(uid, 0, preexisting)


def test_dense_space_fills_without_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(macs, "_SUFFIX_SPACE", 64)
    in_use: set[str] = set()
    for n in range(64):
        in_use.add(allocate_mac(f"uid-{n}", 0, in_use))
    assert len(in_use) == 64
    with pytest.raises(PermanentError) as caught:
        allocate_mac("one-more", 0, in_use)
    assert caught.value.reason == "MacSpaceExhausted"


def test_last_free_address_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(macs, "_SUFFIX_SPACE", 16)
    everything = {f"52:54:00:00:00:{i:02x}" for i in range(16)}
    free = "52:54:00:00:00:0b"
    assert allocate_mac("any", 3, everything - {free}) == free


def test_macs_outside_the_prefix_do_not_count_as_exhaustion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(macs, "_SUFFIX_SPACE", 4)
    foreign = {f"00:16:3e:00:00:{i:02x}" for i in range(10)}
    assert allocate_mac("uid", 0, foreign).startswith(QEMU_PREFIX)


@pytest.mark.parametrize(("uid", "index"), [("", 0), ("uid", -1)])
def test_allocation_rejects_bad_arguments(uid: str, index: int) -> None:
    with pytest.raises(ValueError, match="must"):
        allocate_mac(uid, index, set())
