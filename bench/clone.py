#!/usr/bin/env python3
"""VmMaster capture and clones, side by side: kvmfleet and the manual path of xCAT's clonevm.

On one testbed host, in one run, for each master size (GiB of data written into the
source disk) both paths do the same work on the host's `local` directory pool:

  capture attached   kvmfleet: a VmMaster (mode Attached) of a halted VirtualNode, until
                     Ready (copy, compare, read-only, rename, rebase, compare); manual:
                     `qemu-img convert` of the source disk, then `qemu-img rebase -b master`
                     (xCAT's `clonevm -t`).
  capture detached   kvmfleet: a VmMaster (mode Detached) until Ready; manual: `qemu-img
                     convert` (`clonevm -t -d`).
  clone attached     N VirtualNodes with spec.source (Attached, runStrategy Halted) until
                     each is Ready with its domain defined; manual: per clone `qemu-img
                     create -f qcow2 -F qcow2 -b master`, `virsh define` (`clonevm -b`).
  clone detached     the same with full copies: kvmfleet Detached clones; manual `qemu-img
                     convert` + `virsh define` (`clonevm -b -d`); and `virt-clone
                     --original` of a domain over the manual master (run on the host), the
                     tool many admins use instead.
  clone running      (first size only) N attached clones until Running and Ready;
                     manual: `qemu-img create -b`, `virsh define`, `virsh start`.

Usage (see bench/README.md):
  .venv/bin/python bench/clone.py [--data 1Gi,8Gi] [--clones 10] [--detached-clones 2]
                                  [--running 20] [--repeat 1] [--no-virt-clone]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vm_create as vc

IMAGE_DIR = vc.IMAGE_DIR
VMM = "vmmasters.kvmfleet.io"
PATTERN = "0x5a"
CHUNK = 256 * 1024**2
OUR_NAME = re.compile(r"^bench-cl[km][satdrv]-\d+-\d+$")
"""Names this benchmark gives VirtualNodes, VmMasters, domains and manual images: path
(k kvmfleet, m manual), role (s source, t/a/d/r master attached... see Clones.names),
sample number, index. The only domains and files it ever removes."""
PATHS = ("kvmfleet", "manual", "virt-clone")
CASES = ("capture-attached", "capture-detached", "clone-attached", "clone-detached",
         "clone-running")  # fmt: skip
TITLES = {
    "capture-attached": "capture attached",
    "capture-detached": "capture detached",
    "clone-attached": "clone attached (defined)",
    "clone-detached": "clone detached (defined)",
    "clone-running": "clone attached (running)",
}

MANUAL_LIB = r"""set -euo pipefail
ssh_() {
    ssh -n -i "$BENCH_KEY" -p "$BENCH_PORT" -o UserKnownHostsFile="$BENCH_KNOWN_HOSTS" \
        -o StrictHostKeyChecking=yes -o BatchMode=yes "$BENCH_USER@$BENCH_ADDR" "$@"
}
img() { printf '%s/%s.qcow2' "$BENCH_IMAGES" "$1"; }
define_() {  # NAME
    sed -e "s|@NAME@|$1|g" -e "s|@TYPE@|$BENCH_TYPE|g" -e "s|@DIR@|$BENCH_IMAGES|g" \
        "$BENCH_TEMPLATE" > "$BENCH_WORK/$1.xml"
    virsh -q -c "$BENCH_URI" define "$BENCH_WORK/$1.xml" >/dev/null </dev/null
}
capture_attached() {  # SOURCE MASTER  (xCAT clonevm -t: convert, then rebase the source)
    ssh_ qemu-img convert -f qcow2 -O qcow2 "$(img "$1")" "$(img "$2")"
    ssh_ qemu-img rebase -f qcow2 -F qcow2 -b "$(img "$2")" "$(img "$1")"
}
capture_detached() {  # SOURCE MASTER  (clonevm -t -d)
    ssh_ qemu-img convert -f qcow2 -O qcow2 "$(img "$1")" "$(img "$2")"
}
clone_attached() {  # MASTER NAME  (clonevm -b)
    ssh_ qemu-img create -q -f qcow2 -F qcow2 -b "$(img "$1")" "$(img "$2")"
    define_ "$2"
}
clone_detached() {  # MASTER NAME  (clonevm -b -d)
    ssh_ qemu-img convert -f qcow2 -O qcow2 "$(img "$1")" "$(img "$2")"
    define_ "$2"
}
template_() {  # MASTER  (a domain whose disk is MASTER: what virt-clone copies)
    define_ "$1"
}
virt_clone() {  # MASTER NAME  (virt-clone --original: a full copy of the domain's disk)
    ssh_ virt-clone --connect qemu:///system --quiet --original "$1" --name "$2" \
        --file "$(img "$2")" --check all=off
}
clone_running() {  # MASTER NAME
    clone_attached "$1" "$2"
    virsh -q -c "$BENCH_URI" start "$2" >/dev/null </dev/null
}
"""

LOOP = """source "$BENCH_WORK/clone-lib.sh"
while read -r a b; do
    {fn} "$a" "$b"
    echo "BENCH-DONE $b $(date +%s.%N)"
