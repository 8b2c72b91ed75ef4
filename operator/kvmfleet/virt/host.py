"""What a host probe needs from libvirt: host facts, the domains, storage pools.

``Host(connection)`` wraps a :class:`~kvmfleet.virt.connection.LibvirtConnection`. Pool
operations are idempotent: ``ensure_*`` defines, builds, starts and autostarts only what
is missing; ``delete_pool`` keeps the data and treats "already gone" as done. Every call
blocks: callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import libvirt

from kvmfleet.domain.cpugroup import GroupCpuError
from kvmfleet.domain.guestcpu import HostCpuModel
from kvmfleet.domain.validation import (
    validate_absolute_path,
    validate_domain_name,
    validate_host_address,
)
from kvmfleet.errors import PermanentError
from kvmfleet.virt.connection import LibvirtConnection
from kvmfleet.virt.errors import (
    LibvirtErrorDetails,
    LibvirtNotFoundError,
    LibvirtPermanentError,
    LibvirtUnavailableError,
    classify,
    error_details,
    libvirt_errors,
)
from kvmfleet.virt.guest import DomainSummary, PowerState, inventory_entry, summarize


@dataclass(frozen=True)
class StartTrial:
    """Whether a trial guest started and stayed up; why not, in QEMU's or libvirt's words."""

    started: bool
    message: str


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\s*")


def _qemu_message(message: str, limit: int = 300) -> str:
    """The useful part of a failed start's message (QEMU's own words), bounded.

    Timestamps are dropped, so the same failure reads the same every time.
    """
    for marker in ("process exited while connecting to monitor: ", "internal error: "):
        _, found, tail = message.partition(marker)
        if found and tail.strip():
            message = tail.strip()
            break
    message = _TIMESTAMP.sub("", message)
    return message if len(message) <= limit else message[: limit - 3] + "..."


def format_version(number: int) -> str:
    """libvirt's packed version (major * 1,000,000 + minor * 1,000 + micro) as ``9.0.0``."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _xml(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - XML from libvirtd; expat, no external entities


# --- host facts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostFacts:
    """The hypervisor as libvirt sees it (KvmHost ``status.capabilities``)."""

    arch: str
    cpu_model: str | None
    cpus: int
    memory_mib: int
    libvirt_version: str
    qemu_version: str
    hostname: str
    kvm_domain_supported: bool
    host_uuid: str | None = None
    cpu: HostCpuModel | None = None
    """The host CPU (model, vendor, features) when libvirt names a model for it."""

    @property
    def virtualization(self) -> str:
        """``kvm`` when KVM guests can run, else ``emulated`` (TCG)."""
        return "kvm" if self.kvm_domain_supported else "emulated"


class BaselineRefusedError(GroupCpuError):
    """libvirt computes no baseline over these CPUs (different vendors, say)."""


def host_cpu_model(cpu: ET.Element | None) -> HostCpuModel | None:
    """The ``<host><cpu>`` of the capabilities XML; None without arch or model."""
    if cpu is None:
        return None
    arch = (cpu.findtext("arch") or "").strip()
    model = (cpu.findtext("model") or "").strip()
    if not arch or not model:
        return None
    features = tuple(f.get("name", "") for f in cpu.findall("feature"))
    try:
        return HostCpuModel(arch, model, (cpu.findtext("vendor") or "").strip(), features)
    except ValueError:
        return None


def kvm_in_capabilities(capabilities: ET.Element, arch: str) -> bool:
    """True if the capabilities XML offers ``<domain type='kvm'>`` guests for ``arch``."""
    for guest in capabilities.findall("guest"):
        guest_arch = guest.find("arch")
        if (
            guest_arch is not None
            and guest_arch.get("name") == arch
            and guest_arch.find("domain[@type='kvm']") is not None
        ):
            return True
    return False


# --- storage pools ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolInfo:
    """Where a pool keeps its volumes and how full it is (0 sizes while inactive)."""

    name: str
    path: str
    capacity_bytes: int
    allocation_bytes: int
    available_bytes: int
    active: bool


