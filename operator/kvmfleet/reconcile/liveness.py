"""Is the operator doing its work? Blocking calls in flight, handler activity, the verdict.

* :class:`InFlight` - every blocking call the operator waits for: where (a host, the
  Kubernetes API, or nothing in particular), since when, and its deadline. Thread-safe.
* :class:`Activity` - when a handler last ran, and which objects the handlers know.
* :func:`assess` - the liveness verdict: wedged when objects exist but no handler ran
  for ``watch_silence_limit`` seconds, or when a call is ``stuck_grace`` seconds past
  its deadline (a worker that never came back).

Pure bookkeeping with an injectable clock (``time.monotonic``): fast to test.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

Clock = Callable[[], float]

KUBE = "kubernetes"
"""The InFlight ``where`` of Kubernetes API calls."""
ANY = ""
"""The InFlight ``where`` of calls tied to no host."""


@dataclass(frozen=True)
class Call:
    """One blocking call in flight: queued (no deadline yet) or running."""

    where: str
    what: str
    started: float
    """When it was submitted."""
    limit: float
    deadline: float = float("inf")
    """When it started running + its limit (infinite while it waits for a thread)."""


class InFlight:
    """The blocking calls in flight, by where they go (a host name, KUBE or ANY)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._calls: dict[int, Call] = {}

    def start(self, where: str, what: str, limit: float) -> int:
        """Record a call submitted to a thread pool, that may run ``limit`` seconds once a
        thread has it; returns its token."""
        now = self.clock()
        token = next(self._ids)
        with self._lock:
            self._calls[token] = Call(where, what, now, limit)
        return token

    def running(self, token: int) -> None:
        """The call got its thread: its deadline starts now."""
        now = self.clock()
        with self._lock:
            call = self._calls.get(token)
            if call is not None:
                self._calls[token] = replace(call, deadline=now + call.limit)

    def end(self, token: int) -> None:
        """The call returned (or its caller stopped waiting and the thread came back)."""
        with self._lock:
            self._calls.pop(token, None)

    def count(self, where: str) -> int:
        """Calls in flight to ``where``."""
        with self._lock:
            return sum(1 for call in self._calls.values() if call.where == where)

    def oldest_age(self, where: str) -> float:
        """Seconds since the oldest call to ``where`` started (0 when none)."""
        now = self.clock()
        with self._lock:
            starts = [call.started for call in self._calls.values() if call.where == where]
        return now - min(starts) if starts else 0.0

    def overdue(self, grace: float) -> list[Call]:
        """Calls more than ``grace`` seconds past their deadline."""
        now = self.clock()
        with self._lock:
            return [call for call in self._calls.values() if now > call.deadline + grace]


@dataclass
class Activity:
    """Handler activity: the last time any handler started or finished, objects known."""

    clock: Clock = time.monotonic
    last: float = field(default=0.0)
    known: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.last = self.clock()

    def touch(self, key: str) -> None:
        """A handler runs for object ``key``."""
        self.last = self.clock()
        self.known.add(key)

    def forget(self, key: str) -> None:
        """Object ``key`` is gone."""
        self.known.discard(key)


@dataclass(frozen=True)
class Verdict:
    """The liveness verdict and why."""

    alive: bool
    reasons: tuple[str, ...]


def assess(
    activity: Activity, in_flight: InFlight, *, watch_silence_limit: float, stuck_grace: float
) -> Verdict:
    """Wedged when objects exist and handlers have been silent too long, or a call is stuck."""
    reasons: list[str] = []
    silent = activity.clock() - activity.last
    if activity.known and silent > watch_silence_limit:
        reasons.append(
            f"no handler ran for {silent:.0f}s while {len(activity.known)} objects exist "
            f"(limit {watch_silence_limit:g}s)"
        )
    for call in in_flight.overdue(stuck_grace):
        late = in_flight.clock() - call.deadline
        where = call.where or "no host"
        reasons.append(f"{call.what} ({where}) is {late:.0f}s past its deadline")
    return Verdict(not reasons, tuple(reasons))
