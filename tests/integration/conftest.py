"""Fixtures for tests against the real local control plane (hack/cluster.sh)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import testbed as testbed_support
from support.cluster import SESSION_OPERATORS, Kubectl, OperatorProcess, prepared
from support.testbed import RUN_DIR

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Kubectl]:
    """The real control plane: started if it is not up, CRDs applied and established."""
    status = subprocess.run(
        ["bash", str(REPO / "hack/cluster.sh"), "status"], capture_output=True, check=False
    )
    started_here = status.returncode != 0
    if started_here:
        subprocess.run(["bash", str(REPO / "hack/cluster.sh"), "up"], check=True)
    kubectl = prepared()
    os.environ["KUBECONFIG"] = kubectl.kubeconfig
    yield kubectl
    if started_here and not os.environ.get("KVMFLEET_KEEP_CLUSTER"):
        subprocess.run(["bash", str(REPO / "hack/cluster.sh"), "down"], check=False)


@pytest.fixture(scope="session")
def operator(cluster: Kubectl) -> Iterator[OperatorProcess]:
    """The operator, running for the whole session against the real API server.

    Hosts are probed and VMs synced every 3 s (60 s and 30 s by default), per-VM statistics
    read every 2 s (30 s by default), and a deletion
    waits 20 s for an unreachable host (300 s by default), so tests see changes quickly.
    Its log stays in .run/logs/operator-tests.log.
    """
    proc = OperatorProcess(
        cluster.kubeconfig,
        _fresh_log(RUN_DIR / "logs" / "operator-tests.log"),
        extra_env={
            "KVMFLEET_HOST_PROBE_INTERVAL": "3",
            "KVMFLEET_VM_SYNC_INTERVAL": "3",
            "KVMFLEET_DELETE_HOST_UNREACHABLE_TIMEOUT": "20",
            "KVMFLEET_SSH_COMMAND_TIMEOUT": "20",
            "KVMFLEET_VM_STATS_INTERVAL": "2",
        },
    )
    proc.start()
    SESSION_OPERATORS.append(proc)
    yield proc
    SESSION_OPERATORS.remove(proc)
    proc.stop()


def _fresh_log(path: Path) -> Path:
    """A log file kept after the run (pytest's temporary folders are rotated away)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


@pytest.fixture(scope="session")
def testbed() -> Iterator[dict[str, Any]]:
    """The hypervisor testbed's hosts.json (hack/testbed.sh): started if `status` fails.

    Torn down at the end only if nothing of it was running before (status exit 3) and
    KVMFLEET_KEEP_TESTBED is unset; a testbed that was (partly) up is repaired and kept.
    KVMFLEET_TESTBED_UP_ARGS adds options to `up`, e.g. "--kvm-hosts 2". When it cannot
    be brought up the tests that need it FAIL (they do not skip), unless
    KVMFLEET_NO_TESTBED=1 is set: then they are skipped.
    """
    if os.environ.get("KVMFLEET_NO_TESTBED") == "1":
        pytest.skip("KVMFLEET_NO_TESTBED=1: tests against the hypervisor testbed are disabled")
    try:
        doc, started = testbed_support.ensure_up()
    except (AssertionError, OSError, ValueError, subprocess.TimeoutExpired) as error:
        raise pytest.fail.Exception(
            f"the hypervisor testbed is not up and could not be brought up:\n{error}\n"
            "Start it with `bash hack/testbed.sh up`, or set KVMFLEET_NO_TESTBED=1 to skip "
            "these tests.",
            pytrace=False,
        ) from None
    yield doc
    if started and not os.environ.get("KVMFLEET_KEEP_TESTBED"):
        testbed_support.run_testbed("down", check=False)


@pytest.fixture
def namespace(cluster: Kubectl) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.run("create", "namespace", name)
    yield name
    cluster.run("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration talks to the real control plane."""
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
