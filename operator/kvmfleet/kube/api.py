"""Access to the Kubernetes API through the official client: secrets, objects, events.

Calls here are blocking; use-cases run them through Context.blocking. Errors are
classified: 404 -> NotFoundError, 5xx/429/connection -> TemporaryError, 401/403/422 ->
PermanentError with the server's message.

Every method declares the RBAC permissions it needs with :func:`needs` (``{plural}``
stands for the kvmfleet kind its caller passes). tests/unit/test_rbac_verbs.py derives the
operator's permissions from these declarations and from the calls in the code, adds the
framework's (:data:`FRAMEWORK_NEEDS`), and fails when the chart's RBAC grants a verb
nobody uses or lacks one that is used.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from kvmfleet.errors import NotFoundError, PermanentError, TemporaryError
from kvmfleet.settings import GROUP, VERSION

F = TypeVar("F", bound=Callable[..., Any])

Need = tuple[str, str, str]
"""(API group, resource, verb); resource ``{plural}`` is the kind the caller names."""

NEEDS: dict[str, tuple[Need, ...]] = {}
"""Per KubeApi method: the permissions it uses (filled by :func:`needs`)."""

FRAMEWORK_NEEDS: tuple[tuple[Need, str], ...] = (
    *(
        ((GROUP, kind, verb), "Kopf lists, watches and merge-PATCHes (finalizer) each kind")
        for kind in ("kvmhosts", "virtualnodes", "vmmasters")
        for verb in ("list", "watch", "patch")
    ),
    *(
        ((GROUP, f"{kind}/status", "patch"), "Kopf PATCHes status (status.kopf, handler results)")
        for kind in ("kvmhosts", "virtualnodes", "vmmasters")
    ),
    (("apiextensions.k8s.io", "customresourcedefinitions", "list"), "Kopf observes CRDs"),
    (("apiextensions.k8s.io", "customresourcedefinitions", "watch"), "Kopf observes CRDs"),
    (("", "events", "create"), "kopf.event POSTs core/v1 Events"),
)
"""What the framework (Kopf) itself does with the API, and why."""

NAMESPACED_FRAMEWORK_NEEDS: tuple[tuple[Need, str], ...] = (
    (("", "namespaces", "list"), "Kopf observes namespaces when watchNamespaces is set"),
    (("", "namespaces", "watch"), "Kopf observes namespaces when watchNamespaces is set"),
)
"""Kopf's extra needs when it watches a list of namespaces."""


def needs(*perms: Need) -> Callable[[F], F]:
    """Declare the RBAC permissions a KubeApi method uses."""

    def register(fn: F) -> F:
        NEEDS[fn.__name__] = perms
        return fn

    return register


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

    @needs(("", "secrets", "get"))
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

    @needs((GROUP, "{plural}", "list"))
    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        """Every object of a kvmfleet kind, in all namespaces (with those labels if given)."""
        with classified(f"listing {plural}"):
            result = self.custom.list_cluster_custom_object(
                GROUP, VERSION, plural, label_selector=label_selector
            )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    @needs((GROUP, "{plural}", "get"))
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

    @needs((GROUP, "{plural}/status", "patch"))
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

    @needs((GROUP, "{plural}", "patch"))
    def patch_labels(
        self, plural: str, name: str, namespace: str, labels: dict[str, str | None]
    ) -> None:
        """Merge-patch labels (None removes one)."""
        body = {"metadata": {"labels": labels}}
        with classified(f"labelling {plural} {namespace}/{name}"):
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body
            )

    @needs(("", "secrets", "get"))
    def read_secret(self, namespace: str, name: str) -> SecretView | None:
        """A Secret's values (decoded) and owners; None when it does not exist."""
        try:
            with classified(f"reading Secret {namespace}/{name}"):
                secret = self.core.read_namespaced_secret(name, namespace)
        except NotFoundError:
            return None
        meta = secret.metadata
        owners = tuple(str(ref.uid) for ref in (getattr(meta, "owner_references", None) or []))
        return SecretView(
            data={k: base64.b64decode(v) for k, v in (secret.data or {}).items()},
            owner_uids=owners,
            resource_version=str(getattr(meta, "resource_version", "") or ""),
        )

    @needs(("", "secrets", "create"), (GROUP, "virtualnodes/finalizers", "update"))
    def create_owned_secret(
        self, namespace: str, name: str, data: dict[str, bytes], owner: dict[str, Any]
    ) -> bool:
        """Create a Secret owned by ``owner``; False (nothing written) if one exists already.

        The ownerReference has blockOwnerDeletion: under the
        OwnerReferencesPermissionEnforcement admission plugin that needs ``update`` on the
        owner's finalizers.
        """
        with classified(f"creating Secret {namespace}/{name}"):
            try:
                self.core.create_namespaced_secret(
                    namespace, _secret_body(namespace, name, data, owner, None)
                )
            except ApiException as error:
                if error.status == 409:
                    return False
                raise
        return True

    @needs(("", "secrets", "update"))
    def replace_owned_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, bytes],
        owner: dict[str, Any],
        resource_version: str,
    ) -> None:
        """Replace a Secret this operator owns, only if unchanged since it was read.

        ``resource_version`` makes the API server refuse (409, a temporary error here) a
        Secret someone changed in the meantime: it is read and judged again.
        """
        what = f"replacing Secret {namespace}/{name}"
        with classified(what):
            try:
                self.core.replace_namespaced_secret(
                    name, namespace, _secret_body(namespace, name, data, owner, resource_version)
                )
            except ApiException as error:
                if error.status == 409:
                    raise TemporaryError(
                        f"{what}: changed meanwhile, read again", reason="Conflict"
                    ) from error
                raise

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Any other client call, with errors classified."""
        with classified(what):
            return fn(*args, **kwargs)


@dataclass(frozen=True)
class SecretView:
    """What the operator reads of a Secret: its values and the uids of its owners."""

    data: dict[str, bytes] = field(repr=False)
    owner_uids: tuple[str, ...] = ()
    resource_version: str = ""


def _secret_body(
    namespace: str,
    name: str,
    data: dict[str, bytes],
    owner: dict[str, Any],
    resource_version: str | None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/managed-by": "kvmfleet"},
        "ownerReferences": [owner],
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
