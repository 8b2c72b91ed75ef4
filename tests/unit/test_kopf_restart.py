"""handlers/restart: Kopf's failure noticed from its own log, the operator started again in
place (same command, one more restart counted), never while it is stopping anyway."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kvmfleet.handlers import restart


async def test_kopfs_failure_report_arms_the_watch_and_nothing_else_does() -> None:
    watch = restart.FailureWatch().install()
    kopf_log = logging.getLogger(restart.FailureWatch.LOGGER)
    try:
        kopf_log.error("Root tasks are stopped: cancelling")
        logging.getLogger("kopf.objects").error("Handler 'x' has failed temporarily")
        await asyncio.sleep(0)
        assert not watch.failed.is_set()
        kopf_log.error("Multidimensional multitasker has failed: 404 page not found\ntrace")
        await asyncio.wait_for(watch.failed.wait(), 1)
        assert watch.what == "Multidimensional multitasker has failed: 404 page not found"
    finally:
        kopf_log.removeHandler(watch)


def test_the_wait_doubles_from_two_seconds_to_a_minute() -> None:
    assert [restart.delay_for(n) for n in (0, 1, 2, 5, 6, 40)] == [2, 4, 8, 60, 60, 60]


async def test_the_watchdog_restarts_after_the_grace_unless_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    restarted: list[bool] = []
    monkeypatch.setattr(restart, "reexec", lambda: restarted.append(True))
    monkeypatch.setattr(restart, "GRACE", 0.01)
    monkeypatch.setattr(restart, "delay_for", lambda _: 0.01)
    watch = restart.FailureWatch()
    watch.failed.set()
    await restart.watchdog(watch, asyncio.Event())
    assert restarted == [True]
    stopping = asyncio.Event()
    stopping.set()
    await restart.watchdog(watch, stopping)
    assert restarted == [True]


def test_reexec_runs_the_same_command_and_counts_the_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        seen.update(path=path, argv=argv, env=env)

    monkeypatch.setattr(restart.os, "execve", execve)
    monkeypatch.setattr(restart.sys, "argv", ["/x/kvmfleet/__main__.py", "run", "--verbose"])
    monkeypatch.setenv(restart.RESTARTS_ENV, "2")
    restart.reexec()
    assert seen["argv"][1:] == ["-m", "kvmfleet", "run", "--verbose"]
    assert seen["path"] == seen["argv"][0]
    assert seen["env"][restart.RESTARTS_ENV] == "3"
    assert restart.restarts_so_far() == 2
