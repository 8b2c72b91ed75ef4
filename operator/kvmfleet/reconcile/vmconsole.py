"""VNC and serial consoles of a VirtualNode (getrvidparms, rcons): password Secret and status.

The ``<vm>-vnc`` Secret is created only when absent, and changed only when its
ownerReferences name this VirtualNode's uid. A Secret of that name owned by anything else
(or by nobody) is never replaced, adopted or read for a password: the console is then
reported as not ready, and the domain gets a random password no one is told.

A new password is written to the Secret first, then to the domain (its persistent
definition and, while it runs, the live VNC server). The domain shows the password's
expiry (``passwdValidTo``) but never the password; kvmfleet gives each password its own
expiry, so a pass that finds the domain's expiry different from the Secret's sets the
Secret's password again. An interrupted rotation is therefore finished by the next pass,
in any power state, and the Secret ends up holding the password the domain accepts.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kvmfleet.domain.conditions import parse_rfc3339, rfc3339
from kvmfleet.domain.domainxml.graphics import format_valid_to
from kvmfleet.errors import TemporaryError
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.resource import Resource

PASSWORD_KEY = "password"  # noqa: S105 - the key name in the Secret
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class VncCredentials:
    """The current VNC password and until when the host accepts it.

    ``conflict``: why the Secret is not ours (then ``password`` is a random one that is
    published nowhere, and the status names no Secret).
    """

    secret_name: str
    password: str = field(repr=False)
    expires_at: datetime
    rotated: bool
    conflict: str | None = None


def secret_name(node: str) -> str:
    """The Secret holding a VM's VNC password."""
    return f"{node}-vnc"


def new_password() -> str:
    """8 random characters (VNC authentication uses at most 8)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(8))


def owner_reference(node: Resource) -> dict[str, Any]:
    """The ownerReference that makes a Secret go with its VirtualNode."""
    return {
        "apiVersion": "kvmfleet.io/v1alpha1",
        "kind": "VirtualNode",
        "name": node.name,
        "uid": node.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


async def ensure_credentials(ctx: Context, node: Resource, *, rotate: bool) -> VncCredentials:
    """The VNC password: kept while valid, new when asked for, missing or expired."""
    assert node.namespace is not None
    name = secret_name(node.name)
    now = datetime.now(UTC).replace(microsecond=0)
    current = await ctx.blocking(ctx.kube.read_secret, node.namespace, name)
    if current is not None and node.uid not in current.owner_uids:
        return VncCredentials(
            name,
            new_password(),
            now + timedelta(seconds=ctx.settings.vnc_password_ttl),
            rotated=False,
            conflict=(
                f"Secret {node.namespace}/{name} exists and is not owned by this VirtualNode "
                "(no ownerReference with its uid): it is left alone; delete or rename it "
                "to get a VNC console password"
            ),
        )
    data = current.data if current is not None else {}
    password = data.get(PASSWORD_KEY, b"").decode(errors="replace")
    expires = parse_rfc3339(data.get("expiresAt", b"").decode(errors="replace"))
    margin = timedelta(minutes=5)
    if not rotate and password and expires is not None and expires - margin > now:
        return VncCredentials(name, password, expires, rotated=False)
    password = new_password()
    fresh = now + timedelta(seconds=ctx.settings.vnc_password_ttl)
    # The domain's passwdValidTo (whole seconds) tells which password it holds (domain_has):
    # rotations within one second must still end at seconds of their own, later ones later.
    if expires is not None and timedelta(0) <= expires - fresh < timedelta(minutes=1):
        fresh = expires + timedelta(seconds=1)
    expires = fresh
    values = {PASSWORD_KEY: password.encode(), "expiresAt": rfc3339(expires).encode()}
    if current is None:
        created = await ctx.blocking(
            ctx.kube.create_owned_secret, node.namespace, name, values, owner_reference(node)
        )
        if not created:
            raise TemporaryError(
                f"Secret {node.namespace}/{name} appeared meanwhile; judging it again",
                reason="Conflict",
            )
    else:
        await ctx.blocking(
            ctx.kube.replace_owned_secret,
            node.namespace,
            name,
            values,
            owner_reference(node),
            current.resource_version,
        )
    return VncCredentials(name, password, expires, rotated=True)


def domain_has(credentials: VncCredentials, valid_to: str | None) -> bool:
    """Whether a domain showing ``passwdValidTo=valid_to`` holds these credentials."""
    return valid_to == format_valid_to(credentials.expires_at)


def console_status(
    address: str,
    credentials: VncCredentials | None,
    vnc_port: int | None,
    serial: str | None,
    host: str,
) -> dict[str, Any]:
    """status.console: where the serial console and the VNC server are."""
    result: dict[str, Any] = {}
    if serial:
        result["serial"] = {"host": host, "device": serial}
    if credentials is not None and credentials.conflict is None:
        vnc: dict[str, Any] = {
            "host": address,
            "passwordSecretRef": {"name": credentials.secret_name, "key": PASSWORD_KEY},
            "expiresAt": rfc3339(credentials.expires_at),
        }
        if vnc_port and vnc_port > 0:
            vnc["port"] = vnc_port
        result["vnc"] = vnc
    return result
