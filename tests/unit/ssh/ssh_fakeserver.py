"""An in-process SSH server (paramiko) on one end of a socketpair: no network at all.

It records every authentication attempt and every exec request, so tests can prove what
reached the "host". Exec requests run the command with the local ``sh -c`` and pump
stdin/stdout/stderr; ``deny_auth`` makes every authentication fail.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from dataclasses import dataclass, field

import paramiko


@dataclass
class Record:
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    refused_channels: int = 0


class _Server(paramiko.ServerInterface):
    def __init__(self, record: Record, deny_auth: bool, max_sessions: int | None = None) -> None:
        self.record = record
        self.deny_auth = deny_auth
        self.max_sessions = max_sessions
        self.open_sessions = 0
        self.lock = threading.Lock()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.record.auth_attempts.append((username, key.get_name()))
        return paramiko.AUTH_FAILED if self.deny_auth else paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        with self.lock:
            if self.max_sessions is not None and self.open_sessions >= self.max_sessions:
                self.record.refused_channels += 1  # like sshd beyond MaxSessions
                return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
            self.open_sessions += 1
        return paramiko.OPEN_SUCCEEDED

    def session_ended(self) -> None:
        with self.lock:
            self.open_sessions -= 1

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode()
        self.record.commands.append(text)
        threading.Thread(target=_execute, args=(channel, text, self), daemon=True).start()
        return True


def _execute(channel: paramiko.Channel, command: str, server: _Server) -> None:
    process = subprocess.Popen(
        ["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin and process.stdout and process.stderr

    def feed() -> None:
        try:
            while data := channel.recv(65536):
                process.stdin.write(data)  # type: ignore[union-attr]
            process.stdin.close()  # type: ignore[union-attr]
        except (OSError, EOFError):
            pass

    def pump(stream, send) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := stream.read1(65536):
                send(data)
        except (OSError, EOFError):
            pass

    threads = [
        threading.Thread(target=feed, daemon=True),
        threading.Thread(target=pump, args=(process.stdout, channel.sendall), daemon=True),
        threading.Thread(target=pump, args=(process.stderr, channel.sendall_stderr), daemon=True),
    ]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    status = process.wait()
    # The slot is free before the client can learn the command ended (sshd frees it when
    # the client's close arrives, in order; here a thread would race the next open).
    server.session_ended()
    try:
        channel.send_exit_status(status)
        channel.shutdown_write()
        channel.close()
    except (OSError, EOFError):
        pass


class FakeHost:
    """One host: its host keys; :meth:`connect` returns the client end of a new connection."""

    def __init__(
        self,
        host_keys: list[paramiko.PKey],
        deny_auth: bool = False,
        max_sessions: int | None = None,
    ) -> None:
        self.host_keys = host_keys
        self.deny_auth = deny_auth
        self.max_sessions = max_sessions
        self.record = Record()
        self.transports: list[paramiko.Transport] = []

    def connect(self) -> socket.socket:
        client, server = socket.socketpair()
        transport = paramiko.Transport(server)
        for key in self.host_keys:
            transport.add_server_key(key)
        transport.start_server(
            threading.Event(), server=_Server(self.record, self.deny_auth, self.max_sessions)
        )
        self.transports.append(transport)
        return client

    def drop_connections(self) -> None:
        for transport in self.transports:
            transport.close()

    def close(self) -> None:
        self.drop_connections()
