"""Thin Kopf handlers: unpack the event, call one use-case, apply its outcome.

Importing this package registers every handler with Kopf's default registry.
"""

from kvmfleet.handlers import hosts, indexes, startup, virtualnodes, vmmasters

__all__ = ["hosts", "indexes", "startup", "virtualnodes", "vmmasters"]
