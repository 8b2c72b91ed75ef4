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

KvmHosts that exchange VMs by live migration can form a group (``spec.migrationGroup``).
Each probe records the host's own CPU (:class:`HostCpuModel`); a host of a group asks
libvirt for the baseline over the CPUs of the group's KVM members (a named model plus
the features every one of them has, :func:`parse_baseline`), proves that it starts like
any other trial, and ``auto`` then gives that baseline (a :class:`GroupCpu`): a VM
defined on one member can run on every other. A baseline choice is labelled
``custom/<model>#<digest>``, the digest naming its feature list.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


_FEATURE = re.compile(r"[+-][a-z0-9][a-z0-9_.-]{0,63}")
_DIGEST = re.compile(r"[0-9a-f]{12}")


def features_digest(features: Sequence[str]) -> str:
    """The 12 hex digits naming a feature list (``+name`` required, ``-name`` disabled)."""
    return hashlib.sha256(",".join(features).encode()).hexdigest()[:12]


@dataclass(frozen=True, order=True)
class CpuChoice:
    """One concrete ``<cpu>`` configuration (never ``auto``).

    A group baseline is a ``custom`` model with ``features`` (``+name`` required,
    ``-name`` disabled); ``digest`` names that list. Choices compare by label: one read
    back from a label knows the digest but not the features.
    """

    mode: CpuMode
    model: str | None = None
    digest: str | None = None
    features: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.mode is CpuMode.AUTO:
            raise ValueError("auto is not a concrete CPU choice")
        if (self.mode is CpuMode.CUSTOM) != (self.model is not None):
            raise ValueError("a model goes with mode custom, and only with it")
        if self.features and self.digest != features_digest(self.features):
            raise ValueError("the digest does not name these features")
        if self.digest is not None and not (
            self.mode is CpuMode.CUSTOM and _DIGEST.fullmatch(self.digest)
        ):
            raise ValueError(f"{self.digest!r} is not a feature digest of a custom model")
        for feature in self.features:
            if not _FEATURE.fullmatch(feature):
                raise ValueError(f"{feature!r} is not +name or -name of a CPU feature")

    @classmethod
    def baseline(cls, model: str, features: Sequence[str]) -> CpuChoice:
        """A named model with the features a group's baseline requires or disables."""
        listed = tuple(features)
        return cls(CpuMode.CUSTOM, validate_model(model), features_digest(listed), listed)

    @property
    def label(self) -> str:
        """``host-model``, ``custom/kvm64``, ``custom/EPYC#0123456789ab``, ..."""
        text = f"{self.mode}/{self.model}" if self.model else str(self.mode)
        return f"{text}#{self.digest}" if self.digest else text

    @classmethod
    def parse(cls, label: str) -> CpuChoice:
        """The inverse of :attr:`label` (without the features); ValueError for anything else."""
        rest, _, digest = label.partition("#")
        mode, _, model = rest.partition("/")
        choice = cls(CpuMode(mode), validate_model(model) if model else None, digest or None)
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
class HostCpuModel:
    """The host's own CPU as libvirt's capabilities describe it (``status.guestCpu.hostCpu``).

    What a group baseline is computed from: the named model libvirt matched, the vendor,
    the architecture and the features beyond the model.
    """

    arch: str
    model: str
    vendor: str = ""
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for value in (self.arch, self.model, *self.features, *[v for v in [self.vendor] if v]):
            if not _MODEL.fullmatch(value):
                raise ValueError(f"{value!r} is not a CPU model, vendor, arch or feature name")

    def to_status(self) -> dict[str, Any]:
        """The ``status.guestCpu.hostCpu`` object."""
        return {
            "arch": self.arch,
            "model": self.model,
            "vendor": self.vendor,
            "features": list(self.features),
        }

    @classmethod
    def from_status(cls, raw: object) -> HostCpuModel | None:
        """Read back ``status.guestCpu.hostCpu``; None when absent or unreadable."""
        if not isinstance(raw, Mapping):
            return None
        try:
            return cls(
                str(raw["arch"]),
                str(raw["model"]),
                str(raw.get("vendor") or ""),
                tuple(str(f) for f in raw.get("features") or ()),
            )
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True)
class GroupCpu:
    """``status.guestCpu.group``: the baseline CPU of a host's migration group, proven here.

    ``members`` are the KVM hosts whose CPUs the baseline covers; ``works`` says whether a
    trial guest with it started on this host (``message`` is QEMU's error when not).
    """

    name: str
    members: tuple[str, ...]
    choice: CpuChoice | None
    """None when libvirt computed no baseline (``message`` says why)."""
    works: bool
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        """The ``status.guestCpu.group`` object."""
        entry: dict[str, Any] = {
            "name": self.name,
            "members": list(self.members),
            "choice": self.choice.label if self.choice else "",
            "model": (self.choice.model or "") if self.choice else "",
            "features": list(self.choice.features) if self.choice else [],
            "works": self.works,
        }
        if self.message:
            entry["message"] = self.message
        return entry

    @classmethod
    def from_status(cls, raw: object) -> GroupCpu | None:
        """Read back ``status.guestCpu.group``; None when absent or unreadable."""
        if not isinstance(raw, Mapping):
            return None
        try:
            model = str(raw.get("model") or "")
            features = [str(f) for f in raw.get("features") or ()]
            choice = CpuChoice.baseline(model, features) if model else None
            return cls(
                str(raw["name"]),
                tuple(str(m) for m in raw.get("members") or ()),
                choice,
                bool(raw.get("works")),
                str(raw.get("message") or ""),
            )
        except (KeyError, ValueError, TypeError, InvalidSpecError):
            return None


