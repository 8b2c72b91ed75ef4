"""The KvmHost probe's CPU trials (reconcile.hostcpu) on a fake libvirt host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from kvmfleet.domain.guestcpu import HostCpu
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
        FakeHost.started.append(xml)
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
