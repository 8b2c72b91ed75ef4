"""Use-cases of the kubectl plugin: serial and VNC consoles, power actions, migration, lsvm.

:class:`Fleet` is what ``kubectl kvm`` does, one method per command. It is synchronous
(every call blocks: the plugin is a command-line program).

* A VirtualNode's libvirt domain carries its name and lives on ``status.host``. The serial
  console is reached over that KvmHost's libvirt connection (qemu+ssh with the host key
  pinned: ``spec.hostKey``, or ``status.hostKey`` recorded under TrustOnFirstUse), with
  the SSH key of its ``spec.sshKeySecretRef`` - so reading a console needs ``get`` on
  that Secret, as the operator has.
* Power actions set the ``kvmfleet.io/<action>-requested-at`` annotation to the current
  time (RFC 3339, seconds, UTC ``Z``), always later than the value it replaces and than
  the one the operator last acted on (``status.lastActions``); waiting means polling the
  VirtualNode until the operator recorded the action (and, for start/stop, the power state
  followed).
* VNC credentials (xCAT ``getrvidparms``) are ``status.console.vnc`` plus the password in
  its Secret; ``rotate`` requests new ones and waits for the status and the Secret.
* Migration (xCAT ``rmigrate``) patches ``spec.hostRef`` and waits on ``status.migration``;
  drain / uncordon set and clear a KvmHost's ``spec.maintenance``; lsvm lists a KvmHost's
  ``status.domains`` next to the VirtualNodes labelled ``kvmfleet.io/host=<host>``.

Errors say what is wrong and what to do: :class:`NotFoundError` subclasses for a missing
VirtualNode / KvmHost, :class:`NotReadyError` subclasses for "not yet" (not placed, host
not ready, VM not running, no console yet), :class:`WaitTimeoutError`,
:class:`SecretUnreadableError`, :class:`ActionRefusedError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from kvmfleet.domain import conditions as cond
from kvmfleet.domain.conditions import parse_rfc3339 as parse_time
from kvmfleet.domain.specs import HostKeyPolicy, KvmHostSpec
from kvmfleet.errors import KvmfleetError, NotFoundError, PermanentError, TemporaryError
from kvmfleet.kube.objects import KubeObjects
from kvmfleet.settings import GROUP, HOST_LABEL
from kvmfleet.virt.connection import LibvirtConnection, LibvirtTarget, open_connection
from kvmfleet.virt.console import (
    DEFAULT_MAX_BYTES,
    ESCAPE,
    BridgeEnd,
    ConsoleOutput,
    Until,
    bridge,
    capture_console,
)
from kvmfleet.virt.errors import LibvirtNotFoundError, OperationInvalidError

Opener = Callable[[LibvirtTarget], LibvirtConnection]
"""Opens a libvirt connection (:func:`~kvmfleet.virt.connection.open_connection`)."""

UNSPECIFIED_ADDRESSES = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 - compared, not bound
"""VNC listen addresses that do not say where to connect: the KvmHost's address is used."""

HOST_ACCESS_CONDITIONS = ("Reachable", "HostKeyVerified", "LibvirtReady")
"""What a console needs of a KvmHost that is not Ready for another reason (storage...)."""


# --- errors -----------------------------------------------------------------------------------


class VirtualNodeNotFoundError(NotFoundError):
    """No VirtualNode of that name in that namespace."""

    reason = "VirtualNodeNotFound"


class KvmHostNotFoundError(NotFoundError):
    """No KvmHost of that name."""

    reason = "KvmHostNotFound"


class NotReadyError(TemporaryError):
    """Not possible yet: the operator has not got that far (or the VM is off)."""

    reason = "NotReady"


class NotPlacedError(NotReadyError):
    """The VirtualNode has no ``status.host`` yet."""

    reason = "NotPlaced"


class HostNotReadyError(NotReadyError):
    """The KvmHost cannot be reached through libvirt (or its host key is not known yet)."""

    reason = "HostNotReady"


class VmNotRunningError(NotReadyError):
    """The domain is off (or not defined on its host yet): it has no console."""

    reason = "NotRunning"


class NoVncConsoleError(NotReadyError):
    """``status.console.vnc`` is empty: the VM has no VNC console (yet)."""

    reason = "NoVncConsole"


class CredentialsExpiredError(NotReadyError):
    """The VNC password in the Secret is past ``expiresAt``."""

    reason = "CredentialsExpired"


