"""Operations on one libvirt domain (a VirtualNode's VM), idempotent where that is safe.

``Guests(connection)`` wraps a :class:`~kvmfleet.virt.connection.LibvirtConnection`.
Domains are named by name or UUID. "Already in that state" is success for start,
shutdown, destroy and undefine (the methods return False then); a missing domain
raises :class:`~kvmfleet.virt.errors.LibvirtNotFoundError` except for
:meth:`Guests.undefine`. Every call blocks: callers run them in a thread.
"""

from __future__ import annotations

import uuid as _uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import libvirt

from kvmfleet.domain.diskuse import source_key
from kvmfleet.domain.domainxml.metadata import XMLNS, NodeMetadata
from kvmfleet.domain.domainxml.parse import LiveDomainInfo, parse_domain
from kvmfleet.errors import PermanentError
from kvmfleet.virt.connection import LibvirtConnection
from kvmfleet.virt.errors import (
    LibvirtNotFoundError,
    OperationInvalidError,
    classify,
    classify_start,
    error_details,
    libvirt_errors,
)

UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)
"""Undefine removes the managed save image, snapshot/checkpoint metadata and the NVRAM."""

UNDEFINE_FALLBACKS = (
    UNDEFINE_FLAGS,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)
"""Flag sets tried in turn when a driver refuses some flags ("unsupported flags")."""

SHUTDOWN_FALLBACKS = (libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN, 0)
"""ACPI power button; the driver's default method where ACPI cannot be asked for."""


def call_with_flags(call: Any, flag_sets: tuple[int, ...]) -> Any:
    """``call(flags)`` with the first flag set the driver accepts.

    Falls back only on INVALID_ARG "unsupported flags" (an older libvirt or another
    driver); any other error is raised.
    """
    for flags in flag_sets[:-1]:
        try:
            return call(flags)
        except libvirt.libvirtError as error:
            code, _, message = error_details(error)
            if code != libvirt.VIR_ERR_INVALID_ARG or "unsupported flags" not in message:
                raise
    return call(flag_sets[-1])


class PowerState(StrEnum):
    """A domain's power state as VirtualNode ``status.powerState`` reports it."""

    ON = "On"
    OFF = "Off"
    PAUSED = "Paused"
    CRASHED = "Crashed"
    UNKNOWN = "Unknown"


_POWER_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.ON,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.ON,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.ON,  # shutting down: still running
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.OFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
}


def power_state(libvirt_state: int) -> PowerState:
    """The PowerState of a ``virDomainState`` value."""
    return _POWER_STATES.get(libvirt_state, PowerState.UNKNOWN)


def inventory_entry(domain: Any, record: Mapping[str, Any]) -> tuple[str, PowerState]:
    """A domain's (UUID, power state) from one ``virConnectGetAllDomainStats`` record."""
    return str(domain.UUIDString()), power_state(int(record.get("state.state", -1)))


class PauseReason(StrEnum):
    """Why a domain is paused (``virDomainPausedReason``; ``NoSpace`` refines ``IOError``)."""

    UNKNOWN = "Unknown"
    USER = "User"
    MIGRATION = "Migration"
    SAVE = "Save"
    DUMP = "Dump"
    IO_ERROR = "IOError"
    NO_SPACE = "NoSpace"
    WATCHDOG = "Watchdog"
    FROM_SNAPSHOT = "FromSnapshot"
    SHUTTING_DOWN = "ShuttingDown"
    SNAPSHOT = "Snapshot"
    CRASHED = "Crashed"
    STARTING_UP = "StartingUp"
    POSTCOPY = "Postcopy"
    POSTCOPY_FAILED = "PostcopyFailed"
    API_ERROR = "APIError"
    GUEST_SUSPENDED = "GuestSuspended"

    @property
    def transient(self) -> bool:
        """True for pauses libvirt ends by itself (a migration, a save, a snapshot...)."""
        return self in _TRANSIENT_PAUSES


_TRANSIENT_PAUSES = frozenset(
    {
        PauseReason.MIGRATION,
        PauseReason.SAVE,
        PauseReason.DUMP,
        PauseReason.FROM_SNAPSHOT,
        PauseReason.SHUTTING_DOWN,
        PauseReason.SNAPSHOT,
        PauseReason.STARTING_UP,
        PauseReason.POSTCOPY,
    }
)

