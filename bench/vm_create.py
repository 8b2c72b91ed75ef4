#!/usr/bin/env python3
"""VM creation, side by side: kvmfleet, the manual path (qemu-img + virsh) and virt-install.

Every path does the same work per VM on the same testbed hosts, in the same run: create
a 1 GiB qcow2 image in the host's `local` directory pool, define a domain (1 CPU, 128 MiB,
one virtio NIC on br0, that disk, a serial console, VNC) and start it. The guests boot
from their empty disk only: no OS, no PXE, no DHCP lease taken from the testbed.

  kvmfleet           `kubectl apply` of N VirtualNodes (hostRef alternating over the hosts)
                     until every one is phase Running and Ready=True (Kubernetes watch);
                     removal: `kubectl delete` (reclaimPolicy Delete, grace 0) until gone.
  kvmfleet-sched     the same without hostRef: the operator's scheduler places them.
  manual-serial      one shell loop: ssh qemu-img create; virsh define; virsh start;
                     removal: virsh destroy; virsh undefine; ssh rm.
  manual-parallel    the same steps through `xargs -P <number of hosts>` (N > 1 only).
  virt-install       one shell loop of `virt-install --import` (disk made through the
                     libvirt storage API); removal: virsh destroy; virsh undefine
                     --remove-all-storage.

Usage (see bench/README.md):
  .venv/bin/python bench/vm_create.py [--vms 20] [--hosts kvmhost1,kvmhost2] [--repeat 3]
                                      [--repeat-n 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.cluster import Kubectl, cluster_env, free_port  # noqa: E402
from support.testbed import HOSTS_JSON, RUN_DIR, run_testbed  # noqa: E402

GROUP, VERSION = "kvmfleet.io", "v1alpha1"
IMAGE_DIR = "/var/lib/kvmfleet/images"
POOL_URL = f"dir://{IMAGE_DIR}"
VN, KH = "virtualnodes.kvmfleet.io", "kvmhosts.kvmfleet.io"
SAMPLE_LABEL = "bench.kvmfleet.io/sample"
RUN_LABEL = "bench.kvmfleet.io/run"
TESTBED_NET = ipaddress.ip_network("10.77.0.0/16")  # every testbed instance: 10.77.N.0/24
SCENARIOS = ("kvmfleet", "kvmfleet-sched", "manual-serial", "manual-parallel", "virt-install")
TITLES = {
    "kvmfleet": "kvmfleet (hostRef)",
    "kvmfleet-sched": "kvmfleet (scheduled)",
    "manual-serial": "manual serial",
    "manual-parallel": "manual parallel -P{p}",
    "virt-install": "virt-install serial",
}
TAGS = {
    "kvmfleet": "k",
    "kvmfleet-sched": "u",
    "manual-serial": "m",
    "manual-parallel": "p",
    "virt-install": "v",
}
OUR_NAME = re.compile(r"^bench-[kupmv]\d+-\d+-\d+$")
"""Domain names this benchmark makes (tag, N, attempt number in the run, index): the only
domains and images (`<name>.qcow2`, `<name>.hda.qcow2`) it ever removes."""


BENCH_MARK = "KVMFLEET_BENCH_WORK_DIR"
"""Environment variable naming the run directory, set on every process a run starts."""


def reap_leftovers(bench_root: Path, current: Path) -> None:
    """Stop what an earlier run that was killed (SIGKILL, power) left running: its
    operator and its private control plane, found by the run directory they carry (in the
    environment, or in the command line for etcd and the API server)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        mark = next(
            (
                v.split(b"=", 1)[1].decode()
                for v in environ
                if v.startswith(BENCH_MARK.encode() + b"=")
            ),
            None,
        )
        owner = Path(mark) if mark else None
        if owner is None:
            match = re.search(re.escape(str(bench_root)) + r"/([0-9-]+)/cp/cluster", cmdline)
            owner = bench_root / match.group(1) if match else None
        if owner is None or owner == current or owner.parent != bench_root:
            continue
        log(f"stopping pid {entry.name} left by the killed run {owner.name}: {cmdline[:80]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(entry.name), signal.SIGTERM)


class BenchError(Exception):
    """Something the benchmark cannot go on with; the message says what to do."""


def log(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- testbed


@dataclass(frozen=True)
class Host:
    """A testbed hypervisor as the manual path reaches it (ssh, virsh) and as kvmfleet knows it."""

    name: str
    address: str
    port: int
    user: str
    key: str
    known_hosts: str
    uri: str
    host_key: str
    virt_type: str  # libvirt domain type: kvm or qemu (TCG)

    @property
    def kvmhost(self) -> str:
        """The bench's own KvmHost for this machine (see ensure_bench_hosts)."""
        return f"bench-{self.name}"

    def ssh_argv(self, *command: str) -> list[str]:
        return [
            "ssh", "-n", "-i", self.key, "-p", str(self.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            f"{self.user}@{self.address}", *command,
        ]  # fmt: skip

    def ssh(self, command: str, timeout: float = 60, check: bool = True) -> str:
        result = subprocess.run(
            self.ssh_argv(command), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise BenchError(f"ssh {self.name} {command!r}: {result.stderr.strip()}")
        return result.stdout

    def virsh(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        result = subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise BenchError(f"virsh {self.name} {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout


def load_hosts(names: list[str]) -> tuple[list[Host], dict[str, Any]]:
    """The chosen hosts from hosts.json, after checking they are ours to touch."""
    if not HOSTS_JSON.exists():
        raise BenchError(f"{HOSTS_JSON} is missing: start the testbed with hack/testbed.sh up")
    doc = json.loads(HOSTS_JSON.read_text())
    by_name = {h["name"]: h for h in doc["hosts"]}
    hosts = []
    for name in names:
        if name not in by_name:
            raise BenchError(f"host {name} is not in {HOSTS_JSON} (hosts: {', '.join(by_name)})")
        h = by_name[name]
        if ipaddress.ip_address(h["address"]) not in TESTBED_NET:
            raise BenchError(f"{name} is at {h['address']}, outside {TESTBED_NET}: refused")
        if urlparse(h["libvirtURI"]).hostname != h["address"]:
            raise BenchError(f"{name}: libvirtURI {h['libvirtURI']} does not point at its address")
        hosts.append(
            Host(
                name=name,
                address=h["address"],
                port=int(h["port"]),
                user=h["user"],
                key=h["privateKeyPath"],
                known_hosts=doc["knownHostsPath"],
                uri=h["libvirtURI"],
                host_key=h["hostKey"],
                virt_type="kvm" if h.get("virtualization") == "kvm" else "qemu",
            )
        )
    return hosts, doc


def ensure_tools() -> None:
    """Install what the benchmark runs and compares against (virt-install, virsh, ssh...).

    The `bench` rows of hack/lib/packages.tsv, installed with apt-get by hack/lib/deps.sh
    when one of their commands is missing.
    """
    deps = ["bash", str(REPO / "hack" / "lib" / "deps.sh")]
    check = subprocess.run(
        [*deps, "preflight", "bench"], capture_output=True, text=True, check=False
    )
    if check.returncode == 0:
        return
    print(f"installing the benchmark's tools:\n{check.stderr.strip()}", file=sys.stderr)
    install = subprocess.run(
        [*deps, "install", "bench"], capture_output=True, text=True, check=False
    )
    check = subprocess.run(
        [*deps, "preflight", "bench"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise BenchError(
            "could not install the benchmark's tools (hack/lib/deps.sh install bench):\n"
            f"{install.stderr.strip()[-2000:]}\n{check.stderr.strip()}"
        )


def preflight(hosts_arg: list[str]) -> tuple[list[Host], dict[str, Any], str]:
    """Fail early and clearly when the testbed or a tool is missing; (hosts, doc, kubectl)."""
    ensure_tools()
    tb = run_testbed("status", check=False, timeout=60)
    if tb.returncode != 0:
        raise BenchError(
            "the hypervisor testbed is not fully up (hack/testbed.sh status exit "
            f"{tb.returncode}): run hack/testbed.sh up\n{tb.stdout.strip()}"
        )
    hosts, doc = load_hosts(hosts_arg)
    for host in hosts:
        try:
            host.ssh("true", timeout=20)
            host.virsh("uri", timeout=30)
        except (BenchError, subprocess.TimeoutExpired) as error:
            raise BenchError(f"{host.name} does not answer over ssh/libvirt: {error}") from error
    binary = Path(cluster_env()["PATH"].split(":")[0]) / "kubectl"
    if not binary.exists():
        raise BenchError(f"{binary} is missing: build the control plane with hack/cluster.sh up")
    return hosts, doc, str(binary)


class BenchKubectl(Kubectl):
    """Kubectl with a discovery cache of its own (private control planes use random ports)."""

    def __init__(self, kubeconfig: str, binary: str, cache_dir: Path) -> None:
        super().__init__(kubeconfig, binary)
        self.cache_dir = cache_dir

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return super().run(
            "--cache-dir", str(self.cache_dir), *args, input=input, check=check, timeout=timeout
        )


def shared_control_plane(kubectl_binary: str) -> Kubectl:
    """The control plane of hack/cluster.sh (shared with everyone working on this machine)."""
    status = subprocess.run(
        ["bash", str(REPO / "hack/cluster.sh"), "status"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if status.returncode != 0:
        raise BenchError(
            "the control plane is not up (hack/cluster.sh status failed): run hack/cluster.sh up\n"
            + (status.stdout + status.stderr).strip()
        )
    kubectl = Kubectl(cluster_env()["KUBECONFIG"], kubectl_binary)
    check_control_plane(kubectl)
    return kubectl


def check_control_plane(kubectl: Kubectl) -> None:
    server = kubectl.run(
        "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
    )
    server_host = urlparse(server.stdout.strip()).hostname or ""
    if server_host not in {"127.0.0.1", "localhost"}:
        raise BenchError(f"the kubeconfig points at {server_host}, not a local control plane")
    crd = kubectl.run("get", "crd", "virtualnodes.kvmfleet.io", check=False)
    if crd.returncode != 0:
        raise BenchError("the kvmfleet CRDs are not installed: kubectl apply -f crds/")


class PrivateControlPlane:
    """etcd, kube-apiserver 1.20.2 and kube-controller-manager for this run alone.

    `hack/cluster.sh up` with a run directory and ports of its own (the same binaries as
    the shared control plane). Other operators on this machine (every integration test
    session starts one, watching all namespaces) reconcile every VirtualNode and KvmHost
    of the shared control plane, so there they would race the measured operator.
    Stopped by the pids it recorded, after checking each belongs to this run directory.
    """

    NAMES = ("kube-controller-manager", "kube-apiserver", "etcd")

    def __init__(self, root: Path, kubectl_binary: str) -> None:
        self.root = root
        self.state = root / "cluster"
        self.kubectl_binary = kubectl_binary
        self.env = {
            "KVMFLEET_RUN_DIR": str(root),
            "KVMFLEET_API_PORT": str(free_port()),
            "KVMFLEET_ETCD_PORT": str(free_port()),
            "KVMFLEET_ETCD_PEER_PORT": str(free_port()),
            "KVMFLEET_KCM_PORT": str(free_port()),
            BENCH_MARK: str(root.parent),
        }

    def start(self) -> Kubectl:
        log(f"starting a private control plane on 127.0.0.1:{self.env['KVMFLEET_API_PORT']}")
        result = subprocess.run(
            ["bash", str(REPO / "hack/cluster.sh"), "up"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"hack/cluster.sh up (private) failed:\n{result.stderr[-2000:]}")
        kubectl = BenchKubectl(
            str(self.state / "kubeconfig"), self.kubectl_binary, self.root / "kube-cache"
        )
        kubectl.run("apply", "-f", str(REPO / "crds"))
        kubectl.run(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/kvmhosts.kvmfleet.io", "crd/virtualnodes.kvmfleet.io", "crd/vmmasters.kvmfleet.io",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while kubectl.run("get", VN, "-A", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise BenchError("the private API server never served the kvmfleet CRDs")
            time.sleep(0.5)
        check_control_plane(kubectl)
        return kubectl

    def stop(self) -> None:
        for name in self.NAMES:
            pid_file = self.state / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue
            if str(self.state) not in cmdline:
                log(f"WARNING: pid {pid} of {name} is not ours any more; left alone")
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.2)
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- measurement helpers


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    after = stat.rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def foreign_operators(own: int | None) -> list[int]:
    """Pids of other `kvmfleet run` processes: they would reconcile our VirtualNodes too."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        for i, word in enumerate(words[:-1]):
            if word.endswith("kvmfleet") and words[i + 1] == "run":
                found.append(int(entry.name))
                break
    return sorted(found)


class Probe:
    """What one sample cost the machine: wall time, CPU, contention."""

    def __init__(self, operator_pid: int | None, shared: bool) -> None:
        self.operator_pid = operator_pid
        self.shared = shared
        self.busy0, self.total0 = cpu_busy()
        self.children0 = children_cpu_seconds()
        self.op0 = proc_cpu_seconds(operator_pid) if operator_pid else 0.0
        self.load0 = os.getloadavg()[0]
        self.foreign = set(foreign_operators(operator_pid)) if shared else set()

    def finish(self) -> dict[str, Any]:
        busy1, total1 = cpu_busy()
        if self.shared:
            self.foreign |= set(foreign_operators(self.operator_pid))
        result: dict[str, Any] = {
            "machineCpuBusy": round((busy1 - self.busy0) / max(total1 - self.total0, 1), 3),
            "clientCpuSeconds": round(children_cpu_seconds() - self.children0, 3),
            "loadavg1Before": round(self.load0, 2),
        }
        if self.shared:
            result["foreignOperators"] = sorted(self.foreign)
        if self.operator_pid:
            result["operatorCpuSeconds"] = round(proc_cpu_seconds(self.operator_pid) - self.op0, 3)
        return result


def run_script(script: Path, timeout: float, env: dict[str, str]) -> float:
    """Run a bash script (our own process group, killed on timeout); return its wall time."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BenchError(f"{script.name} did not finish in {timeout:.0f} s") from None
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise BenchError(f"{script.name} failed ({proc.returncode}):\n{out[-2000:]}")
    return elapsed


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels kept as printed)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[key] = float(value)
    return values


def metric_sum(values: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in values.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


# --------------------------------------------------------------------------- the operator


class Operator:
    """`kvmfleet run` of this benchmark: VirtualNodes of one namespace, its own ports."""

    def __init__(
        self,
        kubeconfig: str,
        namespace: str,
        log_path: Path,
        verbose: bool = False,
        vm_sync_interval: float = 5,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.verbose = verbose
        self.vm_sync_interval = vm_sync_interval
        self.namespace = namespace
        self.log_path = log_path
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "KVMFLEET_VM_SYNC_INTERVAL": f"{self.vm_sync_interval:g}",
            BENCH_MARK: str(self.log_path.parent),  # lets a later run find it if we die
        }
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(REPO / ".venv/bin/kvmfleet"), "run",
                    "--namespace", self.namespace,
                    "--metrics-port", str(self.metrics_port),
                    "--health-port", str(self.health_port),
                    "--bind-address", "127.0.0.1",
                    *(["--verbose"] if self.verbose else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the operator exited: {self.tail()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
                ):
                    return
            except OSError:
                time.sleep(0.3)
        raise BenchError(f"the operator was not healthy within 60 s: {self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
            ) as r:
                return parse_metrics(r.read().decode())
        except OSError:
            return {}

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- Kubernetes watch


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return status.get("phase") == "Running" and ready


class Watcher:
    """Watches the VirtualNodes of one sample; records when each became ready and went."""

    def __init__(self, kubeconfig: str, namespace: str, selector: str) -> None:
        from kubernetes import config, watch
        from kubernetes.client import CustomObjectsApi

        self._watch_mod = watch
        self.api = CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
        self.namespace = namespace
        self.selector = selector
        self.cond = threading.Condition()
        self.ready_at: dict[str, float] = {}
        self.placed_at: dict[str, float] = {}
        self.deleted_at: dict[str, float] = {}
        self.hosts: dict[str, str] = {}
        self.writes: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rv = ""

    def _list(self) -> dict[str, Any]:
        return self.api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "virtualnodes", label_selector=self.selector
        )

    def start(self) -> None:
        self.rv = self._list()["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            w = self._watch_mod.Watch()
            try:
                for event in w.stream(
                    self.api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "virtualnodes",
                    label_selector=self.selector,
                    resource_version=self.rv,
                    timeout_seconds=5,
                    _request_timeout=30,
                ):
                    self._record(time.monotonic(), event)
                    if self._stop.is_set():
                        w.stop()
                        break
            except Exception as error:
                text = str(error)
                self.errors.append(text[:300])
                if "410" in text or "Expired" in text:
                    with contextlib.suppress(Exception):
                        self.rv = self._list()["metadata"]["resourceVersion"]
                time.sleep(0.2)

    def _record(self, now: float, event: dict[str, Any]) -> None:
        kind, obj = event["type"], event["object"]
        if kind == "ERROR":
            self.errors.append(json.dumps(obj)[:300])
            if obj.get("code") == 410:
                self.rv = self._list()["metadata"]["resourceVersion"]
            return
        meta = obj["metadata"]
        name = meta["name"]
        self.rv = meta["resourceVersion"]
        with self.cond:
            self.last[name] = obj
            if kind == "MODIFIED":
                self.writes[name] = self.writes.get(name, 0) + 1
            host = (obj.get("status") or {}).get("host")
            if host and name not in self.placed_at:
                self.placed_at[name] = now
                self.hosts[name] = host
            if kind != "DELETED" and is_ready(obj) and name not in self.ready_at:
                self.ready_at[name] = now
            if kind == "DELETED":
                self.deleted_at[name] = now
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:  # a daemon; its watch ends within timeout_seconds anyway
            self._thread.join(timeout=0.5)


# --------------------------------------------------------------------------- the bench


MANUAL_XML = """<domain type='@TYPE@'>
  <name>@NAME@</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='@DIR@/@NAME@.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'/>
  </devices>
</domain>
"""

# What an admin would keep in a file and source: one VM per call, every step checked.
MANUAL_LIB = r"""set -euo pipefail
ssh_() {  # ADDR PORT USER CMD...
    local addr=$1 port=$2 user=$3; shift 3
    ssh -n -i "$BENCH_KEY" -p "$port" -o UserKnownHostsFile="$BENCH_KNOWN_HOSTS" \
        -o StrictHostKeyChecking=yes -o BatchMode=yes "$user@$addr" "$@"
}
manual_create() {  # ADDR PORT USER URI TYPE NAME
    ssh_ "$1" "$2" "$3" qemu-img create -f qcow2 "$BENCH_IMAGES/$6.qcow2" 1G >/dev/null
    sed -e "s|@NAME@|$6|g" -e "s|@TYPE@|$5|g" -e "s|@DIR@|$BENCH_IMAGES|g" \
        "$BENCH_TEMPLATE" > "$BENCH_WORK/$6.xml"
    virsh -q -c "$4" define "$BENCH_WORK/$6.xml" >/dev/null </dev/null
    virsh -q -c "$4" start "$6" >/dev/null </dev/null
}
manual_delete() {  # ADDR PORT USER URI TYPE NAME
    virsh -q -c "$4" destroy "$6" >/dev/null </dev/null
    virsh -q -c "$4" undefine "$6" >/dev/null </dev/null
    ssh_ "$1" "$2" "$3" rm -f "$BENCH_IMAGES/$6.qcow2"
}
vi_create() {  # ADDR PORT USER URI TYPE NAME
    virt-install --connect "$4" --name "$6" --memory 128 --vcpus 1 --virt-type "$5" \
        --disk "path=$BENCH_IMAGES/$6.qcow2,size=1,format=qcow2,bus=virtio" \
        --network bridge=br0,model=virtio --import --graphics vnc,listen=0.0.0.0 \
        --serial pty --noautoconsole --osinfo detect=on,require=off >/dev/null </dev/null
}
vi_delete() {  # ADDR PORT USER URI TYPE NAME
    virsh -q -c "$4" destroy "$6" >/dev/null </dev/null
    virsh -q -c "$4" undefine "$6" --remove-all-storage >/dev/null </dev/null
}
"""

SERIAL_LOOP = """source "$BENCH_WORK/lib.sh"
while read -r addr port user uri type name; do
    {fn} "$addr" "$port" "$user" "$uri" "$type" "$name"
done < "$BENCH_WORK/{listing}"
"""

PARALLEL_LOOP = """source "$BENCH_WORK/lib.sh"
xargs -P {p} -L 1 bash -c 'source "$BENCH_WORK/lib.sh"; {fn} "$@"' _ < "$BENCH_WORK/{listing}"
"""


@dataclass
class Sample:
    scenario: str
    vms: int
    repeat: int
    create_s: float | None = None
    delete_s: float | None = None
    attempt: int = 0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hosts, self.doc, kubectl_binary = preflight(args.hosts)
        self.shared = args.control_plane == "shared"
        self.namespace = args.namespace
        self.run_id = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.work = RUN_DIR / "bench" / self.run_id
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "lib.sh").write_text(MANUAL_LIB)
        (self.work / "domain.xml.in").write_text(MANUAL_XML)
        self.private = (
            None if self.shared else PrivateControlPlane(self.work / "cp", kubectl_binary)
        )
        self.kubectl = shared_control_plane(kubectl_binary) if self.shared else None
        self.operator: Operator | None = None
        self.created_namespace = False
        self.samples: list[Sample] = []
        self.discarded: list[Sample] = []
        self.warmup: Sample | None = None
        self.seq = 0

    @property
    def kube(self) -> Kubectl:
        assert self.kubectl is not None
        return self.kubectl

    @property
    def op(self) -> Operator:
        assert self.operator is not None
        return self.operator

    # ---------------------------------------------------------------- setup and teardown

    def setup(self) -> None:
        reap_leftovers(self.work.parent, self.work)
        if self.private is not None:
            self.kubectl = self.private.start()
        self.operator = Operator(
            self.kube.kubeconfig,
            self.namespace,
            self.work / "operator.log",
            verbose=self.args.verbose_operator,
            vm_sync_interval=self.args.vm_sync_interval,
        )
        ns = self.kube.run("get", "namespace", self.namespace, check=False)
        if ns.returncode != 0:
            self.kube.run("create", "namespace", self.namespace)
            self.created_namespace = True
        self.sweep_cluster()
        self.sweep_hosts()
        self.ensure_bench_hosts()
        log(f"starting the operator (log {self.op.log_path})")
        self.op.start()
        self.wait_hosts_ready()
        if self.args.warmup and "kvmfleet" in self.args.scenarios:
            log("warm-up (not counted): one VirtualNode per host")
            self.warmup = self.sample("kvmfleet", len(self.hosts), -1)

    def ensure_bench_hosts(self) -> None:
        """The testbed machines again, as KvmHosts of this benchmark only.

        The shared KvmHosts kvmhost1/2 allow 2 cores x overcommit 4 = 8 CPUs and carry
        other people's VMs, so N one-CPU VMs per host do not fit there, and their specs
        are not ours to edit. bench-<host> points at the same machine (same SSH, libvirt,
        br0 and `local` directory pool) with room for the benchmark, and takes only
        VirtualNodes of the benchmark's namespace.
        """
        key = Path(self.hosts[0].key).read_text()
        items: list[dict[str, Any]] = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/ssh-auth",
                "metadata": {"name": "bench-ssh", "namespace": self.namespace},
                "stringData": {"ssh-privatekey": key},
            }
        ]
        for host in self.hosts:
            items.append(
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "KvmHost",
                    "metadata": {"name": host.kvmhost, "labels": {RUN_LABEL: "bench"}},
                    "spec": {
                        "address": host.address,
                        "port": host.port,
                        "user": host.user,
                        "sshKeySecretRef": {"name": "bench-ssh", "namespace": self.namespace},
                        "hostKey": host.host_key,
                        "hostKeyPolicy": "Strict",
                        "bridges": [{"name": "br0", "interface": "eth0"}],
                        "storagePools": [{"name": "local", "url": POOL_URL}],
                        "allowedNamespaces": [self.namespace],
                        "overcommit": {"cpu": 64, "memory": 1},
                    },
                }
            )
        self.kube.apply({"apiVersion": "v1", "kind": "List", "items": items})

    def wait_hosts_ready(self) -> None:
        """Our KvmHosts Ready, and the operator's first probe of every KvmHost behind us."""
        deadline = time.monotonic() + 180
        names = [h.kvmhost for h in self.hosts]
        while True:
            if not self.op.alive():
                raise BenchError(f"the operator exited: {self.op.tail()}")
            ready = []
            for name in names:
                obj = self.kube.json("get", KH, name)
                conds = {
                    c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])
                }
                ready.append(conds.get("Ready") == "True")
            all_hosts = [o["metadata"]["name"] for o in self.kube.json("get", KH)["items"]]
            values = self.op.metrics()
            probed = all(
                metric_sum(values, "kvmfleet_host_probe_duration_seconds_count", host=h) >= 1
                for h in all_hosts
            )
            if all(ready) and probed:
                log(f"KvmHosts {', '.join(names)} Ready; first probes of {len(all_hosts)} done")
                time.sleep(2)
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"KvmHosts {names} not Ready (or first probes unfinished) after 180 s; "
                    f"kubectl describe kh {' '.join(names)}; operator log {self.op.log_path}"
                )
            time.sleep(1)

    def sweep_cluster(self, timeout: float = 180) -> None:
        """Delete the benchmark's VirtualNodes left in its namespace and wait for them."""
        items = self.kube.json("get", VN, "-n", self.namespace)["items"]
        names = [o["metadata"]["name"] for o in items if OUR_NAME.match(o["metadata"]["name"])]
        if not names:
            return
        log(f"removing {len(names)} VirtualNode(s) of an earlier run: {', '.join(names[:5])}...")
        self.kube.run("delete", VN, "-n", self.namespace, "--wait=false", *names, check=False)
        if not self.op.alive():
            return  # their finalizers wait for the operator; setup() starts it later
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.kube.json("get", VN, "-n", self.namespace)["items"]
            if not [o for o in left if o["metadata"]["name"] in names]:
                return
            time.sleep(1)
        log(f"WARNING: VirtualNodes still terminating after {timeout:.0f} s: {names}")

    def sweep_hosts(self, only: Iterable[str] | None = None) -> None:
        """Destroy/undefine our domains and remove our images on every host (tolerant)."""
        wanted = set(only) if only is not None else None
        for host in self.hosts:
            try:
                listing = host.virsh("list", "--all", "--name", timeout=60)
            except (BenchError, subprocess.TimeoutExpired) as error:
                log(f"WARNING: cannot list domains on {host.name}: {error}")
                continue
            for name in listing.split():
                if not OUR_NAME.match(name) or (wanted is not None and name not in wanted):
                    continue
                host.virsh("destroy", name, check=False)
                host.virsh("undefine", name, check=False)
            if wanted is None:
                pattern = f"{IMAGE_DIR}/bench-[kupmv][0-9]*-[0-9]*-[0-9]*.*"
                host.ssh(f"rm -f {pattern}", check=False)
            elif wanted:
                files = " ".join(
                    shlex.quote(f"{IMAGE_DIR}/{n}{suffix}")
                    for n in sorted(wanted)
                    for suffix in (".qcow2", ".hda.qcow2")
                )
                host.ssh(f"rm -f {files}", check=False)

    def teardown(self) -> None:
        log("cleaning up")
        try:
            if self.shared and self.operator is not None and self.op.alive():
                # Our objects in the shared control plane go through the operator.
                self.sweep_cluster()
                names = [h.kvmhost for h in self.hosts]
                self.kube.run("delete", KH, "--wait=false", *names, check=False)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    left = self.kube.run("get", KH, *names, check=False)
                    if left.stdout.strip() == "":
                        break
                    time.sleep(1)
        finally:
            if self.operator is not None:
                self.op.stop()
            with contextlib.suppress(Exception):
                self.wait_for_hosts(timeout=120)
            with contextlib.suppress(Exception):
                self.sweep_hosts()
            if self.private is not None:
                self.private.stop()
            elif self.created_namespace:
                items = self.kube.json("get", VN, "-n", self.namespace)["items"]
                if not items:
                    self.kube.run(
                        "delete", "namespace", self.namespace, "--wait=false", check=False
                    )

    # ---------------------------------------------------------------- samples

    def names(self, scenario: str, n: int, seq: int) -> list[str]:
        return [f"bench-{TAGS[scenario]}{n}-{seq}-{i}" for i in range(n)]

    def wait_for_hosts(self, timeout: float = 300) -> float:
        """Wait until every host answers ssh again (others inject faults on the shared
        testbed: sshd-stop, link-down); return the seconds waited."""
        started = time.monotonic()
        announced = False
        while True:
            down = []
            for host in self.hosts:
                try:
                    host.ssh("true", timeout=15)
                except (BenchError, subprocess.TimeoutExpired):
                    down.append(host.name)
            if not down:
                return round(time.monotonic() - started, 1) if announced else 0.0
            if time.monotonic() - started > timeout:
                raise BenchError(f"{', '.join(down)} unreachable for {timeout:.0f} s")
            if not announced:
                log(f"  waiting for {', '.join(down)} to answer ssh again")
                announced = True
            time.sleep(3)

    def sample(self, scenario: str, n: int, repeat: int) -> Sample:
        """One measurement; an attempt that fails is kept aside and made again."""
        for attempt in range(self.args.retries + 1):
            waited = self.wait_for_hosts()
            sample = self.attempt(scenario, n, repeat, attempt)
            sample.details["waitedForHostsSeconds"] = waited
            if sample.error is None or attempt == self.args.retries:
                return sample
            self.discarded.append(sample)
            log("  discarded; trying again")
        raise AssertionError("unreachable")

    def attempt(self, scenario: str, n: int, repeat: int, attempt: int) -> Sample:
        self.seq += 1
        names = self.names(scenario, n, self.seq)
        sample = Sample(scenario, n, repeat, attempt=attempt)
        again = f", attempt {attempt + 1}" if attempt else ""
        which = "warm-up" if repeat < 0 else f"run {repeat + 1}"
        log(f"{scenario}, {n} VM(s), {which}{again}")
        try:
            if scenario.startswith("kvmfleet"):
                self.kvmfleet(sample, names, pinned=scenario == "kvmfleet")
            else:
                self.manual(sample, names, scenario)
        except (BenchError, subprocess.TimeoutExpired, AssertionError) as error:
            sample.error = str(error)[:2000]
            log(f"  FAILED: {sample.error}")
        finally:
            if sample.error is not None or sample.delete_s is None:
                self.force_cleanup(scenario, names)
        if sample.error is None:
            rate = f", {n / sample.create_s:.2f} VMs/s" if sample.create_s else ""
            log(f"  create {sample.create_s:.2f} s{rate}, delete {sample.delete_s:.2f} s")
        return sample

    def force_cleanup(self, scenario: str, names: list[str]) -> None:
        """Remove what a failed attempt left; never raises (the end of the run sweeps again)."""
        try:
            self._force_cleanup(scenario, names)
        except (BenchError, AssertionError, subprocess.TimeoutExpired, OSError) as error:
            log(f"  WARNING: cleanup of {names[0]}... incomplete: {str(error)[:300]}")

    def _force_cleanup(self, scenario: str, names: list[str]) -> None:
        if scenario.startswith("kvmfleet") and self.op.alive():
            self.kube.run(
                "delete", VN, "-n", self.namespace, "--wait=false",
                "-l", f"{SAMPLE_LABEL}={self.sample_id(names)}", check=False,
            )  # fmt: skip
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                selector = f"{SAMPLE_LABEL}={self.sample_id(names)}"
                left = self.kube.json("get", VN, "-n", self.namespace, "-l", selector)["items"]
                if not left:
                    break
                time.sleep(1)
        self.sweep_hosts(names)

    def sample_id(self, names: list[str]) -> str:
        return f"{self.run_id}-{names[0].rsplit('-', 1)[0]}"

    def vn_manifest(self, name: str, host: str | None, sample_id: str) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "cpus": 1,
            "memory": "128Mi",
            "nics": [{"bridge": "br0", "model": "virtio"}],
            "disks": [{"name": "hda", "size": "1Gi", "storage": POOL_URL}],
            "bootOrder": ["hd"],
            "serial": {"port": 0, "speed": 115200},
            "vnc": {"enabled": True},
            "runStrategy": "Always",
            "reclaimPolicy": "Delete",
            "shutdownGracePeriodSeconds": 0,
        }
        if host:
            spec["hostRef"] = host
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VirtualNode",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {SAMPLE_LABEL: sample_id, RUN_LABEL: self.run_id},
            },
            "spec": spec,
        }

    def kvmfleet(self, sample: Sample, names: list[str], *, pinned: bool) -> None:
        n = len(names)
        sample_id = self.sample_id(names)
        docs = [
            self.vn_manifest(
                name, self.hosts[i % len(self.hosts)].kvmhost if pinned else None, sample_id
            )
            for i, name in enumerate(names)
        ]
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        watcher = Watcher(self.kube.kubeconfig, self.namespace, f"{SAMPLE_LABEL}={sample_id}")
        watcher.start()
        try:
            before = self.op.metrics()
            api_before = self.api_requests()
            probe = Probe(self.op.pid, self.shared)
            t0 = time.monotonic()
            self.kube.run("apply", "-f", "-", input=manifest, timeout=120)
            applied = time.monotonic() - t0
            limit = 60 + 10 * n
            if not watcher.wait(lambda: len(watcher.ready_at) == n, timeout=limit):
                not_ready = sorted(set(names) - set(watcher.ready_at))
                last = watcher.last.get(not_ready[0], {}).get("status", {})
                raise BenchError(
                    f"{len(not_ready)} VirtualNode(s) not Running+Ready after {limit} s "
                    f"(e.g. {not_ready[0]}: {json.dumps(last)[:800]})"
                )
            ready = sorted(t - t0 for t in watcher.ready_at.values())
            placed = sorted(t - t0 for t in watcher.placed_at.values())
            created = probe.finish()
            after = self.op.metrics()
            api_after = self.api_requests()
            writes = dict(watcher.writes)
            sample.create_s = ready[-1]
            hosts = dict(watcher.hosts)
            self.verify_running(names, {k: v.removeprefix("bench-") for k, v in hosts.items()})

            probe = Probe(self.op.pid, self.shared)
            t1 = time.monotonic()
            self.kube.run(
                "delete", VN, "-n", self.namespace, "-l", f"{SAMPLE_LABEL}={sample_id}",
                "--wait=false", timeout=120,
            )  # fmt: skip
            if not watcher.wait(lambda: len(watcher.deleted_at) == n, timeout=limit):
                left = sorted(set(names) - set(watcher.deleted_at))
                raise BenchError(f"{len(left)} VirtualNode(s) still there after {limit} s: {left}")
            sample.delete_s = max(watcher.deleted_at.values()) - t1
            deleted = probe.finish()
            self.verify_gone(names, disk_suffix=".hda.qcow2")
        finally:
            watcher.stop()
        vn = "VirtualNode"

        def delta(name: str, **labels: str) -> float:
            return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

        sample.details = {
            "applySeconds": round(applied, 3),
            "readySeconds": {
                "first": round(ready[0], 3),
                "median": round(statistics.median(ready), 3),
                "last": round(ready[-1], 3),
            },
            "placedSeconds": {"first": round(placed[0], 3), "last": round(placed[-1], 3)},
            "hosts": {
                h: sum(1 for v in hosts.values() if v == h) for h in sorted(set(hosts.values()))
            },
            "watchModifiedEventsPerVm": round(sum(writes.values()) / n, 1),
            # Handler and timer calls (a timer tick that finds nothing due counts too) ...
            "handlerCallsPerVm": round(delta("kvmfleet_reconcile_total", kind=vn) / n, 2),
            # ... and full converge passes (observe, disks, define, power, status).
            "convergePassesPerVm": round(
                delta("kvmfleet_vm_operation_duration_seconds_count", operation="reconcile") / n, 2
            ),
            "convergeSecondsPerVm": round(
                delta("kvmfleet_vm_operation_duration_seconds_sum", operation="reconcile") / n, 3
            ),
            "apiRequestsPerVm": {
                k: round((api_after.get(k, 0) - api_before.get(k, 0)) / n, 2)
                for k in sorted(api_after)
                if api_after.get(k, 0) - api_before.get(k, 0) > 0
            },
            "hostProbesDuringCreate": int(delta("kvmfleet_host_probe_duration_seconds_count")),
            "create": created,
            "delete": deleted,
            "watchErrors": watcher.errors[:5],
        }

    def api_requests(self) -> dict[str, float]:
        """Requests the private API server has answered, by verb and resource (not WATCH:
        a watch is counted when it ends). Everyone's requests: only meaningful when the
        control plane is ours alone, so empty on the shared one."""
        if self.shared:
            return {}
        raw = self.kube.run("get", "--raw", "/metrics", check=False, timeout=60)
        counts: dict[str, float] = {}
        for key, value in parse_metrics(raw.stdout).items():
            if not key.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
            if labels.get("verb") in {"WATCH", "CONNECT"} or not labels.get("resource"):
                continue
            what = labels["resource"] + (
                f"/{labels['subresource']}" if labels.get("subresource") else ""
            )
            name = f"{labels['verb']} {what}"
            counts[name] = counts.get(name, 0) + value
        return counts

    def manual(self, sample: Sample, names: list[str], scenario: str) -> None:
        n = len(names)
        tag = names[0].rsplit("-", 1)[0]
        placed = {name: self.hosts[i % len(self.hosts)] for i, name in enumerate(names)}
        listing = self.work / f"{tag}.list"
        listing.write_text(
            "".join(
                f"{h.address} {h.port} {h.user} {h.uri} {h.virt_type} {name}\n"
                for name, h in placed.items()
            )
        )
        vi = scenario == "virt-install"
        create_fn, delete_fn = (
            ("vi_create", "vi_delete") if vi else ("manual_create", "manual_delete")
        )
        template = PARALLEL_LOOP if scenario == "manual-parallel" else SERIAL_LOOP
        p = len(self.hosts)
        create = self.work / f"{tag}.create.sh"
        delete = self.work / f"{tag}.delete.sh"
        create.write_text(template.format(fn=create_fn, listing=listing.name, p=p))
        delete.write_text(template.format(fn=delete_fn, listing=listing.name, p=p))
        env = {
            "BENCH_WORK": str(self.work),
            "BENCH_KEY": self.hosts[0].key,
            "BENCH_KNOWN_HOSTS": self.hosts[0].known_hosts,
            "BENCH_IMAGES": IMAGE_DIR,
            "BENCH_TEMPLATE": str(self.work / "domain.xml.in"),
            BENCH_MARK: str(self.work),
        }
        limit = 60 + 15 * n
        probe = Probe(self.op.pid, self.shared)
        sample.create_s = run_script(create, limit, env)
        created = probe.finish()
        self.verify_running(names, {name: h.name for name, h in placed.items()})
        probe = Probe(self.op.pid, self.shared)
        sample.delete_s = run_script(delete, limit, env)
        deleted = probe.finish()
        self.verify_gone(names, disk_suffix=".qcow2")
        sample.details = {"create": created, "delete": deleted}
        if scenario == "manual-parallel":
            sample.details["parallelism"] = p

    # ---------------------------------------------------------------- checks (outside timing)

    def verify_running(self, names: list[str], where: dict[str, str]) -> None:
        """Every domain runs on the host it should be on (read back with virsh)."""
        by_name = {h.name: h for h in self.hosts}
        for host_name in sorted(set(where.values())):
            host = by_name.get(host_name)
            if host is None:
                raise BenchError(f"VMs were placed on {host_name}, not one of the bench hosts")
            running = set(host.virsh("list", "--name", "--state-running").split())
            missing = [n for n in names if where.get(n) == host_name and n not in running]
            if missing:
                raise BenchError(f"not running on {host_name}: {missing}")

    def verify_gone(self, names: list[str], disk_suffix: str) -> None:
        """No domain and no image of these VMs is left on any host."""
        for host in self.hosts:
            left = set(host.virsh("list", "--all", "--name").split()) & set(names)
            if left:
                raise BenchError(f"domains left on {host.name}: {sorted(left)}")
        files = " ".join(shlex.quote(f"{IMAGE_DIR}/{n}{disk_suffix}") for n in names)
        for host in self.hosts:  # on the testbed they share one directory; real hosts do not
            out = host.ssh(f"ls -1 {files} 2>/dev/null || true")
            if out.strip():
                raise BenchError(f"images left on {host.name}: {out.split()}")

    # ---------------------------------------------------------------- the run

    def plan(self) -> list[tuple[str, int, int]]:
        sizes = [(1, self.args.repeat)]
        if self.args.vms > 1:
            sizes.append((self.args.vms, self.args.repeat_n))
        order = []
        for n, repeats in sizes:
            for r in range(repeats):
                for scenario in self.args.scenarios:
                    if scenario == "manual-parallel" and n == 1:
                        continue  # one VM: the same as manual-serial
                    order.append((scenario, n, r))
        return order

    def run(self) -> None:
        plan = self.plan()
        log(f"run {self.run_id}: {len(plan)} samples on {', '.join(h.name for h in self.hosts)}")
        for scenario, n, r in plan:
            if not self.op.alive():
                raise BenchError(f"the operator died: {self.op.tail()}")
            self.samples.append(self.sample(scenario, n, r))


# --------------------------------------------------------------------------- report


def machine_info(bench: Bench) -> dict[str, Any]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    host = bench.hosts[0]
    versions = host.virsh("version", check=False)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    vi = subprocess.run(["virt-install", "--version"], capture_output=True, text=True, check=False)
    server = bench.kube.run("version", "-o", "json", check=False).stdout
    with contextlib.suppress(ValueError, KeyError):
        server = json.loads(server)["serverVersion"]["gitVersion"]
    return {
        "cpus": os.cpu_count(),
        "cpuModel": cpu_model,
        "memoryGiB": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libvirtAndQemu": " / ".join(
            line.strip() for line in versions.splitlines() if line.strip()
        ),
        "virtInstall": (vi.stdout or vi.stderr).strip(),
        "kubeApiserver": server if isinstance(server, str) else "?",
        "commit": commit,
        "hosts": {
            h.name: f"{h.address} ({'KVM' if h.virt_type == 'kvm' else 'TCG'})" for h in bench.hosts
        },
        "note": "testbed hosts are namespaces on this same machine (hack/testbed.sh)",
    }


def median_of(samples: list[Sample], attr: str) -> float | None:
    values = [getattr(s, attr) for s in samples if s.error is None and getattr(s, attr) is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(samples: list[Sample], scenarios: list[str], sizes: list[int]) -> dict[str, Any]:
    medians: dict[str, dict[str, Any]] = {}
    for n in sizes:
        for scenario in scenarios:
            chosen = [s for s in samples if s.scenario == scenario and s.vms == n]
            if not chosen:
                continue
            ok = [s for s in chosen if s.error is None]
            create = median_of(chosen, "create_s")
            medians[f"{scenario}/{n}"] = {
                "scenario": scenario,
                "vms": n,
                "runs": len(ok),
                "failed": len(chosen) - len(ok),
                "createSeconds": create,
                "deleteSeconds": median_of(chosen, "delete_s"),
                "createMin": round(min(s.create_s for s in ok if s.create_s), 3) if ok else None,
                "createMax": round(max(s.create_s for s in ok if s.create_s), 3) if ok else None,
                "vmsPerSecond": round(n / create, 3) if create else None,
            }
    ratios: dict[str, Any] = {}
    for flavour in ("kvmfleet", "kvmfleet-sched"):
        for n in sizes:
            mine = medians.get(f"{flavour}/{n}")
            if not mine or mine["createSeconds"] is None:
                continue
            for peer in ("manual-serial", "manual-parallel", "virt-install"):
                other = medians.get(f"{peer}/{n}")
                if not other or not other["createSeconds"]:
                    continue
                ratios[f"{flavour}/{peer}/{n}"] = {
                    "create": round(mine["createSeconds"] / other["createSeconds"], 2),
                    "delete": (
                        round(mine["deleteSeconds"] / other["deleteSeconds"], 2)
                        if mine["deleteSeconds"] and other["deleteSeconds"]
                        else None
                    ),
                }
    return {"medians": medians, "ratios": ratios}


def fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def print_report(result: dict[str, Any], p: int) -> None:
    medians, ratios = result["medians"], result["ratios"]
    sizes = sorted({m["vms"] for m in medians.values()})
    lines = [
        "",
        "VM creation: median wall time (s) per scenario; ratio = kvmfleet (hostRef) / that path "
        "(< 1: kvmfleet is faster)",
        "",
        f"{'scenario':<24}{'VMs':>4}{'runs':>6}{'create s':>10}{'min-max':>14}{'VMs/s':>8}"
        f"{'delete s':>10}{'ratio create':>14}{'ratio delete':>14}",
    ]
    for n in sizes:
        for m in medians.values():
            if m["vms"] != n:
                continue
            ratio = ratios.get(f"kvmfleet/{m['scenario']}/{n}", {})
            spread = (
                f"{m['createMin']:.2f}-{m['createMax']:.2f}" if m["createMin"] is not None else "-"
            )
            title = TITLES[m["scenario"]].format(p=p)
            failed = f" ({m['failed']} failed)" if m["failed"] else ""
            lines.append(
                f"{title:<24}{n:>4}{m['runs']:>6}{fmt(m['createSeconds']):>10}{spread:>14}"
                f"{fmt(m['vmsPerSecond']):>8}{fmt(m['deleteSeconds']):>10}"
                f"{fmt(ratio.get('create')):>14}{fmt(ratio.get('delete')):>14}{failed}"
            )
        lines.append("")
    sched = {k: v for k, v in ratios.items() if k.startswith("kvmfleet-sched/")}
    if sched:
        lines.append("kvmfleet (scheduled) / peer, create: " + ", ".join(
            f"{k.split('/')[1]} N={k.split('/')[2]}: {v['create']:.2f}" for k, v in sched.items()
        ))  # fmt: skip
    print("\n".join(lines))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=20, help="N of the multi-VM case (default 20)")
    parser.add_argument(
        "--hosts", default="kvmhost1,kvmhost2", help="testbed hosts (default kvmhost1,kvmhost2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of the 1-VM case (default 3)")
    parser.add_argument(
        "--repeat-n",
        type=int,
        default=None,
        help="runs of the N-VM case (default: --repeat, at most 2, to stay near 10 minutes)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--namespace", default="bench", help="namespace of the VirtualNodes")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="attempts made again after a failed one, e.g. a host made unreachable by someone "
        "else's fault injection (default 2; the failed attempts are kept in the JSON)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the uncounted first kvmfleet creation after the operator starts",
    )
    parser.add_argument(
        "--control-plane",
        choices=("private", "shared"),
        default="private",
        help="private (default): a kube-apiserver of this run's own, so that no other operator "
        "on the machine reconciles the benchmark's objects; shared: the one of hack/cluster.sh",
    )
    parser.add_argument(
        "--vm-sync-interval",
        type=float,
        default=5,
        help="the operator's KVMFLEET_VM_SYNC_INTERVAL, seconds (default 5; its own default: 30)",
    )
    parser.add_argument(
        "--verbose-operator",
        action="store_true",
        help="run the operator with --verbose (every API call in its log; slower)",
    )
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    args = parser.parse_args(argv)
    args.hosts = [h for h in args.hosts.split(",") if h]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.repeat_n is None:
        args.repeat_n = min(args.repeat, 2)
    if args.vms < 1 or args.repeat < 1 or args.repeat_n < 1 or not args.hosts:
        parser.error("--vms, --repeat and --repeat-n must be >= 1 and --hosts not empty")
    if not args.namespace.startswith("bench"):
        parser.error("--namespace must start with 'bench'")
    return args


