#!/usr/bin/env python3
"""Live migration, side by side: kvmfleet and `virsh migrate` by hand, on the same two hosts.

Every VM has the same shape: 1 CPU, 256 MiB, a virtio NIC on br0, a 1 GiB qcow2 disk on the
testbed's NFS export (NFS Direct: a libvirt network disk QEMU opens through libnfs, shared
by both hosts), a serial console and VNC. Two kinds of guest:

  idle     boots from its empty disk only: the firmware finds nothing and waits.
  booted   PXE-boots the testbed guest (Linux, busybox) and prints a counter every second.

Paths, each moving its own VM back and forth between the hosts, interleaved, `--repeat`
times per kind:

  kvmfleet       `kubectl kvm migrate VM HOST` (changes spec.hostRef) until status.host is
                 the target and status.migration.phase Succeeded.
  virsh-p2p      `virsh migrate --live --p2p --persistent --undefinesource` (the source
                 libvirtd logs in to the target's), memory over tcp://<target address>.
  virsh-direct   the same without --p2p (virsh talks to both daemons, as kvmfleet's
                 libvirt client does).

After each move the target's completed job statistics (`virsh domjobinfo --completed`) give
the guest's pause (downtime), the time of the job and the data sent, for every path.

Drain: K VMs (no hostRef) on the first host; kvmfleet `kubectl kvm drain` until all run on
the second host, against a shell loop of `virsh migrate --p2p` (serial, and `xargs -P 2`).

Usage (see bench/README.md):
  .venv/bin/python bench/migrate.py [--repeat 5] [--kinds idle,booted] [--drain 4]
                                    [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vm_create as vc

OUR_NAME = re.compile(r"^bench-mg[kmd][ibn]-\d+-\d+$")
"""Names of this benchmark's VirtualNodes, domains and images (path k kvmfleet, m manual,
d drain; kind i idle, b booted, n drain; run sample, index): the only ones it removes."""
KUBECTL_KVM = str(vc.REPO / ".venv" / "bin" / "kubectl-kvm")
PATHS = ("kvmfleet", "virsh-p2p", "virsh-direct")
TICK = re.compile(r"KVMFLEET-TICK (\d+)")

MANUAL_XML = """<domain type='@TYPE@'>
  <name>@NAME@</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type>@BOOT@</os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source protocol='nfs' name='@EXPORT@/@NAME@.qcow2'>
        <host name='@NFS@'/>
        <identity user='root' group='root'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>
    <serial type='pty'>
      <log file='/var/log/libvirt/qemu/@NAME@.serial.log' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'/>
  </devices>
