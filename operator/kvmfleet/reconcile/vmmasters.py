"""VmMaster use-cases: capture a golden image from a VirtualNode; guard deletion by dependants.

Capture (``clonevm <node> -t <master> [-d]``) runs on the source node's host while the
source is powered off, holding the source VirtualNode's lock (so it is not started in the
middle). For each disk: the source is copied (compacted, chain flattened, explicit
formats) to ``<master file>.partial``, compared with the source, and only then renamed to
the master file; Attached mode then rebases the source disk onto the master (safe
rebase: it keeps only its own changes) and compares again, which proves the node's data
unchanged. Every step is decided from what the host shows (see
:func:`kvmfleet.domain.vmmaster.capture_steps`), so a pass after a crash at any line
resumes: a file under the final name is complete, a partial one is redone, a source
already naming the master is not rebased twice. Once Ready, a master's images are never
written again.

Deletion waits while any VirtualNode depends on the master (condition naming them) and
completes by itself once they are gone; an image that some image on any host that can
reach it still names as backing file (a retained disk) is kept, never deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.authorization import HostGrant, storage_refusal
from kvmfleet.domain.diskstate import OWNER_SUFFIX, Existence, Owner
from kvmfleet.domain.specs import CloneMode, KvmHostSpec, VirtualNodeSpec, VmMasterSpec
from kvmfleet.domain.storage_urls import (
    DiskLocation,
    DiskSourceType,
    NfsAccess,
    StorageKind,
    StorageURL,
    file_location,
    parse_storage_url,
    storage_directory,
)
from kvmfleet.domain.vmmaster import (
    CAPTURE_FAILED,
    CAPTURED,
    CAPTURING,
    DEPENDANTS_EXIST,
    SOURCE_NOT_FOUND,
    SOURCE_NOT_PLACED,
    SOURCE_RUNNING,
    Step,
    capture_refusal,
    capture_steps,
    clone_count,
    dependants,
    master_file_name,
    originator,
    partial_name,
)
from kvmfleet.errors import KvmfleetError, NotFoundError, PermanentError, TemporaryError
from kvmfleet.reconcile import failpoints, fleetindex, imagefiles, vmdisks
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.hostaccess import PlacedHost, open_host, read_host
from kvmfleet.reconcile.outcome import Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.reconcile.vmremove import ORPHAN_ANNOTATION, orphaning
from kvmfleet.ssh import facts, hostcmds

RETRY = 15.0
MASTER_MODE = 0o444
"""Master images are read-only files, readable by QEMU's user (also over NFS Direct)."""
DELETE_RETRY = 10.0


def _now() -> str:
    return cond.rfc3339(datetime.now(UTC).replace(microsecond=0))


def _summarise(outcome: Outcome, *, ready: bool, reason: str, message: str) -> None:
    outcome.conditions = cond.summary(ready=ready, reason=reason, message=message)


async def reconcile(ctx: Context, master: Resource) -> Outcome:
    """Capture the master if not yet done; keep its dependants and clone count true."""
    async with ctx.lock(f"vmm/{master.uid}"):
        return await _reconcile(ctx, master)


async def sync(ctx: Context, master: Resource) -> Outcome:
    """The periodic pass: the same as a change (dependants and clones change without it)."""
    lock = ctx.lock(f"vmm/{master.uid}")
    if lock.locked() or master.deleting:
        return Outcome()
    async with lock:
        return await _reconcile(ctx, master)


