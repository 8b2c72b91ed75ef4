"""The golden-file cases of the domain XML builder: inputs, by case name."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kvmfleet.domain.domainxml.build import build_domain_xml
from kvmfleet.domain.domainxml.disk import DiskIdentity
from kvmfleet.domain.guestcpu import HOST_MODEL, HostCpu, Trial, resolve
from kvmfleet.domain.specs import VirtualNodeSpec
from kvmfleet.domain.storage_urls import NfsAccess, disk_location, parse_storage_url

UID = "0b5d5a32-8e4c-4d8a-9a53-2f1d3e0c6a11"
UUID = "6f1c9c1e-4f4e-4a43-9a43-0c3f7c5e7d11"
VALID_TO = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
DEFAULT_POOL = parse_storage_url("dir:///var/lib/libvirt/images")
KVM_HOST_CPU = HostCpu("kvm; test", (Trial(HOST_MODEL, works=True),))
"""The KVM host of these cases: its trial guest started with host-model."""
"""Where disks without ``storage`` go in these cases (the host's first pool)."""


@dataclass(frozen=True)
class Case:
    """One golden case: a VirtualNode spec dict and the other inputs of the builder."""

    spec: dict[str, Any]
    name: str = "kvm1"
    virt_type: str = "kvm"
    nfs_access: NfsAccess = NfsAccess.MOUNT
    macs: tuple[str, ...] = ("52:54:00:4a:1c:07",)
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> str:
        """The domain XML of this case."""
        return self.build_spec(VirtualNodeSpec.from_dict(self.spec))

    def build_spec(self, spec: VirtualNodeSpec) -> str:
        """The domain XML of this case's inputs around another spec."""
        locations = [
            disk_location(
                disk.storage or DEFAULT_POOL, self.name, disk.name, nfs_access=self.nfs_access
            )
            for disk in spec.disks
        ]
        options: dict[str, Any] = {
            "uuid": UUID,
            "generation": 1,
            "arch": "x86_64",
            "vnc_password": "Xk3p9Qz1",
            "vnc_valid_to": VALID_TO,
            **self.options,
        }
        kvm = self.virt_type == "kvm"
        cpu = resolve(spec.cpu, KVM_HOST_CPU if kvm else None, kvm=kvm, host_name="kvmhost1")
        return build_domain_xml(
            spec,
            cpu=cpu,
            name=self.name,
            uid=UID,
            namespace="default",
            virt_type=self.virt_type,
            disks=locations,
            macs=list(self.macs),
            **options,
        )


# The xCAT KVM guide's kvm1: `mkdef kvm1 vmcpus=2 vmmemory=1024 vmnics=br0
# vmstorage=dir:///... serialport=0 serialspeed=115200`, `mkvm kvm1 -s 20G`.
XCAT_KVM1 = Case(
    spec={
        "hostRef": "kvmhost1",
        "cpus": 2,
        "memory": "1Gi",
        "nics": [{"bridge": "br0", "model": "virtio"}],
        "disks": [{"name": "hda", "size": "20Gi", "storage": "dir:///var/lib/libvirt/images"}],
        "serial": {"port": 0, "speed": 115200},
        "vnc": {"enabled": True},
        "bootOrder": ["network", "hd"],
    }
)

CASES: dict[str, Case] = {
    "xcat-kvm1": XCAT_KVM1,
    "nfs-direct-tcg": Case(
        spec={
            "cpus": 1,
            "memory": "512Mi",
            "nics": [{"bridge": "br0"}],
            "disks": [{"name": "hda", "size": "1Gi", "storage": "nfs://10.77.0.1/srv/vms"}],
        },
        name="kvm2",
        virt_type="qemu",
        nfs_access=NfsAccess.DIRECT,
        macs=("52:54:00:10:20:30",),
    ),
    "nfs-direct-identity": Case(
        spec={
            "memory": "512Mi",
            "disks": [{"name": "hda", "size": "1Gi", "storage": "nfs://nfs1.lab/export/vms"}],
            "vnc": {"enabled": False},
        },
        name="kvm3",
        nfs_access=NfsAccess.DIRECT,
        macs=(),
        options={"nfs_identity": DiskIdentity(user="libvirt-qemu", group="kvm")},
    ),
    "nfs-mount": Case(
        spec={
            "cpus": 2,
            "memory": "2Gi",
            "nics": [{"bridge": "br0"}],
            "disks": [{"name": "hda", "size": "20Gi", "storage": "nfs://10.77.0.1/srv/vms"}],
        },
        name="kvm4",
    ),
    "two-nics": Case(
        spec={
            "cpus": 2,
            "memory": "1Gi",
            "nics": [
                {"bridge": "br0", "model": "e1000"},
                {"bridge": "br1", "model": "rtl8139", "mac": "52:54:00:00:00:02"},
            ],
            "disks": [{"name": "hda", "size": "8Gi"}],
        },
        macs=("52:54:00:00:00:01", "52:54:00:00:00:02"),
    ),
    "phy-disk": Case(
        spec={
            "cpus": 4,
            "memory": "4Gi",
            "nics": [{"bridge": "br0"}],
            "disks": [{"name": "hda", "size": "1Gi", "storage": "phy:/dev/vg0/kvm1"}],
            "bootOrder": ["hd"],
        }
    ),
    "vnc-off": Case(spec={**XCAT_KVM1.spec, "vnc": {"enabled": False}}),
    "cpu-named-model": Case(spec={**XCAT_KVM1.spec, "cpu": {"mode": "custom", "model": "kvm64"}}),
    "cpu-hypervisor-default": Case(spec={**XCAT_KVM1.spec, "cpu": {"mode": "hypervisor-default"}}),
    "buses-and-serial": Case(
        spec={
            "cpus": 2,
            "memory": "1536Mi",
            "nics": [],
            "disks": [
                {"name": "root", "size": "10Gi", "bus": "scsi"},
                {"name": "data", "size": "100Gi", "bus": "scsi"},
                {"name": "hdc", "size": "1Gi", "bus": "ide"},
            ],
            "bootOrder": ["cdrom", "hd"],
            "serial": {"port": 1, "speed": 9600},
        },
        name="db1",
        macs=(),
        options={
            "uuid": None,
            "generation": 7,
            "machine": "pc-i440fx-7.2",
            "vnc_listen": "10.77.0.11",
        },
    ),
    "clone-without-sizes": Case(
        spec={
            "cpus": 2,
            "memory": "1Gi",
            "nics": [{"bridge": "br0"}],
            "disks": [{"name": "hda"}],
            "source": {"vmMaster": "kvmm", "mode": "Attached"},
        },
        name="kvm5",
        options={"vnc_password": None, "vnc_valid_to": None, "arch": None},
    ),
}
