#!/usr/bin/env python3
"""Fleet scale: many VirtualNodes over many hosts, with the API cost of each phase.

One run, on the local API server (hack/cluster.sh) and the testbed (hack/testbed.sh,
best started in its scale mode: ``hack/testbed.sh up --hosts 20 --light``):

  1. --vms VirtualNodes (runStrategy Halted, one 16 MiB disk, hostRef spread over the
     hosts) applied at once, until every one is Stopped (disks made, domains defined);
  2. --running of them switched to runStrategy Always (small guests with no OS), until
     they are Running;
  3. a steady window (--steady seconds) with nothing changing;
  4. an operator restart, until every VM is recognised again (no provisioning repeated);
  5. delete all, until every object is gone.

It reports the figures of docs/benchmarks.md ("Fleet scale") next to their targets:
times, P50/P95 apply-to-phase, API requests per VM by verb (``apiserver_request_total``),
steady-state requests and host calls per minute, the operator's RSS and CPU, the work a
restart repeated. The operator runs with the default settings unless --sync is given.

Usage:
  .venv/bin/python bench/scale.py [--vms 1000] [--running 100] [--steady 120]
                                  [--sync 30] [--json bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.cluster import Kubectl, OperatorProcess, prepared  # noqa: E402
from support.testbed import HOSTS_JSON, RUN_DIR, host_manifests, kvmhost  # noqa: E402


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def apiserver_requests(cluster: Kubectl) -> dict[tuple[str, str], float]:
    """apiserver_request_total summed by (verb, resource)."""
    text = cluster.run("get", "--raw", "/metrics", timeout=120).stdout
    totals: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            key = (labels.get("verb", ""), labels.get("resource", ""))
            totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def per_resource(
    after: dict[tuple[str, str], float],
    before: dict[tuple[str, str], float],
    minus: dict[tuple[str, str], float] | None = None,
) -> dict[str, float]:
    """Requests between two readings on kvmfleet's objects, Secrets and Events, by verb."""
    minus = minus or {}
    result: dict[str, float] = {}
    for key, value in after.items():
        verb, resource = key
        if resource not in ("virtualnodes", "kvmhosts", "secrets", "events") or verb == "WATCH":
            continue
        n = value - before.get(key, 0.0) - minus.get(key, 0.0)
        if n > 0:
            result[f"{verb} {resource}"] = n
    return result


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if head == name or head.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics_of(operator: OperatorProcess) -> str:
    """The operator's /metrics; a scrape slower than its 5 s limit (a loaded machine) is
    tried again, for at most 2 minutes."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return operator.metrics()
        except OSError:  # socket timeouts and refused connections
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = float(fields[11]) + float(fields[12])
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = float(line.split()[1]) / 1024
    return ticks / 100.0, rss


class Fleet:
    """The VirtualNodes of one run, watched through periodic LISTs counted out of the figures.

    A LIST of hundreds of objects takes tens of seconds on a loaded machine, so the time a
    VM reached its phase is read from the object itself, not from when a poll saw it: the
    ``lastTransitionTime`` of its ``Ready=True`` condition (the API server's clock, whole
    seconds), which a VM reaches together with ``Stopped`` (Halted) or ``Running`` (Always).
    """

    def __init__(self, cluster: Kubectl, ns: str) -> None:
        self.cluster, self.ns = cluster, ns
        self.polls = 0

    def phases(self) -> dict[str, tuple[str, float | None]]:
        """Each VM's phase and when it last became Ready (epoch seconds, None if not Ready);
        empty when this poll did not finish in time (kubectl itself needs more than a minute
        for a LIST of hundreds of objects on a loaded machine)."""
        self.polls += 1
        try:
            out = self.cluster.run("get", "vn", "-n", self.ns, "-o", "json", timeout=300)
        except subprocess.TimeoutExpired:
            log("a LIST of the VirtualNodes took more than 300 s; next poll")
            return {}
        found: dict[str, tuple[str, float | None]] = {}
        for item in json.loads(out.stdout)["items"]:
            status = item.get("status") or {}
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
            )
            since = None
            if ready.get("status") == "True" and ready.get("lastTransitionTime"):
                stamp = ready["lastTransitionTime"].replace("Z", "+00:00")
                since = datetime.fromisoformat(stamp).timestamp()
            found[item["metadata"]["name"]] = (status.get("phase", ""), since)
        return found

    def wait(
        self, names: list[str], phase: str, since: dict[str, float], limit: float
    ) -> tuple[dict[str, float], set[str]]:
        """Seconds from each name's apply (``since``: epoch seconds) to its first ``phase``
        (by its Ready condition's transition; the poll's time when that is older than the
        apply); the names ever Unknown."""
        reached: dict[str, float] = {}
        unknown: set[str] = set()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            now = time.time()
            for name, (seen, ready_at) in self.phases().items():
                if name in since and seen == phase and name not in reached:
                    at = ready_at if ready_at is not None and ready_at >= since[name] - 1 else now
                    reached[name] = max(0.0, at - since[name])
                if seen == "Unknown":
                    unknown.add(name)
            if len(reached) >= len(names):
                break
            log(f"{len(reached)}/{len(names)} {phase}")
            time.sleep(5)
        return reached, unknown


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def vm(ns: str, name: str, host: str) -> dict[str, Any]:
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "cpus": 1,
            "memory": "32Mi",
            "runStrategy": "Halted",
            "reclaimPolicy": "Delete",
            "shutdownGracePeriodSeconds": 0,
            "hostRef": host,
            "nics": [{"bridge": "br0"}],
            "vnc": {"enabled": False},
            "disks": [{"name": "hda", "size": "16Mi", "storage": "dir:///var/lib/kvmfleet/images"}],
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole scenario; a phase that fails ends the run with the figures measured so far
    and ``error`` saying what failed."""
    result: dict[str, Any] = {"vms": args.vms, "running": args.running}
    try:
        _run(args, result)
    except Exception as error:  # reported with the figures measured so far
        result["error"] = f"{type(error).__name__}: {error}"[:2000]
    return result


