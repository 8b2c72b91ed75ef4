"""Validators for every user-given string that may reach libvirt or a remote command.

These are a second line of defence behind the CRD schemas: the operator never passes a
name, address or path to a host unless it went through one of these. Each validator takes
the raw value (of any type, as Kubernetes delivers it) and the field path used in the
error message (e.g. ``"spec.bridges[0].name"``), returns the value in canonical form and
raises :class:`~kvmfleet.errors.InvalidSpecError` ``"<field>: <what is wrong>"`` otherwise.
All checks are whitelists: what is not explicitly allowed is refused.
"""

from __future__ import annotations

import binascii
import ipaddress
import re
import uuid as _uuid
from base64 import b64decode, b64encode
from typing import NoReturn

from kvmfleet.errors import InvalidSpecError

SHELL_METACHARACTERS = frozenset(";&|$`<>(){}[]*?!'\"\\")
"""Characters a POSIX shell treats specially; refused in paths and names."""

MAX_INTERFACE_NAME = 15
"""Linux IFNAMSIZ (16) minus the terminating NUL."""

MAX_PATH = 4096
MAX_PATH_SEGMENT = 255

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DOMAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_SSH_KEY_TYPE = re.compile(r"[a-z][a-z0-9@.-]*")


def fail(field: str, message: str) -> NoReturn:
    """Raise the InvalidSpecError every validator raises: ``"<field>: <message>"``."""
    raise InvalidSpecError(f"{field}: {message}")


def show(value: object, limit: int = 64) -> str:
    """A short, printable rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_string(value: object, field: str) -> str:
    """Return ``value`` if it is a non-empty string."""
    if not isinstance(value, str):
        fail(field, f"must be a string, not {type(value).__name__}")
    if not value:
        fail(field, "must not be empty")
    return value


def validate_dns1123_label(value: object, field: str = "name") -> str:
    """A DNS-1123 label (namespace, disk name): lower-case alphanumerics and '-', max 63."""
    text = require_string(value, field)
    if len(text) > 63:
        fail(field, f"must be at most 63 characters (got {len(text)})")
    if not _DNS1123_LABEL.fullmatch(text):
        fail(
            field,
            f"{show(text)} is not a DNS-1123 label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return text


def validate_dns1123_subdomain(value: object, field: str = "name") -> str:
    """A DNS-1123 subdomain (object names): labels joined by '.', max 253 characters."""
    text = require_string(value, field)
    if len(text) > 253:
        fail(field, f"must be at most 253 characters (got {len(text)})")
    if not _DNS1123_SUBDOMAIN.fullmatch(text):
        fail(
            field,
            f"{show(text)} is not a DNS-1123 subdomain: lower-case letters, digits, '-' and "
            "'.', each part starting and ending with a letter or digit",
        )
    return text


def validate_interface_name(value: object, field: str = "name") -> str:
    """A Linux network interface or bridge name: 1-15 of [A-Za-z0-9_.-], not '.' or '..'.

    A leading '-' is refused too: the name would read as an option to ``ip``/``bridge``.
    """
    text = require_string(value, field)
    if len(text) > MAX_INTERFACE_NAME:
        fail(field, f"must be at most {MAX_INTERFACE_NAME} characters (got {len(text)})")
    if text in {".", ".."}:
        fail(field, f"{show(text)} is not a valid interface name")
    if not _INTERFACE_NAME.fullmatch(text):
        fail(
            field,
            f"{show(text)} is not a valid interface name: only letters, digits, '_', '.' "
            "and '-' (not first)",
        )
    return text


def validate_host_address(value: object, field: str = "address") -> str:
    """A host name (RFC 1123), an IPv4 or an IPv6 address; returned in canonical form.

    IPv6 may be given bare or in brackets and is returned bare and compressed; host names
    are returned in lower case. Zone indexes (``fe80::1%eth0``) are refused.
    """
    text = require_string(value, field)
    if len(text) > 253:
        fail(field, f"must be at most 253 characters (got {len(text)})")
    if ":" in text or text.startswith("["):
        return _validate_ipv6(text, field)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    return _validate_hostname(text, field)


def _validate_ipv6(text: str, field: str) -> str:
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in bare:
        fail(field, f"{show(text)}: IPv6 zone indexes are not supported")
    try:
        return str(ipaddress.IPv6Address(bare))
    except ValueError:
        fail(field, f"{show(text)} is not a valid IPv6 address")


def _validate_hostname(text: str, field: str) -> str:
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    for label in labels:
        if not _HOSTNAME_LABEL.fullmatch(label):
            fail(
                field,
                f"{show(text)} is not a valid host name or IP address: host names are "
                "letters, digits and '-' in dot-separated labels of at most 63 characters",
            )
    if labels[-1].isdigit():
        fail(field, f"{show(text)} is not a valid IPv4 address or host name")
    return text.lower()


def host_for_uri(address: str) -> str:
    """The address as it goes into a URI authority: IPv6 in brackets, others unchanged."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def validate_absolute_path(value: object, field: str = "path") -> str:
    """An absolute POSIX path safe to hand to a remote command; returned normalized.

    Refused: relative paths, '..' segments, NUL, whitespace and other control characters,
    and the shell metacharacters of :data:`SHELL_METACHARACTERS`. Normalized: repeated
    '/' and '.' segments removed, no trailing '/' (except for the root itself).
    """
    text = require_string(value, field)
    if not text.startswith("/"):
        fail(field, f"{show(text)} must be an absolute path (starting with '/')")
    if len(text) > MAX_PATH:
        fail(field, f"must be at most {MAX_PATH} characters (got {len(text)})")
    for char in text:
        if not char.isprintable() or char.isspace():
            fail(field, f"{show(text)} must not contain whitespace or control characters")
        if char in SHELL_METACHARACTERS:
            fail(field, f"{show(text)} must not contain the shell metacharacter {char!r}")
    segments = [segment for segment in text.split("/") if segment not in {"", "."}]
    for segment in segments:
        if segment == "..":
            fail(field, f"{show(text)} must not contain '..' segments")
        if len(segment) > MAX_PATH_SEGMENT:
            fail(field, f"path components must be at most {MAX_PATH_SEGMENT} characters")
    return "/" + "/".join(segments)


