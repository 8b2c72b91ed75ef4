"""What the tests' wait helpers say when they time out (tests/support/cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest

from support.cluster import Kubectl, summarize


def vn(name: str, phase: str, ready: str, reason: str, host: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "Scheduled", "status": "True", "reason": "Scheduled"},
            {"type": "Ready", "status": ready, "reason": reason, "message": f"{name}: {reason}"},
        ],
    }
    if host:
        status["host"] = host
    return {
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"cpus": 1, "nics": [{"bridge": "br0", "mac": "52:54:00:00:00:01"}] * 3},
        "status": status,
    }


def test_a_list_is_summarised_by_phase_reason_and_host_with_the_first_stuck_in_full() -> None:
    items = [vn(f"ok-{i}", "Stopped", "True", "Stopped", "kvmhost1") for i in range(40)]
    items += [vn(f"bad-{i}", "Provisioning", "False", "DefineFailed", "kvmhost3") for i in range(9)]
    items.append({"kind": "VirtualNode", "metadata": {"name": "new", "namespace": "ns"}})
    text = summarize({"kind": "List", "items": items})
    assert "50 objects, 10 not done" in text
    assert "by phase: -=1, Provisioning=9, Stopped=40" in text
    assert "by Ready status/reason: False/DefineFailed=9, True/Stopped=40, none=1" in text
    assert "not done, by host: -=1, kvmhost3=9" in text
    assert "VirtualNode ns/bad-0 (phase Provisioning, host kvmhost3)" in text
    assert "  Ready=False DefineFailed: bad-0: DefineFailed" in text
    assert "bad-5" not in text  # only the first few in full
    assert "52:54:00" not in text and "{" not in text  # no raw JSON


def test_one_object_shows_its_phase_and_conditions() -> None:
    text = summarize(vn("kvm1", "Starting", "False", "Starting", "kvmhost3"))
    assert text.splitlines() == [
        "VirtualNode ns/kvm1 (phase Starting, host kvmhost3)",
        "  Scheduled=True Scheduled",
        "  Ready=False Starting: kvm1: Starting",
    ]


def test_wait_for_raises_the_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import subprocess

    kubectl = Kubectl("/dev/null", "kubectl")
    listing = {"kind": "List", "items": [vn("a", "Scheduling", "False", "Unschedulable")]}
    monkeypatch.setattr(
        kubectl,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, json.dumps(listing), ""),
    )
    with pytest.raises(AssertionError) as error:
        kubectl.wait_for(lambda o: False, "vn", "-n", "ns", timeout=0.3, interval=0.1)
    message = str(error.value)
    assert "timed out after 0.3s waiting on `get vn -n ns`" in message
    assert "by Ready status/reason: False/Unschedulable=1" in message