_PAUSE_REASONS: dict[str, PauseReason] = {
    "VIR_DOMAIN_PAUSED_USER": PauseReason.USER,
    "VIR_DOMAIN_PAUSED_MIGRATION": PauseReason.MIGRATION,
    "VIR_DOMAIN_PAUSED_SAVE": PauseReason.SAVE,
    "VIR_DOMAIN_PAUSED_DUMP": PauseReason.DUMP,
    "VIR_DOMAIN_PAUSED_IOERROR": PauseReason.IO_ERROR,
    "VIR_DOMAIN_PAUSED_WATCHDOG": PauseReason.WATCHDOG,
    "VIR_DOMAIN_PAUSED_FROM_SNAPSHOT": PauseReason.FROM_SNAPSHOT,
    "VIR_DOMAIN_PAUSED_SHUTTING_DOWN": PauseReason.SHUTTING_DOWN,
    "VIR_DOMAIN_PAUSED_SNAPSHOT": PauseReason.SNAPSHOT,
    "VIR_DOMAIN_PAUSED_CRASHED": PauseReason.CRASHED,
    "VIR_DOMAIN_PAUSED_STARTING_UP": PauseReason.STARTING_UP,
    "VIR_DOMAIN_PAUSED_POSTCOPY": PauseReason.POSTCOPY,
    "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED": PauseReason.POSTCOPY_FAILED,
    "VIR_DOMAIN_PAUSED_API_ERROR": PauseReason.API_ERROR,
}
_PAUSE_BY_CODE = {
    getattr(libvirt, name): reason
    for name, reason in _PAUSE_REASONS.items()
    if hasattr(libvirt, name)
}
_DISK_ERRORS = {
    getattr(libvirt, "VIR_DOMAIN_DISK_ERROR_NO_SPACE", 2): "no space left on its storage",
    getattr(libvirt, "VIR_DOMAIN_DISK_ERROR_UNSPEC", 1): "I/O error",
}


@dataclass(frozen=True)
class Pause:
    """Why a paused domain is paused: libvirt's reason and, for I/O errors, which disks."""

    reason: PauseReason
    disks: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """A sentence for a condition message."""
        text = f"the domain is paused (libvirt reason: {self.reason})"
        return f"{text}: {', '.join(self.disks)}" if self.disks else text


def pause_of(libvirt_state: int, libvirt_reason: int, disk_errors: dict[str, int]) -> Pause | None:
    """The :class:`Pause` of a ``(state, reason)`` pair and ``virDomainGetDiskErrors``."""
    if libvirt_state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return Pause(PauseReason.GUEST_SUSPENDED)
    if libvirt_state != libvirt.VIR_DOMAIN_PAUSED:
        return None
    reason = _PAUSE_BY_CODE.get(libvirt_reason, PauseReason.UNKNOWN)
    disks = tuple(
        f"disk {dev}: {_DISK_ERRORS.get(code, f'error {code}')}"
        for dev, code in sorted(disk_errors.items())
        if code
    )
    no_space = getattr(libvirt, "VIR_DOMAIN_DISK_ERROR_NO_SPACE", 2)
    if any(code == no_space for code in disk_errors.values()):
        reason = PauseReason.NO_SPACE
    return Pause(reason, disks)


@dataclass(frozen=True)
class DomainSummary:
    """A domain on a host: what ``lsvm`` shows, and who owns it (kvmfleet metadata)."""

    name: str
    uuid: str
    state: PowerState
    owner: NodeMetadata | None = None
    persistent: bool = True
    disks: tuple[str, ...] = ()
    """Sources of its disks (paths, ``nfs://host/name``); filled for running domains only."""

    @property
    def uid(self) -> str | None:
        """The owning VirtualNode's uid, when kvmfleet defined the domain."""
        return self.owner.uid if self.owner else None


def owner_of(domain: Any) -> NodeMetadata | None:
    """The kvmfleet metadata of a domain object, or None (not ours / no metadata)."""
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, XMLNS, 0)
    except libvirt.libvirtError as error:
        if isinstance(classify(error), LibvirtNotFoundError):
            return None
        raise
    try:
        node = ET.fromstring(text)  # noqa: S314 - from libvirtd; expat, no external entities
    except ET.ParseError:
        return None
    # virDomainGetMetadata returns the element without its namespace: put it back.
    for element in node.iter():
        if not element.tag.startswith("{"):
            element.tag = f"{{{XMLNS}}}{element.tag}"
    wrapper = ET.Element("metadata")
    wrapper.append(node)
    return NodeMetadata.from_metadata(wrapper)


def summarize(domain: Any) -> DomainSummary:
    """The :class:`DomainSummary` of a libvirt domain object."""
    state, _reason = domain.state()
    power = power_state(state)
    disks: tuple[str, ...] = ()
    if power in (PowerState.ON, PowerState.PAUSED):
        info = parse_domain(domain.XMLDesc(0))
        disks = tuple(
            key
            for d in info.disks
            if (key := source_key(d.source_type, d.source, d.host, d.protocol))
        )
    return DomainSummary(
        name=domain.name(),
        uuid=domain.UUIDString(),
        state=power,
        owner=owner_of(domain),
        persistent=bool(domain.isPersistent()),
        disks=disks,
    )


