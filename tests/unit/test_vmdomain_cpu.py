"""When the guest CPU choice makes vmdomain redefine a domain (and ask for a restart)."""

from __future__ import annotations

import re

from kvmfleet.domain.domainxml.build import build_domain_xml
from kvmfleet.domain.domainxml.parse import parse_domain
from kvmfleet.domain.guestcpu import HOST_MODEL, HYPERVISOR_DEFAULT, CpuChoice, CpuMode
from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.domain.storage_urls import NfsAccess, disk_location, parse_storage_url
from kvmfleet.reconcile.vmdomain import _shape

SPEC = VirtualNodeSpec.from_dict(
    {"cpus": 2, "memory": "1Gi", "disks": [{"name": "hda", "size": "1Gi"}]}
)
KVM64 = CpuChoice(CpuMode.CUSTOM, "kvm64")


def xml(cpu: CpuChoice) -> str:
    pool = parse_storage_url("dir:///var/lib/vms")
    where = disk_location(pool, "vm1", "hda", nfs_access=NfsAccess.MOUNT)
    return build_domain_xml(
        SPEC,
        name="vm1",
        uid="0b5d5a32-8e4c-4d8a-9a53-2f1d3e0c6a11",
        namespace="default",
        virt_type="kvm",
        disks=[where],
        macs=[],
        cpu=cpu,
    )


def test_the_same_choice_needs_nothing() -> None:
    current = parse_domain(xml(KVM64))
    assert _shape(current, KVM64.label) == _shape(parse_domain(xml(KVM64)), None)


def test_another_choice_redefines() -> None:
    current = parse_domain(xml(HOST_MODEL))
    assert _shape(current, KVM64.label) != _shape(parse_domain(xml(KVM64)), None)


def test_libvirts_expansion_of_host_model_is_not_a_change() -> None:
    # A running domain's XML shows host-model expanded into a named model; the choice
    # recorded in kvmfleet's metadata is what counts.
    running = xml(HOST_MODEL).replace(
        '<cpu mode="host-model" />',
        '<cpu mode="custom" match="exact"><model fallback="forbid">Skylake-Client</model></cpu>',
    )
    assert "Skylake-Client" in running
    wanted = parse_domain(xml(HOST_MODEL))
    assert _shape(parse_domain(running), HOST_MODEL.label) == _shape(wanted, None)


def test_a_domain_defined_before_the_choice_was_recorded_is_left_alone() -> None:
    legacy = re.sub(r"\s*<kvmfleet:cpu [^>]*/>", "", xml(HOST_MODEL))
    assert "kvmfleet:cpu" not in legacy
    current = parse_domain(legacy)
    assert current.node is not None and current.node.cpu is None
    assert _shape(current, HYPERVISOR_DEFAULT.label) == _shape(
        parse_domain(xml(HYPERVISOR_DEFAULT)), None
    )