done < "$BENCH_WORK/{listing}"
"""


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a size like 256Mi or 1Gi")
    return int(match.group(1)) * (1024**2 if match.group(2) == "Mi" else 1024**3)


def human(size: int) -> str:
    return f"{size // 1024**3}Gi" if size % 1024**3 == 0 else f"{size // 1024**2}Mi"


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == kind), {})


def master_ready(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") == "Ready" and condition(obj, "Ready").get(
        "status"
    ) == "True"


def defined_ready(obj: dict[str, Any]) -> bool:
    return (
        condition(obj, "Ready").get("status") == "True"
        and condition(obj, "Defined").get("status") == "True"
    )


def stalled(obj: dict[str, Any]) -> str | None:
    cond = condition(obj, "Stalled")
    if cond.get("status") == "True":
        return f"{cond.get('reason')}: {cond.get('message')}"
    return None


@dataclass
class Row:
    """One timed step of one path."""

    case: str
    path: str  # kvmfleet | manual
    data: int  # bytes written into the source disk
    items: int
    repeat: int
    seconds: float | None = None
    per_item: dict[str, float] = field(default_factory=dict)  # first/median/last
    disk_bytes: int | None = None  # allocated on the host by what the step made
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Poller:
    """Reads one sample's objects through the API (every 0.1 s) until each passes."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        from kubernetes import config
        from kubernetes.client import CustomObjectsApi

        self.api = CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
        self.namespace = namespace

    def until(
        self,
        plural: str,
        selector: str,
        names: list[str],
        ready: Callable[[dict[str, Any]], bool],
        t0: float,
        timeout: float,
    ) -> dict[str, float]:
        done: dict[str, float] = {}
        deadline = t0 + timeout
        last: dict[str, Any] = {}
        while True:
            items = self.api.list_namespaced_custom_object(
                vc.GROUP, vc.VERSION, self.namespace, plural, label_selector=selector
            )["items"]
            now = time.monotonic()
            for obj in items:
                name = obj["metadata"]["name"]
                last[name] = obj
                if name not in done and ready(obj):
                    done[name] = now - t0
                elif name not in done and (why := stalled(obj)):
                    raise vc.BenchError(f"{plural} {name} stalled: {why}")
            if len(done) == len(names):
                return done
            if now > deadline:
                left = sorted(set(names) - set(done))
                status = (last.get(left[0]) or {}).get("status", {})
                raise vc.BenchError(
                    f"{len(left)} {plural} not ready after {timeout:.0f} s "
                    f"(e.g. {left[0]}: {json.dumps(status)[:800]})"
                )
            time.sleep(0.1)

    def gone(self, plural: str, selector: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.api.list_namespaced_custom_object(
            vc.GROUP, vc.VERSION, self.namespace, plural, label_selector=selector
        )["items"]:
            if time.monotonic() > deadline:
                raise vc.BenchError(f"{plural} ({selector}) still there after {timeout:.0f} s")
            time.sleep(0.5)


class CloneBench(vc.Bench):
    """vm_create's control plane, KvmHosts and operator; its own samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.host = self.hosts[0]
        (self.work / "clone-lib.sh").write_text(MANUAL_LIB)
        self.rows: list[Row] = []
        self.poller: Poller | None = None

    # ---------------------------------------------------------------- cleanup

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
                host.ssh(
                    f"rm -f {IMAGE_DIR}/bench-cl[km]* "
                    f"{IMAGE_DIR}/vmmaster.{self.namespace}.bench-cl*",
                    check=False,
                )

    def sweep_cluster(self, timeout: float = 180) -> None:
        super().sweep_cluster(timeout)
        if self.operator is None or not self.op.alive():
            return
        for plural in (vc.VN, VMM):
            items = self.kube.json("get", plural, "-n", self.namespace)["items"]
            names = [o["metadata"]["name"] for o in items if OUR_NAME.match(o["metadata"]["name"])]
            if names:
                self.kube.run("delete", plural, "-n", self.namespace, *names, "--wait=false")
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and any(
                    OUR_NAME.match(o["metadata"]["name"])
                    for o in self.kube.json("get", plural, "-n", self.namespace)["items"]
                ):
                    time.sleep(1)

    # ---------------------------------------------------------------- helpers

    @property
    def poll(self) -> Poller:
        if self.poller is None:
            self.poller = Poller(self.kube.kubeconfig, self.namespace)
        return self.poller

    def manual_env(self) -> dict[str, str]:
        h = self.host
        return {
            "BENCH_WORK": str(self.work),
            "BENCH_KEY": h.key,
            "BENCH_KNOWN_HOSTS": h.known_hosts,
            "BENCH_PORT": str(h.port),
            "BENCH_USER": h.user,
            "BENCH_ADDR": h.address,
            "BENCH_URI": h.uri,
            "BENCH_TYPE": h.virt_type,
            "BENCH_IMAGES": IMAGE_DIR,
            "BENCH_TEMPLATE": str(self.work / "domain.xml.in"),
            vc.BENCH_MARK: str(self.work),
        }

    def manual(
        self, fn: str, pairs: list[tuple[str, str]], tag: str, timeout: float, path: str = "manual"
    ) -> Row:
        """Run one shell loop (the manual path, or virt-clone); the row's seconds and per-item
        completion times."""
        listing = self.work / f"{tag}.list"
        listing.write_text("".join(f"{a} {b}\n" for a, b in pairs))
        script = self.work / f"{tag}.sh"
        script.write_text(LOOP.format(fn=fn, listing=listing.name))
        probe = vc.Probe(self.op.pid, self.shared)
        started_wall, started = time.time(), time.monotonic()
        proc = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            env={**os.environ, **self.manual_env()},
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise vc.BenchError(f"{script.name} failed ({proc.returncode}): {proc.stderr[-1500:]}")
        stamps = sorted(
            float(m.group(1)) - started_wall
            for m in re.finditer(r"^BENCH-DONE \S+ ([0-9.]+)$", proc.stdout, re.M)
        )
        row = Row(case="", path=path, data=0, items=len(pairs), repeat=0)
        row.seconds = round(elapsed, 3)
        row.per_item = spread(stamps)
        row.details = {"machine": probe.finish()}
        return row

    def kvmfleet(
        self,
        plural: str,
        docs: list[dict[str, Any]],
        selector: str,
        ready: Callable[[dict[str, Any]], bool],
        timeout: float,
    ) -> Row:
        """`kubectl apply` of the objects; the time until each passes `ready`."""
        names = [d["metadata"]["name"] for d in docs]
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        probe = vc.Probe(self.op.pid, self.shared)
        t0 = time.monotonic()
        self.kube.run("apply", "-f", "-", input=manifest, timeout=120)
        done = self.poll.until(plural, selector, names, ready, t0, timeout)
        times = sorted(done.values())
        row = Row(case="", path="kvmfleet", data=0, items=len(names), repeat=0)
        row.seconds = round(times[-1], 3)
        row.per_item = spread(times)
        row.details = {"machine": probe.finish()}
        return row

    def allocated(self, files: list[str]) -> int:
        """Bytes the host's filesystem allocated to these files (du)."""
        quoted = " ".join(shlex.quote(f"{IMAGE_DIR}/{f}") for f in files)
        out = self.host.ssh(f"stat -c '%b %B' {quoted}")
        return sum(int(a) * int(b) for a, b in (line.split() for line in out.splitlines()))

    def backing(self, file: str) -> str | None:
        out = self.host.ssh(
            f"qemu-img info -U --output=json -f qcow2 {shlex.quote(f'{IMAGE_DIR}/{file}')}"
        )
        value = json.loads(out).get("backing-filename")
        return str(value) if value else None

    def write_data(self, file: str, size: int) -> None:
        """The guest data of a source disk: `size` bytes of a pattern (qemu-io, untimed)."""
        cmds = " ".join(
            f"-c {shlex.quote(f'write -q -P {PATTERN} {off} {min(CHUNK, size - off)}')}"
            for off in range(0, size, CHUNK)
        )
        self.host.ssh(
            f"qemu-io -f qcow2 {cmds} {shlex.quote(f'{IMAGE_DIR}/{file}')}",
            timeout=120 + size / 1024**3 * 60,
        )

    def vn(self, name: str, sid: str, **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "hostRef": self.host.kvmhost,
            "cpus": 1,
            "memory": "128Mi",
            "nics": [{"bridge": "br0", "model": "virtio"}],
            "bootOrder": ["hd"],
            "serial": {"port": 0, "speed": 115200},
            "vnc": {"enabled": True},
            "runStrategy": "Halted",
            "reclaimPolicy": "Delete",
            "shutdownGracePeriodSeconds": 0,
        }
        body.update(spec)
        return {
            "apiVersion": f"{vc.GROUP}/{vc.VERSION}",
            "kind": "VirtualNode",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {vc.SAMPLE_LABEL: sid, vc.RUN_LABEL: self.run_id}},
            "spec": body,
        }  # fmt: skip

    def vmm(self, name: str, sid: str, source: str, mode: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{vc.GROUP}/{vc.VERSION}",
            "kind": "VmMaster",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {vc.SAMPLE_LABEL: sid, vc.RUN_LABEL: self.run_id}},
            "spec": {"sourceNode": source, "mode": mode},
        }  # fmt: skip

    # ---------------------------------------------------------------- one round

    def round(self, data: int, repeat: int, running: int) -> None:
        """Every case for one master size, the two paths step by step (interleaved)."""
        self.seq += 1
        s = self.seq
        args = self.args

        def nm(path: str, role: str, i: int = 0) -> str:
            return f"bench-cl{path}{role}-{s}-{i}"

        k_src, m_src = nm("k", "s"), nm("m", "s")
        k_ma, k_md, m_ma, m_md = nm("k", "t", 0), nm("k", "t", 1), nm("m", "t", 0), nm("m", "t", 1)
        sid = lambda role: f"{self.run_id}-{s}-{role}"  # noqa: E731
        vmaster = lambda m: f"vmmaster.{self.namespace}.{m}.hda.qcow2"  # noqa: E731
        per_gib = max(data / 1024**3, 0.25)
        log = vc.log

        def record(row: Row, case: str) -> Row:
            row.case, row.data, row.repeat = case, data, repeat
            self.rows.append(row)
            extra = f", per item median {row.per_item.get('median')}" if row.items > 1 else ""
            log(f"  {case} {row.path}: {row.seconds:.2f} s{extra}")
            return row

        def attempt(case: str, path: str, items: int, body: Callable[[], Row]) -> Row | None:
            try:
                return record(body(), case)
            except (vc.BenchError, subprocess.TimeoutExpired, OSError) as error:
                row = Row(case, path, data, items, repeat, error=str(error)[:2000])
                self.rows.append(row)
                log(f"  {case} {path} FAILED: {row.error}")
                return None

        log(f"data {human(data)}, run {repeat + 1}: sources (not timed)")
        # The sources: a halted VirtualNode and a hand-made image, the same data written.
        self.kube.apply(self.vn(k_src, sid("s"), disks=[{"name": "hda", "size": human(data),
                                                         "storage": vc.POOL_URL}]))  # fmt: skip
        self.poll.until("virtualnodes", f"{vc.SAMPLE_LABEL}={sid('s')}", [k_src], defined_ready,
                        time.monotonic(), 180)  # fmt: skip
        self.host.ssh(f"qemu-img create -q -f qcow2 {IMAGE_DIR}/{m_src}.qcow2 {data}")
        self.write_data(f"{k_src}.hda.qcow2", data)
        self.write_data(f"{m_src}.qcow2", data)
        source_bytes = self.allocated([f"{k_src}.hda.qcow2"])
        limit = 120 + per_gib * 120

        # capture attached, then detached (of the now-rebased source: the chain flattened)
        for mode, k_m, m_m, fn in (
            ("Attached", k_ma, m_ma, "capture_attached"),
            ("Detached", k_md, m_md, "capture_detached"),
        ):
            case = f"capture-{mode.lower()}"
            k_docs = [self.vmm(k_m, sid(k_m), k_src, mode)]
            k_sel = f"{vc.SAMPLE_LABEL}={sid(k_m)}"
            row = attempt(
                case,
                "kvmfleet",
                1,
                partial(self.kvmfleet, "vmmasters", k_docs, k_sel, master_ready, limit),
            )
            if row:
                row.disk_bytes = self.allocated([vmaster(k_m)])
            row = attempt(
                case, "manual", 1, partial(self.manual, fn, [(m_src, m_m)], f"s{s}-{case}", limit)
            )
            if row:
                row.disk_bytes = self.allocated([f"{m_m}.qcow2"])
        checks = {
            "kvmfleetSourceBacking": self.backing(f"{k_src}.hda.qcow2"),
            "manualSourceBacking": self.backing(f"{m_src}.qcow2"),
            "sourceAllocatedBytes": source_bytes,
        }

        # clones: attached (overlays) and detached (full copies), defined, not started
        plan = [
            ("clone-attached", "a", "Attached", k_ma, m_ma, "clone_attached", args.clones,
             defined_ready, "Halted"),
            ("clone-detached", "d", "Detached", k_md, m_md, "clone_detached",
             args.detached_clones, defined_ready, "Halted"),
        ]  # fmt: skip
        if running:
            plan.append(("clone-running", "r", "Attached", k_ma, m_ma, "clone_running", running,
                         vc.is_ready, "Always"))  # fmt: skip
        for case, role, mode, k_m, m_m, fn, n, ready, strategy in plan:
            if n <= 0:
                continue
            k_names = [nm("k", role, i) for i in range(n)]
            m_names = [nm("m", role, i) for i in range(n)]
            docs = [
                self.vn(name, sid(role), source={"vmMaster": k_m, "mode": mode},
                        disks=[{"name": "hda"}], runStrategy=strategy)
                for name in k_names
            ]  # fmt: skip
            step = limit if mode == "Detached" else 60
            timeout = 60 + n * step / (4 if mode == "Attached" else 1)
            k_sel = f"{vc.SAMPLE_LABEL}={sid(role)}"
            row = attempt(
                case,
                "kvmfleet",
                n,
                partial(self.kvmfleet, "virtualnodes", docs, k_sel, ready, timeout),
            )
            if row:
                row.disk_bytes = self.allocated([f"{x}.hda.qcow2" for x in k_names])
                row.details["backing"] = self.backing(f"{k_names[0]}.hda.qcow2")
            if case == "clone-running":
                # Read back, then stop them: running guests (TCG) would slow the next path.
                self.verify_running(k_names, {x: self.host.name for x in k_names})
                self.kube.run("delete", vc.VN, "-n", self.namespace, "-l", k_sel, "--wait=false")
                self.poll.gone("virtualnodes", k_sel, 300)
            pairs = [(m_m, x) for x in m_names]
            row = attempt(
                case, "manual", n, partial(self.manual, fn, pairs, f"s{s}-{case}", timeout)
            )
            if row:
                row.disk_bytes = self.allocated([f"{x}.qcow2" for x in m_names])
                row.details["backing"] = self.backing(f"{m_names[0]}.qcow2")
            if case == "clone-detached" and args.virt_clone:
                # The manual clones are measured: their space goes to virt-clone's copies.
                for name in m_names:
                    self.host.virsh("undefine", name, check=False)
                self.host.ssh(f"rm -f {' '.join(f'{IMAGE_DIR}/{x}.qcow2' for x in m_names)}")
                self.virt_clone_row(m_m, [nm("m", "v", i) for i in range(n)], s, timeout, attempt)
            if case == "clone-running":
                self.verify_running(m_names, {x: self.host.name for x in m_names})
                for name in m_names:
                    self.host.virsh("destroy", name, check=False)
        for row in self.rows:
            if row.data == data and row.repeat == repeat and row.case.startswith("capture"):
                row.details.update(checks)
        self.clean_round(s)

    def virt_clone_row(
        self,
        master: str,
        names: list[str],
        s: int,
        timeout: float,
        attempt: Callable[[str, str, int, Callable[[], Row]], Row | None],
    ) -> None:
        """The detached clones made with virt-clone from a domain over the manual master
        (the domain is defined first, not timed)."""
        self.manual("template_", [(master, "-")], f"s{s}-template", 60)
        pairs = [(master, x) for x in names]

        body = partial(self.manual, "virt_clone", pairs, f"s{s}-virt-clone", timeout, "virt-clone")
        row = attempt("clone-detached", "virt-clone", len(names), body)
        if row:
            row.disk_bytes = self.allocated([f"{x}.qcow2" for x in names])
            row.details["backing"] = self.backing(f"{names[0]}.qcow2")

    def clean_round(self, s: int) -> None:
        """Clones and sources first, then the masters (a master waits for its dependants)."""
        log = vc.log
        log("  cleaning up the round (not timed)")
        try:
            selector = f"{vc.RUN_LABEL}={self.run_id}"
            self.kube.run("delete", vc.VN, "-n", self.namespace, "-l", selector, "--wait=false")
            self.poll.gone("virtualnodes", selector, 300)
            self.kube.run("delete", VMM, "-n", self.namespace, "-l", selector, "--wait=false")
            self.poll.gone("vmmasters", selector, 120)
        except (vc.BenchError, subprocess.TimeoutExpired) as error:
            log(f"  WARNING: kvmfleet cleanup: {error}")
        for name in self.host.virsh("list", "--all", "--name").split():
            if OUR_NAME.match(name) and name.startswith("bench-clm"):
                self.host.virsh("destroy", name, check=False)
                self.host.virsh("undefine", name, check=False)
        self.host.ssh(f"rm -f {IMAGE_DIR}/bench-clm*-{s}-*.qcow2", check=False)
        left = self.host.ssh(f"ls {IMAGE_DIR} | grep -E '(^|\\.)bench-cl[km].-{s}-' || true")
        if left.strip():
            log(f"  WARNING: left on {self.host.name}: {left.split()}")

    def run(self) -> None:
        sizes = self.args.data
        vc.log(f"run {self.run_id}: masters of {', '.join(human(d) for d in sizes)} on "
               f"{self.host.name}")  # fmt: skip
        for r in range(self.args.repeat):
            for i, data in enumerate(sizes):
                if not self.op.alive():
                    raise vc.BenchError(f"the operator died: {self.op.tail()}")
                self.wait_for_hosts()
                self.round(data, r, self.args.running if i == 0 else 0)


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "first": round(values[0], 3),
        "median": round(statistics.median(values), 3),
        "last": round(values[-1], 3),
    }


