"""`kubectl kvm` (kvmfleet.plugin): arguments, output formats and exit codes, on a stub Fleet.

The real thing against the API server and the testbed is in
tests/integration/test_consoles.py.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from kvmfleet import plugin
from kvmfleet.kube.objects import KubeconfigError
from kvmfleet.reconcile.consoles import (
    ActionRequest,
    HostDomain,
    HostListing,
    Migration,
    NotPlacedError,
    SecretUnreadableError,
    VirtualNodeNotFoundError,
    VncCredentials,
    WaitTimeoutError,
)
from kvmfleet.virt.console import BridgeEnd, ConsoleBusyError, ConsoleOutput


class StubFleet:
    """Records calls; answers what the test put in ``answers`` (or raises it)."""

    default_namespace = "ctx-ns"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.answers: dict[str, Any] = {}
        self.chunks: list[bytes] = []

    def _answer(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        answer = self.answers.get(name)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def serial_output(self, *args: Any, **kwargs: Any) -> Any:
        for chunk in self.chunks:
            kwargs["sink"](chunk)
        return self._answer("serial_output", *args, **kwargs)

    def serial_session(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer("serial_session", *args, **kwargs)

    def vnc_credentials(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer("vnc_credentials", *args, **kwargs)

    def act(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer("act", *args, **kwargs)

    def migrate(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer("migrate", *args, **kwargs)

    def lsvm(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer("lsvm", *args, **kwargs)


@pytest.fixture
def fleet() -> StubFleet:
    return StubFleet()


def run(fleet: StubFleet, *argv: str) -> tuple[int, str, str]:
    seen: dict[str, Any] = {}

    def factory(args: Any) -> StubFleet:
        seen["args"] = args
        return fleet

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.StringIO()
    code = plugin.main(list(argv), fleet_factory=factory, out=out, err=err)  # type: ignore[arg-type]
    out.flush()
    fleet.args = seen.get("args")  # type: ignore[attr-defined]
    return code, out.buffer.getvalue().decode(), err.getvalue()  # type: ignore[attr-defined]


CREDENTIALS = VncCredentials(
    node="vm1",
    host="kvmhost1",
    address="10.77.0.11",
    port=5901,
    password="JOQTUtn0",
    expires_at="2025-03-02T12:00:00Z",
    text_console="/dev/pts/0",
)


# ------------------------------------------------------------------ arguments


def test_connection_options_before_or_after_the_command(fleet) -> None:
    fleet.answers["vnc_credentials"] = CREDENTIALS
    run(fleet, "--kubeconfig", "/k", "--context", "c1", "vnc", "vm1", "-n", "ns1")
    args = fleet.args
    assert (args.kubeconfig, args.context, args.namespace) == ("/k", "c1", "ns1")
    assert fleet.calls[-1][1] == ("ns1", "vm1")
    run(fleet, "-n", "ns2", "vnc", "vm1")
    assert fleet.calls[-1][1] == ("ns2", "vm1")


def test_the_namespace_defaults_to_the_contexts(fleet) -> None:
    fleet.answers["vnc_credentials"] = CREDENTIALS
    run(fleet, "vnc", "vm1")
    assert fleet.calls[-1][1] == ("ctx-ns", "vm1")


@pytest.mark.parametrize(
    "argv",
    [
        ["console"],
        ["console", "vm1", "--until", "("],
        ["console", "vm1", "--timeout", "-1"],
        ["console", "vm1", "--timeout", "soon"],
        ["migrate", "vm1"],
        ["reboot"],
        ["frobnicate", "vm1"],
        [],
    ],
)
def test_usage_errors_exit_2(fleet, argv, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        plugin.main(argv, fleet_factory=lambda args: fleet)  # type: ignore[arg-type,return-value]
    assert caught.value.code == 2
    assert "usage: kubectl kvm" in capsys.readouterr().err


def test_version(fleet) -> None:
    code, out, _ = run(fleet, "version")
    assert code == 0 and out.startswith("kubectl-kvm (kvmfleet) ")


# ------------------------------------------------------------------ vnc


def test_vnc_prints_getrvidparms_lines(fleet) -> None:
    fleet.answers["vnc_credentials"] = CREDENTIALS
    code, out, _ = run(fleet, "vnc", "vm1", "--rotate", "--timeout", "30")
    assert code == 0
    assert out == (
        "vm1: method: kvm\n"
        "vm1: textconsole: /dev/pts/0\n"
        "vm1: password: JOQTUtn0\n"
        "vm1: vidproto: vnc\n"
        "vm1: server: 10.77.0.11\n"
        "vm1: vidport: 5901\n"
        "vm1: host: kvmhost1\n"
        "vm1: expires: 2025-03-02T12:00:00Z\n"
    )
    assert fleet.calls[-1][2] == {"rotate": True, "timeout": 30.0}


# ------------------------------------------------------------------ exit codes


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (VirtualNodeNotFoundError('VirtualNode "vm1" not found in namespace "x"'), 3, "not found"),
        (NotPlacedError("VirtualNode x/vm1 is not placed on a host yet"), 4, "not placed"),
        (WaitTimeoutError("timed out after 5 s"), 5, "timed out"),
        (SecretUnreadableError("cannot read the VNC password"), 1, "cannot read"),
        (ConsoleBusyError("Active console session exists"), 1, "vm1 --force takes it over"),
    ],
)
def test_errors_print_a_message_and_exit_with_their_code(fleet, error, code, text) -> None:
    fleet.answers["vnc_credentials"] = error
    result, out, err = run(fleet, "vnc", "vm1")
    assert (result, out) == (code, "")
    assert err.startswith("error: ") and text in err


def test_a_bad_kubeconfig_exits_1(fleet) -> None:
    def factory(args: Any) -> Any:
        raise KubeconfigError("cannot load the kubeconfig (/nope): no configuration found")

    err = io.StringIO()
    assert plugin.main(["lsvm", "h1"], fleet_factory=factory, err=err) == 1
    assert "cannot load the kubeconfig" in err.getvalue()


# ------------------------------------------------------------------ console


def test_console_until_streams_the_output_and_exits_0_on_a_match(fleet) -> None:
    fleet.chunks = [b"SeaBIOS\r\n", b"KVMFLEET-GUEST-READY hostname=vm1\r\n"]
    fleet.answers["serial_output"] = ConsoleOutput(b"".join(fleet.chunks), matched=True)
    code, out, _ = run(
        fleet, "console", "vm1", "--until", "^KVMFLEET-GUEST-READY", "--timeout", "90"
    )
    assert code == 0
    assert out == "SeaBIOS\r\nKVMFLEET-GUEST-READY hostname=vm1\r\n"
    kwargs = fleet.calls[-1][2]
    assert kwargs["until"] == re.compile(rb"^KVMFLEET-GUEST-READY", re.M)
    assert kwargs["timeout"] == 90.0 and kwargs["force"] is False and kwargs["whole_line"]


def test_console_until_not_seen_in_time_exits_5(fleet) -> None:
    fleet.answers["serial_output"] = ConsoleOutput(b"tick\r\n")
    code, _, err = run(fleet, "console", "vm1", "--until", "READY", "--timeout", "2")
    assert code == 5 and "'READY' did not appear within 2 s" in err


def test_console_closing_before_the_pattern_exits_1(fleet) -> None:
    fleet.answers["serial_output"] = ConsoleOutput(b"reboot: Power down\r\n", ended=True)
    code, _, err = run(fleet, "console", "vm1", "--until", "READY")
    assert code == 1 and "the console closed before 'READY' appeared" in err
    assert fleet.calls[-1][2]["timeout"] == float("inf")


def test_read_only_prints_until_the_timeout_and_exits_0(fleet) -> None:
    fleet.chunks = [b"tick 1\r\n"]
    fleet.answers["serial_output"] = ConsoleOutput(b"tick 1\r\n")
    code, out, _ = run(fleet, "console", "vm1", "--read-only", "--timeout", "3", "--force")
    assert (code, out) == (0, "tick 1\r\n")
    assert fleet.calls[-1][2]["until"] is None and fleet.calls[-1][2]["force"] is True


def test_interactive_console_bridges_stdin_and_stdout(fleet, monkeypatch) -> None:
    class Std:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    monkeypatch.setattr("sys.stdin", Std(10))
    monkeypatch.setattr("sys.stdout", Std(11))
    fleet.answers["serial_session"] = BridgeEnd.ESCAPE
    code, _, _ = run(fleet, "console", "vm1", "--device", "serial0")
    assert code == 0
    kwargs = fleet.calls[-1][2]
    assert (kwargs["input_fd"], kwargs["output_fd"], kwargs["device"]) == (10, 11, "serial0")


# ------------------------------------------------------------------ power, migrate, lsvm


def test_power_actions_print_the_request_or_the_state(fleet) -> None:
    fleet.answers["act"] = ActionRequest(plugin.Action.STOP, "2025-03-01T12:00:00Z", {})
    code, out, _ = run(fleet, "stop", "vm1")
    assert code == 0
    assert out == "vm1: stop requested (kvmfleet.io/stop-requested-at=2025-03-01T12:00:00Z)\n"
    assert fleet.calls[-1][1] == ("ctx-ns", "vm1", plugin.Action.STOP)
    assert fleet.calls[-1][2] == {"wait": False, "timeout": 300.0}
    code, out, _ = run(fleet, "stop", "vm1", "--wait", "--timeout", "20")
    assert (code, out) == (0, "vm1: off\n")


@pytest.mark.parametrize(
    ("result", "line"),
    [
        (Migration("vm1", "kvmhost1", "kvmhost2", True, True), "vm1: migrated to kvmhost2"),
        (
            Migration("vm1", "kvmhost1", "kvmhost2", True, False),
            "vm1: migration kvmhost1 -> kvmhost2 requested",
        ),
        (Migration("vm1", "kvmhost2", "kvmhost2", False, True), "vm1: already on kvmhost2"),
        (
            Migration("vm1", None, "kvmhost2", True, False),
            "vm1: not placed yet; it will be placed on kvmhost2",
        ),
    ],
)
def test_migrate_output(fleet, result, line) -> None:
    fleet.answers["migrate"] = result
    code, out, _ = run(fleet, "migrate", "vm1", "kvmhost2")
    assert (code, out) == (0, line + "\n")


def test_lsvm_prints_a_table(fleet) -> None:
    fleet.answers["lsvm"] = HostListing(
        "kvmhost1",
        "10.77.0.11",
        True,
        (
            HostDomain("legacy", "Off", None),
            HostDomain("vm1", "On", "default", "Running", "On"),
        ),
    )
    code, out, err = run(fleet, "lsvm", "kvmhost1")
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "NAME     STATE   NAMESPACE   PHASE     POWER",
        "legacy   Off     -           -         -",
        "vm1      On      default     Running   On",
    ]


def test_lsvm_of_an_empty_or_unprobed_host(fleet) -> None:
    fleet.answers["lsvm"] = HostListing("kvmhost2", "10.77.0.12", False, ())
    code, out, err = run(fleet, "lsvm", "kvmhost2")
    assert (code, out) == (0, "")
    assert "has not been probed yet" in err and "No VMs on kvmhost2." in err
