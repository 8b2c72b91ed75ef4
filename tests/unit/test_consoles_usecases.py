"""kvmfleet.reconcile.consoles: the plugin's use-cases on an in-memory API and a fake clock.

The fake API stands in for KubeObjects (same methods, plain dicts); an optional hook
plays the operator (it changes status as the n-th read happens). Consoles themselves are
covered by tests/unit/virt/test_virt_console.py and, for real, by
tests/integration/test_consoles.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmfleet.errors import NotFoundError, PermanentError
from kvmfleet.kube.objects import SecretData
from kvmfleet.reconcile import consoles
from kvmfleet.reconcile.consoles import (
    Action,
    ActionFailedError,
    ActionRefusedError,
    CredentialsExpiredError,
    Fleet,
    HostNotReadyError,
    KvmHostNotFoundError,
    NotPlacedError,
    NoVncConsoleError,
    SecretUnreadableError,
    VirtualNodeNotFoundError,
    VmNotRunningError,
    WaitTimeoutError,
    host_problem,
    next_request_time,
    parse_time,
)
from kvmfleet.virt.console import ConsoleOutput
from kvmfleet.virt.errors import LibvirtNotFoundError, OperationInvalidError

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCL7zp4LPOr5wIJw3G1q7zBqUYMx+W27rec+vx4Cz28"
RECORDED_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGubFtzo7IT5LWfCiFncmgZZGpqNkJu1NMX23LbStzQd"
NOW = datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def private_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def ready(*types: str, status: str = "True") -> list[dict[str, str]]:
    return [{"type": t, "status": status, "reason": "R", "message": f"{t} says so"} for t in types]


class FakeKube:
    """The methods of KubeObjects on dicts; ``hook(kube, reads)`` runs before every read."""

    default_namespace = "default"

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], dict[str, Any]] = {}
        self.hosts: dict[str, dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], tuple[str, dict[str, bytes]]] = {}
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []
        self.hook: Callable[[FakeKube, int], None] | None = None
        self.reads = 0

    def node(self, name: str = "vm1", namespace: str = "default") -> dict[str, Any]:
        return self.nodes[(namespace, name)]

    def get_virtualnode(self, namespace: str, name: str) -> dict[str, Any]:
        self.reads += 1
        if self.hook:
            self.hook(self, self.reads)
        if (namespace, name) not in self.nodes:
            raise NotFoundError(f"reading VirtualNode {namespace}/{name}: 404 Not Found")
        return copy.deepcopy(self.nodes[(namespace, name)])

    def list_virtualnodes(self, *, label_selector=None, namespace=None) -> list[dict[str, Any]]:
        key, _, value = (label_selector or "").partition("=")
        return [
            copy.deepcopy(n)
            for (ns, _), n in self.nodes.items()
            if (namespace is None or ns == namespace)
            and (not key or n["metadata"].get("labels", {}).get(key) == value)
        ]

    def get_kvmhost(self, name: str) -> dict[str, Any]:
        if name not in self.hosts:
            raise NotFoundError(f"reading KvmHost {name}: 404 Not Found")
        return copy.deepcopy(self.hosts[name])

    def patch_annotations(self, namespace, name, annotations) -> dict[str, Any]:
        self.patches.append(("annotations", namespace, name, dict(annotations)))
        self.nodes[(namespace, name)]["metadata"].setdefault("annotations", {}).update(annotations)
        return self.get_virtualnode(namespace, name)

    def patch_spec(self, namespace, name, spec) -> dict[str, Any]:
        self.patches.append(("spec", namespace, name, dict(spec)))
        self.nodes[(namespace, name)]["spec"].update(spec)
        return self.get_virtualnode(namespace, name)

    def patch_kvmhost_spec(self, name, spec) -> dict[str, Any]:
        self.patches.append(("kvmhost", "", name, dict(spec)))
        self.hosts[name]["spec"].update(spec)
        return self.get_kvmhost(name)

    def read_secret(self, namespace: str, name: str) -> SecretData:
        if (namespace, name) not in self.secrets:
            raise NotFoundError(f"reading Secret {namespace}/{name}: 404 Not Found")
        version, data = self.secrets[(namespace, name)]
        return SecretData(namespace, name, version, dict(data))

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes:
        data = self.read_secret(namespace, name).data
        if key not in data:
            raise PermanentError(f"Secret {namespace}/{name} has no key {key!r}")
        return data[key]

    def set_secret(self, namespace: str, name: str, version: str, **data: bytes) -> None:
        self.secrets[(namespace, name)] = (version, data)


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self.mono = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def kube() -> FakeKube:
    api = FakeKube()
    api.hosts["kvmhost1"] = {
        "metadata": {"name": "kvmhost1"},
        "spec": {
            "address": "10.77.0.11",
            "sshKeySecretRef": {"name": "kh-key", "namespace": "kvmfleet-system"},
            "hostKey": HOST_KEY,
        },
        "status": {"conditions": ready("Ready"), "domains": [{"name": "vm1", "state": "On"}]},
    }
    api.hosts["kvmhost2"] = copy.deepcopy(api.hosts["kvmhost1"])
    api.hosts["kvmhost2"]["spec"]["address"] = "10.77.0.12"
    api.hosts["kvmhost2"]["status"]["domains"] = []
    api.set_secret("kvmfleet-system", "kh-key", "1", **{"ssh-privatekey": private_key()})
    api.nodes[("default", "vm1")] = {
        "metadata": {
            "name": "vm1",
            "namespace": "default",
            "labels": {"kvmfleet.io/host": "kvmhost1"},
        },
        "spec": {"runStrategy": "Manual", "vnc": {"enabled": True}},
        "status": {
            "host": "kvmhost1",
            "phase": "Running",
            "powerState": "On",
            "console": {
                "serial": {"host": "kvmhost1", "device": "/dev/pts/3"},
                "vnc": {
                    "host": "0.0.0.0",
                    "port": 5901,
                    "passwordSecretRef": {"name": "vm1-vnc", "key": "password"},
                    "expiresAt": "2025-03-02T12:00:00Z",
                },
            },
        },
    }
    api.set_secret("default", "vm1-vnc", "10", password=b"s3cret-pw")
    return api


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fleet(kube: FakeKube, clock: Clock) -> Fleet:
    return Fleet(
        kube,  # type: ignore[arg-type]
        opener=FakeConnection,  # type: ignore[arg-type]
        clock=lambda: clock.now,
        sleep=clock.sleep,
        monotonic=lambda: clock.mono,
    )


class FakeConnection:
    opened: ClassVar[list[FakeConnection]] = []

    def __init__(self, target: Any) -> None:
        self.target = target
        self.closed = False
        FakeConnection.opened.append(self)

    def close(self) -> None:
        self.closed = True


# ------------------------------------------------------------------ times


def test_times_are_parsed_with_z_or_offsets() -> None:
    assert parse_time("2025-03-01T12:00:00Z") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_time("2025-03-01T13:00:00+01:00") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_time("2025-03-01T12:00:00.5Z") is not None
    assert parse_time("yesterday") is None and parse_time(None) is None and parse_time("") is None


def test_a_request_time_is_now_to_the_second_and_later_than_earlier_ones() -> None:
    assert next_request_time(NOW) == NOW.replace(microsecond=0)
    same = NOW.replace(microsecond=0)
    assert next_request_time(NOW, same) == same + timedelta(seconds=1)
    later = same + timedelta(seconds=30)
    assert next_request_time(NOW, None, later) == later + timedelta(seconds=1)
    assert next_request_time(NOW, same - timedelta(seconds=5)) == same


# ------------------------------------------------------------------ hosts


@pytest.mark.parametrize(
    ("conditions", "problem"),
    [
        (ready("Ready"), None),
        (
            ready("Reachable", "HostKeyVerified", "LibvirtReady") + ready("Ready", status="False"),
            None,
        ),
        (
            ready("Reachable", status="False") + ready("Ready", status="False"),
            "Reachable=False (R)",
        ),
        (ready("Reachable", "HostKeyVerified") + ready("Ready", status="Unknown"), "Ready=Unknown"),
        ([], "not been probed yet"),
    ],
)
def test_host_problem(conditions, problem) -> None:
    found = host_problem({"status": {"conditions": conditions}})
    assert (found is None) if problem is None else (problem in (found or ""))


def test_host_access_pins_the_spec_host_key_and_reads_the_key_secret(fleet) -> None:
    access = fleet.host_access("kvmhost1")
    assert access.address == "10.77.0.11"
    assert access.target.uri == "qemu+ssh://root@10.77.0.11:22/system"
    assert access.target.expected_host_key == HOST_KEY
    assert b"PRIVATE KEY" in access.target.private_key


def test_trust_on_first_use_uses_the_recorded_key(fleet, kube) -> None:
    spec = kube.hosts["kvmhost1"]["spec"]
    spec["hostKeyPolicy"] = "TrustOnFirstUse"
    del spec["hostKey"]
    with pytest.raises(HostNotReadyError, match="host key is not known yet"):
        fleet.host_access("kvmhost1")
    kube.hosts["kvmhost1"]["status"]["hostKey"] = RECORDED_KEY
    assert fleet.host_access("kvmhost1").target.expected_host_key == RECORDED_KEY


def test_an_unready_host_is_refused_with_its_condition(fleet, kube) -> None:
    kube.hosts["kvmhost1"]["status"]["conditions"] = ready("Reachable", status="False")
    with pytest.raises(HostNotReadyError, match=r"KvmHost kvmhost1 is not ready: Reachable=False"):
        fleet.host_access("kvmhost1")


def test_an_unreadable_key_secret_says_which_and_why(fleet, kube) -> None:
    del kube.secrets[("kvmfleet-system", "kh-key")]
    with pytest.raises(SecretUnreadableError) as caught:
        fleet.host_access("kvmhost1")
    assert "Secret kvmfleet-system/kh-key, key ssh-privatekey" in caught.value.message
    assert "404" in caught.value.message and "get on that Secret" in caught.value.message


def test_missing_objects_are_named(fleet) -> None:
    with pytest.raises(
        VirtualNodeNotFoundError, match='VirtualNode "vm9" not found in namespace "ns"'
    ):
        fleet.virtualnode("ns", "vm9")
    with pytest.raises(KvmHostNotFoundError, match='KvmHost "kh9" not found'):
        fleet.kvmhost("kh9")


# ------------------------------------------------------------------ serial console


def test_an_unplaced_node_has_no_console(fleet, kube) -> None:
    kube.node()["status"] = {"phase": "Scheduling"}
    with pytest.raises(NotPlacedError, match=r"not placed on a host yet \(phase Scheduling"):
        fleet.serial_output("default", "vm1", timeout=1)


def test_serial_output_reads_the_domain_named_after_the_node(fleet, monkeypatch) -> None:
    calls = []

    def capture(connection, domain, **kwargs):
        calls.append((connection, domain, kwargs))
        return ConsoleOutput(b"KVMFLEET-GUEST-READY", matched=True)

    monkeypatch.setattr(consoles, "capture_console", capture)
    FakeConnection.opened.clear()
    output = fleet.serial_output("default", "vm1", until=b"READY", timeout=5, force=True)
    assert output.matched
    connection, domain, kwargs = calls[0]
    assert domain == "vm1" and kwargs["until"] == b"READY" and kwargs["force"] is True
    assert connection.target.uri == "qemu+ssh://root@10.77.0.11:22/system"
    assert connection.closed


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OperationInvalidError("domain is not running"), r"is not running \(phase Running"),
        (LibvirtNotFoundError("Domain not found"), "not defined on the host"),
    ],
)
def test_console_errors_of_a_stopped_or_missing_domain(fleet, monkeypatch, error, message) -> None:
    def capture(*args, **kwargs):
        raise error

    monkeypatch.setattr(consoles, "capture_console", capture)
    with pytest.raises(VmNotRunningError, match=message):
        fleet.serial_output("default", "vm1", timeout=5)


# ------------------------------------------------------------------ actions


def test_request_action_sets_the_annotation_to_now_in_utc(fleet, kube) -> None:
    stamp = fleet.request_action("default", "vm1", "reboot")
    assert stamp == "2025-03-01T12:00:00Z"
    assert kube.patches[-1] == (
        "annotations", "default", "vm1", {"kvmfleet.io/reboot-requested-at": stamp}
    )  # fmt: skip
    # A second request within the same second is still newer than the first.
    assert fleet.request_action("default", "vm1", Action.REBOOT) == "2025-03-01T12:00:01Z"


def test_the_request_is_later_than_the_last_acted_on(fleet, kube) -> None:
    kube.node()["status"]["lastActions"] = {"consoleCredentials": "2025-03-01T12:05:00Z"}
    stamp = fleet.request_action("default", "vm1", Action.CONSOLE_CREDENTIALS)
    assert stamp == "2025-03-01T12:05:01Z"
    assert "kvmfleet.io/console-credentials-requested-at" in kube.patches[-1][3]


@pytest.mark.parametrize(
    ("strategy", "action", "message"),
    [
        ("Always", "stop", "stop acts only with runStrategy Manual"),
        ("Halted", "stop", "runStrategy Halted: stop"),
        ("Halted", "start", "the operator keeps it off"),
    ],
)
def test_actions_that_contradict_the_run_strategy_are_refused(
    fleet, kube, strategy, action, message
) -> None:
    kube.node()["spec"]["runStrategy"] = strategy
    with pytest.raises(ActionRefusedError, match=message):
        fleet.request_action("default", "vm1", action)
    assert kube.patches == []


def test_reboot_of_a_vm_that_is_off_is_not_possible(fleet, kube) -> None:
    kube.node()["status"]["powerState"] = "Off"
    with pytest.raises(VmNotRunningError, match="is off: nothing to reboot"):
        fleet.request_action("default", "vm1", "reboot")


def operator_acts(action: str, after_reads: int, power: str | None = None):
    def hook(kube: FakeKube, reads: int) -> None:
        node = kube.node()
        stamp = node["metadata"].get("annotations", {}).get(f"kvmfleet.io/{action}-requested-at")
        if stamp and reads >= after_reads:
            node["status"].setdefault("lastActions", {})[action] = stamp
            if power:
                node["status"]["powerState"] = power

    return hook


def test_stop_waits_for_the_operator_and_the_power_state(fleet, kube, clock) -> None:
    kube.hook = operator_acts("stop", after_reads=5, power="Off")
    result = fleet.act("default", "vm1", "stop", wait=True, timeout=60)
    assert result.node["status"]["powerState"] == "Off"
    assert result.node["status"]["lastActions"]["stop"] == result.stamp
    assert clock.sleeps and all(s <= 1.0 for s in clock.sleeps)


def test_a_start_acknowledged_but_not_on_keeps_waiting_until_the_timeout(
    fleet, kube, clock
) -> None:
    kube.node()["status"]["powerState"] = "Off"
    kube.hook = operator_acts("start", after_reads=1)  # acknowledged, never On
    with pytest.raises(WaitTimeoutError) as caught:
        fleet.act("default", "vm1", "start", wait=True, timeout=10)
    assert "timed out after 10 s waiting for start" in caught.value.message
    assert "powerState Off" in caught.value.message
    assert 9.9 <= clock.mono <= 10.1


def test_a_reboot_is_done_when_the_graceful_transition_is_over(fleet, kube) -> None:
    def operator(api: FakeKube, reads: int) -> None:
        node = api.node()
        stamp = node["metadata"].get("annotations", {}).get("kvmfleet.io/reboot-requested-at")
        if not stamp:
            return
        status = node["status"]
        if reads == 3:  # ACPI shutdown sent: acknowledged, transition under way
            status["lastActions"] = {"reboot": stamp}
            status["powerTransition"] = {"action": "reboot", "startedAt": stamp}
        if reads == 5:
            status["powerState"] = "Off"
        if reads == 7:
            status.update(powerState="On", powerTransition=None)

    kube.hook = operator
    result = fleet.act("default", "vm1", "reboot", wait=True, timeout=60)
    assert kube.reads >= 7
    assert result.node["status"]["powerState"] == "On"
    assert not result.node["status"]["powerTransition"]


def test_without_wait_the_action_is_only_requested(fleet, kube, clock) -> None:
    result = fleet.act("default", "vm1", "reset", wait=False)
    assert result.stamp == "2025-03-01T12:00:00Z"
    assert clock.sleeps == []


# ------------------------------------------------------------------ VNC


def test_vnc_credentials_from_status_and_secret(fleet) -> None:
    credentials = fleet.vnc_credentials("default", "vm1")
    assert (credentials.address, credentials.port) == ("10.77.0.11", 5901)  # 0.0.0.0 -> host
    assert credentials.password == "s3cret-pw"
    assert credentials.expires_at == "2025-03-02T12:00:00Z"
    assert credentials.text_console == "/dev/pts/3"
    assert credentials.host == "kvmhost1" and not credentials.rotated


def test_a_specific_vnc_listen_address_is_kept(fleet, kube) -> None:
    kube.node()["status"]["console"]["vnc"]["host"] = "192.0.2.7"
    assert fleet.vnc_credentials("default", "vm1").address == "192.0.2.7"


def test_expired_credentials_say_to_rotate(fleet, kube) -> None:
    kube.node()["status"]["console"]["vnc"]["expiresAt"] = "2025-03-01T11:00:00Z"
    with pytest.raises(CredentialsExpiredError, match="--rotate makes a new one"):
        fleet.vnc_credentials("default", "vm1")


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda n: n["spec"].update(vnc={"enabled": False}), NoVncConsoleError, "enabled is false"),
        (lambda n: n.update(status={"phase": "Pending"}), NotPlacedError, "not placed"),
        (lambda n: n["status"]["console"].pop("vnc"), NoVncConsoleError, "once the VM runs"),
    ],
)
def test_vnc_errors(fleet, kube, change, error, message) -> None:
    change(kube.node())
    with pytest.raises(error, match=message):
        fleet.vnc_credentials("default", "vm1")


def test_an_unreadable_password_secret(fleet, kube) -> None:
    del kube.secrets[("default", "vm1-vnc")]
    with pytest.raises(SecretUnreadableError, match="cannot read the VNC password"):
        fleet.vnc_credentials("default", "vm1")


def test_rotation_waits_for_the_status_and_then_the_secret(fleet, kube) -> None:
    def operator(api: FakeKube, reads: int) -> None:
        node = api.node()
        stamp = (
            node["metadata"]
            .get("annotations", {})
            .get("kvmfleet.io/console-credentials-requested-at")
        )
        if not stamp:
            return
        if reads == 4:  # the status first...
            node["status"]["console"]["vnc"]["expiresAt"] = "2025-03-02T12:00:09Z"
            node["status"]["lastActions"] = {"consoleCredentials": stamp}
        if reads == 7:  # ...the Secret a little later
            api.set_secret("default", "vm1-vnc", "11", password=b"new-pw")

    kube.hook = operator
    credentials = fleet.vnc_credentials("default", "vm1", rotate=True, timeout=30)
    assert credentials.password == "new-pw" and credentials.rotated
    assert credentials.expires_at == "2025-03-02T12:00:09Z"


def test_rotation_times_out_when_the_operator_does_nothing(fleet, kube) -> None:
    with pytest.raises(WaitTimeoutError, match="new VNC credentials"):
        fleet.vnc_credentials("default", "vm1", rotate=True, timeout=5)


# ------------------------------------------------------------------ migration


def test_migrate_patches_the_host_ref(fleet, kube) -> None:
    result = fleet.migrate("default", "vm1", "kvmhost2")
    assert kube.patches == [("spec", "default", "vm1", {"hostRef": "kvmhost2"})]
    assert (result.source, result.target, result.requested, result.finished) == (
        "kvmhost1", "kvmhost2", True, False,
    )  # fmt: skip


def test_migrate_to_where_it_is_does_nothing(fleet, kube) -> None:
    kube.node()["spec"]["hostRef"] = "kvmhost1"
    result = fleet.migrate("default", "vm1", "kvmhost1")
    assert not result.requested and result.finished and kube.patches == []


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda h: h["spec"].update(maintenance=True), ActionRefusedError, "in maintenance"),
        (
            lambda h: h["spec"].update(allowedNamespaces=["prod"]),
            ActionRefusedError,
            "allowedNamespaces: prod",
        ),
        (
            lambda h: h["status"].update(conditions=ready("Ready", status="False")),
            HostNotReadyError,
            "not ready",
        ),
    ],
)
def test_migrate_refuses_unusable_targets(fleet, kube, change, error, message) -> None:
    change(kube.hosts["kvmhost2"])
    with pytest.raises(error, match=message):
        fleet.migrate("default", "vm1", "kvmhost2")
    assert kube.patches == []


def test_migrate_to_an_unknown_host(fleet) -> None:
    with pytest.raises(KvmHostNotFoundError):
        fleet.migrate("default", "vm1", "kvmhost9")


def test_migrate_waits_until_the_vm_runs_on_the_target(fleet, kube) -> None:
    def operator(api: FakeKube, reads: int) -> None:
        node = api.node()
        if node["spec"].get("hostRef") != "kvmhost2":
            return
        moving = {"source": "kvmhost1", "target": "kvmhost2"}
        if reads == 3:
            node["status"]["migration"] = {**moving, "phase": "Running"}
        if reads == 5:  # status.host is written before the outcome
            node["status"].update(host="kvmhost2")
        if reads == 7:
            node["status"]["migration"] = {**moving, "phase": "Succeeded", "message": "moved"}

    kube.hook = operator
    lines: list[str] = []
    result = fleet.migrate(
        "default", "vm1", "kvmhost2", wait=True, timeout=60, progress=lines.append
    )
    assert result.finished
    assert kube.reads >= 7
    assert lines == ["Running: kvmhost1 -> kvmhost2", "Succeeded: kvmhost1 -> kvmhost2 (moved)"]


def test_a_failed_migration_ends_the_wait_with_its_message(fleet, kube) -> None:
    def operator(api: FakeKube, reads: int) -> None:
        node = api.node()
        if node["spec"].get("hostRef") == "kvmhost2" and reads >= 6:
            node["status"]["migration"] = {
                "source": "kvmhost1",
                "target": "kvmhost2",
                "phase": "Failed",
                "startTime": "2025-03-01T12:00:00Z",
                "endTime": "2025-03-01T12:00:05Z",
                "message": "Migration without shared storage is unsafe",
            }
        elif node["spec"].get("hostRef") == "kvmhost2":
            node["status"]["migration"] = {
                "source": "kvmhost1",
                "target": "kvmhost2",
                "phase": "Running",
                "dataTotal": 512 * 2**20,
                "dataRemaining": 100 * 2**20,
            }

    kube.hook = operator
    lines: list[str] = []
    with pytest.raises(ActionFailedError, match="shared storage is unsafe"):
        fleet.migrate("default", "vm1", "kvmhost2", wait=True, timeout=60, progress=lines.append)
    assert lines[0] == "Running: kvmhost1 -> kvmhost2, 100 of 512 MiB left"
    assert lines[-1].startswith("Failed: kvmhost1 -> kvmhost2 (Migration without shared")


def test_a_refused_migration_ends_the_wait(fleet, kube) -> None:
    def operator(api: FakeKube, reads: int) -> None:
        node = api.node()
        if node["spec"].get("hostRef") == "kvmhost2":
            node["status"]["migration"] = {
                "source": "kvmhost1",
                "target": "kvmhost2",
                "phase": "Refused",
                "endTime": "2025-03-01T12:00:05Z",
                "message": "disk 0: dir:///var/lib/kvmfleet/images is a directory",
            }

    kube.hook = operator
    with pytest.raises(ActionFailedError, match=r"\(Refused\): disk 0: dir://"):
        fleet.migrate("default", "vm1", "kvmhost2", wait=True, timeout=60)


def test_an_old_failed_migration_does_not_count(fleet, kube, clock) -> None:
    kube.node()["status"]["migration"] = {
        "target": "kvmhost2",
        "phase": "Failed",
        "endTime": "2025-02-01T00:00:00Z",
    }
    with pytest.raises(WaitTimeoutError):
        fleet.migrate("default", "vm1", "kvmhost2", wait=True, timeout=3)


# ------------------------------------------------------------------ drain / uncordon


def _second_vm(kube: FakeKube, name: str, **spec: Any) -> dict[str, Any]:
    node = copy.deepcopy(kube.node())
    node["metadata"]["name"] = name
    node["spec"] = dict(spec)
    kube.nodes[("default", name)] = node
    return node


def test_drain_sets_maintenance_and_waits_for_the_movable_vms(fleet, kube) -> None:
    _second_vm(kube, "pinned", hostRef="kvmhost1")
    refused = _second_vm(kube, "local")
    refused["status"]["conditions"] = [
        {"type": "Migration", "status": "False", "reason": "StorageNotShared", "message": "dir"}
    ]

    def operator(api: FakeKube, reads: int) -> None:
        pass

    moved = {"n": 0}

    def list_nodes(**kwargs: Any) -> list[dict[str, Any]]:
        moved["n"] += 1
        if moved["n"] == 3:  # vm1 moved away
            kube.node()["status"]["host"] = "kvmhost2"
            kube.node()["metadata"]["labels"]["kvmfleet.io/host"] = "kvmhost2"
        return FakeKube.list_virtualnodes(kube, **kwargs)

    kube.list_virtualnodes = list_nodes  # type: ignore[method-assign]
    result = fleet.set_maintenance("kvmhost1", True, wait=True, timeout=60)
    assert kube.hosts["kvmhost1"]["spec"]["maintenance"] is True
    assert {(s.name, s.reason) for s in result.left} == {
        ("default/pinned", "PinnedByHostRef"),
        ("default/local", "StorageNotShared"),
    }
    assert moved["n"] >= 3


def test_drain_times_out_while_a_vm_still_moves(fleet, kube) -> None:
    with pytest.raises(WaitTimeoutError, match="still moving: default/vm1"):
        fleet.set_maintenance("kvmhost1", True, wait=True, timeout=3)


def test_uncordon_clears_maintenance(fleet, kube) -> None:
    kube.hosts["kvmhost1"]["spec"]["maintenance"] = True
    result = fleet.set_maintenance("kvmhost1", False)
    assert kube.hosts["kvmhost1"]["spec"]["maintenance"] is False
    assert not result.maintenance


# ------------------------------------------------------------------ lsvm


def test_lsvm_merges_the_hosts_domains_and_the_labelled_nodes(fleet, kube) -> None:
    kube.hosts["kvmhost1"]["status"]["domains"] = [
        {"name": "vm1", "state": "On"},
        {"name": "legacy", "state": "Off"},
    ]
    kube.nodes[("other", "vm2")] = {
        "metadata": {
            "name": "vm2",
            "namespace": "other",
            "labels": {"kvmfleet.io/host": "kvmhost1"},
        },
        "spec": {},
        "status": {"phase": "Provisioning"},
    }
    kube.nodes[("other", "vm3")] = {
        "metadata": {
            "name": "vm3",
            "namespace": "other",
            "labels": {"kvmfleet.io/host": "kvmhost2"},
        },
        "spec": {},
        "status": {},
    }
    listing = fleet.lsvm("kvmhost1")
    assert listing.probed and listing.address == "10.77.0.11"
    rows = [(r.name, r.state, r.namespace, r.phase, r.power_state) for r in listing.rows]
    assert rows == [
        ("legacy", "Off", None, None, None),
        ("vm1", "On", "default", "Running", "On"),
        ("vm2", None, "other", "Provisioning", None),
    ]


def test_lsvm_of_a_host_never_probed(fleet, kube) -> None:
    del kube.hosts["kvmhost2"]["status"]["domains"]
    listing = fleet.lsvm("kvmhost2")
    assert not listing.probed and listing.rows == ()
