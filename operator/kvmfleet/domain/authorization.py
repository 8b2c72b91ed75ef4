"""Authorization: may a VirtualNode, in its namespace, use a KvmHost, its bridges, its storage.

:func:`authorize` is the one answer to that question. It is pure (it looks at specs only,
nothing on a host) and is asked by placement (each candidate host), by every pass over a
placed VM (an edit of the spec or of the host's spec is judged again), and by removal
(which disks may be deleted). It returns every refusal, each with the field it is about
and a precise reason; an empty tuple means "allowed".

The rules, from the KvmHost's spec:

* namespace: ``spec.allowedNamespaces`` empty allows every namespace, else only those
  listed.
* bridge: only a bridge named in the host's ``spec.bridges`` (never, say, the management
  bridge the host happens to have).
* storage: only one of the host's ``spec.storagePools``, compared in canonical form
  (``parse_storage_url`` normalises ``//`` and ``.``, refuses ``..``):

  - ``dir:`` exactly a dir pool's directory. Not a subdirectory: a subdirectory may be a
    symbolic link out of the pool, which no pure check can see; and ``/var/lib/vms2`` is
    not inside ``/var/lib/vms`` (paths compare whole components).
  - ``nfs:`` exactly a pool's export (same server, same path).
  - ``phy:`` exactly a device a ``phy:`` pool lists; ``phy:/dev/sda`` on a host whose pools
    do not list it is refused.
  - a disk without ``storage`` goes to the host's first file pool; refused when there is
    none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from kvmfleet.domain.specs import KvmHostSpec, VirtualNodeSpec
from kvmfleet.domain.storage_urls import StorageKind, StorageURL, parse_storage_url
from kvmfleet.errors import InvalidSpecError

REASON = "NotAllowed"
"""The condition reason of a refused use (Authorized=False, Scheduled=False)."""


class RefusalKind(StrEnum):
    """What a refusal is about."""

    NAMESPACE = "Namespace"
    BRIDGE = "Bridge"
    STORAGE = "Storage"


@dataclass(frozen=True)
class Refusal:
    """One thing the VM may not use: the field it comes from and why."""

    kind: RefusalKind
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class HostGrant:
    """What a KvmHost lets VMs use (from its spec only)."""

    name: str
    allowed_namespaces: frozenset[str]
    bridges: frozenset[str]
    pools: tuple[StorageURL, ...]

    @classmethod
    def of(cls, name: str, spec: KvmHostSpec) -> HostGrant:
        """The grant of a KvmHost named ``name`` with ``spec``."""
        return cls(
            name=name,
            allowed_namespaces=frozenset(spec.allowed_namespaces),
            bridges=frozenset(bridge.name for bridge in spec.bridges),
            pools=tuple(pool.url for pool in spec.storage_pools),
        )

    @property
    def default_storage(self) -> StorageURL | None:
        """Where disks without ``storage`` go: the first pool that holds files."""
        return next((pool for pool in self.pools if pool.holds_files), None)


def namespace_refusal(namespace: str, grant: HostGrant) -> Refusal | None:
    """Why VMs of ``namespace`` may not run on the host, or None."""
    if grant.allowed_namespaces and namespace not in grant.allowed_namespaces:
        allowed = ", ".join(sorted(grant.allowed_namespaces))
        return Refusal(
            RefusalKind.NAMESPACE,
            "metadata.namespace",
            f"namespace {namespace} may not use KvmHost {grant.name} "
            f"(its allowedNamespaces: {allowed})",
        )
    return None


def bridge_refusal(bridge: str, grant: HostGrant, field: str = "bridge") -> Refusal | None:
    """Why a NIC may not be on ``bridge`` of the host, or None."""
    if bridge in grant.bridges:
        return None
    listed = ", ".join(sorted(grant.bridges)) or "none"
    return Refusal(
        RefusalKind.BRIDGE,
        field,
        f"bridge {bridge} is not one of KvmHost {grant.name}'s spec.bridges ({listed})",
    )


def storage_refusal(
    storage: StorageURL | str | None, grant: HostGrant, field: str = "storage"
) -> Refusal | None:
    """Why a disk may not live on ``storage`` of the host, or None.

    ``storage`` may be a parsed URL, the text of one (parsed here: a URL that does not
    parse is refused with the parser's reason) or None (the host's first file pool).
    """
    if storage is None:
        if grant.default_storage is None:
            return Refusal(
                RefusalKind.STORAGE,
                field,
                f"no storage given and KvmHost {grant.name} has no storage pool for files",
            )
        return None
    if isinstance(storage, str):
        try:
            storage = parse_storage_url(storage, field)
        except InvalidSpecError as error:
            return Refusal(RefusalKind.STORAGE, field, error.message)
    if storage in grant.pools:
        return None
    return Refusal(RefusalKind.STORAGE, field, _why_not(storage, grant))


def _why_not(storage: StorageURL, grant: HostGrant) -> str:
    same_kind = [pool for pool in grant.pools if pool.kind is storage.kind]
    listed = ", ".join(str(pool) for pool in same_kind) or "none"
    if storage.kind is StorageKind.PHY:
        return (
            f"{storage} is not a block device KvmHost {grant.name} lists in its "
            f"storagePools (phy pools: {listed})"
        )
    if storage.kind is StorageKind.DIR and any(
        _inside(storage.path, pool.path) for pool in same_kind
    ):
        return (
            f"{storage} is a subdirectory of a storage pool of KvmHost {grant.name}; "
            f"only a pool's own directory may be used (dir pools: {listed})"
        )
    return (
        f"{storage} is not a storage pool of KvmHost {grant.name} ({storage.kind} pools: {listed})"
    )


def _inside(path: str, directory: str) -> bool:
    """True if ``path`` is strictly below ``directory`` (whole components)."""
    if directory == "/":
        return path != "/"
    return path.startswith(directory.rstrip("/") + "/")


def authorize_use(
    namespace: str,
    bridges: Iterable[tuple[str, str]],
    disks: Iterable[tuple[str, StorageURL | str | None]],
    grant: HostGrant,
) -> tuple[Refusal, ...]:
    """Every refusal for a VM of ``namespace`` using ``bridges`` and ``disks`` on the host.

    ``bridges``: (field, bridge name) per NIC; ``disks``: (field, storage) per disk.
    """
    refusals: list[Refusal] = []
    if (refused := namespace_refusal(namespace, grant)) is not None:
        refusals.append(refused)
    for field, bridge in bridges:
        if (refused := bridge_refusal(bridge, grant, field)) is not None:
            refusals.append(refused)
    for field, storage in disks:
        if (refused := storage_refusal(storage, grant, field)) is not None:
            refusals.append(refused)
    return tuple(refusals)


def authorize(namespace: str, spec: VirtualNodeSpec, grant: HostGrant) -> tuple[Refusal, ...]:
    """Every refusal for a VirtualNode ``spec`` in ``namespace`` on the host (empty: allowed)."""
    return authorize_use(
        namespace,
        ((f"spec.nics[{i}].bridge", nic.bridge) for i, nic in enumerate(spec.nics)),
        ((f"spec.disks[{i}].storage", disk.storage) for i, disk in enumerate(spec.disks)),
        grant,
    )


def summary(refusals: Sequence[Refusal]) -> str:
    """One message naming every refusal."""
    return "; ".join(str(refusal) for refusal in refusals)
