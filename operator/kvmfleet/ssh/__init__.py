"""The SSH adapter: the only part of kvmfleet that imports paramiko.

* :mod:`kvmfleet.ssh.session` - sessions to a host (``SshSession``, ``SshPool``): argv in,
  :class:`~kvmfleet.ssh.session.CommandResult` out; host keys verified in the handshake.
* :mod:`kvmfleet.ssh.hostkeys` - host keys in known_hosts form, SHA256 fingerprints and the
  Strict / TrustOnFirstUse verification.
* :mod:`kvmfleet.ssh.quoting` - the one place a remote command line is built.
* :mod:`kvmfleet.ssh.hostcmds` - pure argv builders for the commands reconcilers run.
* :mod:`kvmfleet.ssh.facts` - pure parsers of those commands' output.
* :mod:`kvmfleet.ssh.errors` - how failures are classified (temporary / permanent).

Everything here blocks: callers on an event loop run it in a thread.
"""