@dataclass(frozen=True)
class PoolSummary:
    """A storage pool on a host."""

    name: str
    type: str
    path: str | None
    active: bool
    autostart: bool


class NfsMountUnsupportedError(LibvirtPermanentError):
    """The host cannot mount NFS (no kernel NFS client or no mount.nfs helper)."""

    reason = "NFSMountUnsupported"


_NFS_MOUNT_UNSUPPORTED = re.compile(
    r"unknown filesystem type|mount\.nfs|helper program|no such device"
    r"|wrong fs type|protocol not supported",
    re.IGNORECASE,
)


def dir_pool_xml(name: str, path: str) -> str:
    """A ``dir`` pool: image files in one host directory."""
    pool = ET.Element("pool", {"type": "dir"})
    ET.SubElement(pool, "name").text = name
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = path
    return ET.tostring(pool, encoding="unicode")


def netfs_pool_xml(name: str, server: str, export_path: str, mount_path: str) -> str:
    """A ``netfs`` pool: an NFS export mounted by the host at ``mount_path``."""
    pool = ET.Element("pool", {"type": "netfs"})
    ET.SubElement(pool, "name").text = name
    source = ET.SubElement(pool, "source")
    ET.SubElement(source, "host", {"name": server})
    ET.SubElement(source, "dir", {"path": export_path})
    ET.SubElement(source, "format", {"type": "nfs"})
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = mount_path
    return ET.tostring(pool, encoding="unicode")


def _pool_layout(xml: str) -> tuple[str, str | None, tuple[str | None, str | None]]:
    """``(type, target path, (source host, source dir))`` of a pool's XML."""
    root = _xml(xml)
    host = root.find("source/host")
    directory = root.find("source/dir")
    return (
        root.get("type", ""),
        (root.findtext("target/path") or "").strip() or None,
        (
            None if host is None else host.get("name"),
            None if directory is None else directory.get("path"),
        ),
    )


