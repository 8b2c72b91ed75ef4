"""Reads, small patches and creates of kvmfleet objects for the kubectl plugin (VirtualNode,
VmMaster, KvmHost, Secret).

:meth:`KubeObjects.from_kubeconfig` loads credentials as kubectl does (``--kubeconfig``,
else ``$KUBECONFIG`` - a list of files - else ``~/.kube/config``, else in-cluster) and
the default namespace of the chosen context. Every call blocks; errors are classified as
in :mod:`kvmfleet.kube.api` (404 -> NotFoundError, 401/403/422 -> PermanentError,
5xx/429/unreachable -> TemporaryError). Objects are plain dicts as the API returns them.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import urllib3

from kvmfleet.errors import PermanentError, TemporaryError
from kvmfleet.kube.api import KubeApi
from kvmfleet.settings import GROUP, VERSION

VIRTUALNODES = "virtualnodes"
VMMASTERS = "vmmasters"
KVMHOSTS = "kvmhosts"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeconfigError(PermanentError):
    """No usable kubeconfig (missing or invalid file, unknown context)."""

    reason = "KubeconfigInvalid"


@dataclass(frozen=True)
class SecretData:
    """A Secret's decoded data and its resourceVersion (which changes with every write)."""

    namespace: str
    name: str
    resource_version: str
    data: Mapping[str, bytes] = field(repr=False)


def kubeconfig_files(explicit: str | None = None) -> str:
    """The kubeconfig path list kubectl would use: ``explicit``, $KUBECONFIG, ~/.kube/config."""
    return explicit or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def _exists(paths: str) -> bool:
    return any(Path(p).expanduser().is_file() for p in paths.split(os.pathsep) if p)


def _context_namespace(config_file: str, context: str | None) -> str | None:
    contexts, current = kubernetes.config.list_kube_config_contexts(config_file)  # type: ignore[no-untyped-call]
    chosen = current
    if context is not None:
        chosen = next((c for c in contexts or [] if c.get("name") == context), None)
        if chosen is None:
            raise KubeconfigError(f"context {context!r} is not in the kubeconfig ({config_file})")
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


