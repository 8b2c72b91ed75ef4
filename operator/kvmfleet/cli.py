"""Command line: `kvmfleet run` starts the operator, `kvmfleet version` prints the version."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import sys
from collections.abc import Sequence

from kvmfleet import __version__
from kvmfleet.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmfleet",
        description="Run KVM hypervisors and their VMs from Kubernetes custom resources.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="start the operator (uses in-cluster credentials or the current kubeconfig)",
    )
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch VirtualNodes/VmMasters only in this namespace (repeatable; default: all)",
    )
    run.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default 8080)")
    run.add_argument(
        "--health-port", type=int, help="/healthz (liveness) and /readyz port (default 8081)"
    )
    run.add_argument("--bind-address", help="address of both endpoints (default 0.0.0.0)")
    run.add_argument(
        "--host-probe-interval", type=float, help="seconds between KvmHost probes (default 60)"
    )
    run.add_argument(
        "--leader-elect",
        action="store_true",
        default=None,
        dest="leader_election",
        help="act only while holding the leader Lease (active/standby replicas)",
    )
    run.add_argument("-v", "--verbose", action="store_true", default=None, help="debug logging")
    sub.add_parser("version", help="print the version")
    return parser


def run_operator(settings: Settings) -> int:
    """Start Kopf with kvmfleet's handlers (after the leader Lease when leader election is
    on); returns the exit status when the operator stops."""
    import kopf

    from kvmfleet.handlers import runtime  # also registers the handlers
    from kvmfleet.reconcile.context import Context

    kopf.configure(verbose=settings.verbose, log_format=kopf.LogFormat.FULL)
    return asyncio.run(runtime.main(settings, Context.create(settings)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kvmfleet` console script."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"kvmfleet {__version__}")
        return 0
    settings = Settings.from_env(
        namespaces=tuple(args.namespaces) if args.namespaces else None,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        host_probe_interval=args.host_probe_interval,
        leader_election=args.leader_election,
        verbose=args.verbose,
    )
    logging.basicConfig(level=logging.DEBUG if settings.verbose else logging.INFO)
    # A crash in a C library (libvirt's client) leaves every thread's Python stack in the log.
    faulthandler.enable()
    try:
        return run_operator(settings)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