def summarise(rows: list[Row]) -> list[dict[str, Any]]:
    """Median per (case, size, path) and the ratio kvmfleet / manual."""
    out: list[dict[str, Any]] = []
    keys = sorted({(CASES.index(r.case), r.data) for r in rows})
    for case_i, data in keys:
        case = CASES[case_i]
        line: dict[str, Any] = {"case": case, "data": data}
        for path in PATHS:
            chosen = [r for r in rows if (r.case, r.data, r.path) == (case, data, path)]
            if path == "virt-clone" and not chosen:
                continue
            ok = [r for r in chosen if r.error is None and r.seconds is not None]
            secs = [r.seconds for r in ok if r.seconds is not None]
            line[path] = {
                "runs": len(ok),
                "failed": len(chosen) - len(ok),
                "items": chosen[0].items if chosen else 0,
                "seconds": round(statistics.median(secs), 3) if secs else None,
                "worst": round(max(secs), 3) if secs else None,
                "perItemMedian": (
                    round(statistics.median(r.per_item["median"] for r in ok), 3)
                    if ok and all(r.per_item for r in ok)
                    else None
                ),
                "diskBytes": ok[0].disk_bytes if ok else None,
            }
        k, m = line["kvmfleet"]["seconds"], line["manual"]["seconds"]
        line["ratio"] = round(k / m, 2) if k and m else None
        if "virt-clone" in line:
            v = line["virt-clone"]["seconds"]
            line["ratioVirtClone"] = round(k / v, 2) if k and v else None
        out.append(line)
    return out