@dataclass
class Outcome:
    """How a benchmark run went (see :func:`drive`)."""

    bench: Any
    started: float
    machine: dict[str, Any]
    fatal: str | None
    interrupted: bool


def drive(make: Callable[[], Any]) -> Outcome | None:
    """Make a benchmark (``setup``/``run``/``teardown``) and run it; teardown always runs,
    also on SIGTERM. None (after printing why) if it could not even be made."""
    try:
        bench = make()
    except (BenchError, AssertionError, subprocess.TimeoutExpired) as error:
        print(f"bench: {error}", file=sys.stderr)
        return None
    outcome = Outcome(bench, time.monotonic(), {}, None, False)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so that the finally blocks clean up

    signal.signal(signal.SIGTERM, terminate)
    try:
        bench.setup()
        outcome.machine = machine_info(bench)
        bench.run()
    except (BenchError, AssertionError, subprocess.TimeoutExpired) as error:
        outcome.fatal = str(error)
        log(f"ABORTED: {outcome.fatal}")
    except KeyboardInterrupt:
        outcome.interrupted = True
        log("interrupted")
    finally:
        bench.teardown()
    return outcome


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcome = drive(lambda: Bench(args))
    if outcome is None:
        return 2
    bench, started, machine = outcome.bench, outcome.started, outcome.machine
    fatal, interrupted = outcome.fatal, outcome.interrupted
    sizes = sorted({1, args.vms})
    result = summarise(bench.samples, args.scenarios, sizes)
    print_report(result, len(bench.hosts))
    total = time.monotonic() - started
    print(f"total {total:.0f} s; operator log and scripts: {bench.work}")
    if args.json:
        payload = {
            "runId": bench.run_id,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {
                "vms": args.vms,
                "hosts": args.hosts,
                "repeat": args.repeat,
                "repeatN": args.repeat_n,
                "scenarios": args.scenarios,
                "namespace": args.namespace,
                "controlPlane": args.control_plane,
                "retries": args.retries,
                "warmup": args.warmup,
                "vmSyncInterval": args.vm_sync_interval,
                "vm": "1 CPU, 128 MiB, virtio NIC on br0, 1 GiB qcow2 in the local dir pool, "
                "serial pty, VNC, boot from disk only (no OS)",
            },
            "machine": machine,
            "totalSeconds": round(total, 1),
            "fatal": fatal,
            **result,
            "warmup": asdict(bench.warmup) if bench.warmup else None,
            "samples": [asdict(s) for s in bench.samples],
            "discardedAttempts": [asdict(s) for s in bench.discarded],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if interrupted:
        return 130
    if fatal or any(s.error for s in bench.samples):
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
