"""The test RFB client (tests/support/vnc.py) against a tiny in-process RFB 3.8 server.

The fake server checks the challenge response with its own DES (cryptography's, with the
key derived here independently), so a wrong key derivation in the client cannot pass
by agreeing with itself. tests/integration/test_consoles.py runs the same client against
QEMU's VNC server.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from support.vnc import (
    RfbError,
    des_ecb_encrypt,
    des_encrypt_block_pure,
    vnc_key,
    vnc_login,
    vnc_password_accepted,
    vnc_response,
)


def reference_response(password: bytes, challenge: bytes) -> bytes:
    """VNC's response computed without the client's code: bit-reversed key, DES-ECB."""
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        from cryptography.hazmat.primitives.ciphers import Cipher, modes
    except ImportError:
        pytest.skip("this cryptography has no DES to check against")

    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key + key + key), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


@dataclass
class FakeRfbServer:
    """One RFB 3.8 server on 127.0.0.1; ``mode`` picks its behaviour."""

    password: bytes = b"secret12"
    mode: str = "vnc-auth"  # vnc-auth | none | refuse | rfb33 | garbage
    name: bytes = b"fake-vm"
    sock: socket.socket = field(default_factory=socket.socket)
    seen: list[dict[str, object]] = field(default_factory=list)

    def start(self) -> int:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()
        return int(self.sock.getsockname()[1])

    def stop(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self._session(conn)
                except (OSError, AssertionError) as error:
                    self.seen.append({"error": repr(error)})

    def _recv(self, conn: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            assert chunk, "client closed early"
            data += chunk
        return data

    def _session(self, conn: socket.socket) -> None:
        record: dict[str, object] = {}
        self.seen.append(record)
        if self.mode == "garbage":
            conn.sendall(b"HTTP/1.0 400\n")
            return
        if self.mode == "rfb33":
            conn.sendall(b"RFB 003.003\n")
            return
        conn.sendall(b"RFB 003.008\n")
        record["client_version"] = self._recv(conn, 12)
        if self.mode == "refuse":
            reason = b"Too many security failures"
            conn.sendall(b"\x00" + struct.pack(">I", len(reason)) + reason)
            return
        offered = b"\x01" if self.mode == "none" else b"\x02"
        conn.sendall(bytes([len(offered)]) + offered)
        chosen = self._recv(conn, 1)[0]
        record["chosen"] = chosen
        ok = True
        if chosen == 2:
            challenge = os.urandom(16)
            conn.sendall(challenge)
            response = self._recv(conn, 16)
            ok = response == reference_response(self.password, challenge)
        if not ok:
            reason = b"Authentication failed"
            conn.sendall(struct.pack(">II", 1, len(reason)) + reason)
            record["result"] = "failed"
            return
        conn.sendall(struct.pack(">I", 0))
        record["result"] = "ok"
        record["shared"] = self._recv(conn, 1)
        pixel_format = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
        conn.sendall(
            struct.pack(">HH", 640, 480) + pixel_format + struct.pack(">I", len(self.name))
            + self.name
        )  # fmt: skip


@pytest.fixture
def server() -> Iterator[FakeRfbServer]:
    fake = FakeRfbServer()
    yield fake
    fake.stop()


# ------------------------------------------------------------------ DES and the VNC key


def test_pure_des_matches_the_standard_test_vector() -> None:
    key = bytes.fromhex("133457799BBCDFF1")
    assert des_encrypt_block_pure(key, bytes.fromhex("0123456789ABCDEF")) == bytes.fromhex(
        "85E813540F0AB405"
    )


def test_pure_des_agrees_with_cryptography_on_random_keys() -> None:
    for _ in range(50):
        key, data = os.urandom(8), os.urandom(16)
        assert des_ecb_encrypt(key, data, pure=True) == des_ecb_encrypt(key, data)


def test_the_vnc_key_is_truncated_padded_and_bit_reversed() -> None:
    assert vnc_key("a") == bytes([0x86]) + b"\0" * 7  # 'a' = 0x61 = 01100001 -> 10000110
    assert vnc_key("abcdefghXYZ") == vnc_key("abcdefgh")
    assert len(vnc_key("")) == 8


def test_the_response_is_two_ecb_blocks_of_the_challenge() -> None:
    challenge = os.urandom(16)
    response = vnc_response("secret12", challenge)
    assert response == reference_response(b"secret12", challenge)
    assert response == vnc_response("secret12", challenge, pure=True)
    assert response[:8] == vnc_response("secret12", challenge[:8] * 2)[:8]


# ------------------------------------------------------------------ the handshake


def test_the_right_password_is_accepted_and_server_init_is_read(server) -> None:
    port = server.start()
    login = vnc_login("127.0.0.1", port, "secret12")
    assert login and login.accepted
    assert login.server_version == b"RFB 003.008\n"
    assert login.security_types == (2,)
    assert login.server_init is not None
    assert (login.server_init.width, login.server_init.height) == (640, 480)
    assert login.server_init.name == "fake-vm"
    assert len(login.server_init.pixel_format) == 16
    record = server.seen[-1]
    assert record["client_version"] == b"RFB 003.008\n"
    assert record["chosen"] == 2 and record["shared"] == b"\x01"


def test_a_wrong_password_is_rejected_with_the_servers_reason(server) -> None:
    port = server.start()
    login = vnc_login("127.0.0.1", port, "wrong")
    assert not login and login.server_init is None
    assert login.reason == "Authentication failed"
    assert vnc_password_accepted("127.0.0.1", port, "secret12") is True
    assert vnc_password_accepted("127.0.0.1", port, "secret1") is False


def test_only_the_first_eight_characters_count(server) -> None:
    port = server.start()
    assert vnc_password_accepted("127.0.0.1", port, "secret12-and-more")


def test_no_authentication_when_the_server_asks_none(server) -> None:
    server.mode = "none"
    port = server.start()
    login = vnc_login("127.0.0.1", port, None)
    assert login.accepted and login.security_types == (1,)
    with pytest.raises(RfbError, match="not VNC authentication"):
        vnc_login("127.0.0.1", port, "a password")


def test_a_server_refusing_every_client_is_a_rejection(server) -> None:
    server.mode = "refuse"
    login = vnc_login("127.0.0.1", server.start(), "secret12")
    assert not login and login.reason == "Too many security failures"


@pytest.mark.parametrize(
    ("mode", "message"), [("rfb33", "RFB 3.8 only"), ("garbage", "not an RFB")]
)
def test_old_or_foreign_servers_are_protocol_errors(server, mode, message) -> None:
    server.mode = mode
    with pytest.raises(RfbError, match=message):
        vnc_login("127.0.0.1", server.start(), "secret12")


def test_a_closed_port_is_an_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        vnc_login("127.0.0.1", port, "x", timeout=2)
