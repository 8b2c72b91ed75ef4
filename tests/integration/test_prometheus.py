"""A real Prometheus (Debian's `prometheus`) scrapes the operator during the tests.

The scrape works; every query of the chart's Grafana dashboard returns series; the per-VM
CPU seconds of a running testbed guest grow between two scrapes; and the series of 20
VirtualNodes leave with them (the operator's series count returns to its baseline).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cluster import Kubectl, OperatorProcess, free_port
from support.objects import apply_testbed_hosts, is_, scratch_namespace, vm
from support.testbed import RUN_DIR

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "kvmfleet" / "dashboards" / "kvmfleet.json"
READY = is_("Ready", "True")
JOB = "kvmfleet-metrics"  # the metrics Service's name for release "kvmfleet"
SCRAPE = 2  # seconds


class Prometheus:
    """A Prometheus server of its own, scraping the operator every SCRAPE seconds."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": f"{SCRAPE}s", "evaluation_interval": "5s"},
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "honor_labels": True,
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing (Debian package prometheus, hack/lib/packages.tsv)"
        self.log = (RUN_DIR / "logs" / "prometheus-tests.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, "prometheus exited (.run/logs/prometheus-tests.log)"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "prometheus not ready within 60 s"
                time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: its result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            active: list[dict[str, Any]] = json.load(response)["data"]["activeTargets"]
        return active

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(
    operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    server = Prometheus(f"127.0.0.1:{operator.metrics_port}", tmp_path_factory.mktemp("prom"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hosts(cluster: Kubectl, operator: OperatorProcess, testbed: dict[str, Any]) -> list[str]:
    return apply_testbed_hosts(cluster, testbed, ready=READY, timeout=180)


@pytest.fixture
def ns(cluster: Kubectl) -> Iterator[str]:
    yield from scratch_namespace(cluster, "prom")


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(interval)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, with Grafana's variables filled in
    as "All" would ($job, $host) and $__rate_interval as a fixed window."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace('=~"$job"', '=~".+"')
                .replace('=~"$host"', '=~".*"')
                .replace("$__rate_interval", "1m")
            )
            assert "$" not in expr, expr
            queries.append((panel["title"], expr))
    return queries


def operator_series(operator: OperatorProcess) -> set[str]:
    """Every kvmfleet_* series the operator exposes now (name and labels, not values)."""
    lines = operator.metrics().splitlines()
    return {re.sub(r"\s+\S+$", "", line) for line in lines if line.startswith("kvmfleet_")}


def test_prometheus_scrapes_and_every_dashboard_query_has_series(
    cluster: Kubectl, hosts: list[str], prometheus: Prometheus, testbed: dict[str, Any], ns: str
) -> None:
    emulated = next(h["name"] for h in testbed["hosts"] if h["virtualization"] == "emulated")
    name = f"tick-{ns[-6:]}"
    cluster.apply(
        vm(
            name,
            ns,
            hostRef=emulated,
            memory="256Mi",
            nics=[{"bridge": "br0", "model": "virtio"}],
            disks=[{"name": "hda", "size": "64Mi"}],
            serial={"port": 0, "speed": 115200},
            reclaimPolicy="Delete",
        )
    )
    cluster.wait_for(READY, "vn", name, "-n", ns, timeout=180)

    (target,) = wait_for(
        lambda: [t for t in prometheus.targets() if t["health"] == "up"] or None,
        60,
        "the operator's target to be up",
    )
    assert target["labels"]["job"] == JOB

    cpu = f'kvmfleet_vm_cpu_usage_seconds_total{{namespace="{ns}",name="{name}"}}'
    first = wait_for(lambda: prometheus.query(cpu), 60, "the guest's CPU seconds")
    before = float(first[0]["value"][1])
    # Two scrapes later (stats every 2 s, scrapes every 2 s): the running guest used CPU.
    later = wait_for(
        lambda: [r for r in prometheus.query(cpu) if float(r["value"][1]) > before],
        30,
        "the guest's CPU seconds to grow",
    )
    assert float(later[0]["value"][1]) > before
    info = prometheus.query(f'kvmfleet_vm_info{{namespace="{ns}",name="{name}"}}')
    assert [r["metric"]["host"] for r in info] == [emulated]
    hostinfo = prometheus.query(f'kvmfleet_host_info{{host="{emulated}"}}')
    assert hostinfo and hostinfo[0]["metric"]["virtualization"] == "emulated"

    # Rates need two samples inside their window: give every query a minute of data.
    time.sleep(20)
    empty = []
    for title, expr in dashboard_queries():
        if not prometheus.query(expr):
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard queries without series:\n" + "\n".join(empty)


def test_series_count_returns_to_its_baseline_after_20_vms(
    cluster: Kubectl, hosts: list[str], operator: OperatorProcess, prometheus: Prometheus, ns: str
) -> None:
    def batch(names: list[str]) -> dict[str, Any]:
        items = [
            vm(n, ns, memory="64Mi", runStrategy="Halted", vnc={"enabled": False}) for n in names
        ]
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def all_ready(count: int) -> Any:
        return lambda o: len(o["items"]) == count and all(READY(i) for i in o["items"])

    def gone() -> bool:
        listing = cluster.json("get", "vn", "-n", ns)
        return not listing["items"]

    # Warm-up: one VM through its whole life, so operation and result labels exist.
    cluster.apply(batch([f"warm-{ns[-6:]}"]))
    cluster.wait_for(all_ready(1), "vn", "-n", ns, timeout=180, interval=2)
    cluster.run("delete", "vn", "--all", "-n", ns, "--timeout=180s", timeout=200)
    wait_for(gone, 120, "the warm-up VM to go")
    time.sleep(2 * SCRAPE)
    baseline = operator_series(operator)
    assert not [s for s in baseline if f'namespace="{ns}"' in s]

    names = [f"churn-{i:02d}-{ns[-6:]}" for i in range(20)]
    cluster.apply(batch(names))
    cluster.wait_for(all_ready(20), "vn", "-n", ns, timeout=400, interval=2)
    during = operator_series(operator)
    ours = [s for s in during if f'namespace="{ns}"' in s]
    assert len(ours) >= 20 * 3, ours  # ready, info and power state at least
    wait_for(
        lambda: prometheus.query(f'count(kvmfleet_vm_info{{namespace="{ns}"}}) == 20'),
        30,
        "Prometheus to see the 20 VMs",
    )

    cluster.run("delete", "vn", "--all", "-n", ns, "--timeout=300s", timeout=320)
    wait_for(gone, 180, "the 20 VMs to go")
    time.sleep(2 * SCRAPE)
    after = operator_series(operator)
    assert after == baseline, (
        f"new: {sorted(after - baseline)[:20]}; missing: {sorted(baseline - after)[:20]}"
    )
    # Prometheus marks the vanished series stale: instant queries no longer return them.
    wait_for(
        lambda: not prometheus.query(f'{{__name__=~"kvmfleet_.+",namespace="{ns}"}}'),
        30,
        "Prometheus to drop the deleted VMs' series",
    )
