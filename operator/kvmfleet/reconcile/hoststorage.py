"""Storage pools on a host (xCAT's mountvms): dir pools, NFS mounted or direct, block devices."""

from __future__ import annotations

from dataclasses import dataclass

from kvmfleet.domain.specs import NfsAccess, StoragePoolSpec
from kvmfleet.domain.storage_urls import StorageKind, StorageURL, mount_path
from kvmfleet.errors import KvmfleetError
from kvmfleet.reconcile.hostsession import HostSession
from kvmfleet.ssh import hostcmds, nfsdirect
from kvmfleet.virt.host import Host, PoolInfo

PROBE_SIZE = 1024 * 1024
SIZE_STEP = 1024**3
"""Free space is reported in whole GiB: byte-exact figures would change (and cost a status
write) on every probe of a busy host."""


def _gib_floor(value: int | None) -> int | None:
    return None if value is None else value - value % SIZE_STEP


@dataclass
class PoolReport:
    """One storage pool after the step: status.storagePools[] plus readiness."""

    name: str
    url: str
    ready: bool
    path: str = ""
    capacity_bytes: int | None = None
    available_bytes: int | None = None
    message: str = ""

    def to_status(self) -> dict[str, object]:
        """The status.storagePools entry (absent sizes left out)."""
        entry: dict[str, object] = {"name": self.name, "url": self.url}
        if self.path:
            entry["path"] = self.path
        if self.capacity_bytes is not None:
            entry["capacityBytes"] = self.capacity_bytes
        if self.available_bytes is not None:
            entry["availableBytes"] = _gib_floor(self.available_bytes)
        return entry


async def ensure(
    host: HostSession, pools: tuple[StoragePoolSpec, ...], nfs_access: NfsAccess, mount_root: str
) -> list[PoolReport]:
    """Prepare every pool of the spec; each report says whether it is usable and why not."""
    reports = []
    for pool in pools:
        try:
            reports.append(await _ensure_one(host, pool, nfs_access, mount_root))
        except KvmfleetError as error:
            reports.append(
                PoolReport(pool.name, str(pool.url), False, message=f"{pool.name}: {error.message}")
            )
    return reports


async def _ensure_one(
    host: HostSession, pool: StoragePoolSpec, nfs_access: NfsAccess, mount_root: str
) -> PoolReport:
    url = pool.url
    if url.kind is StorageKind.DIR:
        found = await host.run(hostcmds.test_directory(url.path), check=False)
        if not found.ok:
            if await _pool_defined(host, url):
                return PoolReport(
                    pool.name,
                    str(url),
                    False,
                    url.path,
                    message=f"{pool.name}: directory {url.path} is missing (an unmounted "
                    "filesystem?); it was set up before and is not recreated: create or mount "
                    "it on the host",
                )
            await host.run(hostcmds.mkdir_p(url.path))
        info = await _libvirt_pool(host, "dir", url, url.path)
        return _from_info(pool, info)
    if url.kind is StorageKind.PHY:
        found = await host.run(hostcmds.test_block_device(url.path), check=False)
        if not found.ok:
            return PoolReport(
                pool.name,
                str(url),
                False,
                url.path,
                message=f"{pool.name}: block device {url.path} does not exist on the host",
            )
        return PoolReport(pool.name, str(url), True, url.path)
    if nfs_access is NfsAccess.MOUNT:
        where = mount_path(url, mount_root)
        await host.run(hostcmds.mkdir_p(where))
        info = await _libvirt_pool(host, "netfs", url, where)
        return _from_info(pool, info)
    return await _probe_direct(host, pool, url)


async def _pool_defined(host: HostSession, url: StorageURL) -> bool:
    connection = await host.libvirt()
    return await host.ctx.blocking(Host(connection).pool_defined, url.pool_name)


async def _libvirt_pool(host: HostSession, kind: str, url: StorageURL, path: str) -> PoolInfo:
    connection = await host.libvirt()
    libvirt_host = Host(connection)
    if kind == "dir":
        return await host.ctx.blocking(libvirt_host.ensure_dir_pool, url.pool_name, path)
    assert url.server is not None
    return await host.ctx.blocking(
        libvirt_host.ensure_netfs_pool, url.pool_name, url.server, url.path, path
    )


def _from_info(pool: StoragePoolSpec, info: PoolInfo) -> PoolReport:
    return PoolReport(
        pool.name,
        str(pool.url),
        info.active,
        info.path,
        info.capacity_bytes,
        info.available_bytes,
        "" if info.active else f"{pool.name}: libvirt pool is not active",
    )


async def _probe_direct(host: HostSession, pool: StoragePoolSpec, url: StorageURL) -> PoolReport:
    """QEMU reaches the export itself: prove it by creating and removing a probe image."""
    probe = f".kvmfleet-probe-{host.name}.qcow2"
    target = f"{str(url).rstrip('/')}/{probe}"
    created = await host.run(hostcmds.qemu_img_create(target, PROBE_SIZE), check=False)
    if not created.ok:
        return PoolReport(
            pool.name,
            str(url),
            False,
            str(url),
            message=f"{pool.name}: qemu-img cannot create images on {url}: "
            f"{created.stderr.strip() or created.stdout.strip()}",
        )
    removed = nfsdirect.parse(
        (await host.run(nfsdirect.unlink_argv(url, probe), check=False)).stdout
    )
    if not removed.ok:
        return PoolReport(
            pool.name,
            str(url),
            False,
            str(url),
            message=f"{pool.name}: cannot remove files on {url} through libnfs: {removed.error}",
        )
    size = nfsdirect.parse((await host.run(nfsdirect.statvfs_argv(url), check=False)).stdout)
    return PoolReport(
        pool.name,
        str(url),
        True,
        str(url),
        size.capacity_bytes if size.ok else None,
        size.available_bytes if size.ok else None,
    )