class LazyCoreV1Api:
    """The core/v1 API client, built on first use.

    Building ``kubernetes.client.CoreV1Api`` imports the models of every core type (Pod,
    Volume, ...): about 1.7 s of CPU on the 2-core test machine, more than the rest of a
    ``kubectl kvm migrate`` together. Most plugin commands touch only kvmfleet's own
    objects (CustomObjectsApi) and never need it; those that read Secrets or Events build
    it when they first call it.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._api: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._api is None:
            self._api = kubernetes.client.CoreV1Api(self._client)
        return getattr(self._api, name)


def _in_cluster_client() -> tuple[Any, str]:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    try:
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        namespace = "default"
    return kubernetes.client.ApiClient(configuration), namespace


class KubeObjects:
    """The plugin's view of the API: a :class:`KubeApi` and the default namespace."""

    def __init__(self, api: KubeApi, default_namespace: str = "default") -> None:
        self.api = api
        self.default_namespace = default_namespace

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | None = None, context: str | None = None
    ) -> KubeObjects:
        """Credentials and default namespace as kubectl picks them (see the module doc)."""
        files = kubeconfig_files(kubeconfig)
        try:
            if kubeconfig is None and not _exists(files) and context is None:
                client, namespace = _in_cluster_client()
            else:
                client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=files, context=context, persist_config=False
                )
                namespace = _context_namespace(files, context) or "default"
        except kubernetes.config.ConfigException as error:
            raise KubeconfigError(f"cannot load the kubeconfig ({files}): {error}") from None
        except (OSError, ValueError) as error:
            raise KubeconfigError(f"cannot read the kubeconfig ({files}): {error}") from None
        api = KubeApi(
            core=LazyCoreV1Api(client),
            custom=kubernetes.client.CustomObjectsApi(client),
        )
        return cls(api, namespace)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.api.call(what, fn, *args, **kwargs)
        except urllib3.exceptions.HTTPError as error:
            raise TemporaryError(f"{what}: {error}", reason="ApiUnavailable") from error

    # -- VirtualNodes --

    def get_virtualnode(self, namespace: str, name: str) -> dict[str, Any]:
        """A VirtualNode (NotFoundError if there is none)."""
        return dict(
            self._call(
                f"reading VirtualNode {namespace}/{name}",
                self.api.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                VIRTUALNODES,
                name,
            )
        )

    def list_virtualnodes(
        self, *, label_selector: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """VirtualNodes of one namespace, or of all (``namespace`` None)."""
        kwargs = {"label_selector": label_selector} if label_selector else {}
        if namespace is None:
            result = self._call(
                "listing VirtualNodes",
                self.api.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                VIRTUALNODES,
                **kwargs,
            )
        else:
            result = self._call(
                f"listing VirtualNodes in {namespace}",
                self.api.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                VIRTUALNODES,
                **kwargs,
            )
        return list(result.get("items", []))

    def patch_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> dict[str, Any]:
        """Set (or, with None, remove) annotations of a VirtualNode (a JSON merge patch)."""
        body = {"metadata": {"annotations": dict(annotations)}}
        return self._patch(namespace, name, body, "annotating")

    def patch_spec(self, namespace: str, name: str, spec: Mapping[str, object]) -> dict[str, Any]:
        """Merge ``spec`` into a VirtualNode's spec (a JSON merge patch)."""
        return self._patch(namespace, name, {"spec": dict(spec)}, "patching the spec of")

    def _patch(
        self, namespace: str, name: str, body: dict[str, Any] | list[dict[str, Any]], verb: str
    ) -> dict[str, Any]:
        # A list is a JSON patch (RFC 6902); a mapping a JSON merge patch (the default).
        kind = {"_content_type": "application/json-patch+json"} if isinstance(body, list) else {}
        return dict(
            self._call(
                f"{verb} VirtualNode {namespace}/{name}",
                self.api.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                VIRTUALNODES,
                name,
                body,
                **kind,
            )
        )

    # -- creating objects (kubectl kvm capture / clone) --

    def create(self, plural: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a namespaced kvmfleet object (``virtualnodes`` or ``vmmasters``)."""
        if plural not in (VIRTUALNODES, VMMASTERS):
            raise ValueError(f"not a namespaced kvmfleet kind: {plural}")
        name = (body.get("metadata") or {}).get("name")
        return dict(
            self._call(
                f"creating {plural} {namespace}/{name}",
                self.api.custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                dict(body),
            )
        )

    def get_vmmaster(self, namespace: str, name: str) -> dict[str, Any]:
        """A VmMaster (NotFoundError if there is none)."""
        return dict(
            self._call(
                f"reading VmMaster {namespace}/{name}",
                self.api.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                VMMASTERS,
                name,
            )
        )

    def replace_finalizers(
        self, namespace: str, name: str, expected: list[str], finalizers: list[str]
    ) -> dict[str, Any]:
        """Set a VirtualNode's finalizers, only if they are still ``expected`` (a JSON patch
        whose ``test`` fails with 422 when they changed meanwhile)."""
        body = [
            {"op": "test", "path": "/metadata/finalizers", "value": expected},
            {"op": "replace", "path": "/metadata/finalizers", "value": finalizers},
        ]
        return self._patch(namespace, name, body, "removing the finalizer of")

    # -- KvmHosts --

    def get_kvmhost(self, name: str) -> dict[str, Any]:
        """A KvmHost (cluster-scoped; NotFoundError if there is none)."""
        return dict(
            self._call(
                f"reading KvmHost {name}",
                self.api.custom.get_cluster_custom_object,
                GROUP,
                VERSION,
                KVMHOSTS,
                name,
            )
        )

    def patch_kvmhost_spec(self, name: str, spec: Mapping[str, object]) -> dict[str, Any]:
        """Merge ``spec`` into a KvmHost's spec (drain / uncordon)."""
        return dict(
            self._call(
                f"patching the spec of KvmHost {name}",
                self.api.custom.patch_cluster_custom_object,
                GROUP,
                VERSION,
                KVMHOSTS,
                name,
                {"spec": dict(spec)},
            )
        )

    # -- Secrets --

    def read_secret(self, namespace: str, name: str) -> SecretData:
        """A Secret's data, decoded, with its resourceVersion. Never logged."""
        secret = self._call(
            f"reading Secret {namespace}/{name}",
            self.api.core.read_namespaced_secret,
            name,
            namespace,
        )
        data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
        version = str(getattr(secret.metadata, "resource_version", "") or "")
        return SecretData(namespace, name, version, data)

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes:
        """One value of a Secret, through :meth:`KubeApi.read_secret_value`
        (PermanentError SecretKeyMissing if the key is absent)."""
        try:
            return self.api.read_secret_value(namespace, name, key)
        except urllib3.exceptions.HTTPError as error:
            what = f"reading Secret {namespace}/{name}"
            raise TemporaryError(f"{what}: {error}", reason="ApiUnavailable") from error