async def _reconcile(ctx: Context, master: Resource) -> Outcome:
    spec = VmMasterSpec.from_dict(master.spec)
    namespace = master.namespace or ""
    outcome = Outcome()
    if master.status.get("phase") == "Ready":  # read-only from now on
        # The periodic count of clones and dependants reads the watch-fed index, not a LIST.
        _count(master, spec, await fleetindex.virtualnodes(ctx), outcome)
        _summarise(outcome, ready=True, reason=CAPTURED, message=_ready_message(master.status))
        return outcome
    # The capture reads the source node whole (and sees a clone created a moment ago).
    nodes = await ctx.blocking(ctx.kube.list_cluster_objects, "virtualnodes")
    _count(master, spec, nodes, outcome)
    source = next(
        (
            n
            for n in nodes
            if n["metadata"]["name"] == spec.source_node
            and n["metadata"].get("namespace") == namespace
        ),
        None,
    )
    outcome.status["phase"] = master.status.get("phase") or "Pending"
    if source is None:
        message = f"VirtualNode {namespace}/{spec.source_node} does not exist; nothing captured"
        _summarise(outcome, ready=False, reason=SOURCE_NOT_FOUND, message=message)
        outcome.requeue_after, outcome.retry_message = RETRY * 2, message
        return outcome
    source_res = Resource.from_body(source)
    host_name = source_res.status.get("host")
    if not host_name:
        message = f"VirtualNode {spec.source_node} is not placed on a host yet"
        _summarise(outcome, ready=False, reason=SOURCE_NOT_PLACED, message=message)
        outcome.requeue_after, outcome.retry_message = RETRY, message
        return outcome
    try:
        async with ctx.lock(f"vn/{source_res.uid}"):  # the source is not started meanwhile
            await _capture(ctx, master, spec, source_res, str(host_name), outcome)
        _count(master, spec, nodes, outcome, started=bool(outcome.status.get("host")))
    except TemporaryError as error:
        message = f"KvmHost {host_name}: {error.message}"
        _summarise(outcome, ready=False, reason="HostUnavailable", message=message)
        outcome.requeue_after, outcome.retry_message = RETRY, message
    except PermanentError:
        raise
    except KvmfleetError as error:
        reason = error.reason if error.reason != "Error" else CAPTURE_FAILED
        message = f"capture from {spec.source_node}: {error.message}"
        outcome.warn(CAPTURE_FAILED, message)
        _summarise(outcome, ready=False, reason=reason, message=message)
        outcome.status["phase"] = "Failed"
        outcome.requeue_after, outcome.retry_message = RETRY * 2, message
    return outcome


def _count(
    master: Resource,
    spec: VmMasterSpec,
    nodes: list[dict[str, Any]],
    outcome: Outcome,
    *,
    started: bool = False,
) -> None:
    namespace = master.namespace or ""
    attached = _attached_source(master, spec) or (started and spec.mode is CloneMode.ATTACHED)
    source = spec.source_node if attached else None
    found = dependants(namespace, master.name, nodes, attached_source=source)
    outcome.status["clones"] = clone_count(namespace, master.name, nodes)
    outcome.status["dependants"] = [str(d) for d in found]


def _attached_source(master: Resource, spec: VmMasterSpec) -> bool:
    """Attached mode and the rebase may have happened (capture started)."""
    return spec.mode is CloneMode.ATTACHED and bool(master.status.get("host"))


def _ready_message(status: Mapping[str, Any]) -> str:
    disks = ", ".join(str(d.get("path")) for d in status.get("disks") or [])
    return f"captured on KvmHost {status.get('host')}: {disks}"


def master_location(
    namespace: str,
    master: str,
    disk: str,
    storage: StorageURL,
    *,
    host: KvmHostSpec,
    mount_root: str,
) -> DiskLocation:
    """Where one master image lives, as ``host`` reaches it."""
    return file_location(
        storage,
        master_file_name(namespace, master, disk),
        nfs_access=host.nfs_access,
        mount_root=mount_root,
    )


