"""Leader election on a coordination.k8s.io/v1 Lease: one active operator, others standby.

The algorithm of client-go's leaderelection, in small:

* a candidate reads the Lease; if there is none it creates it with itself as holder;
* the holder renews ``spec.renewTime`` every ``retry_period`` seconds;
* another candidate takes the Lease over only when its holder is empty, or when the
  Lease has not changed (same resourceVersion) for ``lease_duration`` seconds **as
  measured by the candidate's own clock** since it first saw that version (no clock
  skew between machines matters);
* every write is an update with the read resourceVersion: of two candidates racing for
  one Lease, the API server accepts one and refuses the other (409).

A holder that cannot renew for ``renew_deadline`` seconds (< ``lease_duration``) must
stop acting: :class:`LeaderElector` reports it, the caller stops the operator. Release
on a clean stop empties the holder so a standby takes over at its next attempt.
Blocking calls; errors classified as in :mod:`kvmfleet.kube.api`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from kvmfleet.errors import KvmfleetError, NotFoundError
from kvmfleet.kube.api import KubeApi, classified

log = logging.getLogger(__name__)

LEASE_NEEDS: tuple[tuple[str, str, str], ...] = (
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
)
"""The RBAC permissions leader election needs (read, create and replace the Lease)."""


@dataclass(frozen=True)
class LeaseConfig:
    """Where the Lease is, who we are, and the timing (seconds)."""

    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry_period < renew_deadline < duration")


class LeaderElector:
    """One candidate's view of the Lease. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        api: KubeApi,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
        coordination: Any = None,
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.coordination = coordination or kubernetes.client.CoordinationV1Api(api.api)
        self._observed: tuple[str, float] | None = None
        """(resourceVersion of the Lease as last seen, local time it was first seen)."""
        self.last_renewed: float | None = None
        """Local time of our last successful acquire or renew."""

    @property
    def is_leader(self) -> bool:
        """True while our last renewal is younger than the renew deadline."""
        return (
            self.last_renewed is not None
            and self.clock() - self.last_renewed < self.config.renew_deadline
        )

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True if we hold the Lease afterwards."""
        cfg = self.config
        what = f"leader Lease {cfg.namespace}/{cfg.name}"
        now = datetime.now(UTC)
        try:
            with classified(f"reading the {what}"):
                lease: Any = self.coordination.read_namespaced_lease(
                    cfg.name, cfg.namespace, _request_timeout=self.api.timeout
                )
        except NotFoundError:
            return self._create(what, now)
        spec = lease.spec
        version = str(lease.metadata.resource_version)
        holder = spec.holder_identity or ""
        if holder != cfg.identity and holder:
            if self._observed is None or self._observed[0] != version:
                self._observed = (version, self.clock())
                return False
            duration = float(spec.lease_duration_seconds or cfg.lease_duration)
            if self.clock() - self._observed[1] < duration:
                return False
            log.info("%s: %s stopped renewing; taking over", what, holder)
        if holder != cfg.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = cfg.identity
        spec.lease_duration_seconds = int(cfg.lease_duration)
        spec.renew_time = now
        try:
            with classified(f"updating the {what}"):
                self.coordination.replace_namespaced_lease(
                    cfg.name, cfg.namespace, lease, _request_timeout=self.api.timeout
                )
        except KvmfleetError as error:
            if _conflict(error):
                return False
            raise
        self.last_renewed = self.clock()
        return True

    def _create(self, what: str, now: datetime) -> bool:
        cfg = self.config
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace),
            spec=kubernetes.client.V1LeaseSpec(
                holder_identity=cfg.identity,
                lease_duration_seconds=int(cfg.lease_duration),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            with classified(f"creating the {what}"):
                self.coordination.create_namespaced_lease(
                    cfg.namespace, body, _request_timeout=self.api.timeout
                )
        except KvmfleetError as error:
            if _conflict(error):
                return False
            raise
        self.last_renewed = self.clock()
        return True

    def release(self) -> None:
        """Give the Lease up (a clean stop): the holder is emptied if it is still us."""
        cfg = self.config
        try:
            with classified(f"releasing the leader Lease {cfg.namespace}/{cfg.name}"):
                lease: Any = self.coordination.read_namespaced_lease(
                    cfg.name, cfg.namespace, _request_timeout=self.api.timeout
                )
                if lease.spec.holder_identity != cfg.identity:
                    return
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                lease.spec.renew_time = datetime.now(UTC)
                self.coordination.replace_namespaced_lease(
                    cfg.name, cfg.namespace, lease, _request_timeout=self.api.timeout
                )
        except KvmfleetError as error:
            log.warning("could not release the leader Lease: %s", error.message)
        finally:
            self.last_renewed = None

    def holder(self) -> str | None:
        """The Lease's current holder (None: no Lease or no holder)."""
        cfg = self.config
        try:
            with classified(f"reading the leader Lease {cfg.namespace}/{cfg.name}"):
                lease: Any = self.coordination.read_namespaced_lease(
                    cfg.name, cfg.namespace, _request_timeout=self.api.timeout
                )
        except NotFoundError:
            return None
        return lease.spec.holder_identity or None


def _conflict(error: KvmfleetError) -> bool:
    cause = error.__cause__
    return isinstance(cause, ApiException) and cause.status == 409
