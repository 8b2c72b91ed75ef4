"""Kubernetes quantities to exact bytes, and back."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kvmfleet.domain.quantities import (
    bytes_to_kib,
    bytes_to_mib,
    format_bytes,
    mib_to_bytes,
    parse_bytes,
    parse_quantity,
)
from kvmfleet.errors import InvalidSpecError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1, 1),
        (1073741824, 1073741824),
        ("1073741824", 1073741824),
        ("1Ki", 1024),
        ("512Mi", 512 * 1024**2),
        ("1Gi", 1024**3),
        ("1.5Gi", 1610612736),
        ("0.5Ki", 512),
        ("20Gi", 20 * 1024**3),
        ("20G", 20_000_000_000),
        ("100k", 100_000),
        ("1M", 1_000_000),
        ("2T", 2 * 10**12),
        ("1Ti", 1024**4),
        ("1Pi", 1024**5),
        ("1Ei", 1024**6),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1e3", 1000),
        ("1E3", 1000),
        ("5e+2", 500),
        ("1.5e3", 1500),
        ("+1Gi", 1024**3),
        (".5Ki", 512),
        ("1.Ki", 1024),
        ("2000m", 2),
        (2048.0, 2048),
    ],
)
def test_parse_bytes_exact(value: object, expected: int) -> None:
    assert parse_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "is not a quantity"),
        ("1GB", "is not a quantity"),
        ("1 Gi", "is not a quantity"),
        (" 1Gi", "is not a quantity"),
        ("1Gi\n", "is not a quantity"),
        ("Gi", "is not a quantity"),
        ("1gi", "is not a quantity"),
        ("1.2.3", "is not a quantity"),
        ("0x10", "is not a quantity"),
        ("-1Gi", "must not be negative"),
        (-5, "must not be negative"),
        ("0.5", "not a whole number of bytes"),
        ("100m", "not a whole number of bytes"),
        ("1.1", "not a whole number of bytes"),
        ("1e99", "exponent out of range"),
        ("16Ei", "too large"),
        (True, "must be a quantity"),
        (None, "must be a quantity"),
        ([1], "must be a quantity"),
        (float("nan"), "finite"),
        (0.5, "not a whole number"),
    ],
)
def test_parse_bytes_rejects(value: object, fragment: str) -> None:
    with pytest.raises(InvalidSpecError, match=r"^spec\.memory: ") as caught:
        parse_bytes(value, "spec.memory")
    assert fragment in caught.value.message


def test_parse_quantity_keeps_fractions_exact() -> None:
    assert parse_quantity("100m") == Decimal("0.1")
    assert parse_quantity("-1.5Ki") == Decimal(-1536)
    # Far beyond float or the default 28-digit Decimal precision, still exact.
    assert parse_quantity("1.000000000000000000000000000001Ei") == Decimal(
        "1152921504606846976.000000000001152921504606846976"
    )


@pytest.mark.parametrize(
    ("size", "kib", "mib"),
    [
        (0, 0, 0),
        (1, 1, 1),
        (1024, 1, 1),
        (1025, 2, 1),
        (1024**2, 1024, 1),
        (1024**2 + 1, 1025, 2),
        (1024**3, 1024**2, 1024),
    ],
)
def test_rounding_up_to_kib_and_mib(size: int, kib: int, mib: int) -> None:
    assert bytes_to_kib(size) == kib
    assert bytes_to_mib(size) == mib


def test_mib_to_bytes() -> None:
    assert mib_to_bytes(512) == 512 * 1024**2


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (1, "1"),
        (512, "512"),
        (1000, "1k"),
        (1024, "1Ki"),
        (1536, "1536"),
        (1024**2, "1Mi"),
        (512 * 1024**2, "512Mi"),
        (1024**3, "1Gi"),
        (1610612736, "1536Mi"),
        (20 * 1024**3, "20Gi"),
        (20_000_000_000, "20G"),
        (10**6, "1M"),
        (1024**6, "1Ei"),
        (123456789, "123456789"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text
    assert parse_bytes(text) == size


@pytest.mark.parametrize("size", [*range(0, 5000, 97), 2**40 + 3, 3 * 1024**4, 7 * 10**9])
def test_format_bytes_round_trips(size: int) -> None:
    assert parse_bytes(format_bytes(size)) == size


def test_format_bytes_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_bytes(-1)