def _run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    doc = json.loads(HOSTS_JSON.read_text())
    hosts = doc["hosts"]
    cluster = prepared()  # the control plane's own kubectl, with kvmfleet's CRDs applied
    ns = f"scale-{uuid.uuid4().hex[:6]}"
    names = [f"s{ns[-6:]}-{i:04d}" for i in range(args.vms)]
    env = {"KVMFLEET_VM_SYNC_INTERVAL": str(args.sync)}
    logs = RUN_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result["hosts"] = len(hosts)
    operator = OperatorProcess(cluster.kubeconfig, logs / "bench-scale.log", env, verbose=False)
    operator.start()
    fleet = Fleet(cluster, ns)
    try:
        cluster.run("create", "namespace", ns)
        cluster.apply(host_manifests(doc))
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [kvmhost(h, doc, overcommit={"cpu": 64, "memory": 4}) for h in hosts],
            }
        )
        for host in hosts:
            cluster.wait_for(
                lambda o: any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in o.get("status", {}).get("conditions", [])
                ),
                "kh",
                host["name"],
                timeout=600,
            )
        log(f"{len(hosts)} hosts Ready; applying {args.vms} VirtualNodes")
        items = [vm(ns, n, hosts[i % len(hosts)]["name"]) for i, n in enumerate(names)]
        before = apiserver_requests(cluster)
        started, applied_at = time.monotonic(), time.time()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda batch: cluster.run(
                        "create",
                        "-f",
                        "-",
                        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": batch}),
                        timeout=1200,
                    ),
                    [items[i::8] for i in range(8)],
                )
            )
        applied = {n: applied_at for n in names}
        stopped, unknown = fleet.wait(names, "Stopped", applied, args.timeout)
        result["defined_s"] = round(time.monotonic() - started, 1)
        result["defined"] = len(stopped)
        result["ever_unknown"] = len(unknown)
        result["stopped_p50_s"] = quantile(list(stopped.values()), 0.5)
        result["stopped_p95_s"] = quantile(list(stopped.values()), 0.95)
        time.sleep(2 * args.sync)
        requests = per_resource(
            apiserver_requests(cluster), before, {("LIST", "virtualnodes"): fleet.polls}
        )
        result["create_requests_per_vm"] = {k: round(v / args.vms, 2) for k, v in requests.items()}
        result["create_requests_per_vm_total"] = round(sum(requests.values()) / args.vms, 2)

        # -- Running --
        chosen = names[: args.running]
        started = time.monotonic()
        since: dict[str, float] = {}
        for name in chosen:
            since[name] = time.time()
            cluster.run(
                "patch", "vn", name, "-n", ns, "--type=merge",
                "-p", '{"spec":{"runStrategy":"Always"}}', timeout=300,
            )  # fmt: skip
        running, _ = fleet.wait(chosen, "Running", since, args.timeout)
        result["running_s"] = round(time.monotonic() - started, 1)
        result["running_count"] = len(running)
        result["running_p50_s"] = quantile(list(running.values()), 0.5)
        result["running_p95_s"] = quantile(list(running.values()), 0.95)

        # -- steady --
        time.sleep(2 * args.sync)
        text0, req0 = metrics_of(operator), apiserver_requests(cluster)
        assert operator.proc is not None
        cpu0, _ = proc_stat(operator.proc.pid)
        t0 = time.monotonic()
        time.sleep(args.steady)
        took = time.monotonic() - t0
        cpu1, rss = proc_stat(operator.proc.pid)
        text1, req1 = metrics_of(operator), apiserver_requests(cluster)
        per_min = 60.0 / took
        steady = per_resource(req1, req0)
        result["steady_api_requests_per_min"] = {
            k: round(v * per_min, 1) for k, v in steady.items()
        }
        result["steady_api_requests_per_min_total"] = round(sum(steady.values()) * per_min, 1)
        for name, key in (
            ("kvmfleet_ssh_commands_total", "steady_ssh_commands_per_min"),
            ("kvmfleet_host_inventory_reads_total", "steady_inventory_reads_per_min"),
            ("kvmfleet_vm_full_passes_total", "steady_full_passes_per_min"),
            ("kvmfleet_vm_steady_checks_total", "steady_checks_per_min"),
        ):
            result[key] = round((metric(text1, name) - metric(text0, name)) * per_min, 1)
        result["rss_mib"] = round(rss, 1)
        result["idle_cpu_percent"] = round(100 * (cpu1 - cpu0) / took, 1)

        # -- restart --
        operator.stop()
        operator = OperatorProcess(
            cluster.kubeconfig, logs / "bench-scale-restarted.log", env, verbose=False
        )
        started = time.monotonic()
        operator.start()
        while time.monotonic() - started < args.timeout:
            text = metrics_of(operator)
            if metric(text, "kvmfleet_vm_steady_checks_total") >= args.vms:
                break
            time.sleep(2)
        result["restart_s"] = round(time.monotonic() - started, 1)
        text = metrics_of(operator)
        result["restart_full_passes"] = metric(text, "kvmfleet_vm_full_passes_total")
        result["restart_repeated"] = {
            op: sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("kvmfleet_vm_operations_total{") and f'operation="{op}"' in line
            )
            for op in ("create-disk", "define", "start")
        }

        # -- delete all --
        started = time.monotonic()
        cluster.run("delete", "vn", "--all", "-n", ns, "--timeout=3600s", timeout=3700)
        result["delete_s"] = round(time.monotonic() - started, 1)
    finally:
        cluster.run("delete", "vn", "--all", "-n", ns, "--timeout=3600s", check=False, timeout=3700)
        cluster.run("delete", "namespace", ns, "--wait=false", check=False)
        operator.stop()
        cluster.apply(host_manifests(doc))


