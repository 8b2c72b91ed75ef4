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

    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        """Every object of a kvmfleet kind, in all namespaces (with those labels if given)."""
        with classified(f"listing {plural}"):
            result = self.custom.list_cluster_custom_object(
                GROUP, VERSION, plural, label_selector=label_selector
            )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def get_object(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One kvmfleet object (namespace None: a cluster-scoped kind)."""
        with classified(f"reading {plural} {namespace + '/' if namespace else ''}{name}"):
            if namespace is None:
                obj = self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
            else:
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name
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
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body)
            else:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, body
                )

    def patch_labels(
        self, plural: str, name: str, namespace: str, labels: dict[str, str | None]
    ) -> None:
        """Merge-patch labels (None removes one)."""
        body = {"metadata": {"labels": labels}}
        with classified(f"labelling {plural} {namespace}/{name}"):
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body
            )

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """All values of a Secret, decoded; None when it does not exist."""
        try:
            with classified(f"reading Secret {namespace}/{name}"):
                secret = self.core.read_namespaced_secret(name, namespace)
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
                self.core.create_namespaced_secret(namespace, body)
            except ApiException as error:
                if error.status != 409:
                    raise
                self.core.replace_namespaced_secret(name, namespace, body)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Any other client call, with errors classified."""
        with classified(what):
            return fn(*args, **kwargs)
