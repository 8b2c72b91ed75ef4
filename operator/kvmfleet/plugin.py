"""`kubectl kvm`: consoles, power, migration, lsvm, capture and clone of VirtualNodes (xCAT
rcons, getrvidparms, rpower, rmigrate, lsvm, clonevm) from the command line, and
``force-remove`` for a VirtualNode stuck in Terminating.

Installed as the ``kubectl-kvm`` console script, so kubectl finds it as the ``kvm`` plugin.
kubectl hands its arguments over unchanged: ``--kubeconfig``, ``--context`` and
``-n/--namespace`` are read here (before or after the command), ``$KUBECONFIG`` too, and
the namespace defaults to the kubeconfig context's (else ``default``).

Exit codes: 0 done; 1 failed (API refused, Secret unreadable, libvirt error, the console
closed before the pattern appeared); 2 usage; 3 VirtualNode or KvmHost not found; 4 not
possible yet (not placed, host not ready, VM not running, no VNC console, password
expired); 5 timed out (``--wait``, ``--until``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from kvmfleet import __version__
from kvmfleet.errors import KvmfleetError, NotFoundError
from kvmfleet.kube.objects import KubeObjects
from kvmfleet.reconcile import cloning, forceremove
from kvmfleet.reconcile.consoles import (
    Action,
    Fleet,
    HostListing,
    NotReadyError,
    Placement,
    VncCredentials,
    WaitTimeoutError,
)
from kvmfleet.settings import Settings
from kvmfleet.virt.console import BridgeEnd, ConsoleOutput

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_READY = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

POWER_ACTIONS = {
    "start": ("power the VM on (rpower on)", "on"),
    "stop": ("power the VM off; runStrategy Manual only (rpower off)", "off"),
    "reboot": ("graceful reboot (rpower boot)", "reboot"),
    "reset": ("hard reset (rpower reset)", "reset"),
}

FleetFactory = Callable[[argparse.Namespace], Fleet]


# --- arguments --------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """Options valid before and after the command (defaults suppressed: no overwriting)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default $KUBECONFIG)"
    )
    group.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    group.add_argument(
        "-n",
        "--namespace",
        default=argparse.SUPPRESS,
        help="namespace of the VirtualNode (default: the context's, else default)",
    )
    return common


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _pattern(text: str) -> re.Pattern[bytes]:
    try:
        return re.compile(text.encode(), re.MULTILINE)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {error}") from None


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``kubectl kvm``."""
    common = _common()
    main = argparse.ArgumentParser(
        prog="kubectl kvm",
        description="Consoles, power and migration of kvmfleet VirtualNodes "
        "(xCAT rcons/wcons, getrvidparms, rpower, rmigrate, lsvm).",
        parents=[common],
        epilog="Exit codes: 0 done, 1 failed, 2 usage, 3 not found, 4 not possible yet "
        "(not placed, host not ready, VM off), 5 timed out, 130 interrupted.",
    )
    sub = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    console = sub.add_parser(
        "console",
        parents=[common],
        help="the VM's serial console (rcons/wcons); interactive, Ctrl-] leaves",
        description="Attach to the VM's serial console like `virsh console` (Ctrl-] "
        "leaves). With --read-only, --until or --timeout, print what the console shows "
        "and exit instead.",
    )
    console.add_argument("vm", metavar="VM")
    console.add_argument(
        "--read-only", action="store_true", help="do not send input: print the output"
    )
    console.add_argument(
        "--until",
        type=_pattern,
        metavar="REGEX",
        help="exit 0 once the output matches REGEX, at the end of that line (exit 5 if "
        "--timeout passes first). Only output printed after the console attached is seen: "
        "earlier output is not replayed (console logs are planned)",
    )
    console.add_argument(
        "--timeout", type=_positive, metavar="S", help="stop reading after S seconds"
    )
    console.add_argument("--max-bytes", type=int, default=4 * 1024 * 1024, help=argparse.SUPPRESS)
    console.add_argument(
        "--force", action="store_true", help="take the console over from another session"
    )
    console.add_argument(
        "--device", metavar="ALIAS", help="console device alias, e.g. serial1 (default: first)"
    )

    vnc = sub.add_parser(
        "vnc",
        parents=[common],
        help="VNC address and password (getrvidparms)",
        description="Print the VM's VNC console parameters as xCAT's getrvidparms does.",
    )
    vnc.add_argument("vm", metavar="VM")
    vnc.add_argument(
        "--rotate", action="store_true", help="ask the operator for a new password first"
    )
    vnc.add_argument(
        "--timeout", type=_positive, default=120.0, metavar="S", help="wait for --rotate"
    )

    for name, (text, _) in POWER_ACTIONS.items():
        action = sub.add_parser(name, parents=[common], help=text, description=text)
        action.add_argument("vm", metavar="VM")
        action.add_argument(
            "--wait", action="store_true", help="wait until the operator has done it"
        )
        action.add_argument(
            "--timeout", type=_positive, default=300.0, metavar="S", help="for --wait"
        )

    migrate = sub.add_parser(
        "migrate",
        parents=[common],
        help="move the VM to HOST (rmigrate): live if it runs, its definition if stopped",
        description="Set spec.hostRef to another KvmHost (rmigrate). The operator checks the "
        "target first (Ready, not in maintenance, room, bridges, shared NFS storage, CPU), "
        "then live-migrates a running VM (or moves a stopped one's definition). --wait "
        "prints status.migration as it changes and exits 1 when the move is refused or "
        "fails (the VM then stays where it is).",
    )
    migrate.add_argument("vm", metavar="VM")
    migrate.add_argument("host", metavar="HOST")
    migrate.add_argument("--wait", action="store_true", help="wait until the VM runs on HOST")
    migrate.add_argument("--timeout", type=_positive, default=600.0, metavar="S", help="for --wait")

    for verb, text in (
        ("drain", "put HOST in maintenance: no new VMs; its movable VMs move to other hosts"),
        ("uncordon", "end HOST's maintenance: it takes VMs again"),
    ):
        command = sub.add_parser(verb, parents=[common], help=text, description=text)
        command.add_argument("host", metavar="HOST")
        if verb == "drain":
            command.add_argument(
                "--wait",
                action="store_true",
                help="wait until every VM left on HOST is moved or says why it does not move",
            )
            command.add_argument(
                "--timeout", type=_positive, default=600.0, metavar="S", help="for --wait"
            )

    lsvm = sub.add_parser(
        "lsvm",
        parents=[common],
        help="the VMs of a KvmHost (lsvm)",
        description="List the domains on a KvmHost and the VirtualNodes placed on it.",
    )
    lsvm.add_argument("host", metavar="HOST")

    capture = sub.add_parser(
        "capture",
        parents=[common],
        help="capture VM into a VmMaster (clonevm VM -t MASTER [-d])",
        description="Write a VmMaster capturing VM (powered off) into MASTER. Attached "
        "(default): VM's disk becomes an overlay of the master; --detached leaves VM as is.",
    )
    capture.add_argument("vm", metavar="VM")
    capture.add_argument("master", metavar="MASTER")
    capture.add_argument("--detached", action="store_true", help="clonevm -d")
    capture.add_argument("--storage", metavar="URL", help="dir:// or nfs:// storage of the master")
    clone = sub.add_parser(
        "clone",
        parents=[common],
        help="a VirtualNode cloned from a VmMaster (clonevm VM -b MASTER [-d])",
        description="Write VirtualNode VM cloned from MASTER: its disks (attached overlays, or "
        "full copies with --detached), NICs (new MACs), os/arch/profile.",
    )
    clone.add_argument("master", metavar="MASTER")
    clone.add_argument("vm", metavar="VM")
    clone.add_argument("--detached", action="store_true", help="clonevm -d: full copies")
    clone.add_argument("--host", metavar="HOST", help="spec.hostRef (default: scheduled)")
    force = sub.add_parser(
        "force-remove",
        parents=[common],
        help="let a VirtualNode stuck in Terminating go (removes kvmfleet's finalizer)",
        description="Print what will be left on which host (the libvirt domain, every disk "
        "image and its owner record: nothing is deleted there), ask, then remove kvmfleet's "
        "finalizer of a VirtualNode that is being deleted. Use it when the operator cannot "
        "finish the removal (DeletionBlocked, a host gone for good); see docs/operations.md, "
        "KvmfleetObjectStuckTerminating.",
    )
    force.add_argument("vm", metavar="VM")
    force.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    force.add_argument(
        "--mount-root",
        default=Settings().mount_root,
        metavar="DIR",
        help="the operator's KVMFLEET_MOUNT_ROOT, where NFS pools are mounted "
        "(default %(default)s)",
    )

    sub.add_parser("version", parents=[common], help="print the version")
    return main


# --- commands ---------------------------------------------------------------------------------


def _namespace(args: argparse.Namespace, fleet: Fleet) -> str:
    return str(getattr(args, "namespace", None) or fleet.default_namespace)


def _console(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    namespace = _namespace(args, fleet)
    if args.read_only or args.until is not None or args.timeout is not None:
        stream = getattr(out, "buffer", None)

        def sink(chunk: bytes) -> None:
            if stream is not None:
                stream.write(chunk)
                stream.flush()
            else:
                out.write(chunk.decode("utf-8", "replace"))
                out.flush()

        output: ConsoleOutput = fleet.serial_output(
            namespace,
            args.vm,
            until=args.until,
            timeout=args.timeout if args.timeout is not None else math.inf,
            max_bytes=args.max_bytes,
            force=args.force,
            device=args.device,
            sink=sink,
            whole_line=True,
        )
        if args.until is None or output.matched:
            return EXIT_OK
        pattern = args.until.pattern.decode(errors="replace")
        if output.ended:
            err.write(f"\nerror: the console closed before {pattern!r} appeared\n")
            return EXIT_FAILED
        if output.truncated:
            err.write(f"\nerror: {args.max_bytes} bytes read and no {pattern!r}\n")
            return EXIT_FAILED
        err.write(
            f"\nerror: {pattern!r} did not appear within {args.timeout:g} s (only output "
            "printed after the console attached is seen; earlier output is not replayed)\n"
        )
        return EXIT_TIMEOUT

    def opened(placement: Placement) -> None:
        err.write(
            f"Connected to {placement.namespace}/{placement.name} on {placement.host.name}\n"
            "Escape character is ^] (Ctrl + ])\n"
        )
        err.flush()

    end = fleet.serial_session(
        namespace,
        args.vm,
        input_fd=sys.stdin.fileno(),
        output_fd=sys.stdout.fileno(),
        force=args.force,
        device=args.device,
        on_open=opened,
    )
    if end is BridgeEnd.CONSOLE_CLOSED:
        err.write("\r\nThe console closed (the VM stopped).\n")
    else:
        err.write("\r\n")
    return EXIT_OK


def format_vnc(credentials: VncCredentials) -> str:
    """getrvidparms' output: ``<node>: <field>: <value>`` lines."""
    fields = [
        ("method", "kvm"),
        ("textconsole", credentials.text_console or "-"),
        ("password", credentials.password),
        ("vidproto", "vnc"),
        ("server", credentials.address),
        ("vidport", str(credentials.port)),
        ("host", credentials.host),
        ("expires", credentials.expires_at or "never"),
    ]
    return "".join(f"{credentials.node}: {key}: {value}\n" for key, value in fields)


