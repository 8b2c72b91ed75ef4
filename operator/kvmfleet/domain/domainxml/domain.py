"""The ``<domain>`` element: identity, memory, vCPUs, OS and boot order, features, devices.

Device order inside ``<devices>`` follows libvirt's own: disks, controllers, interfaces,
serial and console, graphics.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum

from kvmfleet.domain.domainxml.disk import Disk
from kvmfleet.domain.domainxml.graphics import VncGraphics
from kvmfleet.domain.domainxml.interface import BridgeInterface
from kvmfleet.domain.domainxml.metadata import NodeMetadata
from kvmfleet.domain.domainxml.serial import SerialConsole
from kvmfleet.domain.domainxml.xmlutil import child, element, to_xml
from kvmfleet.domain.guestcpu import HYPERVISOR_DEFAULT, CpuChoice, CpuMode


class VirtType(StrEnum):
    """The domain type: hardware virtualization (kvm) or emulation (qemu, i.e. TCG)."""

    KVM = "kvm"
    QEMU = "qemu"


class LifecycleAction(StrEnum):
    """What libvirt does when the guest powers off, reboots or crashes."""

    DESTROY = "destroy"
    RESTART = "restart"
    PRESERVE = "preserve"


@dataclass(frozen=True)
class Controller:
    """A ``<controller>`` (e.g. ``type='scsi' model='virtio-scsi'``)."""

    type: str
    model: str | None = None
    index: int = 0

    def to_element(self) -> ET.Element:
        """The ``<controller>`` element."""
        return element(
            "controller", {"type": self.type, "index": str(self.index), "model": self.model}
        )


@dataclass(frozen=True)
class DomainConfig:
    """A whole libvirt domain definition.

    ``cpu`` is the guest CPU configuration (see guestcpu.py): ``hypervisor-default``
    writes no ``<cpu>`` element (QEMU's default model), ``custom`` names ``<model>``;
    ``boot`` lists libvirt boot devices (``network``, ``hd``, ``cdrom``) in order.
    """

    virt_type: VirtType
    name: str
    memory_kib: int
    vcpus: int
    uuid: str | None = None
    metadata: NodeMetadata | None = None
    arch: str | None = None
    machine: str | None = None
    boot: tuple[str, ...] = ("network", "hd")
    cpu: CpuChoice = HYPERVISOR_DEFAULT
    emulator: str | None = None
    disks: tuple[Disk, ...] = ()
    controllers: tuple[Controller, ...] = ()
    interfaces: tuple[BridgeInterface, ...] = ()
    serial: SerialConsole | None = None
    graphics: VncGraphics | None = None
    on_poweroff: LifecycleAction = LifecycleAction.DESTROY
    on_reboot: LifecycleAction = LifecycleAction.RESTART
    on_crash: LifecycleAction = LifecycleAction.DESTROY

    def to_element(self) -> ET.Element:
        """The ``<domain>`` element."""
        domain = element("domain", {"type": self.virt_type.value})
        child(domain, "name", text=self.name)
        if self.uuid is not None:
            child(domain, "uuid", text=self.uuid)
        if self.metadata is not None:
            domain.append(self.metadata.to_element())
        child(domain, "memory", {"unit": "KiB"}, str(self.memory_kib))
        child(domain, "currentMemory", {"unit": "KiB"}, str(self.memory_kib))
        child(domain, "vcpu", {"placement": "static"}, str(self.vcpus))
        domain.append(self._os())
        features = child(domain, "features")
        child(features, "acpi")
        child(features, "apic")
        if self.cpu.mode is not CpuMode.HYPERVISOR_DEFAULT:
            custom = self.cpu.model is not None
            cpu = child(
                domain, "cpu", {"mode": str(self.cpu.mode), "match": "exact" if custom else None}
            )
            if custom:
                child(cpu, "model", {"fallback": "forbid"}, self.cpu.model)
            for feature in self.cpu.features:
                policy = "require" if feature.startswith("+") else "disable"
                child(cpu, "feature", {"policy": policy, "name": feature[1:]})
        child(domain, "clock", {"offset": "utc"})
        child(domain, "on_poweroff", text=self.on_poweroff.value)
        child(domain, "on_reboot", text=self.on_reboot.value)
        child(domain, "on_crash", text=self.on_crash.value)
        domain.append(self._devices())
        return domain

    def to_xml(self) -> str:
        """The definition as pretty, deterministic XML text."""
        return to_xml(self.to_element())

    def _os(self) -> ET.Element:
        os = element("os")
        child(os, "type", {"arch": self.arch, "machine": self.machine}, "hvm")
        for device in self.boot:
            child(os, "boot", {"dev": device})
        return os

    def _devices(self) -> ET.Element:
        devices = element("devices")
        if self.emulator is not None:
            child(devices, "emulator", text=self.emulator)
        for disk in self.disks:
            devices.append(disk.to_element())
        for controller in self.controllers:
            devices.append(controller.to_element())
        for interface in self.interfaces:
            devices.append(interface.to_element())
        if self.serial is not None:
            devices.extend(self.serial.to_elements())
        if self.graphics is not None:
            devices.append(self.graphics.to_element())
        return devices