def vnc_password_expiry(valid_to: datetime) -> str:
    """libvirt's ``passwdValidTo``: UTC, ``YYYY-MM-DDTHH:MM:SS``."""
    if valid_to.tzinfo is None:
        raise ValueError("valid_to must be timezone-aware")
    return valid_to.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _vnc_graphics_xml(domain_xml: str, password: str, valid_to: datetime | None) -> str:
    """The domain's ``<graphics type='vnc'>`` with a new password, as device XML."""
    root = ET.fromstring(domain_xml)  # noqa: S314 - from libvirtd
    graphics = root.find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise PermanentError(
            f"domain {root.findtext('name')!r} has no VNC console", reason="NoVncConsole"
        )
    graphics.set("passwd", password)
    if valid_to is None:
        graphics.attrib.pop("passwdValidTo", None)
    else:
        graphics.set("passwdValidTo", vnc_password_expiry(valid_to))
    return ET.tostring(graphics, encoding="unicode")


class Guests:
    """Domain operations on one host's libvirt connection."""

    def __init__(self, connection: LibvirtConnection) -> None:
        self.connection = connection

    @property
    def _conn(self) -> Any:
        return self.connection.conn

    def _context(self, name: str, action: str) -> str:
        return f"{self.connection.label}: domain {name!r}: {action}"

    def _domain(self, name_or_uuid: str) -> Any:
        """The libvirt domain object (LibvirtNotFoundError if there is none)."""
        with libvirt_errors(self._context(name_or_uuid, "lookup")):
            try:
                key = str(_uuid.UUID(name_or_uuid))
            except ValueError:
                return self._conn.lookupByName(name_or_uuid)
            return self._conn.lookupByUUIDString(key)

    # -- definition --

    def define(self, xml: str) -> str:
        """Define (or redefine) a persistent domain from XML; returns its UUID.

        An XML without ``<uuid>`` redefines an existing domain of the same name (libvirt
        would otherwise refuse it as a second domain with that name).
        """
        root = _parse(xml)
        name = (root.findtext("name") or "").strip() or "<unnamed>"
        if root.find("uuid") is None:
            try:
                existing = self._domain(name)
            except LibvirtNotFoundError:
                existing = None
            if existing is not None:
                with libvirt_errors(self._context(name, "define")):
                    ET.SubElement(root, "uuid").text = existing.UUIDString()
                xml = ET.tostring(root, encoding="unicode")
        with libvirt_errors(self._context(name, "define")):
            return str(self._conn.defineXML(xml).UUIDString())

    def lookup(self, name_or_uuid: str) -> DomainSummary:
        """Name, UUID, power state and owner of a domain."""
        domain = self._domain(name_or_uuid)
        with libvirt_errors(self._context(name_or_uuid, "read")):
            return summarize(domain)

    def exists(self, name_or_uuid: str) -> bool:
        """True if the domain is defined (or running transiently)."""
        try:
            self._domain(name_or_uuid)
        except LibvirtNotFoundError:
            return False
        return True

    def state(self, name_or_uuid: str) -> PowerState:
        """The domain's power state."""
        domain = self._domain(name_or_uuid)
        with libvirt_errors(self._context(name_or_uuid, "state")):
            return power_state(domain.state()[0])

    def pause(self, name_or_uuid: str) -> Pause | None:
        """Why the domain is paused (libvirt's reason, disk errors), or None if it is not."""
        domain = self._domain(name_or_uuid)
        with libvirt_errors(self._context(name_or_uuid, "state")):
            state, reason = domain.state()
            if state not in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
                return None
            errors = domain.diskErrors() if state == libvirt.VIR_DOMAIN_PAUSED else {}
        return pause_of(state, reason, dict(errors or {}))

    def xml(self, name_or_uuid: str, live: bool = True) -> str:
        """The domain XML: live (running config; for a stopped domain its definition) or
        the persistent definition (``live=False``). Never includes secrets (VNC passwords).
        """
        domain = self._domain(name_or_uuid)
        flags = 0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE
        with libvirt_errors(self._context(name_or_uuid, "read XML")):
            return str(domain.XMLDesc(flags))

    def info(self, name_or_uuid: str) -> LiveDomainInfo:
        """The live XML, parsed (NICs, disks, serial pty, VNC port, kvmfleet metadata)."""
        return parse_domain(self.xml(name_or_uuid, live=True))

    def serial_pty(self, name_or_uuid: str) -> str | None:
        """The host pty of the serial console of a running domain (``/dev/pts/N``)."""
        return self.info(name_or_uuid).serial_pty

    # -- power --

    def _act(self, name: str, action: str, call: Any, *, invalid_means_done: bool) -> bool:
        domain = self._domain(name)
        try:
            with libvirt_errors(self._context(name, action)):
                call(domain)
        except OperationInvalidError:
            if invalid_means_done:
                return False
            raise
        return True

    def start(self, name_or_uuid: str) -> bool:
        """Start the domain; False if it was already running.

        QEMU failing to start (libvirt answers, the domain stays off) raises
        :class:`~kvmfleet.virt.errors.StartFailedError` with libvirt's message.
        """
        if self.state(name_or_uuid) in {PowerState.ON, PowerState.PAUSED}:
            return False
        domain = self._domain(name_or_uuid)
        try:
            domain.create()
        except libvirt.libvirtError as error:
            result = classify_start(error, self._context(name_or_uuid, "start"))
            if isinstance(result, OperationInvalidError):
                return False
            raise result from error
        return True

    def _is_off(self, name_or_uuid: str) -> bool:
        return self.state(name_or_uuid) in {PowerState.OFF, PowerState.CRASHED}

    def shutdown(self, name_or_uuid: str) -> bool:
        """Ask the guest to power off (ACPI power button); False if it is already off.

        Returns at once; the guest may ignore the request (see ``shutdownGracePeriod``).
        """
        if self._is_off(name_or_uuid):
            return False
        return self._act(
            name_or_uuid,
            "shutdown",
            lambda d: call_with_flags(d.shutdownFlags, SHUTDOWN_FALLBACKS),
            invalid_means_done=True,
        )

    def destroy(self, name_or_uuid: str) -> bool:
        """Power off at once (pull the plug); False if it was already off."""
        if self.state(name_or_uuid) is PowerState.OFF:
            return False
        return self._act(name_or_uuid, "destroy", lambda d: d.destroy(), invalid_means_done=True)

    def reboot(self, name_or_uuid: str) -> None:
        """Graceful reboot (the guest is asked); OperationInvalidError if it is not running."""
        self._act(name_or_uuid, "reboot", lambda d: d.reboot(0), invalid_means_done=False)

    def reset(self, name_or_uuid: str) -> None:
        """Hard reset (the reset button); OperationInvalidError if it is not running."""
        self._act(name_or_uuid, "reset", lambda d: d.reset(0), invalid_means_done=False)

    def block_resize(self, name_or_uuid: str, target: str, size_bytes: int) -> None:
        """Grow a disk of a running domain (the guest sees the new size at once)."""
        flags = libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
        self._act(
            name_or_uuid,
            f"grow disk {target}",
            lambda d: d.blockResize(target, size_bytes, flags),
            invalid_means_done=False,
        )

    def undefine(self, name_or_uuid: str) -> bool:
        """Remove the definition (and managed save, snapshot metadata, NVRAM); keeps disks.

        False if it was already gone. A running domain stays running as a transient one
        until destroyed: destroy it first.
        """
        try:
            domain = self._domain(name_or_uuid)
        except LibvirtNotFoundError:
            return False
        try:
            with libvirt_errors(self._context(name_or_uuid, "undefine")):
                call_with_flags(domain.undefineFlags, UNDEFINE_FALLBACKS)
        except LibvirtNotFoundError:
            return False
        except OperationInvalidError:
            # e.g. a transient domain (nothing to undefine) or one already undefined.
            if not self.exists(name_or_uuid) or not self.lookup(name_or_uuid).persistent:
                return False
            raise
        return True

    # -- consoles --

    def set_vnc_password(
        self, name_or_uuid: str, password: str, valid_to: datetime | None = None
    ) -> bool:
        """Set the VNC password (and its expiry) in the definition and, if running, live.

        Returns True when the running guest uses the new password now (or the domain is
        off), False when it applies from the next start only: QEMU cannot switch a VNC
        server started without a password to password authentication, so the domain
        definition should always carry one. The password never appears in errors or
        logs. PermanentError (NoVncConsole) if the domain has no VNC graphics.
        """
        if not password or not password.isprintable() or not password.isascii():
            raise ValueError("the VNC password must be printable ASCII")
        domain = self._domain(name_or_uuid)
        context = self._context(name_or_uuid, "set the VNC password")
        with libvirt_errors(context):
            if domain.isPersistent():
                inactive = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                config = _vnc_graphics_xml(inactive, password, valid_to)
                domain.updateDeviceFlags(config, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if not domain.isActive():
                return True
            live = _vnc_graphics_xml(domain.XMLDesc(0), password, valid_to)
        try:
            domain.updateDeviceFlags(live, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as error:
            _, _, message = error_details(error)
            if "set_password" in message or "Could not set password" in message:
                return False
            raise classify(error, context) from error
        return True


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)  # noqa: S314 - built by kvmfleet
    except ET.ParseError as error:
        raise PermanentError(f"invalid domain XML: {error}", reason="InvalidDomainXML") from None
