"""Live migration of a domain between two hosts' libvirtd, driven from the operator.

kvmfleet holds one verified connection to each KvmHost (pinned host key, its own SSH key),
so it drives the migration itself: ``virDomainMigrate3`` with the source and the target
connection (libvirt's "managed direct" migration, the client talks to both daemons; the
memory goes straight from the source QEMU to the target QEMU over ``tcp://<target
address>``). The hosts need no credentials for each other (a peer-to-peer migration would
have the source libvirtd log in to the target's). The flags: live, persistent on the
target, source definition removed by libvirt only after the target runs, no post-copy
(a post-copy failure loses the guest), abort on disk I/O errors; a bandwidth cap.

If the operator dies during the job, libvirtd ends it itself (the job belongs to the
client's connection): the source resumes, the incoming copy goes; the use-case's recovery
then reads both hosts (:func:`domain_state`).

All calls block; run them in threads. Progress (:func:`progress`) and abort
(:func:`abort`) are called from another thread while the migration runs: on pooled
connections, whose calls run one at a time (see :class:`~kvmfleet.virt.connection.
LibvirtConnection`), so the migration itself runs on connections of its own
(:func:`migrate_on_own_connections`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libvirt

from kvmfleet.domain.migration import DomainState
from kvmfleet.virt.connection import LibvirtConnection, LibvirtPool, LibvirtTarget
from kvmfleet.virt.errors import LibvirtNotFoundError, classify, libvirt_errors

LIVE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)
"""Live, persistent on the target, source undefined after success; never post-copy."""


@dataclass(frozen=True)
class Progress:
    """libvirt's job statistics of a running migration (bytes)."""

    data_total: int | None
    data_remaining: int | None


def _domain(connection: LibvirtConnection, name: str) -> Any:
    with libvirt_errors(f"{connection.label}: domain {name!r}: lookup"):
        return connection.conn.lookupByName(name)


def migrate(
    source: LibvirtConnection,
    target: LibvirtConnection,
    name: str,
    *,
    migrate_uri: str,
    bandwidth_mib: int,
    listen_address: str | None = None,
) -> None:
    """Live-migrate domain ``name`` from ``source`` to ``target``; returns once it runs there.

    ``bandwidth_mib``: MiB/s (0: libvirt's default, unlimited). Errors are classified;
    the domain then still runs on the source (libvirt rolls back).
    """
    domain = _domain(source, name)
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_URI: migrate_uri}
    if bandwidth_mib > 0:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
    if listen_address:
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = listen_address
    context = f"{source.label}: domain {name!r}: migrate to {target.label}"
    with libvirt_errors(context):
        domain.migrate3(target.conn, params, LIVE_FLAGS)


def migrate_on_own_connections(
    pool: LibvirtPool,
    source: LibvirtTarget,
    target: LibvirtTarget,
    name: str,
    *,
    migrate_uri: str,
    bandwidth_mib: int,
    listen_address: str | None = None,
) -> None:
    """:func:`migrate` on two connections opened for it and closed once it returns (the
    pooled ones stay free for :func:`progress` and :func:`abort`)."""
    with pool.dedicated(source) as source_conn, pool.dedicated(target) as target_conn:
        migrate(
            source_conn,
            target_conn,
            name,
            migrate_uri=migrate_uri,
            bandwidth_mib=bandwidth_mib,
            listen_address=listen_address,
        )


def progress(connection: LibvirtConnection, name: str) -> Progress | None:
    """The running job's data total/remaining; None when no job runs (or it is gone)."""
    try:
        domain = _domain(connection, name)
        stats = domain.jobStats(0)
    except (LibvirtNotFoundError, libvirt.libvirtError):
        return None
    if not stats or stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    return Progress(_get(stats, "data_total"), _get(stats, "data_remaining"))


def answers(connection: LibvirtConnection) -> bool:
    """Whether the host's libvirtd still answers on this connection (``getLibVersion``).

    The migration job runs on connections of its own and blocks in the source's libvirtd
    while QEMU copies memory: a target libvirtd that died meanwhile is only noticed here
    (the incoming QEMU may go on receiving, and the job would wait for its end)."""
    if not connection.is_alive():
        return False
    try:
        connection.conn.getLibVersion()
    except libvirt.libvirtError:
        return False
    return connection.is_alive()


def _get(stats: dict[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return None if value is None else int(value)


def set_max_downtime(connection: LibvirtConnection, name: str, milliseconds: int) -> bool:
    """Cap the guest's pause at the end of the running migration job; False when no job
    runs yet (or any more)."""
    domain = _domain(connection, name)
    try:
        domain.migrateSetMaxDowntime(milliseconds, 0)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
            return False
        raise classify(error, f"{connection.label}: domain {name!r}: set max downtime") from error
    return True


def abort(connection: LibvirtConnection, name: str) -> bool:
    """Abort the domain's running job (``virDomainAbortJob``); False when none runs."""
    domain = _domain(connection, name)
    try:
        domain.abortJob()
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
            return False  # no job is active
        raise classify(error, f"{connection.label}: domain {name!r}: abort job") from error
    return True


def domain_state(connection: LibvirtConnection, name: str) -> tuple[DomainState, bool]:
    """What recovery needs: the domain's state on this host and whether it is persistent."""
    try:
        domain = _domain(connection, name)
    except LibvirtNotFoundError:
        return DomainState.ABSENT, False
    with libvirt_errors(f"{connection.label}: domain {name!r}: state"):
        state, reason = domain.state()
        persistent = bool(domain.isPersistent())
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
        return DomainState.OFF, persistent
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
            return DomainState.PAUSED_MIGRATION, persistent
        return DomainState.PAUSED, persistent
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return DomainState.PAUSED, persistent
    return DomainState.RUNNING, persistent


def resume(connection: LibvirtConnection, name: str) -> None:
    """Resume a paused domain (the source left paused at the end of an unfinished job)."""
    domain = _domain(connection, name)
    with libvirt_errors(f"{connection.label}: domain {name!r}: resume"):
        domain.resume()


def define_from(source: LibvirtConnection, target: LibvirtConnection, name: str) -> None:
    """Define ``name`` on ``target`` from ``source``'s persistent definition (secure XML:
    the VNC password moves with it). For a stopped VM's move and for a transient copy."""
    domain = _domain(source, name)
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    with libvirt_errors(f"{source.label}: domain {name!r}: read definition"):
        xml = domain.XMLDesc(flags)
    with libvirt_errors(f"{target.label}: domain {name!r}: define"):
        target.conn.defineXML(xml)
