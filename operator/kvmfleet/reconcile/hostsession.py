"""One probe's access to a host: the SSH connections and the libvirt connection, off the loop.

Every call runs on the host's own threads (see :mod:`kvmfleet.reconcile.context`):
:func:`connect` marks the task as working on that host (``CURRENT_HOST``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from kvmfleet import metrics
from kvmfleet.domain.specs import HostKeyPolicy, KvmHostSpec
from kvmfleet.errors import KvmfleetError
from kvmfleet.reconcile.context import CURRENT_HOST, Context
from kvmfleet.ssh.errors import HostUnreachableError
from kvmfleet.ssh.hostkeys import HostKeyCheck
from kvmfleet.ssh.session import CommandResult, SshCredentials, SshHost, SshTarget
from kvmfleet.virt.connection import LibvirtConnection, LibvirtTarget


@dataclass
class HostSession:
    """A connected host: run argv over SSH, reach its libvirtd; every call in a thread."""

    ctx: Context
    name: str
    spec: KvmHostSpec
    credentials: SshCredentials
    session: SshHost

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        limit: float | None = None,
    ) -> CommandResult:
        """Run one argument list on the host (quoted once by the SSH adapter); it is killed
        on the host after ``limit`` seconds. Waiting for a free channel comes on top."""
        limit = self.ctx.settings.ssh_command_timeout if limit is None else limit
        settings = self.ctx.settings
        deadline = limit + settings.ssh_kill_grace + 10 + settings.ssh_queue_timeout
        try:
            result = await self.ctx.on_host(
                self.name, deadline, self.session.run, argv, timeout=limit, input=input, check=check
            )
        except KvmfleetError:
            metrics.SSH_COMMANDS.labels(self.name, "error").inc()
            raise
        metrics.SSH_COMMANDS.labels(self.name, "success" if result.ok else "failed").inc()
        return result

    def libvirt_target(self) -> LibvirtTarget:
        """libvirt over SSH with the host key this session verified."""
        return LibvirtTarget.for_host(
            self.spec.address,
            self.credentials.private_key,
            self.session.host_key,
            port=self.spec.port,
            user=self.spec.user,
            libvirt_uri=self.spec.libvirt_uri,
        )

    async def libvirt(self) -> LibvirtConnection:
        """The pooled libvirt connection to this host."""
        return await self.ctx.blocking(self.ctx.libvirt.connection, self.libvirt_target())


def host_key_check(spec: KvmHostSpec, recorded: str | None) -> HostKeyCheck:
    """Strict: only spec.hostKey. TrustOnFirstUse: the key recorded in status, or any first one."""
    if spec.host_key_policy is HostKeyPolicy.TRUST_ON_FIRST_USE:
        return HostKeyCheck.trust_on_first_use(spec.host_key or recorded)
    return HostKeyCheck.strict(spec.host_key)


async def _ssh_key(ctx: Context, spec: KvmHostSpec) -> bytes:
    """The host's private key, read from its Secret at most every secret_cache_seconds
    (every pass of every VM needs it: reading it each time costs one request per pass)."""
    ref = spec.ssh_key_secret_ref
    where = (ref.namespace, ref.name, ref.key)
    cached = ctx.secrets.get(where)
    if cached is not None and time.monotonic() - cached[0] < ctx.settings.secret_cache_seconds:
        return cached[1]
    key = await ctx.blocking(ctx.kube.read_secret_value, ref.namespace, ref.name, ref.key)
    ctx.secrets[where] = (time.monotonic(), key)
    return key


async def connect(
    ctx: Context, name: str, spec: KvmHostSpec, recorded_host_key: str | None
) -> HostSession:
    """Read the key Secret and open (or reuse) the SSH session; errors stay classified."""
    CURRENT_HOST.set(name)
    key = await _ssh_key(ctx, spec)
    credentials = SshCredentials(key)
    target = SshTarget(spec.address, spec.port, spec.user)
    try:
        await ctx.blocking(ctx.banners.check, target, ctx.settings.ssh_connect_timeout)
    except HostUnreachableError:
        # Pooled sessions may outlive sshd; drop them so nothing stale is used later.
        await ctx.blocking(ctx.ssh.invalidate, target)
        raise
    check = host_key_check(spec, recorded_host_key)
    session = await ctx.blocking(ctx.ssh.host, target, credentials, check)
    return HostSession(ctx, name, spec, credentials, session)