async def _capture(  # noqa: PLR0917 - the capture's whole context
    ctx: Context,
    master: Resource,
    spec: VmMasterSpec,
    source: Resource,
    host_name: str,
    outcome: Outcome,
) -> None:
    namespace = master.namespace or ""
    mount_root = ctx.settings.mount_root
    host = await open_host(ctx, host_name)
    source_spec = VirtualNodeSpec.from_dict(source.spec)
    grant = HostGrant.of(host.name, host.spec)
    if grant.allowed_namespaces and namespace not in grant.allowed_namespaces:
        raise PermanentError(
            f"KvmHost {host.name} does not allow namespace {namespace}", reason="NotAllowed"
        )
    refused = storage_refusal(spec.storage, grant, "spec.storage") if spec.storage else None
    if refused is not None:
        raise PermanentError(refused.message, reason="NotAllowed")
    guests = await host.guests()
    try:
        state: str | None = str(await ctx.blocking(guests.state, source.name))
    except NotFoundError:
        state = None
    why = capture_refusal(state)
    if why is not None:
        message = f"VirtualNode {source.name}: {why}"
        if _reason_of(master) != SOURCE_RUNNING:
            outcome.warn(SOURCE_RUNNING, message)
        _summarise(outcome, ready=False, reason=SOURCE_RUNNING, message=message)
        outcome.requeue_after, outcome.retry_message = RETRY, message
        return
    sources = vmdisks.locate(source.name, source_spec, host.spec, mount_root)
    plan: list[tuple[str, DiskLocation, DiskLocation]] = []
    for disk, where in zip(source_spec.disks, sources, strict=True):
        if where.source_type is DiskSourceType.BLOCK:
            raise KvmfleetError(f"disk {disk.name} is the block device {where.path}: not captured")
        storage = spec.storage or where.storage
        plan.append(
            (
                disk.name,
                where,
                master_location(
                    namespace,
                    master.name,
                    disk.name,
                    storage,
                    host=host.spec,
                    mount_root=mount_root,
                ),
            )
        )
    if not plan:
        raise KvmfleetError(f"VirtualNode {source.name} has no disk to capture")
    started = {
        "phase": "Capturing",
        "host": host.name,
        "storage": str(spec.storage or plan[0][2].storage),
        "disks": [
            {"name": n, "url": str(m.storage), "path": m.qemu_img_target} for n, _, m in plan
        ],
    }
    if master.status.get("host") != host.name or master.status.get("phase") != "Capturing":
        await ctx.blocking(ctx.kube.patch_status, "vmmasters", master.name, namespace, started)
        outcome.note(CAPTURING, f"capturing {source.name} on KvmHost {host.name} ({spec.mode})")
    outcome.status.update(started)
    me = Owner(namespace, master.name, master.uid)
    disks = []
    for name, src, dst in plan:
        disks.append(await _capture_disk(ctx, host, me, spec.mode, name, src, dst, outcome))
    outcome.status["disks"] = disks
    await _finish(ctx, master, spec, source, source_spec, outcome)


async def _capture_disk(  # noqa: PLR0917 - one disk's whole context
    ctx: Context,
    host: PlacedHost,
    me: Owner,
    mode: CloneMode,
    name: str,
    src: DiskLocation,
    dst: DiskLocation,
    outcome: Outcome,
) -> dict[str, object]:
    source_target, master_target = src.qemu_img_target, dst.qemu_img_target
    chain = await _chain(host, source_target)
    verdict = await vmdisks.probe(host, dst, ctx.settings.mount_root)
    if verdict.existence is Existence.UNKNOWN:
        raise TemporaryError(f"{master_target}: {verdict.message}", reason=verdict.reason)
    present = verdict.existence is Existence.PRESENT
    if present and verdict.owner != me:
        raise KvmfleetError(
            f"{master_target} exists and belongs to {verdict.owner or 'no one'}; it is not "
            "used or overwritten (remove it, or name the VmMaster differently)",
        )
    steps = capture_steps(
        mode,
        master_present=present,
        source_backing=chain[0].backing_filename,
        master_target=master_target,
    )
    if Step.COPY in steps:
        await vmdisks.write_owner(host, dst, me)  # first: a crash leaves a record of ours

        async def verify(partial: str) -> None:
            await imagefiles.compare(host, source_target, partial)

        await imagefiles.publish(
            host,
            dst,
            lambda partial: imagefiles.copy_image(host, source_target, partial),
            verify,
            failpoint="capture-after-copy",
            mode=MASTER_MODE,
        )
        outcome.note("Captured", f"{source_target} copied to {master_target} and verified")
        failpoints.hit("capture-after-rename")
    if Step.REBASE in steps:
        await imagefiles.rebase(host, source_target, master_target)
        failpoints.hit("capture-after-rebase")
        outcome.note("Rebased", f"{source_target} is now an overlay of {master_target}")
    if mode is CloneMode.ATTACHED:
        await imagefiles.compare(host, source_target, master_target)  # the data is unchanged
    info = await host.session.run(hostcmds.qemu_img_info(master_target))
    image = facts.parse_qemu_img_info(info.stdout)
    return {
        "name": name,
        "url": str(dst.storage),
        "path": master_target,
        "format": image.format,
        "virtualSizeBytes": image.virtual_size,
        "actualSizeBytes": image.actual_size,
    }


