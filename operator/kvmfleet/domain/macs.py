"""MAC addresses of virtual NICs: validation, normalization and cluster-unique allocation.

Allocation (:func:`allocate_mac`) gives a NIC without ``spec.nics[i].mac`` an address
under QEMU/KVM's locally administered prefix ``52:54:00``; the last three octets come from
a hash of (VirtualNode uid, NIC index).

Uniqueness: the caller passes in ``in_use`` every MAC recorded in every VirtualNode's
spec and status in the cluster (and may add the MACs of foreign domains on the hosts).
The result is never in that set, so it differs from every MAC already handed out. Two
allocations racing in parallel could still pick the same free address; the operator
allocates for one VirtualNode at a time and records the result in status before the next
allocation reads ``in_use``, which closes that gap.

Stability: with no collision the result depends only on (uid, index), so the same NIC
gets the same MAC again (e.g. after status was lost). On a collision the probe sequence
moves on deterministically; that result is then recorded in ``status.nics`` and reused
from there, never derived again (a later derivation could differ once ``in_use``
changes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Set

from kvmfleet.domain.validation import fail, show
from kvmfleet.errors import PermanentError

QEMU_PREFIX = "52:54:00"
"""The locally administered prefix QEMU and libvirt use for generated MACs."""

_SUFFIX_SPACE = 1 << 24
_MAC = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")


def normalize_mac(value: object, field: str = "mac") -> str:
    """Validate a unicast MAC and return it as six lower-case, colon-separated octets.

    Accepts ``:`` or ``-`` separators in any case; refuses multicast/broadcast addresses
    (lowest bit of the first octet set) and the all-zero address.
    """
    if not isinstance(value, str):
        fail(field, f"must be a MAC address string, not {type(value).__name__}")
    text = value.lower()
    if not _MAC.fullmatch(text):
        fail(field, f"{show(value)} is not a MAC address (six hex octets, e.g. 52:54:00:12:34:56)")
    mac = text.replace("-", ":")
    first = int(mac[:2], 16)
    if first & 1:
        fail(field, f"{show(value)} is a multicast address (a NIC needs a unicast MAC)")
    if mac == "00:00:00:00:00:00":
        fail(field, "the all-zero MAC address is not usable")
    return mac


def is_locally_administered(mac: str) -> bool:
    """True if the MAC has the locally-administered bit set (as 52:54:00 does)."""
    return bool(int(mac[:2], 16) & 2)


def allocate_mac(uid: str, nic_index: int, in_use: Set[str]) -> str:
    """Derive a MAC under 52:54:00 for NIC ``nic_index`` of the object ``uid``.

    The start point and probe step come from SHA-256 of ``"<uid>/<index>"``; collisions
    probe ``start + k*step (mod 2**24)`` with an odd step, which visits every suffix
    exactly once, so the result is deterministic and never in ``in_use`` (compared
    case-insensitively). Raises PermanentError (reason ``MacSpaceExhausted``) when all
    2**24 addresses under the prefix are in use.
    """
    if not uid:
        raise ValueError("uid must not be empty")
    if nic_index < 0:
        raise ValueError(f"nic_index must be >= 0, not {nic_index}")
    taken = {mac.lower().replace("-", ":") for mac in in_use}
    taken_here = {mac for mac in taken if mac.startswith(QEMU_PREFIX + ":")}
    if len(taken_here) >= _SUFFIX_SPACE:
        raise PermanentError(
            f"all {_SUFFIX_SPACE} MAC addresses under {QEMU_PREFIX} are in use",
            reason="MacSpaceExhausted",
        )
    digest = hashlib.sha256(f"{uid}/{nic_index}".encode()).digest()
    start = int.from_bytes(digest[:3], "big")
    step = int.from_bytes(digest[3:6], "big") | 1
    for probe in range(_SUFFIX_SPACE):
        suffix = (start + probe * step) % _SUFFIX_SPACE
        mac = _format(suffix)
        if mac not in taken_here:
            return mac
    raise PermanentError(  # pragma: no cover - excluded by the count above
        f"all {_SUFFIX_SPACE} MAC addresses under {QEMU_PREFIX} are in use",
        reason="MacSpaceExhausted",
    )


def _format(suffix: int) -> str:
    octets = suffix.to_bytes(3, "big")
    return QEMU_PREFIX + ":" + ":".join(f"{octet:02x}" for octet in octets)
