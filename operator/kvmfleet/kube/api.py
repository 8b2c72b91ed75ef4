"""Access to the Kubernetes API through the official client: secrets, objects, events.

Calls here are blocking; use-cases run them through Context.blocking (on the Kubernetes
client's own threads). Every request carries a deadline (``_request_timeout``), and the
client's HTTP connection pool is as large as those threads. Errors are classified:
404 -> NotFoundError, 5xx/429 and every transport error (urllib3's MaxRetryError,
ProtocolError, ReadTimeoutError..., OSError) -> TemporaryError, 401/403/422 ->
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
import urllib3
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

    @needs(("", "secrets", "get"))
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

    @needs((GROUP, "{plural}", "list"))
    def list_cluster_objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        """Every object of a kvmfleet kind, in all namespaces (with those labels if given)."""
        with classified(f"listing {plural}"):
            result = self.custom.list_cluster_custom_object(
                GROUP, VERSION, plural, label_selector=label_selector, **self._t
            )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    @needs((GROUP, "{plural}", "get"))
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

    @needs((GROUP, "{plural}/status", "patch"))
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

    @needs((GROUP, "{plural}", "patch"))
    def patch_labels(
        self, plural: str, name: str, namespace: str, labels: dict[str, str | None]
    ) -> None:
        """Merge-patch labels (None removes one)."""
        body = {"metadata": {"labels": labels}}
        with classified(f"labelling {plural} {namespace}/{name}"):
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body, **self._t
            )

    @needs((GROUP, "{plural}", "patch"))
    def annotate(
        self, plural: str, name: str, namespace: str, annotations: dict[str, str | None]
    ) -> None:
        """Merge-patch annotations (None removes one)."""
        body = {"metadata": {"annotations": annotations}}
        with classified(f"annotating {plural} {namespace}/{name}"):
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body, **self._t
            )

    @needs(("", "secrets", "get"))
    def read_secret(self, namespace: str, name: str) -> SecretView | None:
        """A Secret's values (decoded) and owners; None when it does not exist."""
        try:
            with classified(f"reading Secret {namespace}/{name}"):
                secret = self.core.read_namespaced_secret(name, namespace, **self._t)
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
                    namespace,
                    _secret_body(namespace, name, data, owner, None),
                    **self._t,
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
                    name,
                    namespace,
                    _secret_body(namespace, name, data, owner, resource_version),
                    **self._t,
                )
            except ApiException as error:
                if error.status == 409:
                    raise TemporaryError(
                        f"{what}: changed meanwhile, read again", reason="Conflict"
                    ) from error
                raise

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Any other client call, with errors classified and the request deadline."""
        kwargs.setdefault("_request_timeout", self.timeout)
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
