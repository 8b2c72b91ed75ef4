"""Starting the operator again, in place, when Kopf stops on an error.

Kopf ends the whole operator when one of its watches fails for good: right after an API
server restart the custom resources' API answers 404 until their CRDs are served again,
and a watch that reconnects in that moment fails. Exiting would leave recovery to a pod
restart (and, outside Kubernetes, to nobody); restarting Kopf inside the process is not
reliable either (its shutdown can wait forever on a watch stuck re-authenticating).

So a failure Kopf logs (:class:`FailureWatch`) arms a watchdog (:func:`watchdog`): once
Kopf has had a moment to stop, the process replaces itself with a fresh one
(:func:`reexec`: the same command, PID, log and ports), 10 s after the failure, or
longer when restarts follow each other (2 s doubling up to 60 s). Like a crash, this is
safe at any point: every step of kvmfleet converges after a restart.
``kvmfleet_kopf_restarts_total`` counts the restarts of this process's lifetime (carried
in ``KVMFLEET_KOPF_RESTARTS``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from kvmfleet import metrics

log = logging.getLogger(__name__)

RESTARTS_ENV = "KVMFLEET_KOPF_RESTARTS"
"""How many times this process was started again in place (set for the new image)."""
DELAYS = (2.0, 60.0)
"""First and longest wait before a restart (doubling with each consecutive one)."""
GRACE = 10.0
"""Seconds Kopf is given to stop by itself after its failure, before the restart."""


class FailureWatch(logging.Handler):
    """Notices Kopf's own report that a task it cannot do without has failed."""

    LOGGER = "kopf._core.reactor.running"

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.failed = asyncio.Event()
        self.what = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "has failed" in message and not self.what:
            self.what = message.splitlines()[0][:300]
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.failed.set)

    def install(self) -> FailureWatch:
        """Attach to Kopf's reactor logger (from the event loop's thread); returns itself."""
        self._loop = asyncio.get_running_loop()
        logging.getLogger(self.LOGGER).addHandler(self)
        return self


def restarts_so_far() -> int:
    """Restarts in place before this image started (0 for a new process)."""
    raw = os.environ.get(RESTARTS_ENV, "0")
    return int(raw) if raw.isdigit() else 0


def delay_for(restarts: int) -> float:
    """The wait before restart number ``restarts + 1``."""
    return min(DELAYS[0] * float(2 ** min(restarts, 10)), DELAYS[1])


def reexec() -> None:
    """Replace this process with the same command (never returns)."""
    restarts = restarts_so_far()
    env = {**os.environ, RESTARTS_ENV: str(restarts + 1)}
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    command = [sys.executable, "-m", "kvmfleet", *sys.argv[1:]]
    os.execve(sys.executable, command, env)  # noqa: S606 - this process's own command again


async def watchdog(watch: FailureWatch, stop: asyncio.Event) -> None:
    """Restart in place once Kopf failed (unless the operator is stopping anyway)."""
    await watch.failed.wait()
    wait = max(GRACE, delay_for(restarts_so_far()))
    log.error(
        "Kopf stopped on an error (%s); the operator starts again in %.0f s", watch.what, wait
    )
    await asyncio.sleep(wait)
    if not stop.is_set():
        reexec()


def record_restarts() -> None:
    """Show the restarts of this process's lifetime in the metrics."""
    restarts = restarts_so_far()
    if restarts:
        metrics.KOPF_RESTARTS.inc(restarts)
