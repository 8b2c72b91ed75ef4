"""Access to the Kubernetes API through the official client: secrets, objects, events.

Calls here are blocking; use-cases run them through Context.blocking. Errors are
classified: 404 -> NotFoundError, 5xx/429/connection -> TemporaryError, 401/403/422 ->
PermanentError with the server's message.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kubernetes
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
    except (OSError, kubernetes.client.exceptions.OpenApiException) as error:
        raise TemporaryError(f"{what}: {error}", reason="ApiUnavailable") from error


@dataclass
class KubeApi:
    """A thin, typed facade over the client objects kvmfleet uses."""

    core: Any
    custom: Any

    @classmethod
    def connect(cls) -> KubeApi:
        """Use in-cluster credentials when present, else the current kubeconfig."""
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        api = kubernetes.client.ApiClient()
        return cls(
            core=kubernetes.client.CoreV1Api(api), custom=kubernetes.client.CustomObjectsApi(api)
        )

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes:
        """One value of a Secret, decoded. Never logged."""
        with classified(f"reading Secret {namespace}/{name}"):
            secret = self.core.read_namespaced_secret(name, namespace)
        data = secret.data or {}
        if key not in data:
            raise PermanentError(
                f"Secret {namespace}/{name} has no key {key!r}", reason="SecretKeyMissing"
            )
        return base64.b64decode(data[key])

    def list_cluster_objects(self, plural: str) -> list[dict[str, Any]]:
        """Every object of a kvmfleet kind, in all namespaces."""
        with classified(f"listing {plural}"):
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Any other client call, with errors classified."""
        with classified(what):
            return fn(*args, **kwargs)
