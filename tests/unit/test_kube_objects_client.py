"""The plugin's API client: the core/v1 client is built only when a command first uses it.

Building ``kubernetes.client.CoreV1Api`` imports the models of every core type, about
1.7 s of CPU on the 2-core test machine: most of a ``kubectl kvm migrate`` measured by
bench/migrate.py. Commands on kvmfleet's own objects must not pay for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kvmfleet.kube import objects
from kvmfleet.kube.objects import KubeObjects, LazyCoreV1Api

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: t}
contexts:
- name: x
  context: {cluster: c, user: u, namespace: ns1}
current-context: x
"""


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    return str(path)


def test_the_core_client_is_built_on_first_use_and_once(monkeypatch) -> None:
    built: list[Any] = []

    class FakeCoreV1Api:
        def __init__(self, client: Any) -> None:
            built.append(client)

        def read_namespaced_secret(self, name: str, namespace: str) -> str:
            return f"{namespace}/{name}"

    monkeypatch.setattr(objects.kubernetes.client, "CoreV1Api", FakeCoreV1Api, raising=False)
    core = LazyCoreV1Api("the-client")
    assert built == []
    assert core.read_namespaced_secret("s", "ns") == "ns/s"
    assert core.read_namespaced_secret("t", "ns") == "ns/t"
    assert built == ["the-client"]


def test_from_kubeconfig_defers_the_core_client(kubeconfig: str) -> None:
    kube = KubeObjects.from_kubeconfig(kubeconfig)
    assert kube.default_namespace == "ns1"
    assert isinstance(kube.api.core, LazyCoreV1Api)
    # Used, it is the real client on the same connection settings.
    method = kube.api.core.read_namespaced_secret
    assert type(method.__self__).__name__ == "CoreV1Api"
    assert method.__self__.api_client is kube.api.custom.api_client


def test_a_plugin_command_on_kvmfleet_objects_does_not_import_the_core_models(
    kubeconfig: str,
) -> None:
    """In a fresh interpreter: the plugin and its client loaded, core/v1 not imported."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from kvmfleet import plugin
        from kvmfleet.kube.objects import KubeObjects
        KubeObjects.from_kubeconfig({kubeconfig!r})
        print(json.dumps(sorted(m for m in sys.modules if m.endswith("core_v1_api"))))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