def validate_domain_name(value: object, field: str = "name") -> str:
    """A libvirt domain name: 1-253 of [A-Za-z0-9_.+-], not starting with '.', '-' or '+'."""
    text = require_string(value, field)
    if len(text) > 253:
        fail(field, f"must be at most 253 characters (got {len(text)})")
    if not _DOMAIN_NAME.fullmatch(text):
        fail(
            field,
            f"{show(text)} is not a valid domain name: letters, digits, '_', '.', '+' and "
            "'-', starting with a letter, digit or '_'",
        )
    return text


def validate_user_name(value: object, field: str = "user") -> str:
    """A POSIX login name for SSH: ``[a-z_][a-z0-9_-]*``, at most 32 characters."""
    text = require_string(value, field)
    if len(text) > 32 or not _USER_NAME.fullmatch(text):
        fail(
            field,
            f"{show(text)} is not a valid user name: lower-case letters, digits, '_' and '-', "
            "not starting with a digit or '-', at most 32 characters",
        )
    return text


def validate_secret_key(value: object, field: str = "key") -> str:
    """A key inside a Kubernetes Secret's data: ``[-._a-zA-Z0-9]+``, at most 253."""
    text = require_string(value, field)
    if len(text) > 253 or not _SECRET_KEY.fullmatch(text):
        fail(field, f"{show(text)} is not a valid Secret key: letters, digits, '-', '_', '.'")
    return text