@dataclass(frozen=True)
class HostCpu:
    """``status.guestCpu`` of a KvmHost: the trials, what they were made for, the host's
    own CPU and, for a host of a migration group, the group's baseline."""

    probed_for: str
    trials: tuple[Trial, ...]
    own: HostCpuModel | None = None
    group: GroupCpu | None = None

    @property
    def preferred(self) -> CpuChoice | None:
        """The best of this host's own trials (what ``auto`` gives without a group)."""
        return preferred(self.trials)

    @property
    def auto(self) -> CpuChoice | None:
        """What ``auto`` gives here: the group's baseline where it starts, else
        :attr:`preferred`."""
        if self.group is not None and self.group.works and self.group.choice is not None:
            return self.group.choice
        return self.preferred

    def verdict(self, choice: CpuChoice) -> Trial | None:
        """The trial of ``choice`` on this host, None when it was not tried."""
        if self.group is not None and self.group.choice == choice:
            return Trial(choice, self.group.works, self.group.message)
        return next((t for t in self.trials if t.choice == choice), None)

    def to_status(self) -> dict[str, Any]:
        """The ``status.guestCpu`` object."""
        best = self.auto
        status: dict[str, Any] = {
            "probedFor": self.probed_for,
            "trials": [t.to_status() for t in self.trials],
            "working": [t.choice.label for t in self.trials if t.works],
            "default": best.label if best else "",
        }
        # None (JSON null) removes a recorded one: status is written as a merge patch
        status["hostCpu"] = self.own.to_status() if self.own is not None else None
        status["group"] = self.group.to_status() if self.group is not None else None
        return status

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> HostCpu | None:
        """Read back ``status.guestCpu``; None when absent or unreadable."""
        if not raw or not isinstance(raw.get("trials"), list):
            return None
        trials = tuple(
            t for t in (Trial.from_status(r) for r in raw["trials"] if isinstance(r, Mapping)) if t
        )
        return cls(
            str(raw.get("probedFor") or ""),
            trials,
            HostCpuModel.from_status(raw.get("hostCpu")),
            GroupCpu.from_status(raw.get("group")),
        )


def probe_signature(*, virtualization: str, libvirt: str, qemu: str, host_cpu: str) -> str:
    """What the trials depend on: they are repeated only when this changes."""
    return f"{virtualization}; libvirt {libvirt}; QEMU {qemu}; host CPU {host_cpu}"


class CpuRefusedError(InvalidSpecError):
    """The asked-for CPU configuration was proven not to start on the host."""

    reason = "CpuNotSupported"


def resolve(asked: CpuSpec, host: HostCpu | None, *, kvm: bool, host_name: str) -> CpuChoice:
    """The CPU configuration a VirtualNode gets on a host.

    ``auto``: the host's group baseline where it starts, else its preferred trial; QEMU's
    default model when the host has no trials recorded yet (the configuration that starts
    most widely) or none works.
    An explicit choice is used as asked unless the host proved that it does not start
    (CpuRefusedError, with the QEMU error); under emulation only ``custom``,
    ``maximum`` and ``hypervisor-default`` make sense.
    """
    choice = asked.choice
    if choice is None:
        best = host.auto if host is not None else None
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
