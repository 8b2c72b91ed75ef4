"""Per-VM usage figures read from libvirt's bulk domain statistics, parsed without I/O.

libvirt's ``virConnectGetAllDomainStats`` returns, for every running domain, one flat
record of typed parameters (``cpu.time``, ``balloon.rss``, ``block.0.rd.bytes``,
``net.1.tx.bytes`` ...). :func:`parse_domain_stats` turns one record into a
:class:`DomainStats` in base units (seconds, bytes); a figure libvirt did not report
(no balloon driver, a hypervisor that does not count it) is None and is not exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NS = 1e-9
_KIB = 1024


@dataclass(frozen=True)
class BlockStats:
    """One disk of a domain (``drive`` is the target device, e.g. ``vda``)."""

    drive: str
    read_bytes: int | None
    write_bytes: int | None
    read_requests: int | None
    write_requests: int | None


@dataclass(frozen=True)
class InterfaceStats:
    """One network interface of a domain (``interface`` is the host-side tap name)."""

    interface: str
    receive_bytes: int | None
    transmit_bytes: int | None
    receive_packets: int | None
    transmit_packets: int | None


@dataclass(frozen=True)
class DomainStats:
    """What one running domain used, as libvirt counted it."""

    name: str
    cpu_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    memory_domain_bytes: int | None = None
    memory_resident_bytes: int | None = None
    memory_available_bytes: int | None = None
    memory_unused_bytes: int | None = None
    blocks: tuple[BlockStats, ...] = ()
    interfaces: tuple[InterfaceStats, ...] = ()


def _int(record: Mapping[str, Any], key: str, scale: int = 1) -> int | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) * scale


def _seconds(record: Mapping[str, Any], key: str) -> float | None:
    value = _int(record, key)
    return None if value is None else value * _NS


def _devices(record: Mapping[str, Any], kind: str) -> list[tuple[str, str]]:
    """``(name, key prefix)`` of each named device of ``kind`` (``block``/``net``)."""
    devices = []
    for index in range(_int(record, f"{kind}.count") or 0):
        prefix = f"{kind}.{index}."
        name = record.get(prefix + "name")
        if isinstance(name, str) and name:
            devices.append((name, prefix))
    return devices


def parse_domain_stats(name: str, record: Mapping[str, Any]) -> DomainStats:
    """One domain's record from ``getAllDomainStats`` in base units."""
    blocks = [
        BlockStats(
            drive=drive,
            read_bytes=_int(record, prefix + "rd.bytes"),
            write_bytes=_int(record, prefix + "wr.bytes"),
            read_requests=_int(record, prefix + "rd.reqs"),
            write_requests=_int(record, prefix + "wr.reqs"),
        )
        for drive, prefix in _devices(record, "block")
    ]
    interfaces = [
        InterfaceStats(
            interface=interface,
            receive_bytes=_int(record, prefix + "rx.bytes"),
            transmit_bytes=_int(record, prefix + "tx.bytes"),
            receive_packets=_int(record, prefix + "rx.pkts"),
            transmit_packets=_int(record, prefix + "tx.pkts"),
        )
        for interface, prefix in _devices(record, "net")
    ]
    return DomainStats(
        name=name,
        cpu_seconds=_seconds(record, "cpu.time"),
        cpu_user_seconds=_seconds(record, "cpu.user"),
        cpu_system_seconds=_seconds(record, "cpu.system"),
        memory_domain_bytes=_int(record, "balloon.current", _KIB),
        memory_resident_bytes=_int(record, "balloon.rss", _KIB),
        memory_available_bytes=_int(record, "balloon.available", _KIB),
        memory_unused_bytes=_int(record, "balloon.unused", _KIB),
        blocks=tuple(blocks),
        interfaces=tuple(interfaces),
    )
