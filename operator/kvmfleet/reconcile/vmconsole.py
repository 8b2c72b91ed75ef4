"""VNC and serial consoles of a VirtualNode (getrvidparms, rcons): password Secret and status."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kvmfleet.domain.conditions import parse_rfc3339, rfc3339
from kvmfleet.reconcile.context import Context
from kvmfleet.reconcile.resource import Resource

PASSWORD_KEY = "password"  # noqa: S105 - the key name in the Secret
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class VncCredentials:
    """The current VNC password and until when the host accepts it."""

    secret_name: str
    password: str
    expires_at: datetime
    rotated: bool


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
    vnc = ((node.status.get("console") or {}).get("vnc")) or {}
    expires = parse_rfc3339(vnc.get("expiresAt"))
    current = await ctx.blocking(ctx.kube.read_secret, node.namespace, name)
    password = (current or {}).get(PASSWORD_KEY, b"").decode(errors="replace")
    margin = timedelta(minutes=5)
    if not rotate and password and expires is not None and expires - margin > now:
        return VncCredentials(name, password, expires, rotated=False)
    password = new_password()
    expires = now + timedelta(seconds=ctx.settings.vnc_password_ttl)
    await ctx.blocking(
        ctx.kube.write_owned_secret,
        node.namespace,
        name,
        {PASSWORD_KEY: password.encode(), "expiresAt": rfc3339(expires).encode()},
        owner_reference(node),
    )
    return VncCredentials(name, password, expires, rotated=True)


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
    if credentials is not None:
        vnc: dict[str, Any] = {
            "host": address,
            "passwordSecretRef": {"name": credentials.secret_name, "key": PASSWORD_KEY},
            "expiresAt": rfc3339(credentials.expires_at),
        }
        if vnc_port and vnc_port > 0:
            vnc["port"] = vnc_port
        result["vnc"] = vnc
    return result
