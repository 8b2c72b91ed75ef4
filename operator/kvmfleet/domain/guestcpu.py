"""The guest CPU configuration: what a VirtualNode asks for, what a host proved, what is used.

A libvirt domain's ``<cpu>`` can ask for the host's model (``host-model``), the host CPU
as it is (``host-passthrough``), everything QEMU can offer (``maximum``), a named model
(``custom`` + a model such as ``kvm64``), or nothing at all (QEMU's own default model,
called ``hypervisor-default`` here). Not every choice starts on every host: on nested
hypervisors ``host-model`` and ``host-passthrough`` can abort QEMU ("failed to set MSR").
So a KvmHost probe starts a throwaway guest with each candidate of :func:`candidates`
and records the result (a :class:`Trial` each); a VirtualNode whose ``spec.cpu.mode``
is ``auto`` then gets :func:`preferred` of its host's trials: a VM never fails to start
because of a CPU choice the operator made.

A choice is written as a label: ``host-model``, ``host-passthrough``, ``maximum``,
``hypervisor-default`` or ``custom/<model>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kvmfleet.errors import InvalidSpecError


class CpuMode(StrEnum):
    """``spec.cpu.mode`` of a VirtualNode."""

    AUTO = "auto"
    HOST_MODEL = "host-model"
    HOST_PASSTHROUGH = "host-passthrough"
    MAXIMUM = "maximum"
    CUSTOM = "custom"
    HYPERVISOR_DEFAULT = "hypervisor-default"


SAFE_MODEL = "kvm64"
"""The named model tried after host-model: plain x86-64 that every KVM host can run."""

_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def validate_model(model: str, field: str = "spec.cpu.model") -> str:
    """A libvirt CPU model name (letters, digits, ``_ . + -``, at most 64 characters)."""
    if not _MODEL.fullmatch(model):
        raise InvalidSpecError(
            f"{field}: {model!r} is not a CPU model name (letters, digits, '_', '.', '+', '-')"
        )
    return model


@dataclass(frozen=True, order=True)
class CpuChoice:
    """One concrete ``<cpu>`` configuration (never ``auto``)."""

    mode: CpuMode
    model: str | None = None

    def __post_init__(self) -> None:
        if self.mode is CpuMode.AUTO:
            raise ValueError("auto is not a concrete CPU choice")
        if (self.mode is CpuMode.CUSTOM) != (self.model is not None):
            raise ValueError("a model goes with mode custom, and only with it")

    @property
    def label(self) -> str:
        """``host-model``, ``custom/kvm64``, ..."""
        return f"{self.mode}/{self.model}" if self.model else str(self.mode)

    @classmethod
    def parse(cls, label: str) -> CpuChoice:
        """The inverse of :attr:`label`; ValueError for anything else."""
        mode, _, model = label.partition("/")
        choice = cls(CpuMode(mode), validate_model(model) if model else None)
        if choice.mode is CpuMode.AUTO:
            raise ValueError(label)
        return choice


HYPERVISOR_DEFAULT = CpuChoice(CpuMode.HYPERVISOR_DEFAULT)
HOST_MODEL = CpuChoice(CpuMode.HOST_MODEL)


@dataclass(frozen=True)
class CpuSpec:
    """``spec.cpu`` of a VirtualNode: ``auto`` (the default) or one concrete choice."""

    mode: CpuMode = CpuMode.AUTO
    model: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> CpuSpec:
        """Parse and validate ``spec.cpu``."""
        raw = raw or {}
        try:
            mode = CpuMode(str(raw.get("mode", CpuMode.AUTO)))
        except ValueError:
            allowed = ", ".join(m.value for m in CpuMode)
            raise InvalidSpecError(
                f"spec.cpu.mode: {raw.get('mode')!r} is not one of {allowed}"
            ) from None
        model = raw.get("model")
        if mode is CpuMode.CUSTOM:
            if not model:
                raise InvalidSpecError("spec.cpu.model is required with mode custom")
            return cls(mode, validate_model(str(model)))
        if model:
            raise InvalidSpecError("spec.cpu.model goes only with mode custom")
        return cls(mode)

    @property
    def choice(self) -> CpuChoice | None:
        """The concrete choice asked for, None for auto."""
        return None if self.mode is CpuMode.AUTO else CpuChoice(self.mode, self.model)


@dataclass(frozen=True)
class Trial:
    """Whether a throwaway guest with ``choice`` started and stayed up on a host."""

    choice: CpuChoice
    works: bool
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        """The ``status.guestCpu.trials[]`` entry."""
        entry: dict[str, Any] = {"mode": str(self.choice.mode), "works": self.works}
        if self.choice.model:
            entry["model"] = self.choice.model
        if self.message:
            entry["message"] = self.message
        return entry

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> Trial | None:
        """Read back a trial; None for anything unreadable."""
        try:
            model = raw.get("model")
            choice = CpuChoice(CpuMode(str(raw["mode"])), None if model is None else str(model))
        except (KeyError, ValueError):
            return None
        return cls(choice, bool(raw.get("works")), str(raw.get("message") or ""))


def candidates(kvm: bool) -> tuple[CpuChoice, ...]:
    """What a host probe tries, in order of preference for ``auto``.

    Under KVM: the host's model (best performance), its raw CPU (reported, never picked
    by ``auto``: it ties a VM to identical hosts), a plain named model, QEMU's default.
    Under emulation (TCG) only QEMU's default model is proven: host models describe the
    host's CPU, which TCG does not use.
    """
    if not kvm:
        return (HYPERVISOR_DEFAULT,)
    return (
        HOST_MODEL,
        CpuChoice(CpuMode.HOST_PASSTHROUGH),
        CpuChoice(CpuMode.CUSTOM, SAFE_MODEL),
        HYPERVISOR_DEFAULT,
    )


AUTO_NEVER = frozenset({CpuMode.HOST_PASSTHROUGH, CpuMode.MAXIMUM})
"""Modes ``auto`` never picks: they expose host specifics that break live migration."""


def preferred(trials: Iterable[Trial]) -> CpuChoice | None:
    """The first working trial that ``auto`` may pick; None when none works."""
    for trial in trials:
        if trial.works and trial.choice.mode not in AUTO_NEVER:
            return trial.choice
    return None


@dataclass(frozen=True)
class HostCpu:
    """``status.guestCpu`` of a KvmHost: the trials and what they were made for."""

    probed_for: str
    trials: tuple[Trial, ...]

    @property
    def preferred(self) -> CpuChoice | None:
        """What ``auto`` gives on this host."""
        return preferred(self.trials)

    def verdict(self, choice: CpuChoice) -> Trial | None:
        """The trial of ``choice`` on this host, None when it was not tried."""
        return next((t for t in self.trials if t.choice == choice), None)

    def to_status(self) -> dict[str, Any]:
        """The ``status.guestCpu`` object."""
        best = self.preferred
        return {
            "probedFor": self.probed_for,
            "trials": [t.to_status() for t in self.trials],
            "working": [t.choice.label for t in self.trials if t.works],
            "default": best.label if best else "",
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> HostCpu | None:
        """Read back ``status.guestCpu``; None when absent or unreadable."""
        if not raw or not isinstance(raw.get("trials"), list):
            return None
        trials = tuple(
            t for t in (Trial.from_status(r) for r in raw["trials"] if isinstance(r, Mapping)) if t
        )
        return cls(str(raw.get("probedFor") or ""), trials)


def probe_signature(*, virtualization: str, libvirt: str, qemu: str, host_cpu: str) -> str:
    """What the trials depend on: they are repeated only when this changes."""
    return f"{virtualization}; libvirt {libvirt}; QEMU {qemu}; host CPU {host_cpu}"


class CpuRefusedError(InvalidSpecError):
    """The asked-for CPU configuration was proven not to start on the host."""

    reason = "CpuNotSupported"


def resolve(asked: CpuSpec, host: HostCpu | None, *, kvm: bool, host_name: str) -> CpuChoice:
    """The CPU configuration a VirtualNode gets on a host.

    ``auto``: the host's preferred trial; QEMU's default model when the host has no
    trials recorded yet (the configuration that starts most widely) or none works.
    An explicit choice is used as asked unless the host proved that it does not start
    (CpuRefusedError, with the QEMU error); under emulation only ``custom``,
    ``maximum`` and ``hypervisor-default`` make sense.
    """
    choice = asked.choice
    if choice is None:
        best = host.preferred if host is not None else None
        return best if best is not None else HYPERVISOR_DEFAULT
    if not kvm and choice.mode in (CpuMode.HOST_MODEL, CpuMode.HOST_PASSTHROUGH):
        raise CpuRefusedError(
            f"spec.cpu.mode {choice.mode} needs KVM, and {host_name} runs guests emulated (TCG)"
        )
    trial = host.verdict(choice) if host is not None else None
    if trial is not None and not trial.works:
        raise CpuRefusedError(
            f"spec.cpu {choice.label} does not start on {host_name}: {trial.message or 'failed'}"
            f"; working there: {', '.join(_labels(host)) or 'none'}"
        )
    return choice


def _labels(host: HostCpu | None) -> Sequence[str]:
    return [t.choice.label for t in host.trials if t.works] if host else []