def validate_port(value: object, field: str = "port") -> int:
    """A TCP port number, 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, f"must be an integer, not {type(value).__name__}")
    if not 1 <= value <= 65535:
        fail(field, f"must be between 1 and 65535 (got {value})")
    return value


def validate_uuid(value: object, field: str = "uuid") -> str:
    """A UUID; returned in canonical lower-case 8-4-4-4-12 form."""
    text = require_string(value, field)
    try:
        return str(_uuid.UUID(text))
    except ValueError:
        fail(field, f"{show(text)} is not a valid UUID")


def validate_host_public_key(value: object, field: str = "hostKey") -> str:
    """An SSH public host key as in known_hosts without the host name: ``<type> <base64>``.

    A trailing comment is dropped. The base64 blob must decode and name the same key type
    as the first word. Returns ``"<type> <base64>"``.
    """
    text = require_string(value, field)
    if "\n" in text or "\r" in text:
        fail(field, "must be a single line")
    parts = text.split()
    if len(parts) < 2:
        fail(field, "must be '<key type> <base64 key>', e.g. 'ssh-ed25519 AAAA...'")
    key_type, blob = parts[0], parts[1]
    if not _SSH_KEY_TYPE.fullmatch(key_type):
        fail(field, f"{show(key_type)} is not an SSH key type")
    try:
        raw = b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        fail(field, "the key is not valid base64")
    if len(raw) < 4:
        fail(field, "the key is too short")
    length = int.from_bytes(raw[:4], "big")
    if raw[4 : 4 + length] != key_type.encode("ascii"):
        fail(field, f"the key data does not match its type {key_type!r}")
    return f"{key_type} {b64encode(raw).decode('ascii')}"


LIBVIRT_URI_SCHEMES = ("qemu+ssh", "qemu+libssh", "qemu+libssh2")
LIBVIRT_URI_PARAMETERS = frozenset({"mode", "proxy", "no_tty", "sshauth"})
_URI_PARAMETER_VALUE = re.compile(r"[A-Za-z0-9._/:,+-]*")


def validate_libvirt_uri(value: object, field: str = "libvirtURI") -> str:
    """An SSH libvirt URI of a host's system instance: ``qemu+ssh://[user@]host[:port]/system``.

    Only the SSH transports of :data:`LIBVIRT_URI_SCHEMES` and only the query parameters
    of :data:`LIBVIRT_URI_PARAMETERS` are accepted: the operator supplies the key and the
    host-key check itself (so ``keyfile``, ``known_hosts``, ``no_verify`` are refused),
    and ``command``, ``netcat`` and ``socket`` would run or reach other programs.
    IPv6 hosts go in brackets. Returned unchanged.
    """
    text = require_string(value, field)
    scheme, separator, rest = text.partition("://")
    if not separator or scheme not in LIBVIRT_URI_SCHEMES:
        schemes = ", ".join(f"{name}://" for name in LIBVIRT_URI_SCHEMES)
        fail(field, f"{show(text)} must start with one of {schemes}")
    rest, question, query = rest.partition("?")
    authority, _, endpoint = rest.partition("/")
    if endpoint != "system":
        fail(field, f"{show(text)} must name the system instance: .../system")
    user, at, host_port = authority.rpartition("@")
    if at:
        validate_user_name(user, field)
    if host_port.startswith("["):
        host, _, after = host_port.partition("]")
        host += "]"
    else:
        host, colon, port_text = host_port.partition(":")
        after = colon + port_text
    validate_host_address(host, field)
    if after:
        if not after.startswith(":") or not after[1:].isdigit():
            fail(field, f"{show(text)}: the port must be a number")
        validate_port(int(after[1:]), field)
    if question and not query:
        fail(field, f"{show(text)}: empty query")
    for parameter in query.split("&") if query else []:
        key, _, parameter_value = parameter.partition("=")
        if key not in LIBVIRT_URI_PARAMETERS:
            allowed = ", ".join(sorted(LIBVIRT_URI_PARAMETERS))
            fail(field, f"the URI parameter {key!r} is not allowed (only {allowed})")
        if not _URI_PARAMETER_VALUE.fullmatch(parameter_value):
            fail(field, f"the URI parameter {key!r} has unsafe characters")
    return text


def validate_free_text(value: object, field: str, max_length: int = 253) -> str:
    """Informational text (os, arch, profile): printable, one line, bounded length.

    Such text only goes into status and XML attributes (escaped), never into a command.
    """
    text = require_string(value, field)
    if len(text) > max_length:
        fail(field, f"must be at most {max_length} characters (got {len(text)})")
    if not text.isprintable():
        fail(field, "must not contain control characters or line breaks")
    return text
