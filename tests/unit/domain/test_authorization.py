"""The one authorization function: namespace, bridges and storage a host allows a VM."""

from __future__ import annotations

import pytest

from kvmfleet.domain.authorization import (
    HostGrant,
    RefusalKind,
    authorize,
    bridge_refusal,
    namespace_refusal,
    storage_refusal,
)
from kvmfleet.domain.specs import KvmHostSpec, VirtualNodeSpec

HOST = KvmHostSpec.from_dict(
    {
        "address": "10.0.0.5",
        "sshKeySecretRef": {"name": "k", "namespace": "ops"},
        "hostKeyPolicy": "TrustOnFirstUse",
        "bridges": [{"name": "br0"}, {"name": "br-vms"}],
        "storagePools": [
            {"name": "vms", "url": "dir:///var/lib/vms"},
            {"name": "shared", "url": "nfs://10.0.0.1/srv/vms"},
            {"name": "lun", "url": "phy:/dev/sdb"},
        ],
        "allowedNamespaces": ["team-a", "team-b"],
    }
)
GRANT = HostGrant.of("kvmhost1", HOST)


@pytest.mark.parametrize(
    ("storage", "allowed", "words"),
    [
        # exactly a pool
        ("dir:///var/lib/vms", True, ""),
        ("nfs://10.0.0.1/srv/vms", True, ""),
        ("phy:/dev/sdb", True, ""),
        (None, True, ""),  # the host's first file pool
        # canonical forms of a pool are that pool
        ("dir:///var/lib//vms/", True, ""),
        ("dir:///var/lib/./vms", True, ""),
        ("nfs://10.0.0.1//srv/vms/", True, ""),
        # outside every pool
        ("dir:///etc", False, "not a storage pool of KvmHost kvmhost1"),
        ("dir:///", False, "not a storage pool"),
        ("dir:///var/lib", False, "not a storage pool"),
        # a prefix of the text is not a parent directory
        ("dir:///var/lib/vms2", False, "not a storage pool"),
        ("dir:///var/lib/vmsx/sub", False, "not a storage pool"),
        # below a pool: refused too (a subdirectory may be a symlink out of the pool)
        ("dir:///var/lib/vms/sub", False, "subdirectory"),
        ("dir:///var/lib/vms/link-to-etc", False, "subdirectory"),
        # '..' never gets out (nor in): refused by the parser, with its reason
        ("dir:///var/lib/vms/../../etc", False, "'..'"),
        ("dir:///var/lib/vms/..", False, "'..'"),
        ("phy:/dev/../etc/shadow", False, "'..'"),
        # block devices: only those a phy pool lists
        ("phy:/dev/sda", False, "not a block device KvmHost kvmhost1 lists"),
        ("phy:/dev/sdb1", False, "not a block device"),
        ("phy:/dev/sd", False, "not a block device"),
        ("phy:/etc/shadow", False, "block device"),
        # NFS: only the pool's export on the pool's server
        ("nfs://10.0.0.1/srv", False, "not a storage pool"),
        ("nfs://10.0.0.1/srv/vms/other", False, "not a storage pool"),
        ("nfs://10.0.0.2/srv/vms", False, "not a storage pool"),
        # a dir URL that names a pool's NFS path, or the other way round
        ("dir:///srv/vms", False, "not a storage pool"),
        ("nfs://10.0.0.1/var/lib/vms", False, "not a storage pool"),
        ("file:///var/lib/vms", False, "not a storage URL"),
    ],
)
def test_storage(storage: str | None, allowed: bool, words: str) -> None:
    refusal = storage_refusal(storage, GRANT, "spec.disks[0].storage")
    assert (refusal is None) == allowed, refusal
    if refusal is not None:
        assert refusal.kind is RefusalKind.STORAGE
        assert refusal.field == "spec.disks[0].storage"
        assert words in refusal.message, refusal.message


def test_no_file_pool_refuses_disks_without_storage() -> None:
    only_phy = HostGrant("h", frozenset(), frozenset(), (GRANT.pools[2],))
    refusal = storage_refusal(None, only_phy)
    assert refusal is not None and "no storage pool for files" in refusal.message


@pytest.mark.parametrize(
    ("bridge", "allowed"),
    [("br0", True), ("br-vms", True), ("br1", False), ("virbr0", False), ("br", False)],
)
def test_bridge(bridge: str, allowed: bool) -> None:
    refusal = bridge_refusal(bridge, GRANT)
    assert (refusal is None) == allowed
    if refusal is not None:
        assert f"bridge {bridge} is not one of KvmHost kvmhost1's spec.bridges" in refusal.message


@pytest.mark.parametrize(
    ("namespace", "allowed_namespaces", "allowed"),
    [
        ("team-a", ("team-a", "team-b"), True),
        ("team-c", ("team-a", "team-b"), False),
        ("team", ("team-a",), False),
        ("anything", (), True),
    ],
)
def test_namespace(namespace: str, allowed_namespaces: tuple[str, ...], allowed: bool) -> None:
    grant = HostGrant("h", frozenset(allowed_namespaces), frozenset(), ())
    refusal = namespace_refusal(namespace, grant)
    assert (refusal is None) == allowed
    if refusal is not None:
        assert f"namespace {namespace} may not use KvmHost h" in refusal.message


def test_every_refusal_is_returned_with_its_field() -> None:
    spec = VirtualNodeSpec.from_dict(
        {
            "nics": [{"bridge": "br0"}, {"bridge": "mgmt"}],
            "disks": [
                {"name": "hda", "size": "1Gi"},
                {"name": "hdb", "size": "1Gi", "storage": "phy:/dev/sda"},
                {"name": "hdc", "size": "1Gi", "storage": "dir:///etc"},
            ],
        }
    )
    refusals = authorize("team-z", spec, GRANT)
    assert [(r.kind, r.field) for r in refusals] == [
        (RefusalKind.NAMESPACE, "metadata.namespace"),
        (RefusalKind.BRIDGE, "spec.nics[1].bridge"),
        (RefusalKind.STORAGE, "spec.disks[1].storage"),
        (RefusalKind.STORAGE, "spec.disks[2].storage"),
    ]
    assert (
        authorize("team-a", VirtualNodeSpec.from_dict({"nics": [{"bridge": "br0"}]}), GRANT) == ()
    )


def test_an_empty_host_spec_allows_nothing_but_the_namespace() -> None:
    bare = HostGrant.of(
        "bare",
        KvmHostSpec.from_dict(
            {
                "address": "h",
                "sshKeySecretRef": {"name": "k", "namespace": "ops"},
                "hostKeyPolicy": "TrustOnFirstUse",
            }
        ),
    )
    spec = VirtualNodeSpec.from_dict(
        {"nics": [{"bridge": "br0"}], "disks": [{"name": "hda", "size": "1Gi"}]}
    )
    kinds = [r.kind for r in authorize("default", spec, bare)]
    assert kinds == [RefusalKind.BRIDGE, RefusalKind.STORAGE]
