"""A minimal RFB (VNC) client for tests: the RFB 3.8 handshake with VNC authentication.

``vnc_login(host, port, password)`` connects, reads the server's version, picks VNC
authentication (type 2; type 1 "None" when the server offers only that and no password is
given), answers the 16-byte challenge and reads SecurityResult; on success it sends
ClientInit (shared) and reads ServerInit (framebuffer size, pixel format, desktop name).
It returns a :class:`VncLogin`, true when the server accepted the password.

VNC authentication encrypts the challenge with DES in ECB mode (two 8-byte blocks). The
key is the password's first 8 bytes, NUL-padded, with the bits of every byte reversed
(VNC's historic quirk). DES comes from ``cryptography`` (TripleDES with the key repeated
three times is single DES) while it still ships it; otherwise from the small pure-Python
implementation below, which tests/unit/test_vnc_client.py checks against the standard
test vector and against ``cryptography``.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

RFB_38 = b"RFB 003.008\n"
SECURITY_NONE = 1
SECURITY_VNC = 2


class RfbError(Exception):
    """The server broke the protocol, speaks an older version, or closed the connection."""


@dataclass(frozen=True)
class ServerInit:
    """The server's ServerInit message."""

    width: int
    height: int
    pixel_format: bytes
    name: str


@dataclass(frozen=True)
class VncLogin:
    """The outcome of a handshake: ``accepted`` (also its truth value), what the server
    offered and said, and its ServerInit when it accepted."""

    accepted: bool
    server_version: bytes
    security_types: tuple[int, ...]
    reason: str = ""
    server_init: ServerInit | None = None

    def __bool__(self) -> bool:
        return self.accepted


# ------------------------------------------------------------------ DES


_PC1 = (
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3,
    60, 52, 44, 36, 63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37,
    29, 21, 13, 5, 28, 20, 12, 4,
)  # fmt: skip
_PC2 = (
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2, 41,
    52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
)  # fmt: skip
_SHIFTS = (1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1)
_IP = (
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, 62, 54, 46, 38, 30, 22, 14, 6,
    64, 56, 48, 40, 32, 24, 16, 8, 57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3,
    61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
)  # fmt: skip
_FP = (
    40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31, 38, 6, 46, 14, 54, 22, 62, 30,
    37, 5, 45, 13, 53, 21, 61, 29, 36, 4, 44, 12, 52, 20, 60, 28, 35, 3, 43, 11, 51, 19, 59, 27,
    34, 2, 42, 10, 50, 18, 58, 26, 33, 1, 41, 9, 49, 17, 57, 25,
)  # fmt: skip
_E = (
    32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17, 16, 17, 18,
    19, 20, 21, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31, 32, 1,
)  # fmt: skip
_P = (
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, 2, 8, 24, 14, 32, 27, 3, 9, 19,
    13, 30, 6, 22, 11, 4, 25,
)  # fmt: skip
_SBOXES = (
    (14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7,
     0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
     4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0,
     15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13),
    (15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10,
     3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
     0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15,
     13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9),
    (10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8,
     13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
     13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7,
     1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12),
    (7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15,
     13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
     10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4,
     3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14),
    (2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9,
     14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
     4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14,
     11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3),
    (12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11,
     10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
     9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6,
     4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13),
    (4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1,
     13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
     1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2,
     6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12),
    (13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7,
     1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
     7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8,
     2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11),
)  # fmt: skip


def _permute(value: int, table: tuple[int, ...], width: int) -> int:
    """Bit ``table[i]`` (1 = most significant of ``width`` bits) becomes output bit i."""
    out = 0
    for position in table:
        out = (out << 1) | ((value >> (width - position)) & 1)
    return out


def _subkeys(key: bytes) -> list[int]:
    halves = _permute(int.from_bytes(key, "big"), _PC1, 64)
    c, d = halves >> 28, halves & 0xFFFFFFF
    keys = []
    for shift in _SHIFTS:
        c = ((c << shift) | (c >> (28 - shift))) & 0xFFFFFFF
        d = ((d << shift) | (d >> (28 - shift))) & 0xFFFFFFF
        keys.append(_permute((c << 28) | d, _PC2, 56))
    return keys


def _feistel(right: int, subkey: int) -> int:
    mixed = _permute(right, _E, 32) ^ subkey
    out = 0
    for box in range(8):
        six = (mixed >> (42 - 6 * box)) & 0x3F
        row = ((six >> 4) & 0b10) | (six & 1)
        out = (out << 4) | _SBOXES[box][row * 16 + ((six >> 1) & 0xF)]
    return _permute(out, _P, 32)


def des_encrypt_block_pure(key: bytes, block: bytes) -> bytes:
    """DES encryption of one 8-byte block with an 8-byte key, in pure Python."""
    if len(key) != 8 or len(block) != 8:
        raise ValueError("DES takes an 8-byte key and 8-byte blocks")
    value = _permute(int.from_bytes(block, "big"), _IP, 64)
    left, right = value >> 32, value & 0xFFFFFFFF
    for subkey in _subkeys(key):
        left, right = right, left ^ _feistel(right, subkey)
    return _permute((right << 32) | left, _FP, 64).to_bytes(8, "big")