def _vnc(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    credentials = fleet.vnc_credentials(
        _namespace(args, fleet), args.vm, rotate=args.rotate, timeout=args.timeout
    )
    out.write(format_vnc(credentials))
    return EXIT_OK


def _power(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    action = Action(args.command)
    done = fleet.act(_namespace(args, fleet), args.vm, action, wait=args.wait, timeout=args.timeout)
    if args.wait:
        out.write(f"{args.vm}: {POWER_ACTIONS[args.command][1]}\n")
    else:
        out.write(f"{args.vm}: {action.value} requested ({action.annotation}={done.stamp})\n")
    return EXIT_OK


def _migrate(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    result = fleet.migrate(
        _namespace(args, fleet),
        args.vm,
        args.host,
        wait=args.wait,
        timeout=args.timeout,
        progress=lambda line: print(f"{args.vm}: {line}", file=err, flush=True),
    )
    if not result.requested:
        out.write(f"{args.vm}: already on {args.host}\n")
    elif result.finished:
        out.write(f"{args.vm}: migrated to {args.host}\n")
    elif result.source is None:
        out.write(f"{args.vm}: not placed yet; it will be placed on {args.host}\n")
    else:
        out.write(f"{args.vm}: migration {result.source} -> {args.host} requested\n")
    return EXIT_OK


def _maintenance(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    drain = args.command == "drain"
    result = fleet.set_maintenance(
        args.host, drain, wait=getattr(args, "wait", False), timeout=getattr(args, "timeout", 0)
    )
    if not drain:
        out.write(f"{args.host}: maintenance off, takes VMs again\n")
        return EXIT_OK
    out.write(f"{args.host}: in maintenance\n")
    for stuck in result.left:
        out.write(f"  {stuck.name}: {stuck.reason}: {stuck.message}\n")
    if getattr(args, "wait", False):
        if result.left:
            out.write(f"{args.host}: {len(result.left)} VM(s) stay (listed above)\n")
        else:
            out.write(f"{args.host}: drained, no VM left\n")
    return EXIT_OK


def format_lsvm(listing: HostListing) -> str:
    """lsvm as a table: NAME STATE NAMESPACE PHASE POWER (``-`` where unknown)."""
    rows = [("NAME", "STATE", "NAMESPACE", "PHASE", "POWER")]
    for row in listing.rows:
        rows.append(
            (
                row.name,
                row.state or "-",
                row.namespace or "-",
                row.phase or "-",
                row.power_state or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() + "\n" for r in rows
    )


def _lsvm(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    listing = fleet.lsvm(args.host)
    if not listing.probed:
        err.write(f"note: KvmHost {args.host} has not been probed yet: no domains known\n")
    if not listing.rows:
        err.write(f"No VMs on {args.host}.\n")
        return EXIT_OK
    out.write(format_lsvm(listing))
    return EXIT_OK


def _capture(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    written = cloning.capture(
        fleet.kube,
        _namespace(args, fleet),
        args.vm,
        args.master,
        detached=args.detached,
        storage=args.storage,
    )
    out.write(f"vmmaster/{written.name} created (capturing {args.vm})\n")
    if written.note:
        err.write(f"note: {written.note}\n")
    return EXIT_OK


def _clone(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    written = cloning.clone(
        fleet.kube,
        _namespace(args, fleet),
        args.master,
        args.vm,
        detached=args.detached,
        host=args.host,
    )
    out.write(f"virtualnode/{written.name} created (clone of {args.master})\n")
    return EXIT_OK


def _force_remove(args: argparse.Namespace, fleet: Fleet, out: TextIO, err: TextIO) -> int:
    namespace = _namespace(args, fleet)
    left = forceremove.leftovers(fleet.kube, namespace, args.vm, args.mount_root)
    if not left.deleting:
        err.write(
            f"error: VirtualNode {namespace}/{args.vm} is not being deleted; delete it first "
            f"(kubectl delete vn {args.vm} -n {namespace}) and let the operator try\n"
        )
        return EXIT_NOT_READY
    if not left.ours:
        out.write(f"{args.vm}: kvmfleet's finalizer is already gone\n")
        return EXIT_OK
    out.write(forceremove.describe(left))
    if not args.yes:
        stdin = sys.stdin
        if not stdin.isatty():
            err.write("error: not a terminal: confirm with --yes\n")
            return EXIT_NOT_READY
        out.write(f"Remove kvmfleet's finalizer of {namespace}/{args.vm}? [y/N] ")
        out.flush()
        if stdin.readline().strip().lower() not in ("y", "yes"):
            out.write("nothing changed\n")
            return EXIT_FAILED
    forceremove.release(fleet.kube, left)
    out.write(f"{args.vm}: finalizer removed; what is listed above stays on the host\n")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Fleet, TextIO, TextIO], int]] = {
    "force-remove": _force_remove,
    "console": _console,
    "vnc": _vnc,
    "migrate": _migrate,
    "drain": _maintenance,
    "uncordon": _maintenance,
    "lsvm": _lsvm,
    "capture": _capture,
    "clone": _clone,
    **{name: _power for name in POWER_ACTIONS},
}


# --- entry point ------------------------------------------------------------------------------


def default_fleet(args: argparse.Namespace) -> Fleet:
    """A Fleet on the kubeconfig (or in-cluster credentials) the arguments select."""
    kube = KubeObjects.from_kubeconfig(
        getattr(args, "kubeconfig", None), getattr(args, "context", None)
    )
    return Fleet(kube)


def exit_code(error: KvmfleetError) -> int:
    """The exit code of an error (see the module docstring)."""
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, WaitTimeoutError):
        return EXIT_TIMEOUT
    if isinstance(error, NotReadyError):
        return EXIT_NOT_READY
    return EXIT_FAILED


def _message(error: KvmfleetError, args: argparse.Namespace) -> str:
    if error.reason == "ConsoleBusy":
        vm = getattr(args, "vm", "VM")
        return (
            f"the serial console of {vm} is in use by another session "
            f"(kubectl kvm console {vm} --force takes it over)"
        )
    return error.message


def main(
    argv: Sequence[str] | None = None,
    *,
    fleet_factory: FleetFactory = default_fleet,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Entry point of the ``kubectl-kvm`` console script; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(argv)
    if args.command == "version":
        out.write(f"kubectl-kvm (kvmfleet) {__version__}\n")
        return EXIT_OK
    try:
        fleet = fleet_factory(args)
        return COMMANDS[args.command](args, fleet, out, err)
    except KvmfleetError as error:
        err.write(f"error: {_message(error, args)}\n")
        return exit_code(error)
    except KeyboardInterrupt:
        err.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
