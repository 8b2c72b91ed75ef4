"""Pure decisions and models of kvmfleet: specs, libvirt XML, placement, MACs; no I/O at all.

Nothing here talks to libvirt, SSH, Kubernetes, the file system or the clock; every input
(including the current time) is passed in. Import the modules you need directly, e.g.
``from kvmfleet.domain.specs import VirtualNodeSpec``.
"""
