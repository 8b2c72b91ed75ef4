"""SshSession and SshPool against an in-process SSH server (see ssh_fakeserver.py)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import paramiko
import pytest
from ssh_fakeserver import FakeHost

from kvmfleet.errors import PermanentError, TemporaryError
from kvmfleet.ssh.errors import (
    AuthenticationError,
    CommandError,
    CommandTimeoutError,
    HostBusyError,
    HostKeyMismatchError,
    HostKeyUnknownError,
    OutputTooLargeError,
    SessionClosedError,
)
from kvmfleet.ssh.hostkeys import HostKey, HostKeyCheck
from kvmfleet.ssh.session import SshCredentials, SshOptions, SshPool, SshSession, SshTarget

TARGET = SshTarget("10.77.0.250", 22, "root")
OPTIONS = SshOptions(connect_timeout=5, banner_timeout=5, auth_timeout=5, channel_timeout=5)


def line(key: paramiko.PKey) -> str:
    return HostKey.from_paramiko(key).line


@pytest.fixture(scope="module")
def client_credentials() -> SshCredentials:
    buffer = io.StringIO()
    paramiko.ECDSAKey.generate().write_private_key(buffer)
    return SshCredentials(buffer.getvalue().encode())


@pytest.fixture(scope="module")
def server_keys() -> dict[str, paramiko.PKey]:
    return {
        "ecdsa": paramiko.ECDSAKey.generate(),
        "rsa": paramiko.RSAKey.generate(2048),
        "other": paramiko.ECDSAKey.generate(),
    }


@pytest.fixture
def host(server_keys) -> Iterator[FakeHost]:
    fake = FakeHost([server_keys["ecdsa"]])
    yield fake
    fake.close()


def connect(host: FakeHost, credentials: SshCredentials, check: HostKeyCheck) -> SshSession:
    return SshSession(TARGET, credentials, check, OPTIONS, sock=host.connect())


def test_runs_a_command_with_the_expected_key(host, server_keys, client_credentials) -> None:
    with connect(host, client_credentials, HostKeyCheck.strict(line(server_keys["ecdsa"]))) as s:
        result = s.run(["echo", "hello world"], timeout=10)
        assert (result.exit_status, result.stdout, result.stderr) == (0, "hello world\n", "")
        assert result.argv == ("echo", "hello world") and result.duration >= 0
        assert s.host_key == line(server_keys["ecdsa"])
        assert s.fingerprint == HostKey.from_paramiko(server_keys["ecdsa"]).fingerprint
    assert host.record.auth_attempts == [("root", "ecdsa-sha2-nistp256")]
    assert host.record.commands == ["timeout --kill-after=5s 10s echo 'hello world'"]


def test_a_wrong_host_key_stops_before_authentication(
    host, server_keys, client_credentials
) -> None:
    with pytest.raises(HostKeyMismatchError) as caught:
        connect(host, client_credentials, HostKeyCheck.strict(line(server_keys["other"])))
    assert isinstance(caught.value, PermanentError)
    assert caught.value.seen_fingerprint == HostKey.from_paramiko(server_keys["ecdsa"]).fingerprint
    assert host.record.auth_attempts == []
    assert host.record.commands == []


def test_strict_without_a_key_never_connects(host, client_credentials) -> None:
    with pytest.raises(HostKeyUnknownError):
        SshSession(TARGET, client_credentials, HostKeyCheck.strict(None), OPTIONS)
    assert host.transports == []


def test_trust_on_first_use_reports_the_key_to_record(
    host, server_keys, client_credentials
) -> None:
    with connect(host, client_credentials, HostKeyCheck.trust_on_first_use()) as session:
        recorded = session.host_key
    assert recorded == line(server_keys["ecdsa"])
    connect(host, client_credentials, HostKeyCheck.trust_on_first_use(recorded)).close()
    with pytest.raises(HostKeyMismatchError):
        connect(
            host, client_credentials, HostKeyCheck.trust_on_first_use(line(server_keys["other"]))
        )
    assert len(host.record.auth_attempts) == 2


def test_the_expected_key_type_is_negotiated(server_keys, client_credentials) -> None:
    both = FakeHost([server_keys["ecdsa"], server_keys["rsa"]])
    for key in (server_keys["rsa"], server_keys["ecdsa"]):
        with connect(both, client_credentials, HostKeyCheck.strict(line(key))) as session:
            assert session.host_key == line(key)
    both.close()


def test_a_refused_key_is_an_authentication_error(server_keys, client_credentials) -> None:
    denying = FakeHost([server_keys["ecdsa"]], deny_auth=True)
    with pytest.raises(AuthenticationError) as caught:
        connect(denying, client_credentials, HostKeyCheck.strict(line(server_keys["ecdsa"])))
    assert caught.value.reason == "AuthenticationFailed"
    assert client_credentials.fingerprint in caught.value.message
    assert denying.record.commands == []
    denying.close()


@pytest.fixture
def session(host, server_keys, client_credentials) -> Iterator[SshSession]:
    with connect(host, client_credentials, HostKeyCheck.strict(line(server_keys["ecdsa"]))) as s:
        yield s


def test_non_zero_exit_raises_command_error_with_stderr(session) -> None:
    with pytest.raises(CommandError) as caught:
        session.run(["sh", "-c", "echo out; echo oops >&2; exit 3"], timeout=10)
    error = caught.value
    assert (error.exit_status, error.stderr, error.stdout) == (3, "oops\n", "out\n")
    assert not isinstance(error, TemporaryError | PermanentError)
    assert "oops" in error.message
    result = session.run(["sh", "-c", "exit 3"], timeout=10, check=False)
    assert result.exit_status == 3 and not result.ok


def test_metacharacters_are_not_interpreted(session, tmp_path) -> None:
    marker = tmp_path / "pwned"
    literal = f"a;touch {marker} && $(touch {marker}) `touch {marker}`\nnext"
    assert session.run(["echo", literal], timeout=10).stdout == literal + "\n"
    assert not marker.exists()


def test_large_stdin_stdout_and_stderr_do_not_deadlock(session) -> None:
    payload = b"0123456789abcdef" * 200_000  # 3.2 MB each way, far beyond any window
    script = "cat; head -c 3000000 /dev/zero >&2"
    result = session.run(["sh", "-c", script], timeout=60, input=payload)
    assert result.stdout.encode() == payload
    assert len(result.stderr) == 3_000_000


def test_no_input_means_immediate_eof(session) -> None:
    assert session.run(["cat"], timeout=10).stdout == ""


def test_timeout(session) -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        session.run(["sleep", "5"], timeout=0.5)
    assert isinstance(caught.value, TemporaryError)
    assert caught.value.argv == ("sleep", "5")
    assert session.run(["true"], timeout=10).ok  # the session survives a timeout


def test_a_dead_transport_is_reported_before_sending(host, session) -> None:
    host.drop_connections()
    with pytest.raises(SessionClosedError):
        for _ in range(50):
            session.run(["true"], timeout=5)
    assert not session.is_active()
    assert len(host.record.commands) <= 1


def test_concurrent_runs_share_one_session(session) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results.append(session.run(["echo", str(i)], timeout=20).stdout.strip())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results, key=int) == [str(i) for i in range(8)]


# --- pool --------------------------------------------------------------------------------


@pytest.fixture
def pool(host) -> Iterator[tuple[SshPool, list[SshSession]]]:
    made: list[SshSession] = []

    def factory(target, credentials, check, options) -> SshSession:  # type: ignore[no-untyped-def]
        session = SshSession(target, credentials, check, options, sock=host.connect())
        made.append(session)
        return session

    pool = SshPool(OPTIONS, session_factory=factory)
    yield pool, made
    pool.close_all()


def test_pool_reuses_one_session(pool, server_keys, client_credentials) -> None:
    ssh, made = pool
    check = HostKeyCheck.strict(line(server_keys["ecdsa"]))
    assert ssh.run(TARGET, client_credentials, check, ["echo", "1"]).stdout == "1\n"
    assert ssh.run(TARGET, client_credentials, check, ["echo", "2"]).stdout == "2\n"
    assert len(made) == 1 and len(ssh) == 1
    assert ssh.session(TARGET, client_credentials, check) is made[0]


def test_pool_reconnects_after_the_transport_died(
    pool, host, server_keys, client_credentials
) -> None:
    ssh, made = pool
    check = HostKeyCheck.strict(line(server_keys["ecdsa"]))
    ssh.run(TARGET, client_credentials, check, ["true"])
    host.drop_connections()
    assert ssh.run(TARGET, client_credentials, check, ["echo", "again"]).stdout == "again\n"
    assert len(made) == 2 and not made[0].is_active()


def test_pool_adopts_a_first_use_session_once_its_key_is_recorded(
    pool, server_keys, client_credentials
) -> None:
    ssh, made = pool
    first = ssh.session(TARGET, client_credentials, HostKeyCheck.trust_on_first_use())
    recorded = HostKeyCheck.trust_on_first_use(first.host_key)
    assert ssh.session(TARGET, client_credentials, recorded) is first
    assert len(made) == 1


def test_pool_replaces_sessions_whose_expectation_changed(
    pool, server_keys, client_credentials
) -> None:
    ssh, made = pool
    ssh.session(TARGET, client_credentials, HostKeyCheck.strict(line(server_keys["ecdsa"])))
    with pytest.raises(HostKeyMismatchError):
        ssh.session(TARGET, client_credentials, HostKeyCheck.strict(line(server_keys["other"])))
    ssh.invalidate(TARGET)
    assert len(ssh) == 0 and not made[0].is_active()


def test_pool_connects_once_under_concurrency(pool, server_keys, client_credentials) -> None:
    ssh, made = pool
    check = HostKeyCheck.strict(line(server_keys["ecdsa"]))
    threads = [
        threading.Thread(target=ssh.run, args=(TARGET, client_credentials, check, ["true"]))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1


# --- deadlines, bounds and sshd's limits -------------------------------------------------------


def _running(pattern: str) -> bool:
    import subprocess

    found = subprocess.run(["pgrep", "-f", pattern], check=False, capture_output=True)
    return found.returncode == 0


def test_a_command_past_its_deadline_is_killed_on_the_host(session) -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        session.run(["sleep", "7.123"], timeout=0.5)
    assert "stopped on the host" in caught.value.message
    assert not _running("^sleep 7.123")
    assert session.run(["true"], timeout=10).ok


def test_output_is_bounded(host, server_keys, client_credentials) -> None:
    options = SshOptions(connect_timeout=5, max_output_bytes=10000)
    check = HostKeyCheck.strict(line(server_keys["ecdsa"]))
    with SshSession(TARGET, client_credentials, check, options, sock=host.connect()) as s:
        with pytest.raises(OutputTooLargeError) as caught:
            # 20 kB: twice the bound, small enough that the in-process test server has
            # written it all before the client stops reading (its writer thread then never
            # races the closed channel).
            s.run(["head", "-c", "20000", "/dev/zero"], timeout=10)
        assert isinstance(caught.value, PermanentError)
        assert s.run(["echo", "ok"], timeout=10).stdout == "ok\n"


def _bounded_pool(host: FakeHost, **limits: object) -> tuple[SshPool, list[SshSession]]:
    made: list[SshSession] = []
    options = SshOptions(connect_timeout=5, channel_timeout=5, **limits)  # type: ignore[arg-type]

    def factory(target, credentials, check, opts) -> SshSession:  # type: ignore[no-untyped-def]
        made.append(SshSession(target, credentials, check, opts, sock=host.connect()))
        return made[-1]

    return SshPool(options, session_factory=factory), made


def _burst(pool: SshPool, check: HostKeyCheck, creds: SshCredentials, n: int) -> list[object]:
    results: list[object] = [None] * n

    def work(i: int) -> None:
        try:
            results[i] = pool.run(TARGET, creds, check, ["sh", "-c", f"sleep 0.2; echo {i}"]).stdout
        except BaseException as error:
            results[i] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_burst_queues_within_the_connection_and_channel_bounds(
    server_keys, client_credentials
) -> None:
    fake = FakeHost([server_keys["ecdsa"]], max_sessions=3)
    pool, made = _bounded_pool(fake, max_channels_per_connection=3, max_connections=2)
    check = HostKeyCheck.strict(line(server_keys["ecdsa"]))
    try:
        results = _burst(pool, check, client_credentials, 24)
        assert results == [f"{i}\n" for i in range(24)]
        assert len(made) == 2 and fake.record.refused_channels == 0
    finally:
        pool.close_all()
        fake.close()


def test_a_refused_channel_is_retried_and_keeps_the_connection(
    server_keys, client_credentials
) -> None:
    # The adapter believes 8 channels fit; the host (sshd MaxSessions) allows 2.
    fake = FakeHost([server_keys["ecdsa"]], max_sessions=2)
    pool, made = _bounded_pool(fake, max_channels_per_connection=8, max_connections=1)
    check = HostKeyCheck.strict(line(server_keys["ecdsa"]))
    try:
        results = _burst(pool, check, client_credentials, 12)
        assert results == [f"{i}\n" for i in range(12)]
        assert fake.record.refused_channels > 0
        assert len(made) == 1 and made[0].is_active()  # never torn down
    finally:
        pool.close_all()
        fake.close()


def test_the_queue_has_a_deadline_and_reports_its_backlog(
    host, server_keys, client_credentials
) -> None:
    seen: list[tuple[str, int, int, int]] = []
    options = SshOptions(
        connect_timeout=5, max_channels_per_connection=1, max_connections=1, queue_timeout=0.3
    )

    def factory(target, credentials, check, opts) -> SshSession:  # type: ignore[no-untyped-def]
        return SshSession(target, credentials, check, opts, sock=host.connect())

    pool = SshPool(options, session_factory=factory, observer=lambda *a: seen.append(a))
    check = HostKeyCheck.strict(line(server_keys["ecdsa"]))
    slow = threading.Thread(
        target=pool.run, args=(TARGET, client_credentials, check, ["sleep", "1"])
    )
    slow.start()
    time.sleep(0.3)
    with pytest.raises(HostBusyError):
        pool.run(TARGET, client_credentials, check, ["true"])
    slow.join()
    pool.close_all()
    assert any(waiting >= 1 for _, waiting, _, _ in seen)
    assert max(busy for _, _, busy, _ in seen) == 1