def _des_ecb_cryptography(key: bytes, data: bytes) -> bytes | None:
    """Single DES through cryptography's TripleDES (key x3), or None if it is gone."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, modes

        try:
            from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        except ImportError:  # cryptography < 43
            from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[attr-defined,no-redef]
                TripleDES,
            )
    except ImportError:
        return None
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def des_ecb_encrypt(key: bytes, data: bytes, *, pure: bool = False) -> bytes:
    """DES-ECB of ``data`` (a multiple of 8 bytes): cryptography when it has DES, else pure."""
    if len(data) % 8:
        raise ValueError("DES-ECB data must be a multiple of 8 bytes")
    if not pure:
        result = _des_ecb_cryptography(key, data)
        if result is not None:
            return result
    return b"".join(des_encrypt_block_pure(key, data[i : i + 8]) for i in range(0, len(data), 8))


def _reverse_bits(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


def vnc_key(password: str | bytes) -> bytes:
    """The DES key of a VNC password: 8 bytes (truncated / NUL-padded), bits reversed."""
    raw = password.encode("latin-1") if isinstance(password, str) else password
    return bytes(_reverse_bits(b) for b in raw[:8].ljust(8, b"\0"))


def vnc_response(password: str | bytes, challenge: bytes, *, pure: bool = False) -> bytes:
    """The answer to a 16-byte VNC authentication challenge."""
    if len(challenge) != 16:
        raise ValueError("the VNC challenge is 16 bytes")
    return des_ecb_encrypt(vnc_key(password), challenge, pure=pure)


# ------------------------------------------------------------------ RFB


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise RfbError(f"the server closed the connection ({len(data)}/{count} bytes read)")
        data += chunk
    return bytes(data)


def _recv_u32(sock: socket.socket) -> int:
    return int(struct.unpack(">I", _recv_exact(sock, 4))[0])


def _recv_reason(sock: socket.socket) -> str:
    length = _recv_u32(sock)
    if length > 65536:
        raise RfbError(f"implausible reason length {length}")
    # QEMU counts the C string's final NUL in the length.
    return _recv_exact(sock, length).decode("utf-8", "replace").rstrip("\0")


def _read_version(sock: socket.socket) -> bytes:
    version = _recv_exact(sock, 12)
    if not version.startswith(b"RFB ") or not version.endswith(b"\n"):
        raise RfbError(f"not an RFB server: {version!r}")
    try:
        major, minor = (int(part) for part in version[4:11].split(b"."))
    except ValueError:
        raise RfbError(f"not an RFB version: {version!r}") from None
    if (major, minor) < (3, 8):
        raise RfbError(f"the server speaks {version!r}; this client speaks RFB 3.8 only")
    return version


def _read_server_init(sock: socket.socket) -> ServerInit:
    width, height = struct.unpack(">HH", _recv_exact(sock, 4))
    pixel_format = _recv_exact(sock, 16)
    name = _recv_reason(sock)
    return ServerInit(width, height, pixel_format, name)


def vnc_login(
    host: str, port: int, password: str | bytes | None, *, timeout: float = 10.0
) -> VncLogin:
    """Connect and authenticate; accepted or not, the connection is closed afterwards.

    ``password`` None asks for security type None (no password). Raises RfbError when
    the server breaks the protocol, ``OSError`` when it cannot be reached.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        version = _read_version(sock)
        sock.sendall(RFB_38)
        count = _recv_exact(sock, 1)[0]
        if count == 0:
            return VncLogin(False, version, (), reason=_recv_reason(sock))
        types = tuple(_recv_exact(sock, count))
        if password is not None and SECURITY_VNC in types:
            chosen = SECURITY_VNC
        elif password is None and SECURITY_NONE in types:
            chosen = SECURITY_NONE
        else:
            want = "VNC authentication" if password is not None else "no authentication"
            raise RfbError(f"the server offers security types {types}, not {want}")
        sock.sendall(bytes([chosen]))
        if chosen == SECURITY_VNC:
            assert password is not None
            sock.sendall(vnc_response(password, _recv_exact(sock, 16)))
        result = _recv_u32(sock)
        if result != 0:
            try:
                reason = _recv_reason(sock)
            except (RfbError, OSError):
                reason = ""
            return VncLogin(False, version, types, reason=reason or f"SecurityResult {result}")
        sock.sendall(b"\x01")  # ClientInit: share the desktop with other clients
        return VncLogin(True, version, types, server_init=_read_server_init(sock))


def vnc_password_accepted(
    host: str, port: int, password: str | bytes, *, timeout: float = 10.0
) -> bool:
    """True if the VNC server at host:port accepts ``password`` (SecurityResult OK)."""
    return vnc_login(host, port, password, timeout=timeout).accepted
