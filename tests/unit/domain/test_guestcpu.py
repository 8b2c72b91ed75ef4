"""Guest CPU choices: parsing spec.cpu, the probe's candidates, what auto picks, refusals."""

from __future__ import annotations

import pytest

from kvmfleet.domain.domainxml.build import build_trial_xml
from kvmfleet.domain.domainxml.parse import parse_domain
from kvmfleet.domain.guestcpu import (
    HOST_MODEL,
    HYPERVISOR_DEFAULT,
    SAFE_MODEL,
    CpuChoice,
    CpuMode,
    CpuRefusedError,
    CpuSpec,
    HostCpu,
    Trial,
    candidates,
    preferred,
    resolve,
)
from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.errors import InvalidSpecError

PASSTHROUGH = CpuChoice(CpuMode.HOST_PASSTHROUGH)
KVM64 = CpuChoice(CpuMode.CUSTOM, SAFE_MODEL)
MSR = "kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."


def host(*working: CpuChoice, kvm: bool = True) -> HostCpu:
    return HostCpu(
        "sig",
        tuple(Trial(c, c in working, "" if c in working else MSR) for c in candidates(kvm)),
    )


NESTED = host(KVM64, HYPERVISOR_DEFAULT)
"""What these machines' nested KVM proves: host-model and host-passthrough abort."""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, CpuSpec()),
        ({}, CpuSpec()),
        ({"mode": "auto"}, CpuSpec()),
        ({"mode": "host-model"}, CpuSpec(CpuMode.HOST_MODEL)),
        ({"mode": "custom", "model": "Westmere"}, CpuSpec(CpuMode.CUSTOM, "Westmere")),
        ({"mode": "hypervisor-default"}, CpuSpec(CpuMode.HYPERVISOR_DEFAULT)),
    ],
)
def test_spec_parses(raw: dict[str, str] | None, expected: CpuSpec) -> None:
    assert CpuSpec.from_dict(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"mode": "fast"}, "not one of"),
        ({"mode": "custom"}, "required with mode custom"),
        ({"mode": "host-model", "model": "kvm64"}, "only with mode custom"),
        ({"mode": "custom", "model": "kvm64; rm -rf /"}, "not a CPU model name"),
        ({"mode": "custom", "model": "<model>"}, "not a CPU model name"),
    ],
)
def test_spec_refuses(raw: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        CpuSpec.from_dict(raw)


def test_virtualnode_spec_reports_cpu_problems_with_the_others() -> None:
    with pytest.raises(InvalidSpecError) as error:
        VirtualNodeSpec.from_dict({"cpus": 0, "cpu": {"mode": "custom"}})
    assert "spec.cpus" in error.value.message
    assert "spec.cpu.model is required" in error.value.message


def test_labels_round_trip() -> None:
    for choice in (*candidates(True), CpuChoice(CpuMode.MAXIMUM)):
        assert CpuChoice.parse(choice.label) == choice
    assert KVM64.label == "custom/kvm64"
    for bad in ("auto", "custom", "host-model/kvm64", "turbo"):
        with pytest.raises(ValueError):
            CpuChoice.parse(bad)


def test_candidates() -> None:
    assert candidates(False) == (HYPERVISOR_DEFAULT,)
    assert candidates(True) == (HOST_MODEL, PASSTHROUGH, KVM64, HYPERVISOR_DEFAULT)


@pytest.mark.parametrize(
    ("working", "expected"),
    [
        ((HOST_MODEL, PASSTHROUGH, KVM64, HYPERVISOR_DEFAULT), HOST_MODEL),
        ((KVM64, HYPERVISOR_DEFAULT), KVM64),
        ((HYPERVISOR_DEFAULT,), HYPERVISOR_DEFAULT),
        ((PASSTHROUGH,), None),  # never picked by auto: it breaks live migration
        ((), None),
    ],
)
def test_preferred(working: tuple[CpuChoice, ...], expected: CpuChoice | None) -> None:
    assert preferred(host(*working).trials) == expected


def test_auto_gets_the_best_proven_choice() -> None:
    assert resolve(CpuSpec(), NESTED, kvm=True, host_name="h") == KVM64
    assert resolve(CpuSpec(), host(*candidates(True)), kvm=True, host_name="h") == HOST_MODEL
    # nothing proven yet, or nothing works: QEMU's default model, which starts most widely
    assert resolve(CpuSpec(), None, kvm=True, host_name="h") == HYPERVISOR_DEFAULT
    assert resolve(CpuSpec(), host(), kvm=True, host_name="h") == HYPERVISOR_DEFAULT
    assert resolve(CpuSpec(), host(HYPERVISOR_DEFAULT, kvm=False), kvm=False, host_name="h") == (
        HYPERVISOR_DEFAULT
    )


def test_an_explicit_choice_the_host_disproved_is_refused_with_qemus_words() -> None:
    with pytest.raises(CpuRefusedError, match="host-model does not start on h1: kvm_buf") as e:
        resolve(CpuSpec(CpuMode.HOST_MODEL), NESTED, kvm=True, host_name="h1")
    assert e.value.reason == "CpuNotSupported"
    assert "working there: custom/kvm64, hypervisor-default" in e.value.message


def test_an_explicit_choice_not_tried_is_used_as_asked() -> None:
    westmere = CpuSpec(CpuMode.CUSTOM, "Westmere")
    assert resolve(westmere, NESTED, kvm=True, host_name="h") == CpuChoice(
        CpuMode.CUSTOM, "Westmere"
    )
    assert resolve(CpuSpec(CpuMode.HOST_MODEL), None, kvm=True, host_name="h") == HOST_MODEL


def test_host_cpu_modes_need_kvm() -> None:
    with pytest.raises(CpuRefusedError, match="needs KVM"):
        resolve(CpuSpec(CpuMode.HOST_PASSTHROUGH), None, kvm=False, host_name="h")


def test_host_status_round_trip() -> None:
    status = NESTED.to_status()
    assert status["default"] == "custom/kvm64"
    assert status["working"] == ["custom/kvm64", "hypervisor-default"]
    assert status["trials"][0] == {"mode": "host-model", "works": False, "message": MSR}
    assert HostCpu.from_status(status) == NESTED
    assert HostCpu.from_status(None) is None
    assert HostCpu.from_status({"trials": "x"}) is None
    # unreadable entries are dropped, not fatal
    assert HostCpu.from_status({"trials": [{"mode": "turbo"}, 3]}) == HostCpu("", ())


@pytest.mark.parametrize("choice", [*candidates(True), CpuChoice(CpuMode.MAXIMUM)])
def test_trial_guest(choice: CpuChoice) -> None:
    xml = build_trial_xml(choice, virt_type="kvm", suffix="0a1b2c3d", arch="x86_64")
    info = parse_domain(xml)
    assert info.name == "kvmfleet-cpu-trial-0a1b2c3d"
    assert (info.virt_type, info.vcpus, info.memory_kib) == ("kvm", 1, 65536)
    assert info.disks == () and info.nics == ()
    if choice == HYPERVISOR_DEFAULT:
        assert "<cpu" not in xml
    else:
        assert f'<cpu mode="{choice.mode}"' in xml
    if choice.model:
        assert f'<model fallback="forbid">{choice.model}</model>' in xml


def test_trial_guest_names_are_validated() -> None:
    with pytest.raises(InvalidSpecError):
        build_trial_xml(HOST_MODEL, virt_type="kvm", suffix="a/b")
