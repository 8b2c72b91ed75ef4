"""Argo CD health checks (charts/kvmfleet/argocd), run by a real Lua 5.1 interpreter.

Each kind's health_test.yaml is in Argo CD's own format (tests: [{healthStatus: {status,
message}, inputPath}]) and its testdata are objects the operator wrote on a real API
server (tests/integration/test_gitops_health.py captures them with
KVMFLEET_CAPTURE_ARGOCD_FIXTURES=1). The same fixtures are also read by the cli-utils
kstatus rules (what Flux computes), which must agree with Argo CD's verdict.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.gitops import CUSTOMIZATIONS, KINDS, argocd_health, health_lua, kstatus

KSTATUS_OF = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}
# Fixtures kstatus reads differently from Argo CD, and why.
KSTATUS_EXCEPTIONS = {
    # No status at all: kstatus has no observedGeneration and no condition to go by and
    # says Current; Argo CD's check waits for the operator. The operator writes status
    # within seconds of creation.
    ("VmMaster", "testdata/progressing_no_status.yaml"): "Current",
}


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for kind in KINDS:
        spec = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
        cases += [(kind, test) for test in spec["tests"]]
    return cases


CASES = _cases()


def _load(kind: str, input_path: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CUSTOMIZATIONS / kind / input_path).read_text())
    return data


@pytest.mark.parametrize(
    ("kind", "test"), CASES, ids=[f"{k}-{Path(t['inputPath']).stem}" for k, t in CASES]
)
def test_health_lua_fixture(kind: str, test: dict[str, Any]) -> None:
    obj = _load(kind, test["inputPath"])
    assert obj["kind"] == kind and obj["apiVersion"] == "kvmfleet.io/v1alpha1"
    assert "managedFields" not in obj["metadata"] and "uid" not in obj["metadata"]
    expected = test["healthStatus"]
    assert argocd_health(kind, obj) == (expected["status"], expected["message"])
    # The file name says the verdict (Argo's convention: healthy_*, progressing_*, ...).
    assert Path(test["inputPath"]).stem.split("_")[0] == expected["status"].lower()


@pytest.mark.parametrize(
    ("kind", "test"), CASES, ids=[f"{k}-{Path(t['inputPath']).stem}" for k, t in CASES]
)
def test_kstatus_agrees_with_argocd(kind: str, test: dict[str, Any]) -> None:
    obj = _load(kind, test["inputPath"])
    expected = KSTATUS_EXCEPTIONS.get(
        (kind, test["inputPath"]), KSTATUS_OF[test["healthStatus"]["status"]]
    )
    assert kstatus(obj) == expected


def test_every_kind_has_its_states_covered() -> None:
    statuses: dict[str, set[str]] = {}
    for kind, test in CASES:
        statuses.setdefault(kind, set()).add(test["healthStatus"]["status"])
    assert statuses["KvmHost"] == {"Healthy", "Progressing", "Degraded"}
    assert statuses["VirtualNode"] == {"Healthy", "Progressing", "Degraded"}
    # VmMaster capture is not implemented (planned): never Healthy yet.
    assert statuses["VmMaster"] == {"Progressing", "Degraded"}


def test_the_three_checks_are_one_script() -> None:
    """Argo CD's layout wants a health.lua per kind; each is a link to the one script."""
    script = (CUSTOMIZATIONS.parents[1] / "health.lua").resolve()
    for kind in KINDS:
        assert health_lua(kind).is_symlink(), kind
        assert health_lua(kind).resolve() == script, kind
    assert all(kind in script.read_text().split("\n", 1)[0] for kind in KINDS)


def test_deletion_is_progressing() -> None:
    kind, test = next((k, t) for k, t in CASES if t["healthStatus"]["status"] == "Healthy")
    obj = copy.deepcopy(_load(kind, test["inputPath"]))
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert argocd_health(kind, obj) == ("Progressing", "Being deleted")
    assert kstatus(obj) == "Terminating"


def test_ready_false_with_neither_reconciling_nor_stalled_is_not_healthy() -> None:
    """The old bug: kstatus said Current for Ready=False without Reconciling/Stalled. The
    operator never writes that any more; should it appear, Argo CD still says Progressing."""
    kind, test = next((k, t) for k, t in CASES if t["healthStatus"]["status"] == "Degraded")
    obj = copy.deepcopy(_load(kind, test["inputPath"]))
    for c in obj["status"]["conditions"]:
        if c["type"] in ("Reconciling", "Stalled"):
            c["status"] = "False"
    assert argocd_health(kind, obj)[0] == "Progressing"
    assert kstatus(obj) == "Current"


def test_lua_is_really_run() -> None:
    """A broken check fails: the harness does not fake its answer."""
    kind, test = CASES[0]
    obj = _load(kind, test["inputPath"])
    obj["status"]["conditions"] = "not a list"
    with pytest.raises(AssertionError, match=r"lua5\.1 failed"):
        argocd_health(kind, obj)
