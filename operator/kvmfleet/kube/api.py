"""Access to the Kubernetes API through the official client: secrets, objects, events.

Calls here are blocking; use-cases run them through Context.blocking (on the Kubernetes
client's own threads). Every request carries a deadline (``_request_timeout``), and the
client's HTTP connection pool is as large as those threads. Errors are classified:
404 -> NotFoundError, 5xx/429 and every transport error (urllib3's MaxRetryError,
ProtocolError, ReadTimeoutError..., OSError) -> TemporaryError, 401/403/422 ->
PermanentError with the server's message.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from kvmfleet.errors import NotFoundError, PermanentError, TemporaryError
from kvmfleet.settings import GROUP, VERSION


@contextmanager
def classified(what: str) -> Iterator[None]:
    """Translate client exceptions into kvmfleet's error classes."""
    try:
        yield
    except ApiException as error:
        message = f"{what}: {error.status} {error.reason}"
        if error.status == 404:
            raise NotFoundError(message) from error
        if error.status in (429,) or (error.status or 0) >= 500:
            raise TemporaryError(message, reason="ApiUnavailable") from error
        raise PermanentError(message, reason="ApiRefused") from error
    except (
        OSError,
        urllib3.exceptions.HTTPError,
        kubernetes.client.exceptions.OpenApiException,
    ) as error:
        raise TemporaryError(f"{what}: {error}", reason="ApiUnavailable") from error


@dataclass
class KubeApi:
    """A thin, typed facade over the client objects kvmfleet uses."""

    core: Any
    custom: Any
    timeout: float = 30.0
    """Seconds one request may take (connect and read), passed as ``_request_timeout``."""
    api: Any = None
    """The ApiClient (for other API groups, e.g. coordination.k8s.io Leases)."""

    @classmethod
    def connect(cls, timeout: float = 30.0, connections: int = 8) -> KubeApi:
        """Use in-cluster credentials when present, else the current kubeconfig.

        ``connections`` sizes the HTTP connection pool (one per calling thread).
        """
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        configuration.connection_pool_maxsize = max(1, connections)
        configuration.retries = 0  # a failed request is a TemporaryError; callers retry
        api = kubernetes.client.ApiClient(configuration)
        return cls(
            core=kubernetes.client.CoreV1Api(api),
            custom=kubernetes.client.CustomObjectsApi(api),
            timeout=timeout,
            api=api,
        )

    @property
    def _t(self) -> dict[str, Any]:
        return {"_request_timeout": self.timeout}

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes:
        """One value of a Secret, decoded. Never logged."""
        with classified(f"reading Secret {namespace}/{name}"):
            secret = self.core.read_namespaced_secret(name, namespace, **self._t)
        data = secret.data or {}
        if key not in data:
            raise PermanentError(
                f"Secret {namespace}/{name} has no key {key!r}", reason="SecretKeyMissing"
            )
        return base64.b64decode(data[key])

    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        """Every object of a kvmfleet kind, in all namespaces (with those labels if given)."""
        with classified(f"listing {plural}"):
            result = self.custom.list_cluster_custom_object(
                GROUP, VERSION, plural, label_selector=label_selector, **self._t
            )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def get_object(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One kvmfleet object (namespace None: a cluster-scoped kind)."""
        with classified(f"reading {plural} {namespace + '/' if namespace else ''}{name}"):
            if namespace is None:
                obj = self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name, **self._t)
            else:
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, **self._t
                )
        result: dict[str, Any] = obj
        return result

    def patch_status(
        self, plural: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> None:
        """Merge-patch status now (used to persist a decision before acting on it)."""
        body = {"status": status}
        with classified(f"patching the status of {plural} {name}"):
            if namespace is None:
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, name, body, **self._t
                )
            else:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, body, **self._t
                )

    def patch_labels(
        self, plural: str, name: str, namespace: str, labels: dict[str, str | None]
    ) -> None:
        """Merge-patch labels (None removes one)."""
        body = {"metadata": {"labels": labels}}
        with classified(f"labelling {plural} {namespace}/{name}"):
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body, **self._t
            )

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """All values of a Secret, decoded; None when it does not exist."""
        try:
            with classified(f"reading Secret {namespace}/{name}"):
                secret = self.core.read_namespaced_secret(name, namespace, **self._t)
        except NotFoundError:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def write_owned_secret(
        self, namespace: str, name: str, data: dict[str, bytes], owner: dict[str, Any]
    ) -> None:
        """Create or replace a Secret owned by `owner` (garbage-collected with it)."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "kvmfleet"},
                "ownerReferences": [owner],
            },
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        with classified(f"writing Secret {namespace}/{name}"):
            try:
                self.core.create_namespaced_secret(namespace, body, **self._t)
            except ApiException as error:
                if error.status != 409:
                    raise
                self.core.replace_namespaced_secret(name, namespace, body, **self._t)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Any other client call, with errors classified and the request deadline."""
        kwargs.setdefault("_request_timeout", self.timeout)
        with classified(what):
            return fn(*args, **kwargs)
