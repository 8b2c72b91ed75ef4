"""The libvirt adapter: the only part of kvmfleet that imports libvirt.

* :mod:`kvmfleet.virt.connection` - connections to a host's libvirtd over SSH with the
  host key pinned (``LibvirtTarget``, ``LibvirtConnection``, ``LibvirtPool``).
* :mod:`kvmfleet.virt.host` - host facts, the domains on a host, storage pools.
* :mod:`kvmfleet.virt.guest` - operations on one domain (define, start, stop, ...).
* :mod:`kvmfleet.virt.errors` - libvirt errors classified as not found / temporary /
  permanent.

Every call blocks (libvirt-python is synchronous): callers on an event loop run them in a
thread. A connection may be shared by several threads.
"""
