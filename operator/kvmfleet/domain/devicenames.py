"""Guest device names: the libvirt target ``dev`` (vda, sdb, hdc) of each VM disk.

A disk's ``name`` (api.md: ``hda``, ``hdb``...) names its image file and its status
entry; the target ``dev`` follows the bus's convention and keeps the name's letters:
``hda`` on virtio becomes ``vda``, on scsi ``sda``, on ide ``hda``. A name that is not of
the form ``hd*``/``sd*``/``vd*``/``xvd*`` (``root``, ``data``) gets the lowest letters
not taken by the named ones, in list order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kvmfleet.domain.validation import fail

BUS_PREFIXES: dict[str, str] = {"virtio": "vd", "scsi": "sd", "ide": "hd"}
"""Target dev prefix of each disk bus."""

IDE_MAX_DISKS = 4
"""Two IDE buses with two units each: hda-hdd."""

_NAMED = re.compile(r"(?:hd|sd|vd|xvd)([a-z]{1,3})")


def index_to_letters(index: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa', 27 -> 'ab' (libvirt's disk naming)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, not {index}")
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return letters


def letters_to_index(letters: str) -> int:
    """'a' -> 0, 'z' -> 25, 'aa' -> 26: the inverse of :func:`index_to_letters`."""
    index = 0
    for char in letters:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


def target_devs(disks: Sequence[tuple[str, str]], field: str = "spec.disks") -> list[str]:
    """Target devs for ``(name, bus)`` pairs, in the same order.

    Raises InvalidSpecError when two disks would get the same device, when a bus is
    unknown, or when more than four disks are on the ide bus.
    """
    indexes: list[int | None] = []
    for position, (name, bus) in enumerate(disks):
        if bus not in BUS_PREFIXES:
            fail(f"{field}[{position}].bus", f"unknown bus {bus!r}")
        match = _NAMED.fullmatch(name)
        indexes.append(letters_to_index(match.group(1)) if match else None)
    taken: dict[tuple[str, int], int] = {}
    for position, ((name, bus), index) in enumerate(zip(disks, indexes, strict=True)):
        if index is None:
            continue
        key = (BUS_PREFIXES[bus], index)
        if key in taken:
            other = disks[taken[key]][0]
            fail(
                f"{field}[{position}].name",
                f"disks {other!r} and {name!r} would both be the guest device "
                f"{key[0]}{index_to_letters(index)}",
            )
        taken[key] = position
    result: list[str] = []
    for position, ((_, bus), named_index) in enumerate(zip(disks, indexes, strict=True)):
        prefix = BUS_PREFIXES[bus]
        index = named_index if named_index is not None else _lowest_free(taken, prefix)
        taken[(prefix, index)] = position
        if bus == "ide" and index >= IDE_MAX_DISKS:
            fail(f"{field}[{position}]", "the ide bus holds at most 4 disks (hda-hdd)")
        result.append(prefix + index_to_letters(index))
    return result


def _lowest_free(taken: dict[tuple[str, int], int], prefix: str) -> int:
    index = 0
    while (prefix, index) in taken:
        index += 1
    return index