def report(result: dict[str, Any]) -> str:
    """The figures next to their targets, as a Markdown table."""
    r = result.get
    rows = [
        ("VMs Defined (Stopped)", f"{r('defined')}/{r('vms')} in {r('defined_s')} s", "600 s"),
        ("apply-to-Stopped P50 / P95", f"{r('stopped_p50_s')} / {r('stopped_p95_s')} s", ""),
        ("Running", f"{r('running_count')}/{r('running')} in {r('running_s')} s", ""),
        ("apply-to-Running P50 / P95", f"{r('running_p50_s')} / {r('running_p95_s')} s", "10 s"),
        ("API requests per VM (create)", f"{r('create_requests_per_vm_total')}", "constant"),
        ("steady API requests / min", f"{r('steady_api_requests_per_min_total')}", "O(hosts)"),
        ("steady SSH commands / min", f"{r('steady_ssh_commands_per_min')}", "O(hosts)"),
        ("steady inventory reads / min", f"{r('steady_inventory_reads_per_min')}", "O(hosts)"),
        ("steady full passes / min", f"{r('steady_full_passes_per_min')}", ""),
        ("operator RSS", f"{r('rss_mib')} MiB", "< 300 MiB"),
        ("operator idle CPU", f"{r('idle_cpu_percent')} %", "< 5 %"),
        ("restart to converged", f"{r('restart_s')} s", "< 120 s"),
        ("restart: full passes", f"{r('restart_full_passes')}", "0"),
        ("restart: repeated work", f"{r('restart_repeated')}", "none"),
        ("delete all", f"{r('delete_s')} s", ""),
    ]
    if r("error"):
        rows.append(("run ended early", str(r("error")), ""))
    lines = ["| figure | measured | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--running", type=int, default=100)
    parser.add_argument("--steady", type=float, default=120.0, help="seconds of steady window")
    parser.add_argument("--sync", type=float, default=30.0, help="KVMFLEET_VM_SYNC_INTERVAL")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per phase")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    text = report(result)
    print(json.dumps(result, indent=2))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
