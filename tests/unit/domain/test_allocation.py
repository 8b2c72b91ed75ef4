"""Allocatable and allocated host resources."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kvmfleet.domain.allocation import Resources, allocatable, allocated, load, request_of, scale
from kvmfleet.domain.specs import Overcommit, VirtualNodeSpec


@pytest.mark.parametrize(
    ("amount", "factor", "expected"),
    [
        (8, 4.0, 32),
        (3, 1.5, 4),
        (10, 0.1, 1),
        (3, 0.1, 0),
        (24576, 1.0, 24576),
        (24576, 1.2, 29491),
        (7, 1.1, 7),
        (10, 1.1, 11),
    ],
)
def test_scale_is_exact_and_rounds_down(amount: int, factor: float, expected: int) -> None:
    assert scale(amount, factor) == expected


def test_allocatable_uses_both_factors() -> None:
    assert allocatable(8, 16384, Overcommit()) == Resources(32, 16384)
    assert allocatable(2, 24576, Overcommit(cpu=1, memory=1.5)) == Resources(2, 36864)


def test_allocated_sums_requests() -> None:
    assert allocated([]) == Resources(0, 0)
    assert allocated([Resources(2, 1024), Resources(1, 512), Resources(4, 4096)]) == Resources(
        7, 5632
    )


def test_request_of_spec_rounds_memory_up() -> None:
    assert request_of(VirtualNodeSpec()) == Resources(1, 1024)
    assert request_of(VirtualNodeSpec(cpus=2, memory_bytes=1024**2 + 1)) == Resources(2, 2)


@pytest.mark.parametrize(
    ("request_", "free", "fits"),
    [
        (Resources(1, 1), Resources(1, 1), True),
        (Resources(2, 1), Resources(1, 1), False),
        (Resources(1, 2), Resources(1, 1), False),
        (Resources(0, 0), Resources(-1, 0), False),
    ],
)
def test_fits_in(request_: Resources, free: Resources, fits: bool) -> None:
    assert request_.fits_in(free) is fits


@pytest.mark.parametrize(
    ("used", "capacity", "expected"),
    [
        (Resources(0, 0), Resources(8, 8192), Fraction(0)),
        (Resources(4, 1024), Resources(8, 8192), Fraction(1, 2)),
        (Resources(1, 6144), Resources(8, 8192), Fraction(3, 4)),
        (Resources(1, 0), Resources(0, 8192), Fraction(1)),
        (Resources(0, 0), Resources(0, 0), Fraction(0)),
    ],
)
def test_load_is_the_larger_fraction(
    used: Resources, capacity: Resources, expected: Fraction
) -> None:
    assert load(used, capacity) == expected


def test_resources_arithmetic() -> None:
    assert Resources(3, 300) - Resources(1, 100) == Resources(2, 200)
    assert Resources(1, 100) + Resources(1, 100) == Resources(2, 200)