class WaitTimeoutError(TemporaryError):
    """The VirtualNode did not reach the awaited state in time."""

    reason = "Timeout"


class SecretUnreadableError(PermanentError):
    """A Secret the command needs cannot be read (missing, forbidden, key absent)."""

    reason = "SecretUnreadable"


class ActionRefusedError(PermanentError):
    """The request contradicts the VirtualNode's or the KvmHost's spec."""

    reason = "ActionRefused"


class ActionFailedError(PermanentError):
    """The operator tried and reported a failure (e.g. the migration failed)."""

    reason = "ActionFailed"


# --- actions and times ------------------------------------------------------------------------


class Action(StrEnum):
    """One-shot actions of a VirtualNode, by the name of their annotation."""

    START = "start"
    STOP = "stop"
    REBOOT = "reboot"
    RESET = "reset"
    CONSOLE_CREDENTIALS = "console-credentials"

    @property
    def annotation(self) -> str:
        """``kvmfleet.io/<action>-requested-at``."""
        return f"{GROUP}/{self.value}-requested-at"

    @property
    def status_key(self) -> str:
        """Its key in ``status.lastActions``."""
        return "consoleCredentials" if self is Action.CONSOLE_CREDENTIALS else self.value


def next_request_time(now: datetime, *earlier: datetime | None) -> datetime:
    """``now`` to the second, but always later than every earlier request (the operator
    acts only on a time newer than the one it last acted on)."""
    moment = now.astimezone(UTC).replace(microsecond=0)
    floor = max((e for e in earlier if e is not None), default=None)
    if floor is not None and moment <= floor:
        moment = floor.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    return moment


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- views of the objects ---------------------------------------------------------------------


