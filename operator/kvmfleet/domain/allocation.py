"""Host capacity arithmetic: allocatable = hardware * overcommit; allocated = sum of VMs.

These numbers feed KvmHost ``status.allocatable`` / ``status.allocated`` and placement.
Overcommit factors are applied in exact decimal arithmetic and rounded down, so 3 CPUs
at 1.5 give 4 allocatable CPUs, never 4.499999.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from kvmfleet.domain.specs import Overcommit, VirtualNodeSpec


@dataclass(frozen=True)
class Resources:
    """An amount of CPUs and memory (MiB): a VM's request, a sum, or a host's capacity."""

    cpus: int = 0
    memory_mib: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory_mib + other.memory_mib)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.memory_mib - other.memory_mib)

    def fits_in(self, free: Resources) -> bool:
        """True if this request fits in ``free`` for both resources."""
        return self.cpus <= free.cpus and self.memory_mib <= free.memory_mib


def request_of(spec: VirtualNodeSpec) -> Resources:
    """What a VirtualNode takes from its host: its CPUs and its memory in MiB (rounded up)."""
    return Resources(spec.cpus, spec.memory_mib)


def scale(amount: int, factor: float) -> int:
    """``floor(amount * factor)`` computed exactly on the factor's decimal spelling."""
    return math.floor(Decimal(amount) * Decimal(repr(factor)))


def allocatable(cpus: int, memory_mib: int, overcommit: Overcommit) -> Resources:
    """A host's allocatable resources: its hardware times the overcommit factors."""
    return Resources(scale(cpus, overcommit.cpu), scale(memory_mib, overcommit.memory))


def allocated(requests: Iterable[Resources]) -> Resources:
    """The sum of the requests of the VMs placed on a host."""
    total = Resources()
    for request in requests:
        total = total + request
    return total


def load(used: Resources, capacity: Resources) -> Fraction:
    """The load of a host: the larger of its CPU and memory fractions in use (exact).

    A resource with zero capacity counts as fully loaded if anything uses it, else empty.
    """
    return max(_fraction(used.cpus, capacity.cpus), _fraction(used.memory_mib, capacity.memory_mib))


def _fraction(used: int, capacity: int) -> Fraction:
    if capacity <= 0:
        return Fraction(1) if used > 0 else Fraction(0)
    return Fraction(used, capacity)
