"""Test helpers for the real control plane: kubectl, the operator process, the cluster env."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def cluster_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """KUBECONFIG and PATH of the control plane ``env`` (default: this process's) selects."""
    out = subprocess.run(
        ["bash", str(REPO / "hack/cluster.sh"), "env"],
        check=True,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
    ).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'\"")
    return env


class Kubectl:
    """Runs the kubectl built with the control plane against it."""

    def __init__(self, kubeconfig: str, binary: str) -> None:
        self.kubeconfig = kubeconfig
        self.binary = binary

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: PLW1510 - callers check
            [self.binary, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(
        self, manifest: str | dict[str, Any], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.run("apply", "-f", "-", input=text, check=check)

    def wait_for(
        self,
        predicate: Any,
        *args: str,
        timeout: float = 60,
        interval: float = 0.5,
        done: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Any:
        """Poll `kubectl get ARGS -o json` until predicate(obj) is truthy; return obj.

        On timeout the error summarises what was last seen (see `summarize`); for a list,
        `done(item)` tells which items are not stuck (default: Ready=True).
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        error = ""
        while time.monotonic() < deadline:
            result = self.run("get", *args, "-o", "json", check=False)
            if result.returncode == 0:
                last = json.loads(result.stdout)
                if predicate(last):
                    return last
            else:
                error = result.stderr.strip()
            time.sleep(interval)
        seen = summarize(last, done) if last is not None else f"kubectl get failed: {error}"
        raise AssertionError(
            f"timed out after {timeout}s waiting on `get {' '.join(args)}`:\n{seen}"
        )


STUCK_SHOWN = 5
"""How many stuck objects a timeout describes in full."""


def prepared(env: Mapping[str, str] | None = None) -> Kubectl:
    """kubectl for the control plane ``env`` selects, with kvmfleet's CRDs applied,
    established and published in the OpenAPI document (what `kubectl explain` reads)."""
    found = cluster_env(env)
    kubectl = Kubectl(found["KUBECONFIG"], str(Path(found["PATH"].split(":")[0]) / "kubectl"))
    kubectl.run("apply", "-f", str(REPO / "crds"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                "crd/kvmhosts.kvmfleet.io", "crd/virtualnodes.kvmfleet.io",
                "crd/vmmasters.kvmfleet.io")  # fmt: skip
    deadline = time.monotonic() + 90
    while kubectl.run("explain", "virtualnode.spec", check=False).returncode != 0:
        assert time.monotonic() < deadline, "CRD schemas never appeared in the OpenAPI document"
        time.sleep(1)
    return kubectl


PRIVATE_INSTANCE_OFFSET = 5
"""A private control plane uses instance (this worker's instance + 5): workers use 0-4."""


@contextlib.contextmanager
def private_control_plane(name: str) -> Iterator[Kubectl]:
    """A control plane of its own (hack/cluster.sh, run directory ``<run dir>/<name>``),
    for tests whose operator reconciles every object of a kind in its cluster; stopped and
    removed afterwards."""
    instance = int(os.environ.get("KVMFLEET_INSTANCE", "0") or "0") + PRIVATE_INSTANCE_OFFSET
    if instance > 9:
        raise RuntimeError(f"a private control plane would need instance {instance} (0-9)")
    run_dir = Path(os.environ.get("KVMFLEET_RUN_DIR", REPO / ".run")) / name
    ports = ("KVMFLEET_API_PORT", "KVMFLEET_ETCD_PORT", "KVMFLEET_ETCD_PEER_PORT",
             "KVMFLEET_KCM_PORT")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ports}  # the instance shifts them
    env.update(KVMFLEET_INSTANCE=str(instance), KVMFLEET_RUN_DIR=str(run_dir))
    env.pop("KUBECONFIG", None)
    script = str(REPO / "hack/cluster.sh")
    subprocess.run(["bash", script, "down"], env=env, capture_output=True, check=False)
    subprocess.run(["bash", script, "up"], env=env, check=True, timeout=300)
    try:
        yield prepared(env)
    finally:
        subprocess.run(["bash", script, "down"], env=env, capture_output=True, check=False)


def conditions_of(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The object's status.conditions by type."""
    return {c.get("type", "?"): c for c in (obj.get("status") or {}).get("conditions") or []}


def is_ready(obj: Mapping[str, Any]) -> bool:
    return conditions_of(obj).get("Ready", {}).get("status") == "True"


def describe(obj: Mapping[str, Any]) -> str:
    """One object as a person reads it: name, phase, host, then each condition on a line."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    name = (
        f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else meta.get("name")
    )
    facts = [f"phase {status.get('phase', '-')}"]
    if status.get("host"):
        facts.append(f"host {status['host']}")
    if meta.get("deletionTimestamp"):
        facts.append("deleting")
    lines = [f"{obj.get('kind', 'object')} {name} ({', '.join(facts)})"]
    conditions = conditions_of(obj)
    if not conditions:
        lines.append("  no conditions yet (never reconciled?)")
    for type_, c in conditions.items():
        message = c.get("message") or ""
        lines.append(
            f"  {type_}={c.get('status', '?')} {c.get('reason', '')}"
            + (f": {message[:300]}" if message else "")
        )
    return "\n".join(lines)


def summarize(obj: Mapping[str, Any], done: Callable[[dict[str, Any]], bool] | None = None) -> str:
    """What a wait saw last: for a list, counts by phase and by Ready status/reason and the
    first stuck items in full; for one object, its phase and conditions. Never raw JSON."""
    if "items" not in obj:
        return describe(obj)
    items: list[dict[str, Any]] = obj["items"]
    phases = Counter((i.get("status") or {}).get("phase", "-") for i in items)
    ready = Counter(
        f"{c.get('status', '?')}/{c.get('reason', '-')}" if c else "none"
        for c in (conditions_of(i).get("Ready") for i in items)
    )
    hosts = Counter((i.get("status") or {}).get("host", "-") for i in items)
    stuck = [i for i in items if not (done or is_ready)(i)]
    lines = [
        f"{len(items)} objects, {len(stuck)} not done",
        "by phase: " + ", ".join(f"{k}={v}" for k, v in sorted(phases.items())),
        "by Ready status/reason: " + ", ".join(f"{k}={v}" for k, v in sorted(ready.items())),
    ]
    if any(h != "-" for h in hosts):
        lines.append("by host: " + ", ".join(f"{k}={v}" for k, v in sorted(hosts.items())))
    if stuck:
        stuck_hosts = Counter((i.get("status") or {}).get("host", "-") for i in stuck)
        lines.append(
            "not done, by host: " + ", ".join(f"{k}={v}" for k, v in sorted(stuck_hosts.items()))
        )
        lines.append(f"first {min(len(stuck), STUCK_SHOWN)} not done:")
        lines.extend(describe(i) for i in stuck[:STUCK_SHOWN])
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SESSION_OPERATORS: list[OperatorProcess] = []
"""The session's shared operator, once a test asked for it (conftest.py): a module that
runs an operator of its own on the same control plane pauses it meanwhile."""


@contextlib.contextmanager
def session_operator_paused() -> Iterator[None]:
    """No session operator runs inside: two operators on one control plane would both act
    on every object (two starts, two Warnings, twice the API requests). The session's is
    started again afterwards."""
    paused = [p for p in SESSION_OPERATORS if p.proc is not None and p.proc.poll() is None]
    for other in paused:
        other.stop()
    try:
        yield
    finally:
        for other in paused:
            other.start()


class OperatorProcess:
    """`kvmfleet run` as a real subprocess, with its log kept for assertions."""

    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        *,
        verbose: bool = True,
    ) -> None:
        self.verbose = verbose
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = log_path
        self.kubeconfig = kubeconfig
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float | None = None) -> None:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, **self.extra_env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvmfleet",
                "run",
                *(["--verbose"] if self.verbose else []),
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                "--bind-address",
                "127.0.0.1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        # KVMFLEET_OPERATOR_START_TIMEOUT: more than 60 s on a machine shared by many runs.
        limit = ready_timeout or float(os.environ.get("KVMFLEET_OPERATOR_START_TIMEOUT", "60"))
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
                ):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop(kill=True)  # never leave it running to fight the next one over the objects
        raise AssertionError(
            f"operator not healthy in {limit:g}s: {self.log_path.read_text()[-3000:]}"
        )

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def probes(self, host: str) -> int:
        """How many probes of KvmHost `host` this operator has finished (from /metrics)."""
        found = re.search(
            rf'^kvmfleet_host_probe_duration_seconds_count{{host="{re.escape(host)}"}} (\S+)$',
            self.metrics(),
            re.M,
        )
        return int(float(found.group(1))) if found else 0

    def wait_probes(self, host: str, count: int, timeout: float = 60) -> None:
        """Poll until `count` more probes of `host` have finished (instead of sleeping)."""
        target = self.probes(host) + count
        deadline = time.monotonic() + timeout
        while (done := self.probes(host)) < target:
            assert time.monotonic() < deadline, (
                f"{host}: {done - target + count} of {count} probes in {timeout}s"
            )
            time.sleep(0.3)
