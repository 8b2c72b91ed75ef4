"""Every Kubernetes transport error is temporary; every request carries a deadline."""

from __future__ import annotations

from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from kvmfleet.errors import NotFoundError, PermanentError, TemporaryError
from kvmfleet.kube.api import KubeApi, classified


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.MaxRetryError(None, "/apis", reason=None),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("Connection aborted."),
        urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out."),  # type: ignore[arg-type]
        urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        ConnectionResetError(104, "reset"),
        ApiException(status=503, reason="Service Unavailable"),
        ApiException(status=429, reason="Too Many Requests"),
    ],
)
def test_transport_errors_are_temporary(error: Exception) -> None:
    with pytest.raises(TemporaryError), classified("reading"):
        raise error


def test_not_found_and_refused() -> None:
    with pytest.raises(NotFoundError), classified("reading"):
        raise ApiException(status=404, reason="Not Found")
    with pytest.raises(PermanentError), classified("reading"):
        raise ApiException(status=403, reason="Forbidden")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return {"items": []}

        return call


def test_every_request_has_a_timeout() -> None:
    core, custom = Recorder(), Recorder()
    api = KubeApi(core=core, custom=custom, timeout=7.0)
    api.list_cluster_objects("virtualnodes")
    api.get_object("kvmhosts", "h")
    api.get_object("virtualnodes", "v", "ns")
    api.patch_status("virtualnodes", "v", "ns", {})
    api.patch_status("kvmhosts", "h", None, {})
    api.patch_labels("virtualnodes", "v", "ns", {})
    api.call("x", custom.anything)
    for _, kwargs in custom.calls:
        assert kwargs["_request_timeout"] == 7.0