def print_report(summary: list[dict[str, Any]]) -> None:
    lines = [
        "",
        "VmMaster capture and clones: median wall time (s); ratio = kvmfleet / manual "
        "(< 1: kvmfleet is faster); disk = allocated on the host by what the step made",
        "",
        f"{'case':<27}{'data':>6}{'n':>4}{'runs':>5}{'kvmfleet s':>11}{'manual s':>10}"
        f"{'ratio':>7}{'k per item':>11}{'m per item':>11}{'k disk MiB':>11}{'m disk MiB':>11}",
    ]
    for line in summary:
        k, m = line["kvmfleet"], line["manual"]

        def mib(v: int | None) -> str:
            return "-" if v is None else f"{v / 1024**2:.1f}"

        failed = k["failed"] + m["failed"]
        lines.append(
            f"{TITLES[line['case']]:<27}{human(line['data']):>6}{k['items']:>4}"
            f"{min(k['runs'], m['runs']):>5}{vc.fmt(k['seconds']):>11}{vc.fmt(m['seconds']):>10}"
            f"{vc.fmt(line['ratio']):>7}{vc.fmt(k['perItemMedian']):>11}"
            f"{vc.fmt(m['perItemMedian']):>11}{mib(k['diskBytes']):>11}{mib(m['diskBytes']):>11}"
            + (f" ({failed} failed)" if failed else "")
        )
    versus = [line for line in summary if "virt-clone" in line]
    if versus:
        lines += ["", "clone detached against virt-clone (the same number of full copies):", ""]
        lines.append(f"{'data':>6}{'n':>4}{'kvmfleet s':>11}{'virt-clone s':>13}{'ratio':>7}"
                     f"{'v per item':>11}{'v disk MiB':>11}")  # fmt: skip
        for line in versus:
            k, v = line["kvmfleet"], line["virt-clone"]
            disk = "-" if v["diskBytes"] is None else f"{v['diskBytes'] / 1024**2:.1f}"
            lines.append(
                f"{human(line['data']):>6}{k['items']:>4}{vc.fmt(k['seconds']):>11}"
                f"{vc.fmt(v['seconds']):>13}{vc.fmt(line['ratioVirtClone']):>7}"
                f"{vc.fmt(v['perItemMedian']):>11}{disk:>11}"
                + (f" ({v['failed']} failed)" if v["failed"] else "")
            )
    print("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="1Gi",
                        help="comma-separated master sizes: data written into the source disk, "
                        "which is as big (default 1Gi; e.g. 1Gi,4Gi)")  # fmt: skip
    parser.add_argument("--clones", type=int, default=10, help="attached clones (default 10)")
    parser.add_argument("--detached-clones", type=int, default=2,
                        help="detached clones, full copies (default 2)")  # fmt: skip
    parser.add_argument("--running", type=int, default=20,
                        help="attached clones started, first size only (default 20)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every size (default 1)")
    parser.add_argument("--host", default="kvmhost1", help="the testbed host (default kvmhost1)")
    parser.add_argument("--namespace", default="bench", help="namespace (must start with bench)")
    parser.add_argument("--control-plane", choices=("private", "shared"), default="private",
                        help="as in vm_create.py (default private)")  # fmt: skip
    parser.add_argument("--vm-sync-interval", type=float, default=30,
                        help="KVMFLEET_VM_SYNC_INTERVAL (default 30)")  # fmt: skip
    parser.add_argument("--no-virt-clone", dest="virt_clone", action="store_false",
                        help="skip the virt-clone path of the detached clones")  # fmt: skip
    parser.add_argument("--verbose-operator", action="store_true")
    parser.add_argument("--json", type=Path, help="write every row and the summary here")
    args = parser.parse_args(argv)
    args.data = [parse_size(x) for x in args.data.split(",") if x]
    args.hosts = [args.host]
    args.scenarios = ["clone"]  # no vm_create warm-up
    args.warmup = False
    args.retries = 0
    if not args.namespace.startswith("bench"):
        parser.error("--namespace must start with 'bench'")
    if not args.data or args.repeat < 1:
        parser.error("--data and --repeat >= 1 needed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcome = vc.drive(lambda: CloneBench(args))
    if outcome is None:
        return 2
    bench, started, machine = outcome.bench, outcome.started, outcome.machine
    fatal, interrupted = outcome.fatal, outcome.interrupted
    summary = summarise(bench.rows)
    print_report(summary)
    total = time.monotonic() - started
    print(f"total {total:.0f} s; operator log and scripts: {bench.work}")
    if args.json:
        payload = {
            "runId": bench.run_id,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {
                "data": [human(d) for d in args.data],
                "clones": args.clones,
                "detachedClones": args.detached_clones,
                "running": args.running,
                "repeat": args.repeat,
                "host": args.host,
                "storage": vc.POOL_URL,
                "vm": "1 CPU, 128 MiB, virtio NIC on br0, one qcow2 disk as big as the data, "
                "serial pty, VNC, boot from disk only (no OS)",
            },
            "machine": machine,
            "totalSeconds": round(total, 1),
            "fatal": fatal,
            "summary": summary,
            "rows": [asdict(r) for r in bench.rows],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if interrupted:
        return 130
    return 1 if fatal or any(r.error for r in bench.rows) else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