async def _chain(host: PlacedHost, target: str) -> list[facts.ImageInfo]:
    try:
        return await vmdisks.read_chain(host, target)
    except vmdisks.RefusedError as refused:
        raise KvmfleetError(f"{refused.text} ({refused.reason})", reason=CAPTURE_FAILED) from None


async def read_master(ctx: Context, namespace: str, name: str) -> dict[str, Any] | None:
    """One VmMaster, read by name (never a LIST of them all); None when it does not exist."""
    try:
        obj: dict[str, Any] = await ctx.blocking(ctx.kube.get_object, "vmmasters", name, namespace)
    except NotFoundError:
        return None
    return obj


async def _finish(  # noqa: PLR0917 - the capture's whole context
    ctx: Context,
    master: Resource,
    spec: VmMasterSpec,
    source: Resource,
    source_spec: VirtualNodeSpec,
    outcome: Outcome,
) -> None:
    body = await read_master(ctx, master.namespace or "", master.name) or {}
    if (body.get("metadata") or {}).get("uid") != master.uid:
        body = {}
    who = originator((body.get("metadata") or {}).get("managedFields"))
    outcome.status.update(
        {
            "phase": "Ready",
            "sourceNode": source.name,
            "mode": str(spec.mode),
            "os": source_spec.os,
            "arch": source_spec.arch,
            "profile": source_spec.profile,
            "nics": [
                {"bridge": n.get("bridge"), "model": n.get("model")}
                for n in source.status.get("nics") or []
            ],
            "vintage": master.status.get("vintage") or _now(),
            "originator": who,
        }
    )
    message = _ready_message(outcome.status)
    outcome.note(CAPTURED, f"master captured from {source.name} ({spec.mode}): {message}")
    _summarise(outcome, ready=True, reason=CAPTURED, message=message)


def _reason_of(obj: Resource) -> str | None:
    for found in obj.status.get("conditions") or []:
        if found.get("type") == cond.READY:
            return str(found.get("reason"))
    return None


# --- deletion -------------------------------------------------------------------------------


async def remove(ctx: Context, master: Resource) -> Outcome:
    """Wait while VirtualNodes depend on the master; then delete its images unless some
    image still names one as backing file (then it is kept and the Event says so)."""
    async with ctx.lock(f"vmm/{master.uid}"):
        return await _remove(ctx, master)


async def _remove(ctx: Context, master: Resource) -> Outcome:
    spec = VmMasterSpec.from_dict(master.spec)
    namespace = master.namespace or ""
    outcome = Outcome()
    nodes = await ctx.blocking(ctx.kube.list_cluster_objects, "virtualnodes")
    source = spec.source_node if _attached_source(master, spec) else None
    found = dependants(namespace, master.name, nodes, attached_source=source)
    if found:
        names = ", ".join(str(d) for d in found)
        message = (
            f"deletion waits: VirtualNodes depend on this master image: {names}. It completes "
            "by itself once they are deleted"
        )
        if _reason_of(master) != DEPENDANTS_EXIST or _message_of(master) != message:
            outcome.warn(DEPENDANTS_EXIST, message)
        outcome.status["phase"] = "Terminating"
        outcome.status["dependants"] = [str(d) for d in found]
        _summarise(outcome, ready=False, reason=DEPENDANTS_EXIST, message=message)
        outcome.requeue_after, outcome.retry_message = DELETE_RETRY, message
        return outcome
    host_name = master.status.get("host")
    if not host_name or orphaning(master):
        if host_name:
            outcome.warn("Orphaned", f"{ORPHAN_ANNOTATION} is set: the master images stay")
        return outcome
    try:
        host = await open_host(ctx, str(host_name))
        kept, deleted = await _delete_images(ctx, master, spec, host)
    except KvmfleetError as error:
        message = f"deletion blocked: {error.message}; set {ORPHAN_ANNOTATION}=true to leave it"
        if _message_of(master) != message:
            outcome.warn("DeletionBlocked", message)
        outcome.status["phase"] = "Terminating"
        _summarise(outcome, ready=False, reason="DeletionBlocked", message=message)
        outcome.requeue_after, outcome.retry_message = DELETE_RETRY * 3, message
        return outcome
    if deleted:
        outcome.note("MasterDeleted", f"removed {', '.join(deleted)}")
    if kept:
        outcome.warn("MasterKept", f"not deleted: {'; '.join(kept)}")
    return outcome