</domain>
"""

DRAIN_SCRIPT = """set -euo pipefail
mig() {{  # VM: live, peer to peer, to the second host; prints when it is done
    virsh -q -c "$SRC" migrate --live --persistent --undefinesource --p2p "$1" \\
        qemu+ssh://{user}@{addr}/system --migrateuri tcp://{addr} >/dev/null </dev/null
    echo "BENCH-DONE $1 $(date +%s.%N)"
}}
export -f mig
export SRC
{loop}
"""

BOOT = {"idle": "<boot dev='hd'/>", "booted": "<boot dev='network'/><boot dev='hd'/>"}


@dataclass
class Move:
    """One migration of one VM by one path."""

    path: str
    kind: str  # idle | booted | drain
    repeat: int
    vm: str
    source: str
    target: str
    seconds: float | None = None  # wall time of the whole path, as its user waits
    job: dict[str, float] = field(default_factory=dict)  # target's completed job stats
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def jobinfo(text: str) -> dict[str, float]:
    """`virsh domjobinfo --completed --rawstats` -> the figures we report."""
    raw: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            raw[key.strip()] = value.strip()
    out: dict[str, float] = {}
    for key, name in (
        ("time_elapsed", "elapsedMs"),
        ("downtime", "downtimeMs"),
        ("data_processed", "dataBytes"),
        ("memory_processed", "memoryBytes"),
        ("memory_iteration", "iterations"),
        ("setup_time", "setupMs"),
    ):
        with contextlib.suppress(KeyError, ValueError):
            out[name] = float(raw[key])
    return out


class MigrateBench(vc.Bench):
    """vm_create's control plane and operator; KvmHosts with the NFS export; its own moves."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        if len(self.hosts) != 2:
            raise vc.BenchError("--hosts must name two hosts")
        nfs = self.doc["nfs"]
        self.nfs_url, self.nfs_server, self.export = nfs["url"], nfs["server"], nfs["export"]
        (self.work / "migrate.xml.in").write_text(MANUAL_XML)
        self.moves: list[Move] = []
        self.drains: list[dict[str, Any]] = []
        self.api: Any = None

    # ---------------------------------------------------------------- setup and cleanup

    def ensure_bench_hosts(self) -> None:
        """vm_create's KvmHosts, with the NFS export first (NFS Direct: no host mount)."""
        super().ensure_bench_hosts()
        for host in self.hosts:
            self.kube.run(
                "patch", vc.KH, host.kvmhost, "--type=merge", "-p",
                json.dumps({"spec": {"nfsAccess": "Direct", "storagePools": [
                    {"name": "shared", "url": self.nfs_url},
                    {"name": "local", "url": vc.POOL_URL},
                ]}}),
            )  # fmt: skip

    def sweep_cluster(self, timeout: float = 180) -> None:
        super().sweep_cluster(timeout)
        if self.operator is None or not self.op.alive():
            return
        for host in self.hosts:
            self.kube.run("patch", vc.KH, host.kvmhost, "--type=merge",
                          "-p", '{"spec":{"maintenance":false}}', check=False)  # fmt: skip
        items = self.kube.json("get", vc.VN, "-n", self.namespace)["items"]
        names = [o["metadata"]["name"] for o in items if OUR_NAME.match(o["metadata"]["name"])]
        if names:
            self.kube.run("delete", vc.VN, "-n", self.namespace, *names, "--wait=false")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(
                OUR_NAME.match(o["metadata"]["name"])
                for o in self.kube.json("get", vc.VN, "-n", self.namespace)["items"]
            ):
                time.sleep(1)

    def sweep_hosts(self, only: Iterable[str] | None = None) -> None:
        super().sweep_hosts(only)
        if only is not None:
            return
        for host in self.hosts:
            with contextlib.suppress(vc.BenchError, subprocess.TimeoutExpired):
                for name in host.virsh("list", "--all", "--name", timeout=60).split():
                    if OUR_NAME.match(name):
                        host.virsh("destroy", name, check=False)
                        host.virsh("undefine", name, check=False)
        export_dir = Path(self.doc["nfs"]["directory"])
        for path in export_dir.glob("bench-mg*"):
            if OUR_NAME.match(path.name.split(".")[0]):
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- kvmfleet

    @property
    def client(self) -> Any:
        if self.api is None:
            from kubernetes import config
            from kubernetes.client import CustomObjectsApi

            self.api = CustomObjectsApi(
                config.new_client_from_config(config_file=self.kube.kubeconfig)
            )
        return self.api

    def get_vn(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.client.get_namespaced_custom_object(
            vc.GROUP, vc.VERSION, self.namespace, "virtualnodes", name
        )
        return obj

    def vn(self, name: str, kind: str, host: vc.Host, sid: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{vc.GROUP}/{vc.VERSION}",
            "kind": "VirtualNode",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {vc.SAMPLE_LABEL: sid, vc.RUN_LABEL: self.run_id}},
            "spec": {
                "hostRef": host.kvmhost,
                "cpus": 1,
                "memory": "256Mi",
                "nics": [{"bridge": "br0", "model": "virtio"}],
                "disks": [{"name": "hda", "size": "1Gi", "storage": self.nfs_url}],
                "bootOrder": ["hd"] if kind == "idle" else ["network", "hd"],
                "serial": {"port": 0, "speed": 115200},
                "vnc": {"enabled": True},
                "runStrategy": "Always",
                "reclaimPolicy": "Delete",
                "shutdownGracePeriodSeconds": 0,
            },
        }  # fmt: skip

    def wait_vn(self, name: str, check: Any, timeout: float, what: str) -> tuple[float, Any]:
        t0 = time.monotonic()
        obj: dict[str, Any] = {}
        while time.monotonic() - t0 < timeout:
            obj = self.get_vn(name)
            if check(obj):
                return time.monotonic(), obj
            time.sleep(0.1)
        raise vc.BenchError(
            f"{name}: not {what} after {timeout:.0f} s: {json.dumps(obj.get('status'))[:800]}"
        )

    def plugin(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL_KVM, "--kubeconfig", self.kube.kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def kvmfleet_ready(self, name: str, kind: str) -> None:
        self.wait_vn(name, vc.is_ready, 180, "Running and Ready")
        if kind == "booted":
            out = self.plugin("console", name, "-n", self.namespace, "--read-only",
                              "--until", "KVMFLEET-TICK [0-9]+", "--timeout", "240",
                              timeout=300)  # fmt: skip
            if not TICK.search(out.stdout + out.stderr):
                raise vc.BenchError(f"{name}: the guest never printed a tick: {out.stderr[-500:]}")

    def kvmfleet_move(self, move: Move, target: vc.Host) -> None:
        before = (self.get_vn(move.vm).get("status") or {}).get("migration") or {}

        def done(obj: dict[str, Any]) -> bool:
            status = obj.get("status") or {}
            mig = status.get("migration") or {}
            if mig.get("phase") in ("Failed", "Refused") and mig.get("startTime") != before.get(
                "startTime"
            ):
                raise vc.BenchError(f"migration {mig.get('phase')}: {mig.get('message')}")
            return (
                status.get("host") == target.kvmhost
                and mig.get("phase") == "Succeeded"
                and mig.get("target") == target.kvmhost
                and mig.get("endTime") != before.get("endTime")
            )

        probe = vc.Probe(self.op.pid, self.shared)
        t0 = time.monotonic()
        out = self.plugin("migrate", move.vm, target.kvmhost, "-n", self.namespace)
        if out.returncode != 0:
            raise vc.BenchError(f"kubectl kvm migrate: {out.stderr.strip()}")
        returned = time.monotonic()
        t1, obj = self.wait_vn(move.vm, done, 300, f"moved to {target.kvmhost}")
        move.seconds = round(t1 - t0, 3)
        mig = obj["status"]["migration"]
        took = re.search(r"in ([0-9.]+)s", mig.get("message", ""))
        move.details = {
            # kubectl kvm's own run (start-up, GET, PATCH of spec.hostRef) ...
            "pluginSeconds": round(returned - t0, 3),
            # ... and from its exit (the spec changed just before) to the observed end.
            "afterCommandSeconds": round(t1 - returned, 3),
            "operatorSeconds": float(took.group(1)) if took else None,
            "migration": mig,
            "machine": probe.finish(),
        }

    # ---------------------------------------------------------------- manual

    def manual_create(self, name: str, kind: str, host: vc.Host) -> None:
        xml = (
            MANUAL_XML.replace("@NAME@", name)
            .replace("@TYPE@", host.virt_type)
            .replace("@BOOT@", BOOT[kind])
            .replace("@EXPORT@", self.export)
            .replace("@NFS@", self.nfs_server)
        )
        path = self.work / f"{name}.xml"
        path.write_text(xml)
        host.ssh(f"qemu-img create -q -f qcow2 {self.nfs_url}/{name}.qcow2 1G")
        host.virsh("define", str(path))
        host.virsh("start", name)

    def manual_ready(self, name: str, kind: str, host: vc.Host) -> None:
        if kind != "booted":
            return
        deadline = time.monotonic() + 240
        log = f"/var/log/libvirt/qemu/{name}.serial.log"
        while time.monotonic() < deadline:
            if TICK.search(host.ssh(f"cat {log} 2>/dev/null || true")):
                return
            time.sleep(2)
        raise vc.BenchError(f"{name}: the guest never printed a tick on {host.name}")

    def manual_move(self, move: Move, source: vc.Host, target: vc.Host) -> None:
        common = ["migrate", "--live", "--persistent", "--undefinesource"]
        if move.path == "virsh-p2p":
            # From inside the source host, the target as that host reaches it (its ssh
            # config has the testbed key and known_hosts).
            argv = [*common, "--p2p", move.vm, f"qemu+ssh://{target.user}@{target.address}/system"]
        else:
            argv = [*common, move.vm, target.uri]
        argv += ["--migrateuri", f"tcp://{target.address}"]
        probe = vc.Probe(self.op.pid, self.shared)
        t0 = time.monotonic()
        result = subprocess.run(
            ["virsh", "-q", "-c", source.uri, *argv],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        move.seconds = round(time.monotonic() - t0, 3)
        if result.returncode != 0:
            raise vc.BenchError(f"virsh {' '.join(argv)}: {result.stderr.strip()}")
        move.details = {"machine": probe.finish()}

    # ---------------------------------------------------------------- checks

    def where(self, name: str) -> dict[str, str]:
        states = {}
        for host in self.hosts:
            out = host.virsh("domstate", name, check=False).strip()
            states[host.name] = out or "absent"
        return states

    def after_move(self, move: Move, source: vc.Host, target: vc.Host) -> None:
        """Read back: running on the target only, persistent there; the job statistics."""
        move.job = jobinfo(target.virsh("domjobinfo", "--completed", "--rawstats", move.vm,
                                        check=False))  # fmt: skip
        states = self.where(move.vm)
        if states[target.name] != "running" or states[source.name] not in ("absent", ""):
            raise vc.BenchError(f"{move.vm} after the move: {states}")
        info = target.virsh("dominfo", move.vm)
        if not re.search(r"^Persistent:\s+yes", info, re.M):
            raise vc.BenchError(f"{move.vm} is not persistent on {target.name}")

    # ---------------------------------------------------------------- the run

    def run(self) -> None:
        a, b = self.hosts
        for kind in self.args.kinds:
            self.seq += 1
            tag = kind[0]
            names = {p: f"bench-mg{'k' if p == 'kvmfleet' else 'm'}{tag}-{self.seq}-{i}"
                     for i, p in enumerate(PATHS)}  # fmt: skip
            sid = f"{self.run_id}-{self.seq}"
            vc.log(f"{kind}: one VM per path on {a.name} (not timed)")
            self.kube.apply(self.vn(names["kvmfleet"], kind, a, sid))
            for path in PATHS[1:]:
                self.manual_create(names[path], kind, a)
            self.kvmfleet_ready(names["kvmfleet"], kind)
            for path in PATHS[1:]:
                self.manual_ready(names[path], kind, a)
            at = {p: a for p in PATHS}
            for r in range(self.args.repeat):
                for path in self.args.paths:
                    source = at[path]
                    target = b if source is a else a
                    move = Move(path, kind, r, names[path], source.name, target.name)
                    self.wait_for_hosts()
                    try:
                        if path == "kvmfleet":
                            self.kvmfleet_move(move, target)
                        else:
                            self.manual_move(move, source, target)
                        at[path] = target
                        self.after_move(move, source, target)
                    except (vc.BenchError, subprocess.TimeoutExpired) as error:
                        move.error = str(error)[:2000]
                    self.moves.append(move)
                    self.report_move(move)
                    if move.error and path == "kvmfleet" and not self.op.alive():
                        raise vc.BenchError(f"the operator died: {self.op.tail()}")
            self.remove_vms(names, at)
        if self.args.drain:
            self.drain(self.args.drain)

    def report_move(self, move: Move) -> None:
        if move.error:
            vc.log(f"  {move.path} {move.vm} {move.source}->{move.target} FAILED: {move.error}")
            return
        job = move.job
        vc.log(
            f"  {move.path} {move.source}->{move.target}: {move.seconds:.2f} s "
            f"(job {job.get('elapsedMs', 0) / 1000:.2f} s, downtime {job.get('downtimeMs', -1):.0f}"
            f" ms, {job.get('dataBytes', 0) / 1024**2:.1f} MiB)"
        )

    def remove_vms(self, names: dict[str, str], at: dict[str, vc.Host]) -> None:
        sel = f"{vc.RUN_LABEL}={self.run_id}"
        self.kube.run("delete", vc.VN, "-n", self.namespace, "-l", sel, "--wait=false")
        for path in [p for p in PATHS[1:] if p in names]:
            for host in self.hosts:
                host.virsh("destroy", names[path], check=False)
                host.virsh("undefine", names[path], check=False)
        export_dir = Path(self.doc["nfs"]["directory"])
        for path in [p for p in PATHS[1:] if p in names]:
            (export_dir / f"{names[path]}.qcow2").unlink(missing_ok=True)
        deadline = time.monotonic() + 180
        while self.kube.json("get", vc.VN, "-n", self.namespace, "-l", sel)["items"]:
            if time.monotonic() > deadline:
                vc.log("  WARNING: VirtualNodes still terminating after 180 s")
                break
            time.sleep(1)

    def drain(self, k: int) -> None:
        """K VMs on the first host leave it: kubectl kvm drain vs virsh loops."""
        a, b = self.hosts
        self.seq += 1
        sid = f"{self.run_id}-{self.seq}"
        k_names = [f"bench-mgkn-{self.seq}-{i}" for i in range(k)]
        vc.log(f"drain: {k} VMs per path on {a.name} (not timed)")
        for name in k_names:
            self.kube.apply(self.vn(name, "idle", a, sid))
        for name in k_names:
            self.wait_vn(name, vc.is_ready, 180, "Running and Ready")
            # Placed on the first host, not pinned to it: a drain moves it.
            self.kube.run("patch", vc.VN, name, "-n", self.namespace, "--type=json",
                          "-p", '[{"op":"remove","path":"/spec/hostRef"}]')  # fmt: skip
        # kvmfleet
        row: dict[str, Any] = {"path": "kvmfleet", "vms": k}
        try:
            probe = vc.Probe(self.op.pid, self.shared)
            t0 = time.monotonic()
            out = self.plugin("drain", a.kvmhost)
            if out.returncode != 0:
                raise vc.BenchError(f"kubectl kvm drain: {out.stderr.strip()}")
            row["pluginSeconds"] = round(time.monotonic() - t0, 3)
            times = []
            for name in k_names:
                t1, _ = self.wait_vn(
                    name,
                    lambda o: (
                        (o.get("status") or {}).get("host") == b.kvmhost
                        and ((o.get("status") or {}).get("migration") or {}).get("phase")
                        == "Succeeded"
                    ),
                    60 + 60 * k,
                    f"moved to {b.kvmhost}",
                )
                times.append(t1 - t0)
            row.update(seconds=round(max(times), 3), perVm=sorted(round(t, 3) for t in times),
                       machine=probe.finish())  # fmt: skip
            for name in k_names:
                if self.where(name)[b.name] != "running":
                    raise vc.BenchError(f"{name} not running on {b.name}: {self.where(name)}")
        except (vc.BenchError, subprocess.TimeoutExpired) as error:
            row["error"] = str(error)[:2000]
        finally:
            self.plugin("uncordon", a.kvmhost)
        self.drains.append(row)
        vc.log(f"  drain kvmfleet: {row.get('seconds', row.get('error'))}")
        self.remove_vms({}, {})
        # manual: serial loop and xargs -P 2 of virsh migrate --p2p
        for mode in ("serial", "parallel"):
            self.seq += 1
            m_names = [f"bench-mgdn-{self.seq}-{i}" for i in range(k)]
            for name in m_names:
                self.manual_create(name, "idle", a)
            script = self.work / f"drain-{mode}.sh"
            loop = (
                f'for vm in {" ".join(m_names)}; do mig "$vm"; done'
                if mode == "serial"
                else f"printf '%s\\n' {' '.join(m_names)} | xargs -P 2 -n 1 bash -c 'mig \"$1\"' _"
            )
            script.write_text(DRAIN_SCRIPT.format(user=b.user, addr=b.address, loop=loop))
            row = {"path": f"virsh-p2p-{mode}", "vms": k}
            try:
                probe = vc.Probe(self.op.pid, self.shared)
                wall, t0 = time.time(), time.monotonic()
                result = subprocess.run(
                    ["bash", str(script)], capture_output=True, text=True, timeout=120 + 120 * k,
                    env={**os.environ, "SRC": a.uri}, check=False,
                )  # fmt: skip
                elapsed = time.monotonic() - t0
                if result.returncode != 0:
                    raise vc.BenchError(f"{script.name}: {result.stderr[-1000:]}")
                stamps = sorted(
                    round(float(x) - wall, 3)
                    for x in re.findall(r"^BENCH-DONE \S+ ([0-9.]+)$", result.stdout, re.M)
                )
                row.update(seconds=round(elapsed, 3), perVm=stamps, machine=probe.finish())
                for name in m_names:
                    if self.where(name)[b.name] != "running":
                        raise vc.BenchError(f"{name} not running on {b.name}")
            except (vc.BenchError, subprocess.TimeoutExpired) as error:
                row["error"] = str(error)[:2000]
            self.drains.append(row)
            vc.log(f"  drain {row['path']}: {row.get('seconds', row.get('error'))}")
            for name in m_names:
                for host in self.hosts:
                    host.virsh("destroy", name, check=False)
                    host.virsh("undefine", name, check=False)
                (Path(self.doc["nfs"]["directory"]) / f"{name}.qcow2").unlink(missing_ok=True)


# --------------------------------------------------------------------------- report


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "worst": None}
    return {"median": round(statistics.median(values), 3), "worst": round(max(values), 3)}


def summarise(moves: list[Move]) -> list[dict[str, Any]]:
    out = []
    for kind in ("idle", "booted"):
        base: dict[str, Any] | None = None
        for path in PATHS:
            chosen = [m for m in moves if m.kind == kind and m.path == path]
            if not chosen:
                continue
            ok = [m for m in chosen if m.error is None and m.seconds is not None]
            line: dict[str, Any] = {
                "kind": kind,
                "path": path,
                "runs": len(ok),
                "failed": len(chosen) - len(ok),
                "seconds": stats([m.seconds for m in ok if m.seconds is not None]),
                "jobSeconds": stats(
                    [m.job["elapsedMs"] / 1000 for m in ok if "elapsedMs" in m.job]
                ),
                "downtimeMs": stats([m.job["downtimeMs"] for m in ok if "downtimeMs" in m.job]),
                "dataMiB": stats(
                    [m.job["dataBytes"] / 1024**2 for m in ok if "dataBytes" in m.job]
                ),
            }
            if path == "kvmfleet":
                line["pluginSeconds"] = stats([m.details["pluginSeconds"] for m in ok])
                line["afterCommandSeconds"] = stats([m.details["afterCommandSeconds"] for m in ok])
                line["operatorSeconds"] = stats([m.details["operatorSeconds"] for m in ok
                                                 if m.details.get("operatorSeconds")])  # fmt: skip
                base = line
            elif base and base["seconds"]["median"] and line["seconds"]["median"]:
                line["ratio"] = round(base["seconds"]["median"] / line["seconds"]["median"], 2)
            out.append(line)
    return out


def print_report(summary: list[dict[str, Any]], drains: list[dict[str, Any]]) -> None:
    lines = [
        "",
        "Live migration: median (worst) per path; ratio = kvmfleet / that path (< 1: kvmfleet "
        "is faster); job, downtime and data from the target's completed job statistics",
        "",
        f"{'guest':<8}{'path':<14}{'runs':>5}{'wall s':>16}{'ratio':>7}{'job s':>14}"
        f"{'downtime ms':>16}{'data MiB':>16}",
    ]

    def mw(s: dict[str, float | None], pattern: str = "{:.2f}") -> str:
        if s["median"] is None:
            return "-"
        return f"{pattern.format(s['median'])} ({pattern.format(s['worst'])})"

    notes = []
    for line in summary:
        if "pluginSeconds" in line:
            notes.append(
                f"{line['kind']}: kvmfleet wall = kubectl kvm migrate {mw(line['pluginSeconds'])} s"
                f" + after it returned {mw(line['afterCommandSeconds'])} s; the operator's "
                f"move (status.migration message) {mw(line['operatorSeconds'])} s"
            )
        failed = f" ({line['failed']} failed)" if line["failed"] else ""
        lines.append(
            f"{line['kind']:<8}{line['path']:<14}{line['runs']:>5}{mw(line['seconds']):>16}"
            f"{vc.fmt(line.get('ratio')):>7}{mw(line['jobSeconds']):>14}"
            f"{mw(line['downtimeMs'], '{:.0f}'):>16}{mw(line['dataMiB'], '{:.1f}'):>16}{failed}"
        )
    lines += ["", *notes]
    if drains:
        lines += ["", "Drain (all VMs off the first host): total s, per VM s (completion times)"]
        base = next((d for d in drains if d["path"] == "kvmfleet" and "seconds" in d), None)
        for d in drains:
            if "seconds" not in d:
                lines.append(f"{d['path']:<22}{d['vms']:>3} VMs  FAILED: {d.get('error')}")
                continue
            ratio = (
                f"  ratio {base['seconds'] / d['seconds']:.2f}"
                if base and d is not base and d["seconds"]
                else ""
            )
            lines.append(
                f"{d['path']:<22}{d['vms']:>3} VMs {d['seconds']:>8.2f} s  "
                f"per VM {d['seconds'] / d['vms']:.2f} s  done at {d['perVm']}{ratio}"
            )
    print("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="moves per path and kind (5)")
    parser.add_argument("--kinds", default="idle,booted", help="idle,booted (default both)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--drain", type=int, default=4,
                        help="VMs per path in the drain case (default 4; 0: no drain)")  # fmt: skip
    parser.add_argument("--hosts", default="kvmhost1,kvmhost2", help="two testbed hosts")
    parser.add_argument("--namespace", default="bench", help="namespace (must start with bench)")
    parser.add_argument("--control-plane", choices=("private", "shared"), default="private",
                        help="as in vm_create.py (default private)")  # fmt: skip
    parser.add_argument("--vm-sync-interval", type=float, default=5)
    parser.add_argument("--verbose-operator", action="store_true")
    parser.add_argument("--json", type=Path, help="write every move and the summary here")
    args = parser.parse_args(argv)
    args.hosts = [h for h in args.hosts.split(",") if h]
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.paths = [p for p in args.paths.split(",") if p]
    if set(args.kinds) - {"idle", "booted"} or set(args.paths) - set(PATHS):
        parser.error("unknown --kinds or --paths")
    if not args.namespace.startswith("bench") or len(args.hosts) != 2 or args.repeat < 1:
        parser.error("--namespace must start with bench, --hosts name two hosts, --repeat >= 1")
    args.scenarios = ["migrate"]
    args.warmup = False
    args.retries = 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcome = vc.drive(lambda: MigrateBench(args))
    if outcome is None:
        return 2
    bench, started, machine = outcome.bench, outcome.started, outcome.machine
    fatal, interrupted = outcome.fatal, outcome.interrupted
    summary = summarise(bench.moves)
    print_report(summary, bench.drains)
    total = time.monotonic() - started
    print(f"total {total:.0f} s; operator log: {bench.work}")
    if args.json:
        payload = {
            "runId": bench.run_id,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {
                "repeat": args.repeat,
                "kinds": args.kinds,
                "paths": args.paths,
                "drain": args.drain,
                "hosts": args.hosts,
                "vm": "1 CPU, 256 MiB, virtio NIC on br0, 1 GiB qcow2 on the NFS export (NFS "
                "Direct), serial pty, VNC; idle: boots from its empty disk; booted: PXE, "
                "the testbed guest",
            },
            "machine": machine,
            "totalSeconds": round(total, 1),
            "fatal": fatal,
            "summary": summary,
            "drains": bench.drains,
            "moves": [asdict(m) for m in bench.moves],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if interrupted:
        return 130
    failed = fatal or any(m.error for m in bench.moves) or any("error" in d for d in bench.drains)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
