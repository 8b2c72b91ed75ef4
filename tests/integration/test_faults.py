"""Surviving faults on the real testbed and API server.

* an SSH command past its deadline is killed on the host (checked with pgrep there);
* two operator processes with leader election: exactly one acts, the standby takes
  over within the documented time after the active one is killed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kvmfleet.ssh.errors import CommandTimeoutError
from kvmfleet.ssh.hostkeys import HostKeyCheck
from kvmfleet.ssh.session import SshCredentials, SshOptions, SshSession, SshTarget
from support.cluster import Kubectl, OperatorProcess
from support.testbed import RUN_DIR, on_host

pytestmark = [pytest.mark.timeout(1500)]

Host = dict[str, Any]


def _running(host: str, pattern: str) -> bool:
    result = on_host(host, "pgrep", "-f", pattern, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def _session(host: Host, **options: Any) -> SshSession:
    return SshSession(
        SshTarget(host["address"], host["port"], host["user"]),
        SshCredentials(Path(host["privateKeyPath"]).read_bytes()),
        HostKeyCheck.strict(host["hostKey"]),
        SshOptions(connect_timeout=5, **options),
    )


@pytest.mark.testbed
def test_an_ssh_command_past_its_deadline_is_killed_on_the_host(testbed: dict[str, Any]) -> None:
    host = testbed["hosts"][0]
    marker = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000}"
    pattern = f"^sleep {marker}$"
    with _session(host) as session:
        started = time.monotonic()
        with pytest.raises(CommandTimeoutError):
            session.run(["sleep", marker], timeout=2)
        took = time.monotonic() - started
        assert took < 2 + 5, took  # the remote timeout ended it, not the local fallback
        assert not _running(host["name"], pattern), "the command still runs on the host"
        # Control: without the remote timeout the channel is closed but the process stays.
    with _session(host, remote_timeout=False) as session, pytest.raises(CommandTimeoutError):
        session.run(["sleep", marker], timeout=1)
    try:
        assert _running(host["name"], pattern), "control: the process should have survived"
    finally:
        on_host(host["name"], "pkill", "-f", pattern, check=False)


# --- two operators ------------------------------------------------------------------------------


LEASE = {"duration": 15, "renew": 10, "retry": 2}


def _holder(cluster: Kubectl, ns: str, name: str) -> str | None:
    result = cluster.run("get", "lease", name, "-n", ns, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return (json.loads(result.stdout).get("spec") or {}).get("holderIdentity")


def _acted_on(proc: OperatorProcess, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", proc.log()) is not None


def _vn(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "cpus": 1,
            "memory": "64Mi",
            "runStrategy": "Halted",
            "hostRef": "no-such-host",
            "nics": [{"bridge": "br0"}],
        },
    }


def test_two_operators_one_active_and_the_standby_takes_over(
    cluster: Kubectl, namespace: str, tmp_path: Path
) -> None:
    lease = f"kvmfleet-{uuid.uuid4().hex[:6]}"
    vm_one, vm_two = f"first-{lease}", f"second-{lease}"
    env = {
        "KVMFLEET_LEADER_ELECTION": "true",
        "KVMFLEET_LEADER_ELECTION_NAMESPACE": namespace,
        "KVMFLEET_LEADER_ELECTION_NAME": lease,
        "KVMFLEET_LEASE_DURATION": str(LEASE["duration"]),
        "KVMFLEET_LEASE_RENEW_DEADLINE": str(LEASE["renew"]),
        "KVMFLEET_LEASE_RETRY_PERIOD": str(LEASE["retry"]),
        "KVMFLEET_NAMESPACES": namespace,
        "KVMFLEET_VM_SYNC_INTERVAL": "3",
    }
    logs = RUN_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    first = OperatorProcess(cluster.kubeconfig, logs / f"leader-a-{lease}.log", env)
    second = OperatorProcess(cluster.kubeconfig, logs / f"leader-b-{lease}.log", env)
    try:
        first.start()
        deadline = time.monotonic() + 30
        while _holder(cluster, namespace, lease) is None:
            assert time.monotonic() < deadline, first.log()[-2000:]
            time.sleep(0.5)
        second.start()
        assert first.proc is not None and second.proc is not None
        holder = _holder(cluster, namespace, lease)
        assert holder is not None and holder.endswith(f"_{first.proc.pid}"), holder

        # Exactly one acts: the object is handled (status written) by the active one only.
        cluster.apply(_vn(vm_one, namespace))
        cluster.wait_for(
            lambda o: any(
                c["type"] == "Ready" and c.get("reason") == "HostNotFound"
                for c in (o.get("status") or {}).get("conditions") or []
            ),
            "vn",
            vm_one,
            "-n",
            namespace,
            timeout=60,
        )
        time.sleep(2 * LEASE["retry"])
        assert _acted_on(first, vm_one) and not _acted_on(second, vm_one)
        assert "standby: waiting for the leader Lease" in second.log()
        assert "became the leader" not in second.log()

        # The active one dies without a goodbye: the standby takes over within
        # lease duration + retry period (+ the API round trips).
        killed = time.monotonic()
        first.stop(kill=True)
        while True:
            holder = _holder(cluster, namespace, lease)
            if holder is not None and holder.endswith(f"_{second.proc.pid}"):
                break
            assert time.monotonic() - killed < LEASE["duration"] + LEASE["retry"] + 5, holder
            time.sleep(0.25)
        takeover = time.monotonic() - killed
        cluster.apply(_vn(vm_two, namespace))
        cluster.wait_for(
            lambda o: any(
                c["type"] == "Ready" and c.get("reason") == "HostNotFound"
                for c in (o.get("status") or {}).get("conditions") or []
            ),
            "vn",
            vm_two,
            "-n",
            namespace,
            timeout=60,
        )
        acting = time.monotonic() - killed
        assert _acted_on(second, vm_two)
        (logs / "leader-election.json").write_text(
            json.dumps({"takeover_s": round(takeover, 1), "acting_s": round(acting, 1)})
        )
        print(f"standby took the Lease after {takeover:.1f}s, acted after {acting:.1f}s")
        assert takeover <= LEASE["duration"] + LEASE["retry"] + 3

        # A clean stop releases the Lease: nobody holds it afterwards.
        second.stop()
        assert not _holder(cluster, namespace, lease)
    finally:
        first.stop(kill=True)
        second.stop(kill=True)
        cluster.run("delete", "vn", "--all", "-n", namespace, "--wait=false", check=False)
        for name in (vm_one, vm_two):
            cluster.run(
                "patch",
                "vn",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":[]}}',
                check=False,
            )