def _message_of(obj: Resource) -> str | None:
    for found in obj.status.get("conditions") or []:
        if found.get("type") == cond.READY:
            return str(found.get("message"))
    return None


async def _delete_images(
    ctx: Context, master: Resource, spec: VmMasterSpec, host: PlacedHost
) -> tuple[list[str], list[str]]:
    """Paths from the master's names and the host's pools: only master files of this master."""
    namespace = master.namespace or ""
    mount_root = ctx.settings.mount_root
    me = Owner(namespace, master.name, master.uid)
    grant = HostGrant.of(host.name, host.spec)
    kept: list[str] = []
    deleted: list[str] = []
    for disk in master.status.get("disks") or []:
        storage = spec.storage or parse_storage_url(disk.get("url"), "status.disks[].url")
        refused = storage_refusal(storage, grant)
        where = master_location(
            namespace,
            master.name,
            str(disk.get("name")),
            storage,
            host=host.spec,
            mount_root=mount_root,
        )
        target = where.qemu_img_target
        if refused is not None:
            kept.append(f"{target} ({refused.message})")
            continue
        verdict = await vmdisks.probe(host, where, mount_root)
        if verdict.existence is Existence.UNKNOWN:
            raise KvmfleetError(f"{target}: {verdict.message}")
        if verdict.owner is not None and verdict.owner != me:
            kept.append(f"{target} (owned by {verdict.owner})")
            continue
        partial = imagefiles.sibling(where, partial_name(where.file_name or ""))
        if verdict.existence is Existence.PRESENT:
            users = await _backing_users(ctx, host, where)
            if users:
                kept.append(f"{target} (backing file of {', '.join(users)})")
                continue
            await imagefiles.remove(host, where)
            deleted.append(target)
        await imagefiles.remove(host, partial)
        if verdict.owner == me:
            await imagefiles.remove(
                host, imagefiles.sibling(where, (where.file_name or "") + OWNER_SUFFIX)
            )
    return kept, deleted


async def _backing_users(ctx: Context, host: PlacedHost, where: DiskLocation) -> list[str]:
    """Images naming this master image as backing file, in every file pool of every host
    that can reach it (the master's host; for NFS each host listing the export), NFS
    Direct exports read through libnfs. A pool that cannot be listed (an unreachable
    host) counts as a user: the image is then kept."""
    mount_root = ctx.settings.mount_root
    storage = where.storage
    hosts: list[tuple[str, KvmHostSpec]] = [(host.name, host.spec)]
    if storage.kind is StorageKind.NFS:
        for obj in await ctx.blocking(ctx.kube.list_cluster_objects, "kvmhosts"):
            name = obj["metadata"]["name"]
            if name == host.name:
                continue
            try:
                other_spec, _ = await read_host(ctx, name)
            except KvmfleetError:
                return [f"images on KvmHost {name} (its spec cannot be read)"]
            if storage in {p.url for p in other_spec.storage_pools}:
                hosts.append((name, other_spec))
    users: list[str] = []
    scanned: set[str] = set()
    for name, host_spec in hosts:
        # The master file's path as this host sees it, and every directory it keeps files in.
        seen_as = file_location(
            storage, where.file_name or "", nfs_access=host_spec.nfs_access, mount_root=mount_root
        )
        directories = [
            d
            for pool in host_spec.storage_pools
            if pool.url.holds_files
            and (
                d := storage_directory(
                    pool.url, nfs_access=host_spec.nfs_access, mount_root=mount_root
                )
            )
        ]
        exports = [
            p.url
            for p in host_spec.storage_pools
            if p.url.kind is StorageKind.NFS and host_spec.nfs_access is NfsAccess.DIRECT
        ]
        try:
            other = host if name == host.name else await open_host(ctx, name)
            scans = [(d, None) for d in directories] + [(str(e), e) for e in exports]
            for directory, export in scans:
                if export is not None and str(export) in scanned:
                    continue  # one export is the same files whichever host lists it
                scan = await imagefiles.backed_by(other, directory, seen_as.path, export)
                if export is not None:
                    scanned.add(str(export))
                if scan.error:
                    users.append(f"images of {directory} on {name} ({scan.error})")
                users.extend(f"{u} on {name}" for u in scan.users)
        except KvmfleetError as error:
            users.append(f"images on KvmHost {name} (unreachable: {error.message})")
    return users
