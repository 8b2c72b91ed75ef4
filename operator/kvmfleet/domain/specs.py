"""Typed, frozen models of the VirtualNode, KvmHost and VmMaster specs, built from plain dicts.

``VirtualNodeSpec.from_dict(body["spec"])`` (and the same for the other kinds) validates
everything it reads and applies api.md's defaults where the dict lacks a field (the CRD
schema defaults them too; both must agree). It reports ALL problems at once in one
InvalidSpecError, fields named as in the API:
``"spec.cpus: must be >= 1; spec.nics[0].mac: 'x' is not a MAC address ..."``.
Unknown fields are ignored (the API server prunes them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from kvmfleet.domain import devicenames
from kvmfleet.domain.guestcpu import CpuSpec
from kvmfleet.domain.macs import normalize_mac
from kvmfleet.domain.quantities import GIB, bytes_to_kib, bytes_to_mib, parse_bytes
from kvmfleet.domain.storage_urls import NfsAccess, StorageKind, StorageURL, parse_storage_url
from kvmfleet.domain.validation import (
    host_for_uri,
    show,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_free_text,
    validate_host_address,
    validate_host_public_key,
    validate_interface_name,
    validate_libvirt_uri,
    validate_port,
    validate_secret_key,
    validate_user_name,
)
from kvmfleet.errors import InvalidSpecError

__all__ = [
    "MAX_CPUS",
    "SERIAL_SPEEDS",
    "BootDevice",
    "BridgeSpec",
    "CloneMode",
    "DiskBus",
    "DiskSpec",
    "HostKeyPolicy",
    "KvmHostSpec",
    "NfsAccess",
    "NicModel",
    "NicSpec",
    "Overcommit",
    "ReclaimPolicy",
    "RunStrategy",
    "SecretKeyRef",
    "SerialSpec",
    "SourceSpec",
    "StoragePoolSpec",
    "StorageURL",
    "VirtualNodeSpec",
    "VmMasterSpec",
    "VncSpec",
]

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class RunStrategy(StrEnum):
    """VirtualNode ``spec.runStrategy``: who decides the power state."""

    ALWAYS = "Always"
    HALTED = "Halted"
    MANUAL = "Manual"


class ReclaimPolicy(StrEnum):
    """VirtualNode ``spec.reclaimPolicy``: keep or purge the disks on delete."""

    RETAIN = "Retain"
    DELETE = "Delete"


class HostKeyPolicy(StrEnum):
    """KvmHost ``spec.hostKeyPolicy``: how the SSH host key is verified."""

    STRICT = "Strict"
    TRUST_ON_FIRST_USE = "TrustOnFirstUse"


class NicModel(StrEnum):
    """The emulated NIC model (libvirt ``<model type=...>``)."""

    VIRTIO = "virtio"
    E1000 = "e1000"
    RTL8139 = "rtl8139"


class DiskBus(StrEnum):
    """The bus a disk is attached to (libvirt ``<target bus=...>``)."""

    VIRTIO = "virtio"
    SCSI = "scsi"
    IDE = "ide"


class BootDevice(StrEnum):
    """An entry of ``spec.bootOrder`` (same spelling as libvirt's ``<boot dev=...>``)."""

    NETWORK = "network"
    HD = "hd"
    CDROM = "cdrom"


class CloneMode(StrEnum):
    """Attached (qcow2 overlay on the master) or Detached (full copy)."""

    ATTACHED = "Attached"
    DETACHED = "Detached"


SERIAL_SPEEDS = frozenset({9600, 19200, 38400, 57600, 115200})
"""Baud rates accepted for ``spec.serial.speed`` (as the CRD's enum)."""

MAX_SERIAL_PORT = 3
"""ISA serial ports ttyS0-ttyS3."""

MIN_MEMORY_BYTES = 1024**2
MAX_CPUS = 512
MAX_SHUTDOWN_GRACE_SECONDS = 3600
MIN_OVERCOMMIT = 0.1
MAX_OVERCOMMIT = 64.0


class _Problems:
    """Collects validation problems so that one error reports all of them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, field: str, message: str) -> None:
        self.messages.append(f"{field}: {message}")

    def check(self, validate: Callable[[object, str], T], value: object, field: str) -> T | None:
        try:
            return validate(value, field)
        except InvalidSpecError as error:
            self.messages.append(error.message)
            return None

    def raise_if_any(self) -> None:
        if self.messages:
            raise InvalidSpecError("; ".join(self.messages))


def _mapping(p: _Problems, value: object, path: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        p.add(path, f"must be an object, not {type(value).__name__}")
        return {}
    return value


def _cpu(p: _Problems, value: object, path: str) -> CpuSpec:
    raw = _mapping(p, value, path)
    try:
        return CpuSpec.from_dict(raw)
    except InvalidSpecError as error:
        p.messages.append(error.message)
        return CpuSpec()


def _items(p: _Problems, data: Mapping[str, object], key: str, path: str) -> list[object]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        p.add(f"{path}.{key}", f"must be a list, not {type(value).__name__}")
        return []
    return list(value)


def _int(
    p: _Problems,
    data: Mapping[str, object],
    key: str,
    path: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(f"{path}.{key}", f"must be an integer, not {show(value)}")
        return default
    if minimum is not None and value < minimum:
        p.add(f"{path}.{key}", f"must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        p.add(f"{path}.{key}", f"must be <= {maximum} (got {value})")
    return value


def _number(p: _Problems, data: Mapping[str, object], key: str, path: str, default: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        p.add(f"{path}.{key}", f"must be a number, not {show(value)}")
        return default
    if not MIN_OVERCOMMIT <= value <= MAX_OVERCOMMIT:
        p.add(
            f"{path}.{key}",
            f"must be between {MIN_OVERCOMMIT} and {MAX_OVERCOMMIT:g} (got {value})",
        )
        return default
    return float(value)


def _bool(p: _Problems, data: Mapping[str, object], key: str, path: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        p.add(f"{path}.{key}", f"must be true or false, not {show(value)}")
        return default
    return value


def _enum(
    p: _Problems, data: Mapping[str, object], key: str, path: str, kind: type[E], *, default: E
) -> E:
    value = data.get(key)
    if value is None:
        return default
    allowed = [member.value for member in kind]
    if not isinstance(value, str) or value not in allowed:
        p.add(f"{path}.{key}", f"must be one of {', '.join(allowed)} (got {show(value)})")
        return default
    return kind(value)


def _optional(
    p: _Problems,
    data: Mapping[str, object],
    key: str,
    path: str,
    validate: Callable[[object, str], T],
) -> T | None:
    value = data.get(key)
    if value is None:
        return None
    return p.check(validate, value, f"{path}.{key}")


def _required(
    p: _Problems,
    data: Mapping[str, object],
    key: str,
    path: str,
    validate: Callable[[object, str], T],
) -> T | None:
    if data.get(key) is None:
        p.add(f"{path}.{key}", "is required")
        return None
    return _optional(p, data, key, path, validate)


def _duplicates(values: Sequence[object]) -> list[int]:
    """Positions of values already seen earlier in the sequence."""
    seen: set[object] = set()
    positions = []
    for position, value in enumerate(values):
        if value in seen:
            positions.append(position)
        seen.add(value)
    return positions


def _file_storage(value: object, field: str) -> StorageURL:
    url = parse_storage_url(value, field)
    if not url.holds_files:
        raise InvalidSpecError(f"{field}: {url} is a single block device, not storage for images")
    return url


# --- VirtualNode -------------------------------------------------------------------------


@dataclass(frozen=True)
class NicSpec:
    """One entry of VirtualNode ``spec.nics``; ``mac`` None means "allocate one"."""

    bridge: str
    model: NicModel = NicModel.VIRTIO
    mac: str | None = None

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> NicSpec:
        data = _mapping(p, value, path)
        return cls(
            bridge=_required(p, data, "bridge", path, validate_interface_name) or "",
            model=_enum(p, data, "model", path, NicModel, default=NicModel.VIRTIO),
            mac=_optional(p, data, "mac", path, normalize_mac),
        )


@dataclass(frozen=True)
class DiskSpec:
    """One entry of VirtualNode ``spec.disks``.

    ``size_bytes`` None: the size of the image it is cloned from (only with
    ``spec.source``). ``storage`` None: the host's first storage pool. ``adopt``: an
    existing image owned by another VirtualNode (or by no one) may be taken over.
    """

    name: str
    size_bytes: int | None = None
    storage: StorageURL | None = None
    bus: DiskBus = DiskBus.VIRTIO
    adopt: bool = False

    @classmethod
    def _parse(
        cls, p: _Problems, value: object, path: str, *, size_required: bool = True
    ) -> DiskSpec:
        data = _mapping(p, value, path)
        name = _required(p, data, "name", path, validate_dns1123_label) or ""
        if data.get("size") is None and size_required:
            p.add(f"{path}.size", "is required unless spec.source is set")
        size = _optional(p, data, "size", path, parse_bytes)
        if size == 0:
            p.add(f"{path}.size", "must be greater than zero")
        return cls(
            name=name,
            size_bytes=size,
            storage=_optional(p, data, "storage", path, parse_storage_url),
            bus=_enum(p, data, "bus", path, DiskBus, default=DiskBus.VIRTIO),
            adopt=_bool(p, data, "adopt", path, False),
        )


@dataclass(frozen=True)
class SourceSpec:
    """VirtualNode ``spec.source``: clone the disks from a VmMaster."""

    vm_master: str
    mode: CloneMode = CloneMode.ATTACHED

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> SourceSpec:
        data = _mapping(p, value, path)
        return cls(
            vm_master=_required(p, data, "vmMaster", path, validate_dns1123_subdomain) or "",
            mode=_enum(p, data, "mode", path, CloneMode, default=CloneMode.ATTACHED),
        )


@dataclass(frozen=True)
class SerialSpec:
    """VirtualNode ``spec.serial``: the serial console port (ttyS<port>) and its speed.

    The speed is not a libvirt setting (a pty has no baud rate): it is what the guest
    kernel's ``console=ttyS0,115200`` (xCAT's serialspeed) must say; it is recorded in the
    domain's kvmfleet metadata.
    """

    port: int = 0
    speed: int = 115200

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> SerialSpec:
        data = _mapping(p, value, path)
        port = _int(p, data, "port", path, 0, minimum=0, maximum=MAX_SERIAL_PORT)
        speed = _int(p, data, "speed", path, 115200)
        if speed not in SERIAL_SPEEDS:
            allowed = ", ".join(str(s) for s in sorted(SERIAL_SPEEDS))
            p.add(f"{path}.speed", f"must be one of {allowed} (got {speed})")
        return cls(port=port, speed=speed)


@dataclass(frozen=True)
class VncSpec:
    """VirtualNode ``spec.vnc``: whether the VM has a VNC console on its host."""

    enabled: bool = True

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> VncSpec:
        data = _mapping(p, value, path)
        return cls(enabled=_bool(p, data, "enabled", path, True))


DEFAULT_BOOT_ORDER = (BootDevice.NETWORK, BootDevice.HD)


@dataclass(frozen=True)
class VirtualNodeSpec:
    """The spec of a VirtualNode (a virtual machine), defaults applied and validated."""

    host_ref: str | None = None
    cpus: int = 1
    cpu: CpuSpec = field(default_factory=CpuSpec)
    memory_bytes: int = GIB
    nics: tuple[NicSpec, ...] = ()
    disks: tuple[DiskSpec, ...] = ()
    source: SourceSpec | None = None
    boot_order: tuple[BootDevice, ...] = DEFAULT_BOOT_ORDER
    serial: SerialSpec = field(default_factory=SerialSpec)
    vnc: VncSpec = field(default_factory=VncSpec)
    run_strategy: RunStrategy = RunStrategy.ALWAYS
    reclaim_policy: ReclaimPolicy = ReclaimPolicy.RETAIN
    shutdown_grace_period_seconds: int = 60
    os: str | None = None
    arch: str | None = None
    profile: str | None = None

    @property
    def memory_mib(self) -> int:
        """Memory in MiB, rounded up."""
        return bytes_to_mib(self.memory_bytes)

    @property
    def memory_kib(self) -> int:
        """Memory in KiB, rounded up (what libvirt's ``<memory unit='KiB'>`` gets)."""
        return bytes_to_kib(self.memory_bytes)

    @property
    def disk_targets(self) -> list[str]:
        """The guest device (libvirt target dev) of each disk, in order (vda, vdb, ...)."""
        return devicenames.target_devs([(disk.name, disk.bus) for disk in self.disks])

    @property
    def bridges(self) -> frozenset[str]:
        """The bridges the VM's NICs need on its host."""
        return frozenset(nic.bridge for nic in self.nics)

    @classmethod
    def from_dict(cls, data: object, path: str = "spec") -> VirtualNodeSpec:
        """Build from a VirtualNode's ``spec`` dict; raises InvalidSpecError (all problems)."""
        p = _Problems()
        spec = cls._parse(p, data, path)
        p.raise_if_any()
        return spec

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> VirtualNodeSpec:
        data = _mapping(p, value, path)
        has_source = data.get("source") is not None
        # Keyword arguments are evaluated in order: problems are reported in field order.
        spec = cls(
            host_ref=_optional(p, data, "hostRef", path, validate_dns1123_subdomain),
            cpus=_int(p, data, "cpus", path, 1, minimum=1, maximum=MAX_CPUS),
            cpu=_cpu(p, data.get("cpu"), f"{path}.cpu"),
            memory_bytes=_memory(p, data, path),
            nics=tuple(
                NicSpec._parse(p, item, f"{path}.nics[{i}]")
                for i, item in enumerate(_items(p, data, "nics", path))
            ),
            disks=tuple(
                DiskSpec._parse(p, item, f"{path}.disks[{i}]", size_required=not has_source)
                for i, item in enumerate(_items(p, data, "disks", path))
            ),
            source=SourceSpec._parse(p, data["source"], f"{path}.source") if has_source else None,
            boot_order=_boot_order(p, data, path),
            serial=SerialSpec._parse(p, data.get("serial"), f"{path}.serial"),
            vnc=VncSpec._parse(p, data.get("vnc"), f"{path}.vnc"),
            run_strategy=_enum(
                p, data, "runStrategy", path, RunStrategy, default=RunStrategy.ALWAYS
            ),
            reclaim_policy=_enum(
                p, data, "reclaimPolicy", path, ReclaimPolicy, default=ReclaimPolicy.RETAIN
            ),
            shutdown_grace_period_seconds=_int(
                p,
                data,
                "shutdownGracePeriodSeconds",
                path,
                60,
                minimum=0,
                maximum=MAX_SHUTDOWN_GRACE_SECONDS,
            ),
            os=_optional(p, data, "os", path, validate_free_text),
            arch=_optional(p, data, "arch", path, validate_free_text),
            profile=_optional(p, data, "profile", path, validate_free_text),
        )
        spec._check_relations(p, path)
        return spec

    def _check_relations(self, p: _Problems, path: str) -> None:
        macs = [nic.mac for nic in self.nics]
        for position in _duplicates(macs):
            if macs[position] is not None:
                p.add(f"{path}.nics[{position}].mac", f"{macs[position]} is used twice")
        names = [disk.name for disk in self.disks]
        duplicate_names = _duplicates(names)
        for position in duplicate_names:
            p.add(f"{path}.disks[{position}].name", f"{names[position]!r} is used twice")
        if not duplicate_names and all(names):
            pairs = [(disk.name, str(disk.bus)) for disk in self.disks]
            p.check(lambda _, field: devicenames.target_devs(pairs, field), None, f"{path}.disks")


def _memory(p: _Problems, data: Mapping[str, object], path: str) -> int:
    value = data.get("memory")
    if value is None:
        return GIB
    memory = p.check(parse_bytes, value, f"{path}.memory")
    if memory is None:
        return GIB
    if memory < MIN_MEMORY_BYTES:
        p.add(f"{path}.memory", f"must be at least 1Mi (got {show(value)})")
    return memory


def _boot_order(p: _Problems, data: Mapping[str, object], path: str) -> tuple[BootDevice, ...]:
    if data.get("bootOrder") is None:
        return DEFAULT_BOOT_ORDER
    entries = _items(p, data, "bootOrder", path)
    if not entries:
        p.add(f"{path}.bootOrder", "must list at least one device")
    order: list[BootDevice] = []
    allowed = ", ".join(device.value for device in BootDevice)
    for position, entry in enumerate(entries):
        if not isinstance(entry, str) or entry not in {d.value for d in BootDevice}:
            p.add(f"{path}.bootOrder[{position}]", f"must be one of {allowed} (got {show(entry)})")
        elif BootDevice(entry) in order:
            p.add(f"{path}.bootOrder[{position}]", f"{entry!r} is listed twice")
        else:
            order.append(BootDevice(entry))
    return tuple(order)


# --- KvmHost -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretKeyRef:
    """KvmHost ``spec.sshKeySecretRef``: where the SSH private key is."""

    name: str
    namespace: str
    key: str = "ssh-privatekey"

    @classmethod
    def _parse_required(cls, p: _Problems, data: Mapping[str, object], path: str) -> SecretKeyRef:
        if data.get("sshKeySecretRef") is None:
            p.add(f"{path}.sshKeySecretRef", "is required")
            return cls("", "")
        return cls._parse(p, data["sshKeySecretRef"], f"{path}.sshKeySecretRef")

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> SecretKeyRef:
        data = _mapping(p, value, path)
        return cls(
            name=_required(p, data, "name", path, validate_dns1123_subdomain) or "",
            namespace=_required(p, data, "namespace", path, validate_dns1123_label) or "",
            key=_optional(p, data, "key", path, validate_secret_key) or "ssh-privatekey",
        )


@dataclass(frozen=True)
class BridgeSpec:
    """KvmHost ``spec.bridges[]``; ``interface`` None: the NIC that carries the address."""

    name: str
    interface: str | None = None

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> BridgeSpec:
        data = _mapping(p, value, path)
        return cls(
            name=_required(p, data, "name", path, validate_interface_name) or "",
            interface=_optional(p, data, "interface", path, validate_interface_name),
        )


@dataclass(frozen=True)
class StoragePoolSpec:
    """KvmHost ``spec.storagePools[]``: a named nfs://, dir:// or phy: storage.

    A ``phy:`` pool is a block device the host must have (checked by the probe); it holds
    no image files, so it is never where disks without ``storage`` go.
    """

    name: str
    url: StorageURL

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> StoragePoolSpec:
        data = _mapping(p, value, path)
        return cls(
            name=_required(p, data, "name", path, validate_dns1123_label) or "",
            url=_required(p, data, "url", path, parse_storage_url)
            or StorageURL(StorageKind.DIR, "/"),
        )


@dataclass(frozen=True)
class Overcommit:
    """KvmHost ``spec.overcommit``: allocatable = hardware * factor, per resource."""

    cpu: float = 4.0
    memory: float = 1.0

    @classmethod
    def from_dict(cls, data: object, path: str = "spec.overcommit") -> Overcommit:
        """Build from an ``overcommit`` dict; raises InvalidSpecError."""
        p = _Problems()
        result = cls._parse(p, data, path)
        p.raise_if_any()
        return result

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> Overcommit:
        data = _mapping(p, value, path)
        return cls(
            cpu=_number(p, data, "cpu", path, 4.0),
            memory=_number(p, data, "memory", path, 1.0),
        )


@dataclass(frozen=True)
class KvmHostSpec:
    """The spec of a KvmHost (a hypervisor reached over SSH), defaults applied."""

    address: str
    ssh_key_secret_ref: SecretKeyRef
    port: int = 22
    user: str = "root"
    host_key: str | None = None
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    libvirt_uri: str | None = None
    bridges: tuple[BridgeSpec, ...] = ()
    storage_pools: tuple[StoragePoolSpec, ...] = ()
    nfs_access: NfsAccess = NfsAccess.MOUNT
    maintenance: bool = False
    allowed_namespaces: tuple[str, ...] = ()
    overcommit: Overcommit = field(default_factory=Overcommit)
    migration_group: str | None = None
    """Hosts with the same group exchange VMs; ``auto`` CPUs are the group's baseline."""

    @property
    def effective_libvirt_uri(self) -> str:
        """``spec.libvirtURI``, or ``qemu+ssh://<user>@<address>:<port>/system``."""
        if self.libvirt_uri:
            return self.libvirt_uri
        return f"qemu+ssh://{self.user}@{host_for_uri(self.address)}:{self.port}/system"

    @property
    def default_storage(self) -> StorageURL | None:
        """The first file-holding pool's URL: where disks without ``storage`` go."""
        return next((p.url for p in self.storage_pools if p.url.holds_files), None)

    def allows_namespace(self, namespace: str) -> bool:
        """True if VirtualNodes of ``namespace`` may run here (empty list: all)."""
        return not self.allowed_namespaces or namespace in self.allowed_namespaces

    @classmethod
    def from_dict(cls, data: object, path: str = "spec") -> KvmHostSpec:
        """Build from a KvmHost's ``spec`` dict; raises InvalidSpecError (all problems)."""
        p = _Problems()
        spec = cls._parse(p, data, path)
        p.raise_if_any()
        return spec

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> KvmHostSpec:
        data = _mapping(p, value, path)
        port = data.get("port")
        spec = cls(
            address=_required(p, data, "address", path, validate_host_address) or "",
            ssh_key_secret_ref=SecretKeyRef._parse_required(p, data, path),
            port=22 if port is None else p.check(validate_port, port, f"{path}.port") or 22,
            user=_optional(p, data, "user", path, validate_user_name) or "root",
            host_key=_optional(p, data, "hostKey", path, validate_host_public_key),
            host_key_policy=_enum(
                p, data, "hostKeyPolicy", path, HostKeyPolicy, default=HostKeyPolicy.STRICT
            ),
            libvirt_uri=_optional(p, data, "libvirtURI", path, validate_libvirt_uri),
            bridges=tuple(
                BridgeSpec._parse(p, item, f"{path}.bridges[{i}]")
                for i, item in enumerate(_items(p, data, "bridges", path))
            ),
            storage_pools=tuple(
                StoragePoolSpec._parse(p, item, f"{path}.storagePools[{i}]")
                for i, item in enumerate(_items(p, data, "storagePools", path))
            ),
            nfs_access=_enum(p, data, "nfsAccess", path, NfsAccess, default=NfsAccess.MOUNT),
            maintenance=_bool(p, data, "maintenance", path, False),
            allowed_namespaces=tuple(
                p.check(validate_dns1123_label, item, f"{path}.allowedNamespaces[{i}]") or ""
                for i, item in enumerate(_items(p, data, "allowedNamespaces", path))
            ),
            overcommit=Overcommit._parse(p, data.get("overcommit"), f"{path}.overcommit"),
            migration_group=_optional(p, data, "migrationGroup", path, validate_dns1123_label),
        )
        spec._check_relations(
            p,
            path,
            has_host_key=data.get("hostKey") is not None,
            strict=data.get("hostKeyPolicy") in {None, HostKeyPolicy.STRICT.value},
        )
        return spec

    def _check_relations(
        self, p: _Problems, path: str, *, has_host_key: bool, strict: bool
    ) -> None:
        if strict and not has_host_key:
            p.add(
                f"{path}.hostKey",
                "is required when hostKeyPolicy is Strict (or use TrustOnFirstUse)",
            )
        names = [bridge.name for bridge in self.bridges]
        for position in _duplicates(names):
            p.add(f"{path}.bridges[{position}].name", f"{names[position]!r} is listed twice")
        pool_names = [pool.name for pool in self.storage_pools]
        for position in _duplicates(pool_names):
            p.add(
                f"{path}.storagePools[{position}].name",
                f"{pool_names[position]!r} is listed twice",
            )
        urls = [pool.url for pool in self.storage_pools]
        for position in _duplicates(urls):
            p.add(f"{path}.storagePools[{position}].url", f"{urls[position]} is listed twice")
        for position in _duplicates(list(self.allowed_namespaces)):
            p.add(f"{path}.allowedNamespaces[{position}]", "is listed twice")


# --- VmMaster ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VmMasterSpec:
    """The spec of a VmMaster (a golden image captured from a VirtualNode)."""

    source_node: str
    mode: CloneMode = CloneMode.ATTACHED
    storage: StorageURL | None = None

    @classmethod
    def from_dict(cls, data: object, path: str = "spec") -> VmMasterSpec:
        """Build from a VmMaster's ``spec`` dict; raises InvalidSpecError (all problems)."""
        p = _Problems()
        spec = cls._parse(p, data, path)
        p.raise_if_any()
        return spec

    @classmethod
    def _parse(cls, p: _Problems, value: object, path: str) -> VmMasterSpec:
        data = _mapping(p, value, path)
        return cls(
            source_node=_required(p, data, "sourceNode", path, validate_dns1123_subdomain) or "",
            mode=_enum(p, data, "mode", path, CloneMode, default=CloneMode.ATTACHED),
            storage=_optional(p, data, "storage", path, _file_storage),
        )
