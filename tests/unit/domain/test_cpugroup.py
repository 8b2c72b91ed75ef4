"""Migration groups: the members' CPUs as libvirt reads them, its baseline read back, and
what ``auto`` gives on a host of a group."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from kvmfleet.domain import cpugroup
from kvmfleet.domain.domainxml.build import build_trial_xml
from kvmfleet.domain.guestcpu import (
    HOST_MODEL,
    CpuChoice,
    CpuMode,
    CpuSpec,
    GroupCpu,
    HostCpu,
    HostCpuModel,
    Trial,
    features_digest,
    resolve,
)

EPYC = HostCpuModel("x86_64", "EPYC", "AMD", ("x2apic", "avx2", "sha-ni"))
OLDER = HostCpuModel("x86_64", "Opteron_G5", "AMD", ("x2apic",))

BASELINE = """<cpu mode='custom' match='exact'>
  <model fallback='forbid'>Opteron_G5</model>
  <vendor>AMD</vendor>
  <feature policy='require' name='x2apic'/>
  <feature policy='disable' name='svm'/>
  <feature policy='require' name='abm'/>
</cpu>"""


def kvm_host(
    name: str, group: str | None, cpu: HostCpuModel | None, **extra: Any
) -> dict[str, Any]:
    guest_cpu = HostCpu("sig", (Trial(HOST_MODEL, True),), cpu).to_status()
    return {
        "metadata": {"name": name, **extra},
        "spec": {"migrationGroup": group} if group else {},
        "status": {"capabilities": {"virtualization": "kvm"}, "guestCpu": guest_cpu},
    }


def test_a_host_cpu_is_written_as_libvirts_capabilities_cpu() -> None:
    root = ET.fromstring(cpugroup.host_cpu_xml(EPYC))
    assert (root.tag, root.findtext("arch"), root.findtext("model")) == ("cpu", "x86_64", "EPYC")
    assert root.findtext("vendor") == "AMD"
    assert [f.get("name") for f in root.findall("feature")] == ["x2apic", "avx2", "sha-ni"]


def test_the_baseline_is_its_model_and_sorted_feature_policies_without_the_vendor() -> None:
    choice = cpugroup.parse_baseline(BASELINE)
    assert (choice.mode, choice.model) == (CpuMode.CUSTOM, "Opteron_G5")
    assert choice.features == ("+abm", "-svm", "+x2apic")
    assert choice.label == f"custom/Opteron_G5#{features_digest(choice.features)}"
    # the order libvirt lists features in does not change the label
    shuffled = BASELINE.replace("<feature policy='require' name='x2apic'/>", "").replace(
        "</cpu>", "<feature policy='require' name='x2apic'/></cpu>"
    )
    assert cpugroup.parse_baseline(shuffled).label == choice.label


@pytest.mark.parametrize(
    "xml",
    [
        "<cpu><vendor>AMD</vendor></cpu>",
        "not xml",
        "<cpu><model>EPYC</model><feature policy='force' name='x'/></cpu>",
        "<cpu><model>EPYC</model><feature policy='require' name='Bad Name'/></cpu>",
    ],
)
def test_an_unusable_baseline_is_a_permanent_error(xml: str) -> None:
    with pytest.raises(cpugroup.GroupCpuError):
        cpugroup.parse_baseline(xml)


def test_members_are_the_groups_probed_kvm_hosts_with_this_hosts_fresh_cpu() -> None:
    hosts = [
        kvm_host("a", "lab", OLDER),  # this host: its fresh CPU wins over the recorded one
        kvm_host("b", "lab", OLDER),
        kvm_host("c", "other", OLDER),
        kvm_host("d", "lab", None),  # not probed yet
        kvm_host("e", "lab", OLDER, deletionTimestamp="2026-11-30T00:00:00Z"),
        {**kvm_host("f", "lab", OLDER), "status": {"capabilities": {"virtualization": "emulated"}}},
    ]
    assert cpugroup.members("lab", "a", EPYC, hosts) == {"a": EPYC, "b": OLDER}


def test_a_label_with_a_digest_reads_back_and_compares_without_its_features() -> None:
    choice = cpugroup.parse_baseline(BASELINE)
    parsed = CpuChoice.parse(choice.label)
    assert parsed == choice and parsed.features == () and parsed.digest == choice.digest
    with pytest.raises(ValueError):
        CpuChoice(CpuMode.CUSTOM, "EPYC", "0" * 12, ("+x2apic",))  # wrong digest
    with pytest.raises(ValueError):
        CpuChoice.parse("host-model#0123456789ab")


def test_auto_gives_the_group_baseline_where_it_starts() -> None:
    choice = cpugroup.parse_baseline(BASELINE)
    own = (Trial(HOST_MODEL, True),)
    working = HostCpu("sig", own, EPYC, GroupCpu("lab", ("a", "b"), choice, True))
    failing = HostCpu("sig", own, EPYC, GroupCpu("lab", ("a", "b"), choice, False, "MSR"))
    nothing = HostCpu("sig", own, EPYC, GroupCpu("lab", ("a",), None, False, "vendors differ"))
    assert resolve(CpuSpec(), working, kvm=True, host_name="a") == choice
    assert resolve(CpuSpec(), failing, kvm=True, host_name="a") == HOST_MODEL
    assert resolve(CpuSpec(), nothing, kvm=True, host_name="a") == HOST_MODEL
    assert working.to_status()["default"] == choice.label
    assert failing.verdict(CpuChoice.parse(choice.label)) == Trial(choice, False, "MSR")


def test_status_round_trip_keeps_the_host_cpu_and_the_group() -> None:
    choice = cpugroup.parse_baseline(BASELINE)
    made = HostCpu("sig", (Trial(HOST_MODEL, True),), EPYC, GroupCpu("lab", ("a",), choice, True))
    back = HostCpu.from_status(made.to_status())
    assert back == made and back is not None and back.group is not None
    assert back.group.choice is not None and back.group.choice.features == choice.features
    failed = GroupCpu("lab", ("a",), None, False, "CPU vendors do not match")
    assert GroupCpu.from_status(failed.to_status()) == failed


def test_the_domain_names_the_model_and_every_feature_policy() -> None:
    choice = cpugroup.parse_baseline(BASELINE)
    root = ET.fromstring(build_trial_xml(choice, virt_type="kvm", suffix="ab12"))
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("mode") == "custom" and cpu.get("match") == "exact"
    assert cpu.findtext("model") == "Opteron_G5"
    assert [(f.get("policy"), f.get("name")) for f in cpu.findall("feature")] == [
        ("require", "abm"),
        ("disable", "svm"),
        ("require", "x2apic"),
    ]
