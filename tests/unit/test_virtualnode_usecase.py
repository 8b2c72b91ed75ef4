"""kvmfleet.reconcile.virtualnodes.converge on an in-memory host, every error class of errors.py.

The domain operations are tests/contracts/memory_guests.MemoryGuests (the same contract
as the real adapter: tests/integration/test_guests_contract.py); the Kubernetes API is a
KubeApi that answers from a dict; blocking calls go through the real Context (threads,
per-host pools, deadlines). Placement and disks have their own use-case tests
(test_vmdisks_usecase.py) and are stubbed at their module boundary here. Each pass feeds
its status patch and Events back as the handler would, so "one Warning" and "no second
definition" are checked over several passes.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import libvirt
import pytest

from contracts.memory_guests import MemoryGuests
from kvmfleet.domain import conditions as cond
from kvmfleet.domain.specs import KvmHostSpec, VirtualNodeSpec
from kvmfleet.errors import (
    InvalidSpecError,
    KvmfleetError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from kvmfleet.handlers.common import new_events, outcome_for_error
from kvmfleet.kube.api import KubeApi
from kvmfleet.reconcile import hostusage, startbackoff, virtualnodes, vmdisks
from kvmfleet.reconcile.context import CallTimeoutError, Context
from kvmfleet.reconcile.hostaccess import PlacedHost
from kvmfleet.reconcile.outcome import Event, Outcome
from kvmfleet.reconcile.resource import Resource
from kvmfleet.reconcile.status import status_patch
from kvmfleet.reconcile.vmplacement import Placement, UnschedulableError
from kvmfleet.settings import Settings
from kvmfleet.virt.errors import (
    LibvirtPermanentError,
    LibvirtUnavailableError,
    StartFailedError,
    classify_start,
)
from kvmfleet.virt.guest import PowerState

HOST = "kvmhost1"
IMAGES = "/var/lib/kvmfleet/images"
QEMU_SAYS = (
    "internal error: qemu unexpectedly closed the monitor: 2026-11-30T03:00:00.000000Z "
    "qemu-system-x86_64: Could not access KVM kernel module: Permission denied"
)
HOST_SPEC = {
    "address": "10.0.0.5",
    "hostKeyPolicy": "TrustOnFirstUse",
    "sshKeySecretRef": {"name": "k", "namespace": "kvmfleet-system"},
    "storagePools": [{"name": "local", "url": f"dir://{IMAGES}"}],
}


def libvirt_error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, domain, message, 2, None, None, None, 0, 0)
    return error


def qemu_did_not_start() -> KvmfleetError:
    """What the real Guests.start raises when QEMU exits at once (see test_virt_errors)."""
    error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU, QEMU_SAYS)
    return classify_start(error, f"{HOST}: domain 'vm1': start")


def connection_lost() -> KvmfleetError:
    error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, "connection reset")
    return classify_start(error, f"{HOST}: domain 'vm1': start")


class MemoryKube(KubeApi):
    """The two reads a VirtualNode pass makes, from memory."""

    def __init__(self) -> None:
        super().__init__(core=None, custom=None)
        self.objects: dict[str, list[dict[str, Any]]] = {"virtualnodes": [], "kvmhosts": []}
        self.fail: list[Exception] = []

    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        if self.fail:
            raise self.fail.pop(0)
        return list(self.objects.get(plural, []))

    def get_object(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        if self.fail:
            raise self.fail.pop(0)
        return {"spec": HOST_SPEC, "status": {"capabilities": {"virtualization": "qemu"}}}


class MemoryHost(PlacedHost):
    """A connected host whose libvirt is a MemoryGuests."""

    memory: MemoryGuests

    async def guests(self) -> Any:
        return self.memory


@dataclass
class Fleet:
    """One VirtualNode on one in-memory host, and what its passes produced."""

    ctx: Context
    guests: MemoryGuests
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    spec: dict[str, Any] = field(
        default_factory=lambda: {
            "cpus": 1,
            "memory": "64Mi",
            "disks": [{"name": "hda", "size": "1Gi"}],
            "vnc": {"enabled": False},
            "runStrategy": "Always",
        }
    )
    connect_fails: list[Exception] = field(default_factory=list)
    placement_fails: list[Exception] = field(default_factory=list)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def node(self) -> Resource:
        return Resource(
            kind="VirtualNode",
            name="vm1",
            namespace="ns-a",
            uid=self.uid,
            generation=1,
            spec=self.spec,
            status=dict(self.status),
        )

    def run(self) -> Outcome:
        """One pass as the handler runs it: errors become their outcome, status is applied."""
        node = self.node()
        try:
            outcome = asyncio.run(virtualnodes.converge(self.ctx, node))
        except KvmfleetError as error:
            outcome = outcome_for_error(error)
        self.events += new_events(self.status, outcome)
        self.status.update(status_patch(self.status, outcome, generation=1, now=datetime.now(UTC)))
        return outcome

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status.get("conditions", []) if c["type"] == type_)

    def summary(self) -> tuple[str, str, str, str]:
        """(phase, Ready status, Ready reason, which of Reconciling/Stalled holds)."""
        ready = self.condition(cond.READY)
        holds = [
            t for t in (cond.RECONCILING, cond.STALLED) if self.condition(t)["status"] == "True"
        ]
        return self.status.get("phase", ""), ready["status"], ready["reason"], ",".join(holds)

    def warnings(self) -> list[str]:
        return [e.reason for e in self.events if e.type == "Warning"]


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    settings = Settings(host_workers=2, kube_workers=2, libvirt_call_timeout=2.0)  # type: ignore[call-arg]
    ctx = Context(settings=settings, kube=MemoryKube(), executor=ThreadPoolExecutor(max_workers=2))
    guests = MemoryGuests(label=HOST)
    world = Fleet(ctx, guests)

    async def ensure_placed(ctx: Any, node: Resource, spec: Any) -> Placement:
        if world.placement_fails:
            raise world.placement_fails.pop(0)
        return Placement(HOST, ())

    async def connect_host(ctx: Any, name: str, spec: Any, status: Any) -> PlacedHost:
        if world.connect_fails:
            raise world.connect_fails.pop(0)
        host = MemoryHost(name, spec, status, session=_Session(ctx))  # type: ignore[arg-type]
        host.memory = guests
        return host

    async def ensure_disks(
        host: PlacedHost,
        me: Any,
        spec: VirtualNodeSpec,
        mount_root: str,
        *,
        running: bool,
        clone: Any = None,
    ) -> vmdisks.DiskReport:
        assert clone is None  # these VMs are not clones
        locations = vmdisks.locate(me.name, spec, KvmHostSpec.from_dict(HOST_SPEC), mount_root)
        status = [
            {"name": d.name, "path": loc.path} for d, loc in zip(spec.disks, locations, strict=True)
        ]
        return vmdisks.DiskReport(locations=locations, status=status)  # type: ignore[arg-type]

    async def publish(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(virtualnodes, "ensure_placed", ensure_placed)
    monkeypatch.setattr(virtualnodes, "connect_host", connect_host)
    monkeypatch.setattr(vmdisks, "ensure", ensure_disks)
    monkeypatch.setattr(hostusage, "publish", publish)
    yield world
    ctx.executor.shutdown(wait=False, cancel_futures=True)
    for pool in ctx.host_executors.values():
        pool.shutdown(wait=False, cancel_futures=True)
    if ctx.kube_executor is not None:
        ctx.kube_executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Session:
    ctx: Context


# --- the normal path and not-found ------------------------------------------------------


def test_a_missing_domain_is_defined_once_and_started(fleet: Fleet) -> None:
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")
    assert fleet.guests.count("define") == 1 and fleet.guests.count("start") == 1
    fleet.run()  # converged: nothing is done again
    assert fleet.guests.count("define") == 1 and fleet.guests.count("start") == 1
    assert [e.reason for e in fleet.events] == ["Defined", "Started"]


# --- StartFailed: QEMU does not start -------------------------------------------------


def test_qemu_that_does_not_start_is_start_failed_not_an_unavailable_host(fleet: Fleet) -> None:
    fleet.guests.fail["start"] = [qemu_did_not_start()]
    outcome = fleet.run()
    assert isinstance(qemu_did_not_start(), StartFailedError)
    assert fleet.summary() == ("Stopped", "False", "StartFailed", cond.RECONCILING)
    assert fleet.status["powerState"] == "Off"
    ready = fleet.condition(cond.READY)
    assert "Could not access KVM kernel module: Permission denied" in ready["message"]
    assert fleet.condition(virtualnodes.RUNNING)["reason"] == "StartFailed"
    assert outcome.requeue_after is not None and 0 < outcome.requeue_after <= 15
    assert fleet.warnings() == ["StartFailed"]
    # Within the backoff the start is not tried again, and no second Warning is posted.
    fleet.run()
    fleet.run()
    assert fleet.guests.count("start") == 1 and fleet.guests.count("define") == 1
    assert fleet.warnings() == ["StartFailed"]
    assert fleet.summary() == ("Stopped", "False", "StartFailed", cond.RECONCILING)


def test_start_failures_back_off_then_recover(fleet: Fleet) -> None:
    fleet.guests.fail["start"] = [qemu_did_not_start(), qemu_did_not_start()]
    delays = []
    for _ in range(2):
        delays.append(fleet.run().requeue_after)
        fleet.ctx.start_failures[fleet.uid] = _due(fleet.ctx.start_failures[fleet.uid])
    assert fleet.ctx.start_failures[fleet.uid].count == 2
    assert delays[0] is not None and delays[1] is not None and delays[1] > delays[0]
    assert "2 failed start(s)" in fleet.condition(cond.READY)["message"]
    fleet.run()  # the host was repaired: the next try starts it
    assert fleet.summary() == ("Running", "True", "Running", "")
    assert fleet.uid not in fleet.ctx.start_failures
    assert fleet.guests.count("start") == 3 and fleet.guests.count("define") == 1
    assert fleet.warnings() == ["StartFailed"]


def _due(failures: startbackoff.StartFailures) -> startbackoff.StartFailures:
    return startbackoff.StartFailures(failures.count, failures.message, 0.0)


def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [startbackoff.delay_after(n) for n in (1, 2, 3, 4, 5, 6, 10)] == [
        15,
        30,
        60,
        120,
        240,
        300,
        300,
    ]
    state = startbackoff.failed(None, "m", now=100.0)
    assert startbackoff.waiting(state, 101.0) == pytest.approx(14.0)
    assert startbackoff.waiting(state, 115.0) is None


# --- TemporaryError: the host or the connection does not answer ------------------------


def test_a_connection_lost_during_the_start_is_host_unavailable(fleet: Fleet) -> None:
    error = connection_lost()
    assert isinstance(error, LibvirtUnavailableError)
    fleet.guests.fail["start"] = [error]
    fleet.run()
    assert fleet.summary() == ("Unknown", "False", "HostUnavailable", cond.RECONCILING)
    assert fleet.status["powerState"] == "Unknown"
    assert fleet.warnings() == []
    fleet.run()  # partial failure: defined, not started. The retry starts it, no 2nd define
    assert fleet.summary() == ("Running", "True", "Running", "")
    assert fleet.guests.count("define") == 1 and fleet.guests.count("start") == 2


def test_an_unreachable_host_is_unknown_and_nothing_is_made(fleet: Fleet) -> None:
    fleet.connect_fails = [TemporaryError("ssh: no route to host", reason="HostUnreachable")]
    outcome = fleet.run()
    assert fleet.summary() == ("Unknown", "False", "HostUnavailable", cond.RECONCILING)
    assert fleet.condition(virtualnodes.RUNNING)["status"] == "Unknown"
    assert fleet.guests.calls == [] and outcome.requeue_after == virtualnodes.RETRY
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")


def test_a_running_vm_whose_host_stops_answering_is_unknown_never_recreated(
    fleet: Fleet,
) -> None:
    fleet.run()
    fleet.guests.fail["state"] = [LibvirtUnavailableError("keepalive timeout")]
    fleet.run()
    assert fleet.summary() == ("Unknown", "False", "HostUnavailable", cond.RECONCILING)
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")
    assert fleet.guests.count("define") == 1 and fleet.guests.count("start") == 1
    assert fleet.guests.count("undefine") == 0 and fleet.guests.count("destroy") == 0


def test_a_hung_libvirt_call_times_out_into_unknown(fleet: Fleet) -> None:
    fleet.run()
    release = threading.Event()
    real_state = fleet.guests.state

    def hung(name: str) -> PowerState:
        release.wait(10)
        return real_state(name)

    fleet.guests.state = hung  # type: ignore[method-assign]
    try:
        fleet.run()
    finally:
        release.set()
        fleet.guests.state = real_state  # type: ignore[method-assign]
    assert fleet.summary() == ("Unknown", "False", "HostUnavailable", cond.RECONCILING)
    assert "did not return within 2s" in fleet.condition(cond.READY)["message"]
    assert issubclass(CallTimeoutError, TemporaryError)
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")


def test_an_api_that_does_not_answer_is_retried(fleet: Fleet) -> None:
    assert isinstance(fleet.ctx.kube, MemoryKube)
    fleet.ctx.kube.fail = [TemporaryError("the API server did not answer", reason="ApiUnavailable")]
    outcome = fleet.run()
    assert fleet.summary() == ("", "False", "ApiUnavailable", cond.RECONCILING)
    assert outcome.requeue_after == 15.0 and fleet.guests.calls == []
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")


# --- PermanentError / InvalidSpecError: a person must act ------------------------------


def test_libvirt_refusing_the_definition_is_stalled_with_one_warning(fleet: Fleet) -> None:
    refused = LibvirtPermanentError("XML error: unsupported configuration")
    fleet.guests.fail["define"] = [refused, refused]
    fleet.run()
    fleet.run()
    assert fleet.summary()[1:] == ("False", "LibvirtRefused", cond.STALLED)
    assert fleet.warnings() == ["LibvirtRefused"]
    fleet.run()  # fixed (e.g. the host upgraded): Stalled clears by itself
    assert fleet.summary() == ("Running", "True", "Running", "")


def test_an_invalid_spec_is_stalled(fleet: Fleet) -> None:
    fleet.placement_fails = [InvalidSpecError("disk hda: bad size")]
    fleet.run()
    assert fleet.summary()[1:] == ("False", "InvalidSpec", cond.STALLED)
    assert fleet.warnings() == ["InvalidSpec"] and fleet.guests.calls == []


def test_a_refused_host_key_keeps_its_reason_and_stalls(fleet: Fleet) -> None:
    fleet.connect_fails = [PermanentError("host key differs", reason="HostKeyMismatch")]
    fleet.run()
    assert fleet.summary() == ("Unknown", "False", "HostKeyMismatch", cond.STALLED)
    assert fleet.guests.calls == []


# --- NotFoundError and other classes ----------------------------------------------------


def test_a_domain_that_vanishes_between_calls_is_not_concluded(fleet: Fleet) -> None:
    # Not found where the use-case expects the domain (it just defined it): an unclassified
    # not-found is retried, never turned into a second definition in the same pass.
    fleet.guests.fail["xml"] = [NotFoundError("gone"), NotFoundError("gone")]
    fleet.run()
    assert fleet.summary()[1:] == ("False", "NotFound", cond.RECONCILING)
    assert fleet.guests.count("define") == 1
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")
    assert fleet.guests.count("define") == 1


def test_an_unclassified_error_is_retried(fleet: Fleet) -> None:
    fleet.guests.fail["start"] = [KvmfleetError("something odd")]
    outcome = fleet.run()
    assert fleet.summary()[1:] == ("False", "Error", cond.RECONCILING)
    assert outcome.requeue_after == 30.0 and fleet.warnings() == []
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")


def test_no_host_free_is_scheduling(fleet: Fleet) -> None:
    fleet.placement_fails = [UnschedulableError("no Ready host", reason="NoReadyHost")]
    fleet.run()
    assert fleet.summary() == ("Scheduling", "False", "NoReadyHost", cond.RECONCILING)
    fleet.run()
    assert fleet.summary() == ("Running", "True", "Running", "")
