"""Image files on a host's storage: write-then-rename copies, clones, rebase, backing users.

Every copy (a master capture, a detached clone) and every overlay (an attached clone) is
written under ``<file>.partial`` and renamed to its final name only once qemu-img has
finished it and it was verified; so a file under a final name is always complete, and a
pass after a crash removes the partial file and starts that copy again. Each step goes
through the SSH adapter's argv builders (explicit ``-f``/``-F`` everywhere, nothing probed).
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from kvmfleet.domain.storage_urls import DiskLocation, DiskSourceType, StorageURL
from kvmfleet.domain.vmmaster import partial_name
from kvmfleet.errors import KvmfleetError
from kvmfleet.reconcile import failpoints
from kvmfleet.reconcile.hostaccess import PlacedHost
from kvmfleet.ssh import diskprobe, hostcmds, nfsdirect

COPY_LIMIT = 3600.0
"""Seconds a copy, compare or rebase may run on the host before it is killed."""


class ImageError(KvmfleetError):
    """A copy or check of an image failed (the message carries qemu-img's words)."""


def sibling(where: DiskLocation, file_name: str) -> DiskLocation:
    """The location of another file in the same directory (or export)."""
    if "/" in file_name or not file_name:
        raise ValueError(f"not a plain file name: {file_name!r}")
    return replace(where, path=posixpath.join(posixpath.dirname(where.path), file_name))


async def remove(host: PlacedHost, where: DiskLocation) -> None:
    """Remove one file; already gone counts as done."""
    if where.source_type is DiskSourceType.NETWORK:
        argv = nfsdirect.unlink_argv(where.storage, where.file_name or "")
        result = nfsdirect.parse((await host.session.run(argv, check=False)).stdout)
        if not result.ok:
            raise ImageError(f"cannot remove {where.qemu_img_target}: {result.error}")
    else:
        await host.session.run(hostcmds.rm_file(where.path))


async def rename(host: PlacedHost, source: DiskLocation, destination: DiskLocation) -> None:
    """Rename a file within its directory (atomic on a local filesystem and over NFS)."""
    if source.source_type is DiskSourceType.NETWORK:
        argv = nfsdirect.rename_argv(
            source.storage, source.file_name or "", destination.file_name or ""
        )
        result = nfsdirect.parse((await host.session.run(argv, check=False)).stdout)
        if not result.ok:
            raise ImageError(f"cannot rename {source.qemu_img_target}: {result.error}")
    else:
        await host.session.run(hostcmds.rename_file(source.path, destination.path))


async def chmod(host: PlacedHost, where: DiskLocation, mode: int) -> None:
    """Set a file's permission bits."""
    if where.source_type is DiskSourceType.NETWORK:
        argv = nfsdirect.chmod_argv(where.storage, where.file_name or "", mode)
        result = nfsdirect.parse((await host.session.run(argv, check=False)).stdout)
        if not result.ok:
            raise ImageError(f"cannot chmod {where.qemu_img_target}: {result.error}")
    else:
        await host.session.run(hostcmds.chmod_file(where.path, mode))


async def _run(host: PlacedHost, argv: list[str], what: str) -> None:
    result = await host.session.run(argv, check=False, limit=COPY_LIMIT)
    if not result.ok:
        why = (result.stderr or result.stdout).strip()[-300:] or f"exit {result.exit_status}"
        raise ImageError(f"{what} failed: {why}")


async def compare(host: PlacedHost, first: str, second: str) -> None:
    """qemu-img compare: ImageError unless both hold the same guest data."""
    result = await host.session.run(
        hostcmds.qemu_img_compare(first, second), check=False, limit=COPY_LIMIT
    )
    if result.exit_status == 1:
        raise ImageError(f"{first} and {second} differ: {result.stdout.strip()[-200:]}")
    if not result.ok:
        why = (result.stderr or result.stdout).strip()[-300:]
        raise ImageError(f"qemu-img compare {first} {second} failed: {why}")


async def publish(
    host: PlacedHost,
    final: DiskLocation,
    make: Callable[[str], Awaitable[None]],
    verify: Callable[[str], Awaitable[None]] | None = None,
    *,
    failpoint: str = "",
    mode: int | None = None,
) -> None:
    """Write ``final`` through its partial file: remove any leftover partial, ``make`` it,
    ``verify`` it, set its ``mode``, rename it. A crash anywhere leaves no file under the
    final name."""
    partial = sibling(final, partial_name(final.file_name or ""))
    await remove(host, partial)
    await make(partial.qemu_img_target)
    if failpoint:
        failpoints.hit(failpoint)
    if verify is not None:
        await verify(partial.qemu_img_target)
    if mode is not None:
        await chmod(host, partial, mode)
    await rename(host, partial, final)


async def copy_image(host: PlacedHost, source: str, destination: str) -> None:
    """A compacted, standalone qcow2 copy (the backing chain flattened)."""
    await _run(host, hostcmds.qemu_img_convert(source, destination), f"copying {source}")


async def overlay(host: PlacedHost, backing: str, destination: str) -> None:
    """A qcow2 overlay of ``backing`` (its size; grown afterwards if asked)."""
    await _run(
        host, hostcmds.qemu_img_create(destination, None, backing=backing), f"overlay of {backing}"
    )


async def rebase(host: PlacedHost, image: str, backing: str) -> None:
    """Safe rebase: ``image`` keeps its guest data, stored as differences from ``backing``."""
    await _run(host, hostcmds.qemu_img_rebase(image, backing), f"rebasing {image} onto {backing}")


@dataclass(frozen=True)
class BackingScan:
    """The images of one directory that name a file as their backing file."""

    users: list[str]
    error: str = ""


async def backed_by(
    host: PlacedHost, directory: str, path: str, export: StorageURL | None = None
) -> BackingScan:
    """Images of ``directory`` (on ``host``; or of the NFS ``export``, read through libnfs)
    whose qcow2 header names ``path`` (or a file of the same name, as a relative name or
    another host's view of the same export would) as backing file. Headers only."""
    argv = nfsdirect.backing_argv(export) if export else diskprobe.backing_argv(directory)
    result = await host.session.run(argv, check=False)
    data = diskprobe.parse(result.stdout)
    if not result.ok or not data.get("ok"):
        return BackingScan([], f"cannot read the images of {directory}: {result.stderr[-200:]}")
    file_name = posixpath.basename(path)
    users = []
    for image in data.get("images") or []:
        name = str(image.get("image", ""))
        if name in (file_name, partial_name(file_name)):
            continue
        if image.get("errno"):
            return BackingScan([], f"cannot read {directory}/{name} ({image['errno']})")
        named = str(image.get("backing", ""))
        if "://" in named or export is not None:
            resolved = named
        else:
            resolved = posixpath.normpath(posixpath.join(directory, named))
        if resolved == path or posixpath.basename(named) == file_name:
            users.append(f"{directory}/{name}")
    return BackingScan(users)


@dataclass(frozen=True)
class CloneImage:
    """The master image a clone's disk is made from, as the clone's host names it."""

    backing: str
    attached: bool


async def make_clone(host: PlacedHost, where: DiskLocation, image: CloneImage) -> None:
    """A clone disk: an overlay of the master (attached) or a full copy (detached), written
    through its partial file; the size is the master's (grown afterwards if asked)."""
    if image.attached:
        await publish(host, where, lambda partial: overlay(host, image.backing, partial))
    else:

        async def verify(partial: str) -> None:
            await compare(host, image.backing, partial)

        await publish(
            host,
            where,
            lambda partial: copy_image(host, image.backing, partial),
            verify,
            failpoint="clone-after-copy",
        )
