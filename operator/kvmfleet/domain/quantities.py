"""Kubernetes resource quantities ("1Gi", "512Mi", "20G", "1.5Gi") as exact byte counts.

The grammar is Kubernetes' own (``resource.Quantity``): a signed decimal number followed
by a binary suffix (Ki Mi Gi Ti Pi Ei), a decimal suffix (m k M G T P E) or an exponent
(``e3``/``E3``). Arithmetic is done in :class:`~decimal.Decimal` so ``"1.5Gi"`` is exactly
1610612736. Unlike Kubernetes, a byte count must come out whole: ``"0.5"`` bytes is an
error rather than being rounded up silently.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal, InvalidOperation, localcontext

from kvmfleet.domain.validation import fail, show

KIB = 1024
MIB = 1024**2
GIB = 1024**3

MAX_BYTES = 2**63 - 1
"""The largest quantity Kubernetes represents as an integer (int64)."""

_BINARY_SUFFIXES: dict[str, int] = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}
_DECIMAL_SUFFIXES: dict[str, Decimal] = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[mkMGTPE]?)"
)
_MAX_DIGITS = 64
_MAX_EXPONENT = 40
_CONTEXT = Context(prec=200)


def parse_quantity(value: object, field: str = "quantity") -> Decimal:
    """Parse a Kubernetes quantity (an int, or a string like ``"1.5Gi"``) exactly.

    Raises InvalidSpecError ``"<field>: ..."`` for anything else.
    """
    if isinstance(value, bool):
        fail(field, f"must be a quantity such as '1Gi' or '512Mi', not {show(value)}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            fail(field, f"must be a finite quantity, not {show(value)}")
        return Decimal(repr(value))
    if not isinstance(value, str):
        fail(field, f"must be a quantity such as '1Gi' or '512Mi', not {type(value).__name__}")
    match = _QUANTITY.fullmatch(value)
    if match is None or len(value) > _MAX_DIGITS:
        fail(
            field,
            f"{show(value)} is not a quantity: a number with an optional suffix "
            "(Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E), e.g. '1Gi', '512Mi', '20G'",
        )
    number, suffix = match.group("number"), match.group("suffix")
    with localcontext(_CONTEXT):
        try:
            amount = Decimal(number)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid numbers
            fail(field, f"{show(value)} is not a number")
        if suffix in _BINARY_SUFFIXES:
            return amount * _BINARY_SUFFIXES[suffix]
        if suffix in _DECIMAL_SUFFIXES:
            return amount * _DECIMAL_SUFFIXES[suffix]
        exponent = int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            fail(field, f"{show(value)}: exponent out of range")
        return amount.scaleb(exponent)


def parse_bytes(value: object, field: str = "size") -> int:
    """Parse a quantity that counts bytes: a whole, non-negative number up to 2**63-1."""
    amount = parse_quantity(value, field)
    if amount < 0:
        fail(field, f"{show(value)} must not be negative")
    if amount != amount.to_integral_value():
        fail(field, f"{show(value)} is not a whole number of bytes")
    if amount > MAX_BYTES:
        fail(field, f"{show(value)} is too large (at most {MAX_BYTES} bytes)")
    return int(amount)


def bytes_to_kib(size: int) -> int:
    """Bytes to KiB, rounded up (libvirt counts memory in KiB)."""
    return -(-size // KIB)


def bytes_to_mib(size: int) -> int:
    """Bytes to MiB, rounded up (a VM asking for part of a MiB needs the whole MiB)."""
    return -(-size // MIB)


def mib_to_bytes(mib: int) -> int:
    """MiB to bytes."""
    return mib * MIB


def format_bytes(size: int) -> str:
    """Format a byte count as the shortest exact quantity: ``1073741824 -> "1Gi"``.

    Binary suffixes win ties; a count no suffix divides exactly stays plain digits.
    ``parse_bytes(format_bytes(n)) == n`` for every n >= 0.
    """
    if size < 0:
        raise ValueError(f"a byte count cannot be negative: {size}")
    candidates = [str(size)]
    if size:
        for suffix, factor in reversed(_BINARY_SUFFIXES.items()):
            if size % factor == 0:
                candidates.append(f"{size // factor}{suffix}")
        for suffix, decimal_factor in reversed(_DECIMAL_SUFFIXES.items()):
            factor = int(decimal_factor)
            if suffix not in {"", "m"} and size % factor == 0:
                candidates.append(f"{size // factor}{suffix}")
    # Stable: among equally short forms the earliest (binary before decimal) wins;
    # plain digits only win when strictly shorter.
    return min(candidates[1:] + candidates[:1], key=len)