class Host:
    """Host-level libvirt operations on one connection."""

    def __init__(self, connection: LibvirtConnection) -> None:
        self.connection = connection

    @property
    def _conn(self) -> Any:
        return self.connection.conn

    def _context(self, what: str) -> str:
        return f"{self.connection.label}: {what}"

    # -- facts --

    def facts(self) -> HostFacts:
        """Architecture, CPUs, memory, versions, host name and whether KVM guests can run."""
        with libvirt_errors(self._context("read host facts")):
            model, memory_mib, cpus, *_ = self._conn.getInfo()
            capabilities = _xml(self._conn.getCapabilities())
            arch = (capabilities.findtext("host/cpu/arch") or model or "").strip()
            facts = HostFacts(
                arch=arch,
                cpu_model=(capabilities.findtext("host/cpu/model") or "").strip() or None,
                cpus=int(cpus),
                memory_mib=int(memory_mib),
                libvirt_version=format_version(self._conn.getLibVersion()),
                qemu_version=format_version(self._conn.getVersion()),
                hostname=str(self._conn.getHostname()),
                kvm_domain_supported=kvm_in_capabilities(capabilities, arch),
                host_uuid=(capabilities.findtext("host/uuid") or "").strip() or None,
                cpu=host_cpu_model(capabilities.find("host/cpu")),
            )
        if facts.kvm_domain_supported and not self._kvm_domain_capabilities(arch):
            facts = HostFacts(**{**facts.__dict__, "kvm_domain_supported": False})
        return facts

    def _kvm_domain_capabilities(self, arch: str) -> bool:
        """Confirm KVM with the domain capabilities (True when the driver cannot tell)."""
        try:
            self._conn.getDomainCapabilities(None, arch, None, "kvm", 0)
        except libvirt.libvirtError as error:
            code, _, _ = error_details(error)
            return bool(code == libvirt.VIR_ERR_NO_SUPPORT)
        return True

    def baseline_cpu(self, cpus: Sequence[str]) -> str:
        """libvirt's baseline over host ``<cpu>`` elements: the ``<cpu>`` all of them run.

        A refusal of libvirt's CPU driver (vendors or architectures that differ) is
        definitive: BaselineRefusedError with libvirt's words.
        """
        try:
            return str(self._conn.baselineCPU(list(cpus), 0))
        except libvirt.libvirtError as error:
            _, domain, message = error_details(error)
            if domain == libvirt.VIR_FROM_CPU:
                raise BaselineRefusedError(message) from error
            raise classify(error, self._context("compute a baseline CPU")) from error

    def trial_start(self, xml: str, settle_seconds: float) -> StartTrial:
        """Start a transient domain, watch it for ``settle_seconds``, then destroy it.

        For the KvmHost probe's CPU trials: a configuration QEMU refuses, or a guest that
        stops on its own within the settle time, is a definitive "does not start" with
        libvirt's message. Only a lost connection raises (the answer is unknown then).
        """
        try:
            domain = self._conn.createXML(xml, 0)
        except libvirt.libvirtError as error:
            failure = classify(error, self._context("start a trial guest"))
            if isinstance(failure, LibvirtUnavailableError):
                raise failure from error
            assert isinstance(failure, LibvirtErrorDetails)
            return StartTrial(False, _qemu_message(failure.libvirt_message))
        try:
            deadline = time.monotonic() + settle_seconds
            while True:
                state, reason = domain.state()
                if state != libvirt.VIR_DOMAIN_RUNNING:
                    return StartTrial(
                        False, f"the guest stopped right after starting ({state}/{reason})"
                    )
                if time.monotonic() >= deadline:
                    return StartTrial(True, "")
                time.sleep(0.1)
        except libvirt.libvirtError as error:
            failure = classify(error, self._context("watch a trial guest"))
            if isinstance(failure, LibvirtNotFoundError):
                return StartTrial(False, "QEMU exited right after starting")
            raise failure from error
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()

    def list_domains(self) -> list[DomainSummary]:
        """Every domain on the host (running or not), sorted by name."""
        with libvirt_errors(self._context("list domains")):
            domains = self._conn.listAllDomains(0)
        result = []
        for domain in domains:
            try:
                result.append(summarize(domain))
            except libvirt.libvirtError as error:
                if isinstance(classify(error), LibvirtNotFoundError):
                    continue  # undefined while we looked
                raise classify(error, self._context("list domains")) from error
        return sorted(result, key=lambda summary: summary.name)

    def inventory(self) -> dict[str, tuple[str, PowerState]]:
        """Every domain's UUID and power state, by name: one libvirt call for all of them
        (``virConnectGetAllDomainStats`` with the state group; names and UUIDs come with
        the domain objects)."""
        with libvirt_errors(self._context("read the domain inventory")):
            stats = self._conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
        return {str(domain.name()): inventory_entry(domain, values) for domain, values in stats}

    # -- storage pools --

    def _pool(self, name: str) -> Any:
        with libvirt_errors(self._context(f"storage pool {name!r}")):
            return self._conn.storagePoolLookupByName(name)

    def _pool_or_none(self, name: str) -> Any:
        try:
            return self._pool(name)
        except LibvirtNotFoundError:
            return None

    def pool_defined(self, name: str) -> bool:
        """True if a storage pool of this name is defined (active or not)."""
        return self._pool_or_none(name) is not None

    def ensure_dir_pool(self, name: str, path: str) -> PoolInfo:
        """A started, autostarted ``dir`` pool ``name`` at ``path`` (created if missing),
        with its sizes measured now: libvirt keeps a pool's free space from its last
        refresh, so without one a pool that filled up since still looked free."""
        name = validate_domain_name(name, "pool name")
        path = validate_absolute_path(path, "pool path")
        self._ensure_pool(name, dir_pool_xml(name, path), ("dir", path, (None, None)))
        self.refresh_pool(name)
        return self.pool_info(name)

    def ensure_netfs_pool(
        self, name: str, server: str, export_path: str, mount_path: str
    ) -> PoolInfo:
        """A started, autostarted NFS ``netfs`` pool (the host mounts the export).

        NfsMountUnsupportedError (permanent) when the host cannot mount NFS at all.
        """
        name = validate_domain_name(name, "pool name")
        server = validate_host_address(server, "server")
        export_path = validate_absolute_path(export_path, "export path")
        mount_path = validate_absolute_path(mount_path, "mount path")
        xml = netfs_pool_xml(name, server, export_path, mount_path)
        self._ensure_pool(name, xml, ("netfs", mount_path, (server, export_path)))
        return self.pool_info(name)

    def _ensure_pool(
        self, name: str, xml: str, wanted: tuple[str, str, tuple[str | None, str | None]]
    ) -> None:
        pool = self._pool_or_none(name)
        if pool is None:
            pool = self._define_pool(name, xml)
        context = self._context(f"storage pool {name!r}")
        with libvirt_errors(context):
            layout = _pool_layout(pool.XMLDesc(0))
        if layout != wanted:
            raise PermanentError(
                f"{context}: exists with another layout ({_describe(layout)}), "
                f"wanted {_describe(wanted)}; rename it or remove it on the host",
                reason="StoragePoolConflict",
            )
        with libvirt_errors(context):
            if not pool.isActive():
                pool.build(0)
                self._start_pool(pool, name, wanted[0])
            if not pool.autostart():
                pool.setAutostart(1)

    def _define_pool(self, name: str, xml: str) -> Any:
        try:
            with libvirt_errors(self._context(f"storage pool {name!r}: define")):
                return self._conn.storagePoolDefineXML(xml, 0)
        except LibvirtPermanentError:
            raise
        except Exception:
            pool = self._pool_or_none(name)  # defined concurrently by someone else?
            if pool is None:
                raise
            return pool

    def _start_pool(self, pool: Any, name: str, pool_type: str) -> None:
        try:
            pool.create(0)
        except libvirt.libvirtError as error:
            _, _, message = error_details(error)
            if pool_type == "netfs" and _NFS_MOUNT_UNSUPPORTED.search(message):
                raised = NfsMountUnsupportedError(
                    f"{self._context(f'storage pool {name!r}')}: the host cannot mount NFS "
                    f"({message}); install an NFS client on the host or use nfsAccess: Direct"
                )
                raised.libvirt_message = message
                raise raised from error
            raise

    def pool_info(self, name: str) -> PoolInfo:
        """Path, capacity and free space of a pool (sizes are 0 while it is inactive)."""
        pool = self._pool(name)
        with libvirt_errors(self._context(f"storage pool {name!r}: info")):
            _, path, _ = _pool_layout(pool.XMLDesc(0))
            active = bool(pool.isActive())
            _state, capacity, allocation, available = pool.info()
        return PoolInfo(
            name=name,
            path=path or "",
            capacity_bytes=int(capacity) if active else 0,
            allocation_bytes=int(allocation) if active else 0,
            available_bytes=int(available) if active else 0,
            active=active,
        )

    def refresh_pool(self, name: str) -> None:
        """Rescan a pool's volumes and sizes (no-op while it is inactive)."""
        pool = self._pool(name)
        with libvirt_errors(self._context(f"storage pool {name!r}: refresh")):
            if pool.isActive():
                pool.refresh(0)

    def delete_pool(self, name: str) -> bool:
        """Stop (unmount) and undefine a pool; its data stays. False if it was gone."""
        pool = self._pool_or_none(name)
        if pool is None:
            return False
        try:
            with libvirt_errors(self._context(f"storage pool {name!r}: delete")):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
        except LibvirtNotFoundError:
            return False
        return True

    def list_pools(self) -> list[PoolSummary]:
        """Every storage pool on the host, sorted by name."""
        with libvirt_errors(self._context("list storage pools")):
            pools = self._conn.listAllStoragePools(0)
            result = []
            for pool in pools:
                pool_type, path, _ = _pool_layout(pool.XMLDesc(0))
                result.append(
                    PoolSummary(
                        name=pool.name(),
                        type=pool_type,
                        path=path,
                        active=bool(pool.isActive()),
                        autostart=bool(pool.autostart()),
                    )
                )
        return sorted(result, key=lambda summary: summary.name)


def _describe(layout: tuple[str, str | None, tuple[str | None, str | None]]) -> str:
    pool_type, path, (server, export) = layout
    source = f" from {server}:{export}" if server else ""
    return f"type {pool_type} at {path}{source}"
