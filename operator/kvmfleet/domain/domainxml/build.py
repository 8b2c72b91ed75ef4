"""The policy step: a VirtualNode spec plus resolved inputs -> the libvirt domain to define.

:func:`build_domain_xml` is a pure function of its arguments: the same inputs give the
same XML byte for byte. Choices made here (and nowhere in the device classes):

* CPU: the concrete choice given (``cpu``, resolved beforehand by
  :func:`kvmfleet.domain.guestcpu.resolve` from ``spec.cpu`` and what the host proved),
  also recorded in kvmfleet's metadata so a change can be told from libvirt's expansion
  of ``host-model`` in a running domain's XML.
* Boot order from ``spec.bootOrder`` (default network, then hd), xCAT's ``netboot=pxe``.
* Disks: each disk's :class:`~kvmfleet.domain.storage_urls.DiskLocation` picks a file,
  NFS network or block disk; the target dev comes from the disk's name and bus
  (devicenames.py); a virtio-scsi controller is added when a disk is on the scsi bus.
  Clone overlays must record their backing format (``qemu-img create -F qcow2``):
  libvirt does not probe it.
* NICs on bridges with the given MACs (allocated beforehand, see macs.py).
* A pty serial console on ``spec.serial.port``; VNC only when ``spec.vnc.enabled``.
* ``runStrategy`` and ``reclaimPolicy`` are not part of the definition at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from kvmfleet.domain.domainxml.disk import (
    DEFAULT_NFS_IDENTITY,
    BlockDisk,
    Disk,
    DiskIdentity,
    FileDisk,
    NetworkDisk,
)
from kvmfleet.domain.domainxml.domain import Controller, DomainConfig, VirtType
from kvmfleet.domain.domainxml.graphics import DEFAULT_VNC_LISTEN, VncGraphics
from kvmfleet.domain.domainxml.interface import BridgeInterface
from kvmfleet.domain.domainxml.metadata import DiskMetadata, NodeMetadata
from kvmfleet.domain.domainxml.serial import SerialConsole
from kvmfleet.domain.guestcpu import HYPERVISOR_DEFAULT, CpuChoice
from kvmfleet.domain.macs import normalize_mac
from kvmfleet.domain.specs import DiskBus, DiskSpec, VirtualNodeSpec
from kvmfleet.domain.storage_urls import DiskLocation, DiskSourceType
from kvmfleet.domain.validation import (
    fail,
    require_string,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_domain_name,
    validate_host_address,
    validate_uuid,
)

_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")


def build_domain_xml(
    spec: VirtualNodeSpec,
    *,
    name: str,
    uid: str,
    namespace: str,
    virt_type: VirtType | str,
    disks: Sequence[DiskLocation],
    macs: Sequence[str],
    vnc_password: str | None = None,
    vnc_valid_to: datetime | None = None,
    vnc_listen: str = DEFAULT_VNC_LISTEN,
    domain_name: str | None = None,
    uuid: str | None = None,
    generation: int | None = None,
    arch: str | None = None,
    machine: str | None = None,
    nfs_identity: DiskIdentity | None = DEFAULT_NFS_IDENTITY,
    cpu: CpuChoice = HYPERVISOR_DEFAULT,
) -> str:
    """The domain XML of a VirtualNode; see :func:`build_domain_config` for the arguments."""
    return build_domain_config(
        spec,
        name=name,
        uid=uid,
        namespace=namespace,
        virt_type=virt_type,
        disks=disks,
        macs=macs,
        vnc_password=vnc_password,
        vnc_valid_to=vnc_valid_to,
        vnc_listen=vnc_listen,
        domain_name=domain_name,
        uuid=uuid,
        generation=generation,
        arch=arch,
        machine=machine,
        nfs_identity=nfs_identity,
        cpu=cpu,
    ).to_xml()


def build_domain_config(
    spec: VirtualNodeSpec,
    *,
    name: str,
    uid: str,
    namespace: str,
    virt_type: VirtType | str,
    disks: Sequence[DiskLocation],
    macs: Sequence[str],
    vnc_password: str | None = None,
    vnc_valid_to: datetime | None = None,
    vnc_listen: str = DEFAULT_VNC_LISTEN,
    domain_name: str | None = None,
    uuid: str | None = None,
    generation: int | None = None,
    arch: str | None = None,
    machine: str | None = None,
    nfs_identity: DiskIdentity | None = DEFAULT_NFS_IDENTITY,
    cpu: CpuChoice = HYPERVISOR_DEFAULT,
) -> DomainConfig:
    """The domain of a VirtualNode as a :class:`DomainConfig` object.

    ``name``/``uid``/``namespace``/``generation``: the VirtualNode's (recorded in the
    metadata). ``domain_name``: the libvirt name, default ``name``. ``virt_type``: kvm or
    qemu (TCG). ``disks``: where each of ``spec.disks`` lives, same order. ``macs``: the
    MAC of each of ``spec.nics``, same order (the spec's own or allocated). ``vnc_*``:
    console password and its expiry (aware datetime), ignored when VNC is off.
    ``uuid``: the domain UUID, or None to let libvirt choose. ``arch``/``machine``: from
    the host's capabilities, or None for libvirt's defaults. ``nfs_identity``: the
    ``<identity>`` of NFS network disks, None for none. ``cpu``: the guest CPU
    configuration (QEMU's default model unless given).
    Raises InvalidSpecError for invalid names and ValueError for inconsistent inputs.
    """
    kind = VirtType(virt_type)
    if len(disks) != len(spec.disks):
        raise ValueError(f"{len(spec.disks)} disks in the spec but {len(disks)} locations")
    if len(macs) != len(spec.nics):
        raise ValueError(f"{len(spec.nics)} NICs in the spec but {len(macs)} MACs")
    normalized_macs = [normalize_mac(mac, f"macs[{i}]") for i, mac in enumerate(macs)]
    if len(set(normalized_macs)) != len(normalized_macs):
        raise ValueError(f"the same MAC is given twice: {normalized_macs}")
    targets = spec.disk_targets
    metadata = NodeMetadata(
        uid=require_string(uid, "uid"),
        namespace=validate_dns1123_label(namespace, "namespace"),
        name=validate_dns1123_subdomain(name, "name"),
        generation=generation,
        serial_port=spec.serial.port,
        serial_speed=spec.serial.speed,
        cpu=cpu.label,
        disks=tuple(
            DiskMetadata(disk.name, target)
            for disk, target in zip(spec.disks, targets, strict=True)
        ),
    )
    return DomainConfig(
        virt_type=kind,
        name=validate_domain_name(domain_name if domain_name is not None else name, "domain name"),
        uuid=None if uuid is None else validate_uuid(uuid),
        metadata=metadata,
        memory_kib=spec.memory_kib,
        vcpus=spec.cpus,
        arch=None if arch is None else _token(arch, "arch"),
        machine=None if machine is None else _token(machine, "machine"),
        boot=tuple(device.value for device in spec.boot_order),
        cpu=cpu,
        disks=tuple(
            _disk(disk, location, target, nfs_identity)
            for disk, location, target in zip(spec.disks, disks, targets, strict=True)
        ),
        controllers=_controllers(spec.disks),
        interfaces=tuple(
            BridgeInterface(bridge=nic.bridge, mac=mac, model=nic.model.value)
            for nic, mac in zip(spec.nics, normalized_macs, strict=True)
        ),
        serial=SerialConsole(port=spec.serial.port),
        graphics=(
            VncGraphics(
                listen=validate_host_address(vnc_listen, "vnc listen address"),
                password=vnc_password,
                password_valid_to=vnc_valid_to,
            )
            if spec.vnc.enabled
            else None
        ),
    )


def _disk(
    disk: DiskSpec, location: DiskLocation, target: str, identity: DiskIdentity | None
) -> Disk:
    bus = disk.bus.value
    if location.source_type is DiskSourceType.FILE:
        return FileDisk(path=location.path, target_dev=target, bus=bus)
    if location.source_type is DiskSourceType.BLOCK:
        return BlockDisk(dev=location.path, target_dev=target, bus=bus)
    if location.host is None or location.protocol is None:
        raise ValueError(f"network disk location without host or protocol: {location}")
    return NetworkDisk(
        name=location.path,
        host=location.host,
        target_dev=target,
        bus=bus,
        protocol=location.protocol,
        identity=identity,
    )


def _controllers(disks: Sequence[DiskSpec]) -> tuple[Controller, ...]:
    if any(disk.bus is DiskBus.SCSI for disk in disks):
        return (Controller(type="scsi", model="virtio-scsi"),)
    return ()


def _token(value: str, field: str) -> str:
    if not _TOKEN.fullmatch(value):
        fail(field, f"{value!r} must be letters, digits, '_', '.' or '-'")
    return value


TRIAL_PREFIX = "kvmfleet-cpu-trial-"
"""Names of the KvmHost probe's throwaway guests."""

TRIAL_MEMORY_KIB = 64 * 1024


def build_trial_xml(
    cpu: CpuChoice, *, virt_type: VirtType | str, suffix: str, arch: str | None = None
) -> str:
    """A throwaway guest for the KvmHost probe: 1 vCPU, 64 MiB, no disk, no NIC.

    It only runs the firmware (which finds nothing to boot and waits), enough to show
    whether QEMU starts the guest CPU ``cpu`` under ``virt_type``.
    """
    return DomainConfig(
        virt_type=VirtType(virt_type),
        name=validate_domain_name(TRIAL_PREFIX + _token(suffix, "suffix"), "trial name"),
        memory_kib=TRIAL_MEMORY_KIB,
        vcpus=1,
        arch=None if arch is None else _token(arch, "arch"),
        boot=("hd",),
        cpu=cpu,
    ).to_xml()