def _get(data: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def acknowledged(node: Mapping[str, Any], action: Action, stamp: str) -> bool:
    """True once ``status.lastActions`` shows the operator acted on ``stamp`` (or later)."""
    done = parse_time(_get(node, "status", "lastActions", action.status_key))
    wanted = parse_time(stamp)
    return done is not None and wanted is not None and done >= wanted


def action_done(node: Mapping[str, Any], action: Action, stamp: str) -> bool:
    """Acknowledged, and the power state followed: start On, stop Off, reboot and reset On
    again with no graceful transition (``status.powerTransition``) still under way."""
    if not acknowledged(node, action, stamp):
        return False
    power = _get(node, "status", "powerState")
    in_transition = bool(_get(node, "status", "powerTransition"))
    if action is Action.STOP:
        return bool(power == "Off")
    if action in (Action.START, Action.REBOOT, Action.RESET):
        return bool(power == "On") and not in_transition
    return True


def host_problem(host: Mapping[str, Any]) -> str | None:
    """Why a KvmHost cannot be used for consoles or as a target, or None if it can.

    Ready=True is enough; otherwise Reachable, HostKeyVerified and LibvirtReady must be
    True (a host whose storage is degraded still serves consoles).
    """
    found = {c.type: c for c in cond.parse_conditions(_get(host, "status", "conditions"))}
    ready = found.get(cond.READY)
    if ready is not None and ready.status is cond.Status.TRUE:
        return None
    needed = [found.get(name) for name in HOST_ACCESS_CONDITIONS]
    if all(c is not None and c.status is cond.Status.TRUE for c in needed):
        return None
    failing = next((c for c in needed if c is not None and c.status is not cond.Status.TRUE), None)
    failing = failing or ready
    if failing is None:
        return "it has not been probed yet (no conditions)"
    detail = f": {failing.message}" if failing.message else ""
    return f"{failing.type}={failing.status} ({failing.reason}){detail}"


def _describe(node: Mapping[str, Any]) -> str:
    """Phase, power state and the Ready condition's message, for error messages."""
    phase = _get(node, "status", "phase") or "unknown"
    power = _get(node, "status", "powerState") or "unknown"
    ready = cond.find(cond.parse_conditions(_get(node, "status", "conditions")), cond.READY)
    text = f"phase {phase}, powerState {power}"
    if ready is not None and ready.status is not cond.Status.TRUE and ready.message:
        text += f"; Ready={ready.status}: {ready.message}"
    return text


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostAccess:
    """How to reach a KvmHost's libvirtd."""

    name: str
    address: str
    target: LibvirtTarget


@dataclass(frozen=True)
class Placement:
    """A VirtualNode, the host it is placed on, and its domain's name there."""

    namespace: str
    name: str
    node: Mapping[str, Any]
    host: HostAccess

    @property
    def domain_name(self) -> str:
        """The libvirt domain: named after the VirtualNode."""
        return self.name


@dataclass(frozen=True)
class ActionRequest:
    """An action requested: the annotation's new value, and the VirtualNode afterwards."""

    action: Action
    stamp: str
    node: Mapping[str, Any]


@dataclass(frozen=True)
class VncCredentials:
    """What xCAT's getrvidparms prints: where the VNC console is and its password."""

    node: str
    host: str
    address: str
    port: int
    password: str
    expires_at: str | None
    text_console: str | None
    rotated: bool = False


@dataclass(frozen=True)
class Migration:
    """The outcome of :meth:`Fleet.migrate`."""

    node: str
    source: str | None
    target: str
    requested: bool
    finished: bool


@dataclass(frozen=True)
class Stuck:
    """A VirtualNode still on a host in maintenance, and why."""

    name: str
    reason: str
    message: str
    settled: bool
    """True when it will not move by itself (pinned, refused); False while it may."""


@dataclass(frozen=True)
class Drain:
    """The outcome of :meth:`Fleet.set_maintenance`."""

    host: str
    maintenance: bool
    left: tuple[Stuck, ...] = ()


def migration_line(migration: Mapping[str, Any]) -> str:
    """One line of progress of ``status.migration`` (empty when there is none)."""
    phase = migration.get("phase")
    if not phase:
        return ""
    text = f"{phase}: {migration.get('source')} -> {migration.get('target')}"
    total, left = migration.get("dataTotal"), migration.get("dataRemaining")
    if phase == "Running" and total:
        text += f", {int(left or 0) // 2**20} of {int(total) // 2**20} MiB left"
    message = migration.get("message")
    return f"{text} ({message})" if message and phase != "Running" else text


@dataclass(frozen=True)
class HostDomain:
    """One row of lsvm: a domain on the host and/or a VirtualNode labelled for it."""

    name: str
    state: str | None
    """The domain's state as the host's last probe saw it; None: not defined there."""
    namespace: str | None
    """The VirtualNode's namespace; None: no VirtualNode (a domain kvmfleet does not own)."""
    phase: str | None = None
    power_state: str | None = None


@dataclass(frozen=True)
class HostListing:
    """lsvm of one KvmHost."""

    host: str
    address: str
    probed: bool
    """False when the host has never been probed (``status.domains`` absent)."""
    rows: tuple[HostDomain, ...]


# --- the use-cases ----------------------------------------------------------------------------


class Fleet:
    """``kubectl kvm``'s use-cases over the API (:class:`KubeObjects`) and libvirt."""

    def __init__(
        self,
        kube: KubeObjects,
        *,
        opener: Opener = open_connection,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        poll_interval: float = 1.0,
    ) -> None:
        self.kube = kube
        self._open = opener
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self.poll_interval = poll_interval

    @property
    def default_namespace(self) -> str:
        """The namespace of the kubeconfig's context (else "default")."""
        return self.kube.default_namespace

    # -- lookups --

    def virtualnode(self, namespace: str, name: str) -> dict[str, Any]:
        """The VirtualNode (VirtualNodeNotFoundError if there is none)."""
        try:
            return self.kube.get_virtualnode(namespace, name)
        except NotFoundError:
            raise VirtualNodeNotFoundError(
                f'VirtualNode "{name}" not found in namespace "{namespace}"'
            ) from None

    def kvmhost(self, name: str) -> dict[str, Any]:
        """The KvmHost (KvmHostNotFoundError if there is none)."""
        try:
            return self.kube.get_kvmhost(name)
        except NotFoundError:
            raise KvmHostNotFoundError(f'KvmHost "{name}" not found') from None

    def host_access(self, name: str) -> HostAccess:
        """The libvirt target of a usable KvmHost, with its SSH key read from its Secret."""
        host = self.kvmhost(name)
        spec = KvmHostSpec.from_dict(host.get("spec"))
        problem = host_problem(host)
        if problem:
            raise HostNotReadyError(f"KvmHost {name} is not ready: {problem}")
        host_key = spec.host_key
        if host_key is None and spec.host_key_policy is HostKeyPolicy.TRUST_ON_FIRST_USE:
            host_key = _get(host, "status", "hostKey") or None
        if not host_key:
            raise HostNotReadyError(
                f"KvmHost {name}: its host key is not known yet (TrustOnFirstUse records it "
                "at the first probe)"
            )
        ref = spec.ssh_key_secret_ref
        try:
            key = self.kube.read_secret_value(ref.namespace, ref.name, ref.key)
        except (NotFoundError, PermanentError) as error:
            raise SecretUnreadableError(
                f"cannot read the SSH key of KvmHost {name} (Secret {ref.namespace}/{ref.name}, "
                f"key {ref.key}): {error.message}. The console is reached through the host "
                "with that key: reading it needs get on that Secret"
            ) from None
        target = LibvirtTarget.for_host(
            spec.address,
            key,
            host_key,
            port=spec.port,
            user=spec.user,
            libvirt_uri=spec.libvirt_uri,
        )
        return HostAccess(name, spec.address, target)

    def placement(self, namespace: str, name: str) -> Placement:
        """Where the VirtualNode runs (NotPlacedError before the operator placed it)."""
        node = self.virtualnode(namespace, name)
        host = _get(node, "status", "host")
        if not host:
            raise NotPlacedError(
                f"VirtualNode {namespace}/{name} is not placed on a host yet "
                f"({_describe(node)}); its consoles exist once the operator has placed it"
            )
        return Placement(namespace, name, node, self.host_access(str(host)))

    @contextmanager
    def _connection(self, placement: Placement) -> Iterator[LibvirtConnection]:
        connection = self._open(placement.host.target)
        try:
            yield connection
        finally:
            connection.close()

    def _console_error(self, placement: Placement, error: KvmfleetError) -> KvmfleetError:
        where = f"VirtualNode {placement.namespace}/{placement.name} on {placement.host.name}"
        if isinstance(error, OperationInvalidError):
            return VmNotRunningError(
                f"{where} is not running ({_describe(placement.node)}): it has no console "
                f"until it is started (kubectl kvm start {placement.name})"
            )
        if isinstance(error, LibvirtNotFoundError):
            return VmNotRunningError(
                f"{where}: the domain is not defined on the host (yet): {error.message}"
            )
        return error

    # -- serial console (rcons / wcons) --

    def serial_output(
        self,
        namespace: str,
        name: str,
        *,
        until: Until = None,
        timeout: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        force: bool = False,
        device: str | None = None,
        sink: Callable[[bytes], None] | None = None,
        whole_line: bool = False,
    ) -> ConsoleOutput:
        """What the VM's serial console shows until ``until`` appears or ``timeout`` passes
        (``whole_line``: and to the end of the matching line)."""
        placement = self.placement(namespace, name)
        with self._connection(placement) as connection:
            try:
                return capture_console(
                    connection,
                    placement.domain_name,
                    until=until,
                    timeout=timeout,
                    max_bytes=max_bytes,
                    device=device,
                    force=force,
                    sink=sink,
                    whole_line=whole_line,
                )
            except (OperationInvalidError, LibvirtNotFoundError) as error:
                raise self._console_error(placement, error) from error

    def serial_session(
        self,
        namespace: str,
        name: str,
        *,
        input_fd: int,
        output_fd: int,
        escape: bytes = ESCAPE,
        force: bool = False,
        device: str | None = None,
        on_open: Callable[[Placement], None] | None = None,
    ) -> BridgeEnd:
        """An interactive session on the VM's serial console (ends on ``escape``)."""
        placement = self.placement(namespace, name)
        with self._connection(placement) as connection:
            try:
                return bridge(
                    connection,
                    placement.domain_name,
                    input_fd=input_fd,
                    output_fd=output_fd,
                    escape=escape,
                    device=device,
                    force=force,
                    on_open=(lambda: on_open(placement)) if on_open else None,
                )
            except (OperationInvalidError, LibvirtNotFoundError) as error:
                raise self._console_error(placement, error) from error

    # -- actions (rpower) --

    def _check_action(self, node: Mapping[str, Any], action: Action) -> None:
        ref = f"VirtualNode {_get(node, 'metadata', 'namespace')}/{_get(node, 'metadata', 'name')}"
        strategy = _get(node, "spec", "runStrategy") or "Always"
        if action is Action.STOP and strategy != "Manual":
            raise ActionRefusedError(
                f"{ref} has runStrategy {strategy}: stop acts only with runStrategy Manual. "
                "Set spec.runStrategy to Halted to keep it off, or to Manual to use start/stop"
            )
        if action is Action.START and strategy == "Halted":
            raise ActionRefusedError(
                f"{ref} has runStrategy Halted: the operator keeps it off. Set "
                "spec.runStrategy to Always or Manual"
            )
        if action in (Action.REBOOT, Action.RESET) and _get(node, "status", "powerState") == "Off":
            raise VmNotRunningError(f"{ref} is off: nothing to {action.value}")
        if action is Action.CONSOLE_CREDENTIALS and _get(node, "spec", "vnc", "enabled") is False:
            raise ActionRefusedError(f"{ref} has no VNC console (spec.vnc.enabled is false)")

    def request_action(self, namespace: str, name: str, action: Action | str) -> str:
        """Set the action's annotation to now (later than any earlier request); its value."""
        action = Action(action)
        node = self.virtualnode(namespace, name)
        self._check_action(node, action)
        annotations = _get(node, "metadata", "annotations") or {}
        moment = next_request_time(
            self._clock(),
            parse_time(annotations.get(action.annotation)),
            parse_time(_get(node, "status", "lastActions", action.status_key)),
        )
        stamp = cond.rfc3339(moment)
        self.kube.patch_annotations(namespace, name, {action.annotation: stamp})
        return stamp

    def wait_for(
        self,
        namespace: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,
        *,
        what: str = "the awaited state",
    ) -> dict[str, Any]:
        """Poll the VirtualNode until ``predicate`` holds; WaitTimeoutError after ``timeout``.

        The predicate may raise to give up early (e.g. the operator reported a failure).
        """
        deadline = self._monotonic() + timeout
        while True:
            node = self.virtualnode(namespace, name)
            if predicate(node):
                return node
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(
                    f"timed out after {timeout:g} s waiting for {what} of VirtualNode "
                    f"{namespace}/{name} ({_describe(node)})"
                )
            self._sleep(min(self.poll_interval, remaining))

    def act(
        self, namespace: str, name: str, action: Action | str, *, wait: bool, timeout: float = 300
    ) -> ActionRequest:
        """Request an action; with ``wait``, until the operator did it (:func:`action_done`)."""
        action = Action(action)
        stamp = self.request_action(namespace, name, action)
        if not wait:
            return ActionRequest(action, stamp, self.virtualnode(namespace, name))
        node = self.wait_for(
            namespace,
            name,
            lambda n: action_done(n, action, stamp),
            timeout,
            what=f"{action.value} (requested at {stamp})",
        )
        return ActionRequest(action, stamp, node)

    # -- VNC (getrvidparms) --

    def _secret_version(self, namespace: str, name: str) -> str | None:
        try:
            return self.kube.read_secret(namespace, name).resource_version
        except NotFoundError:
            return None

    def vnc_credentials(
        self, namespace: str, name: str, *, rotate: bool = False, timeout: float = 120
    ) -> VncCredentials:
        """The VNC console's address, port and password; ``rotate`` asks for new ones first
        and waits until the status and the Secret show them."""
        node = self.virtualnode(namespace, name)
        ref = f"VirtualNode {namespace}/{name}"
        if _get(node, "spec", "vnc", "enabled") is False:
            raise NoVncConsoleError(f"{ref} has no VNC console (spec.vnc.enabled is false)")
        if not _get(node, "status", "host"):
            raise NotPlacedError(
                f"{ref} is not placed on a host yet ({_describe(node)}); its VNC console "
                "exists once the operator has placed and started it"
            )
        if rotate:
            node = self._rotate(namespace, name, node, timeout)
        vnc = _get(node, "status", "console", "vnc") or {}
        if not vnc.get("port"):
            raise NoVncConsoleError(
                f"{ref} has no VNC console in its status yet ({_describe(node)}); it appears "
                "once the VM runs"
            )
        secret_name = _get(vnc, "passwordSecretRef", "name")
        secret_key = _get(vnc, "passwordSecretRef", "key") or "password"
        if not secret_name:
            raise NoVncConsoleError(f"{ref}: status.console.vnc names no password Secret yet")
        expires_at = vnc.get("expiresAt")
        expiry = parse_time(expires_at)
        if not rotate and expiry is not None and expiry <= self._clock():
            raise CredentialsExpiredError(
                f"the VNC password of {ref} expired at {expires_at}: "
                f"kubectl kvm vnc {name} --rotate makes a new one"
            )
        try:
            password = self.kube.read_secret_value(namespace, str(secret_name), str(secret_key))
        except (NotFoundError, PermanentError) as error:
            raise SecretUnreadableError(
                f"cannot read the VNC password of {ref}: {error.message}"
            ) from None
        host = str(_get(node, "status", "host"))
        return VncCredentials(
            node=name,
            host=host,
            address=self._vnc_address(str(vnc.get("host") or ""), host),
            port=int(vnc["port"]),
            password=password.decode("utf-8", "replace"),
            expires_at=str(expires_at) if expires_at else None,
            text_console=_get(node, "status", "console", "serial", "device") or None,
            rotated=rotate,
        )

    def _vnc_address(self, listen: str, host: str) -> str:
        if listen not in UNSPECIFIED_ADDRESSES:
            return listen
        try:
            address = _get(self.kvmhost(host), "spec", "address")
        except KvmHostNotFoundError:
            address = None
        return str(address or host)

    def _rotate(
        self, namespace: str, name: str, node: Mapping[str, Any], timeout: float
    ) -> dict[str, Any]:
        deadline = self._monotonic() + timeout
        before = _get(node, "status", "console", "vnc") or {}
        secret_name = _get(before, "passwordSecretRef", "name")
        version = self._secret_version(namespace, str(secret_name)) if secret_name else None
        stamp = self.request_action(namespace, name, Action.CONSOLE_CREDENTIALS)

        def rotated(current: Mapping[str, Any]) -> bool:
            vnc = _get(current, "status", "console", "vnc") or {}
            changed = vnc.get("expiresAt") and vnc.get("expiresAt") != before.get("expiresAt")
            return bool(acknowledged(current, Action.CONSOLE_CREDENTIALS, stamp) or changed)

        what = f"new VNC credentials (requested at {stamp})"
        fresh = self.wait_for(namespace, name, rotated, timeout, what=what)
        secret_name = _get(fresh, "status", "console", "vnc", "passwordSecretRef", "name")
        if secret_name:

            def secret_written(_: Mapping[str, Any]) -> bool:
                now = self._secret_version(namespace, str(secret_name))
                return now is not None and now != version

            remaining = max(0.0, deadline - self._monotonic())
            fresh = self.wait_for(
                namespace, name, secret_written, remaining, what=f"the new password in {what}"
            )
        return fresh

    # -- migration (rmigrate) --

    def migrate(
        self,
        namespace: str,
        name: str,
        host: str,
        *,
        wait: bool = False,
        timeout: float = 600,
        progress: Callable[[str], None] | None = None,
    ) -> Migration:
        """Move the VM to ``host`` by patching ``spec.hostRef``; ``wait`` until it runs there.

        While waiting, ``progress`` gets a line each time ``status.migration`` changes
        (phase, data remaining). A refusal or a failure of this request (its ``endTime``
        after the request) ends the wait with :class:`ActionFailedError` and the operator's
        message (the operator itself goes on retrying).
        """
        node = self.virtualnode(namespace, name)
        target = self.kvmhost(host)
        source = _get(node, "status", "host") or None
        if source == host and _get(node, "spec", "hostRef") == host:
            return Migration(name, source, host, requested=False, finished=True)
        problem = host_problem(target)
        if problem:
            raise HostNotReadyError(f"KvmHost {host} is not ready: {problem}")
        spec = KvmHostSpec.from_dict(target.get("spec"))
        if spec.maintenance:
            raise ActionRefusedError(f"KvmHost {host} is in maintenance: it takes no new VMs")
        if not spec.allows_namespace(namespace):
            raise ActionRefusedError(
                f"KvmHost {host} does not accept VirtualNodes of namespace {namespace} "
                f"(allowedNamespaces: {', '.join(spec.allowed_namespaces)})"
            )
        requested = self._clock().astimezone(UTC).replace(microsecond=0)
        self.kube.patch_spec(namespace, name, {"hostRef": host})
        if not wait:
            return Migration(name, source, host, requested=True, finished=False)
        seen: list[str] = []

        def arrived(current: Mapping[str, Any]) -> bool:
            migration = _get(current, "status", "migration") or {}
            line = migration_line(migration)
            if progress is not None and line and (not seen or seen[-1] != line):
                seen.append(line)
                progress(line)
            ended = parse_time(migration.get("endTime"))
            if (
                migration.get("target") == host
                and migration.get("phase") in ("Failed", "Refused")
                and ended is not None
                and ended >= requested
            ):
                raise ActionFailedError(
                    f"VirtualNode {namespace}/{name} was not moved to {host} "
                    f"({migration.get('phase')}): {migration.get('message') or 'no message'}; "
                    "spec.hostRef stays set: the operator retries (kubectl describe vn for "
                    "the Migration condition)"
                )
            return bool(
                _get(current, "status", "host") == host
                and migration.get("phase") not in ("Running", "Queued")
            )

        self.wait_for(namespace, name, arrived, timeout, what=f"the migration to {host}")
        return Migration(name, source, host, requested=True, finished=True)

    # -- maintenance --

    def set_maintenance(
        self, host: str, maintenance: bool, *, wait: bool = False, timeout: float = 600
    ) -> Drain:
        """drain / uncordon: set or clear ``spec.maintenance`` of a KvmHost.

        With ``wait`` (drain only), until no VirtualNode is left on the host or every one
        left says why it does not move (its Migration condition: pinned by ``hostRef``, a
        pre-flight refusal...).
        """
        self.kvmhost(host)
        self.kube.patch_kvmhost_spec(host, {"maintenance": maintenance})
        if not (wait and maintenance):
            return Drain(host, maintenance, left=self._left_on(host))
        deadline = self._monotonic() + timeout
        while True:
            left = self._left_on(host)
            if all(stuck.settled for stuck in left):
                return Drain(host, maintenance, left=left)
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                moving = ", ".join(s.name for s in left if not s.settled)
                raise WaitTimeoutError(
                    f"timed out after {timeout:g} s waiting for KvmHost {host} to drain "
                    f"(still moving: {moving})"
                )
            self._sleep(min(self.poll_interval, remaining))

    def _left_on(self, host: str) -> tuple[Stuck, ...]:
        nodes = self.kube.list_virtualnodes(label_selector=f"{HOST_LABEL}={host}")
        left = []
        for node in nodes:
            if _get(node, "status", "host") != host:
                continue
            ref = _get(node, "spec", "hostRef")
            migration: dict[str, Any] = next(
                (
                    c
                    for c in _get(node, "status", "conditions") or []
                    if c.get("type") == "Migration"
                ),
                {},
            )
            name = f"{_get(node, 'metadata', 'namespace')}/{_get(node, 'metadata', 'name')}"
            if ref == host:
                left.append(Stuck(name, "PinnedByHostRef", f"spec.hostRef is {host}", True))
            elif migration.get("status") == "False" and migration.get("reason") not in (
                "MigrationQueued",
                "MigrationFailed",
                "MigrationTimedOut",
                "MigrationInterrupted",
            ):
                left.append(
                    Stuck(name, str(migration.get("reason")), str(migration.get("message")), True)
                )
            else:
                left.append(Stuck(name, "Moving", "not moved yet", False))
        return tuple(left)

    # -- lsvm --

    def lsvm(self, host: str) -> HostListing:
        """The domains the host's last probe saw, and the VirtualNodes labelled for it."""
        kvmhost = self.kvmhost(host)
        domains = _get(kvmhost, "status", "domains")
        nodes = self.kube.list_virtualnodes(label_selector=f"{HOST_LABEL}={host}")
        by_name: dict[str, HostDomain] = {}
        for domain in domains or []:
            domain_name = str(domain.get("name") or "")
            if domain_name:
                by_name[domain_name] = HostDomain(domain_name, domain.get("state"), None)
        for node in nodes:
            node_name = str(_get(node, "metadata", "name") or "")
            seen = by_name.get(node_name)
            by_name[node_name] = HostDomain(
                node_name,
                seen.state if seen else None,
                _get(node, "metadata", "namespace"),
                _get(node, "status", "phase"),
                _get(node, "status", "powerState"),
            )
        return HostListing(
            host=host,
            address=str(_get(kvmhost, "spec", "address") or ""),
            probed=domains is not None,
            rows=tuple(by_name[key] for key in sorted(by_name)),
        )
