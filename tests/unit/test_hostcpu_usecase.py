"""The KvmHost probe's CPU trials (reconcile.hostcpu) on a fake libvirt host."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from kvmfleet.domain.guestcpu import CpuChoice, CpuMode, GroupCpu, HostCpu, HostCpuModel, Trial
from kvmfleet.errors import PermanentError
from kvmfleet.reconcile import hostcpu
from kvmfleet.virt.host import HostFacts, StartTrial, _qemu_message

FACTS = HostFacts(
    arch="x86_64",
    cpu_model="kvm64",
    cpus=2,
    memory_mib=1024,
    libvirt_version="9.0.0",
    qemu_version="7.2.22",
    hostname="kvmhost3",
    kvm_domain_supported=True,
    host_uuid=None,
)


class FakeCtx:
    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class FakeSession:
    ctx = FakeCtx()

    async def libvirt(self) -> object:
        return object()


class FakeHost:
    """Starts only guests whose XML matches one of ``works``; records every trial."""

    works: ClassVar[tuple[str, ...]] = ()
    started: ClassVar[list[str]] = []

    def __init__(self, connection: object) -> None:
        pass

    def trial_start(self, xml: str, settle_seconds: float) -> StartTrial:
        assert "kvmfleet-cpu-trial-" in xml and settle_seconds == hostcpu.SETTLE_SECONDS
        type(self).started.append(xml)
        ok = any(marker in xml for marker in self.works)
        return StartTrial(ok, "" if ok else "2026-01-01T00:00:00.1Z failed to set MSR 0x10a")


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> type[FakeHost]:
    monkeypatch.setattr(hostcpu, "Host", FakeHost)
    FakeHost.started = []
    FakeHost.works = (">kvm64<",)
    return FakeHost


async def ensure(recorded: dict[str, Any] | None, kvm: bool = True) -> tuple[HostCpu, bool]:
    return await hostcpu.ensure(FakeSession(), recorded, FACTS, kvm=kvm)  # type: ignore[arg-type]


async def test_trials_run_once_and_are_reused(fake_host: type[FakeHost]) -> None:
    made, new = await ensure(None)
    assert new and len(fake_host.started) == 4
    assert made.preferred is not None and made.preferred.label == "custom/kvm64"
    again, new_again = await ensure(made.to_status())
    assert again == made and not new_again and len(fake_host.started) == 4


async def test_other_versions_mean_new_trials(fake_host: type[FakeHost]) -> None:
    made, _ = await ensure(None)
    status = {**made.to_status(), "probedFor": "kvm; libvirt 8.0.0; QEMU 6.2; host CPU x"}
    _, new = await ensure(status)
    assert len(fake_host.started) == 8 and not new  # same verdicts as before


async def test_a_result_where_nothing_started_is_tried_again(fake_host: type[FakeHost]) -> None:
    fake_host.works = ()
    failed, new = await ensure(None)
    assert new and failed.preferred is None
    _, new = await ensure(failed.to_status())
    assert len(fake_host.started) == 8 and not new
    fake_host.works = ("<domain",)  # e.g. /dev/kvm made usable by QEMU's user
    fixed, new = await ensure(failed.to_status())
    assert new and fixed.preferred is not None and fixed.preferred.label == "host-model"


async def test_an_emulated_host_tries_qemus_default_model_only(fake_host: type[FakeHost]) -> None:
    made, _ = await ensure(None, kvm=False)
    assert [t.choice.label for t in made.trials] == ["hypervisor-default"]
    assert 'type="qemu"' in fake_host.started[0] and "<cpu" not in fake_host.started[0]


def test_qemu_message_keeps_qemus_words_without_timestamps() -> None:
    raw = (
        "internal error: process exited while connecting to monitor: "
        "2026-11-30T00:08:10.295152Z qemu-system-x86_64: kvm_buf_set_msrs: Assertion failed."
    )
    assert _qemu_message(raw) == "qemu-system-x86_64: kvm_buf_set_msrs: Assertion failed."
    assert _qemu_message("x" * 500).endswith("...") and len(_qemu_message("x" * 500)) == 300


# --- migration groups ---------------------------------------------------------------------

EPYC = HostCpuModel("x86_64", "EPYC", "AMD", ("x2apic",))
BASELINE = (
    "<cpu mode='custom' match='exact'><model fallback='forbid'>{model}</model>"
    "<vendor>AMD</vendor><feature policy='require' name='x2apic'/></cpu>"
)


class GroupHost(FakeHost):
    """A fake host whose libvirt answers the baseline of the CPUs it is given."""

    asked: ClassVar[list[list[str]]] = []
    failure: ClassVar[Exception | None] = None

    def baseline_cpu(self, cpus: list[str]) -> str:
        GroupHost.asked.append(cpus)
        if GroupHost.failure is not None:
            raise GroupHost.failure
        models = sorted(ET.fromstring(c).findtext("model") or "" for c in cpus)
        return BASELINE.format(model=models[-1])


@pytest.fixture
def group_host(monkeypatch: pytest.MonkeyPatch) -> type[GroupHost]:
    monkeypatch.setattr(hostcpu, "Host", GroupHost)
    GroupHost.started, GroupHost.asked, GroupHost.failure = [], [], None
    GroupHost.works = ("<domain",)
    return GroupHost


def member(name: str, cpu: HostCpuModel) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"migrationGroup": "lab"},
        "status": {
            "capabilities": {"virtualization": "kvm"},
            "guestCpu": HostCpu("sig", (), cpu).to_status(),
        },
    }


async def group(
    host_cpu: HostCpu, hosts: list[dict[str, Any]], name: str | None = "lab", kvm: bool = True
) -> tuple[HostCpu, bool]:
    return await hostcpu.ensure_group(
        FakeSession(),  # type: ignore[arg-type]
        host_cpu,
        group=name,
        host_name="kvmhost3",
        hosts=hosts,
        kvm=kvm,
    )


async def test_a_group_baseline_is_proven_once_and_followed_when_it_changes(
    group_host: type[GroupHost],
) -> None:
    own = HostCpu("sig", (), EPYC)
    made, news = await group(own, [member("kvmhost4", EPYC)])
    assert news and made.group is not None and made.group.works
    assert made.group.members == ("kvmhost3", "kvmhost4")
    assert made.auto is not None and made.auto.label.startswith("custom/EPYC#")
    assert len(group_host.started) == 1 and "<feature policy" in group_host.started[0]
    # the same baseline next probe: no trial guest, no Event
    again, news = await group(made, [member("kvmhost4", EPYC)])
    assert again == made and not news and len(group_host.started) == 1
    # a member with another CPU joins: a new baseline, proven again
    other = HostCpuModel("x86_64", "Opteron_G5", "AMD", ())
    changed, news = await group(again, [member("kvmhost4", EPYC), member("kvmhost5", other)])
    assert news and len(group_host.started) == 2 and len(group_host.asked[-1]) == 3
    assert changed.auto is not None and changed.auto != made.auto


async def test_a_baseline_that_does_not_start_leaves_auto_to_the_hosts_own_trials(
    group_host: type[GroupHost],
) -> None:
    group_host.works = ("kvm64",)
    own = HostCpu("sig", (Trial(CpuChoice(CpuMode.CUSTOM, "kvm64"), True),), EPYC)
    made, news = await group(own, [])
    assert news and made.group is not None and not made.group.works
    assert made.auto == CpuChoice(CpuMode.CUSTOM, "kvm64")
    again, _ = await group(made, [])  # a failed baseline is tried again each probe
    assert len(group_host.started) == 2 and again.group == made.group


async def test_a_baseline_libvirt_refuses_is_recorded_with_its_words(
    group_host: type[GroupHost],
) -> None:
    group_host.failure = PermanentError("CPU vendors do not match")
    made, news = await group(HostCpu("sig", (), EPYC), [member("kvmhost4", EPYC)])
    assert news and made.group is not None and made.group.choice is None
    assert made.group.message == "CPU vendors do not match" and not group_host.started


async def test_no_group_no_kvm_or_no_cpu_means_no_baseline(group_host: type[GroupHost]) -> None:
    stale = HostCpu("sig", (), EPYC, GroupCpu("lab", ("kvmhost3",), None, False, "x"))
    assert await group(stale, [], name=None) == (replace(stale, group=None), True)
    assert (await group(stale, [], kvm=False))[0].group is None
    assert (await group(replace(stale, own=None), []))[0].group is None
    assert not group_host.asked and not group_host.started
