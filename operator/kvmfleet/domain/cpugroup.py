"""Migration groups of KvmHosts: one guest CPU every member can run.

Hosts with the same ``spec.migrationGroup`` exchange VMs by live migration. A VM defined
with the host's own best CPU (``host-model``) can only move to hosts with at least that
CPU, so each KVM member of a group asks libvirt for the *baseline* over the CPUs of all
KVM members (``virConnectBaselineCPU``: the newest named model they all provide plus the
features they all have) and ``spec.cpu.mode: auto`` defines VMs with it. This module
writes the members' CPUs as the XML libvirt reads and reads libvirt's answer back; the
libvirt call is the virt adapter's, what the result is for is :mod:`guestcpu`'s.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

from kvmfleet.domain.guestcpu import CpuChoice, HostCpu, HostCpuModel
from kvmfleet.errors import PermanentError


class GroupCpuError(PermanentError):
    """A migration group has no baseline CPU: libvirt refused one or it is unusable."""

    reason = "GroupCpuUnavailable"


def host_cpu_xml(cpu: HostCpuModel) -> str:
    """A host CPU as the ``<cpu>`` element of libvirt's capabilities (baseline input)."""
    root = ET.Element("cpu")
    ET.SubElement(root, "arch").text = cpu.arch
    ET.SubElement(root, "model").text = cpu.model
    if cpu.vendor:
        ET.SubElement(root, "vendor").text = cpu.vendor
    for feature in cpu.features:
        ET.SubElement(root, "feature", {"name": feature})
    return ET.tostring(root, encoding="unicode")


def parse_baseline(xml: str) -> CpuChoice:
    """libvirt's baseline ``<cpu>`` as a choice: its model and its feature policies.

    ``require`` becomes ``+name``, ``disable`` ``-name``; the vendor is left out (the
    model already implies it, and leaving it out does not narrow where the VM starts).
    Anything else (no model, another policy) raises GroupCpuError.
    """
    try:
        root = ET.fromstring(xml)  # noqa: S314 - XML from libvirtd; expat, no external entities
    except ET.ParseError as error:
        raise GroupCpuError(f"the baseline CPU is not XML: {error}") from error
    model = (root.findtext("model") or "").strip()
    if not model:
        raise GroupCpuError(f"the baseline CPU names no model: {xml[:200]}")
    features = []
    for feature in root.findall("feature"):
        policy, name = feature.get("policy", "require"), feature.get("name", "")
        if policy not in ("require", "disable"):
            raise GroupCpuError(f"baseline feature {name!r} has policy {policy!r}")
        features.append(("+" if policy == "require" else "-") + name)
    try:
        return CpuChoice.baseline(model, sorted(features, key=lambda f: (f[1:], f[0])))
    except ValueError as error:
        raise GroupCpuError(f"the baseline CPU is not usable: {error}") from error


def members(
    group: str, this_host: str, own: HostCpuModel, hosts: Iterable[Mapping[str, Any]]
) -> dict[str, HostCpuModel]:
    """The KVM hosts of ``group`` with a recorded CPU, by name, this host included.

    ``hosts`` are KvmHost objects (the watch's copies); this host's own CPU is the one
    just read, not its recorded status. Hosts being deleted, emulated hosts (their VMs
    use QEMU's default model) and hosts not probed yet do not count.
    """
    found = {this_host: own}
    for obj in hosts:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        if not name or name == this_host or meta.get("deletionTimestamp"):
            continue
        if spec.get("migrationGroup") != group:
            continue
        if (status.get("capabilities") or {}).get("virtualization") != "kvm":
            continue
        recorded = HostCpu.from_status(status.get("guestCpu"))
        if recorded is not None and recorded.own is not None:
            found[name] = recorded.own
    return dict(sorted(found.items()))
