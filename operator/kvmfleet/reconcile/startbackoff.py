"""Backoff of a VirtualNode whose domain fails to start (reason ``StartFailed``).

QEMU that does not start (``/dev/kvm`` not openable, an emulator argument refused) fails
the same way on every try: the start is retried after 15 s, then doubling up to 5 min,
instead of on every timer tick. The state lives in the operator's memory: a restart tries
once at once, then backs off again. A successful start (or the VM's removal) forgets it.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_DELAY = 15.0
MAX_DELAY = 300.0


@dataclass(frozen=True)
class StartFailures:
    """Consecutive failed starts of one VM: how many, the last message, when to try again."""

    count: int
    message: str
    not_before: float

    @property
    def delay(self) -> float:
        """The wait after the last failure (15 s doubling, at most 5 min)."""
        return delay_after(self.count)


def delay_after(count: int) -> float:
    """The wait after ``count`` consecutive failures."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2.0 ** max(0, count - 1)))


def failed(previous: StartFailures | None, message: str, now: float) -> StartFailures:
    """The state after one more failed start at monotonic time ``now``."""
    count = (previous.count if previous else 0) + 1
    return StartFailures(count, message, now + delay_after(count))


def waiting(previous: StartFailures | None, now: float) -> float | None:
    """Seconds left before the next start may be tried (None: try now)."""
    if previous is None or now >= previous.not_before:
        return None
    return previous.not_before - now
