"""What Kopf compares between two versions of an object (handlers/startup.diffbase_storage)."""

from __future__ import annotations

import kopf

from kvmfleet.handlers.startup import diffbase_storage
from kvmfleet.settings import HOST_LABEL


def body(labels: dict[str, str], spec: dict[str, int]) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "kvmfleet.io/v1alpha1",
            "kind": "VirtualNode",
            "metadata": {"name": "kvm1", "labels": labels},
            "spec": spec,
        }
    )


def test_the_operators_host_label_is_not_a_change_but_other_labels_are() -> None:
    storage = diffbase_storage()
    before = storage.build(body=body({}, {"cpus": 1}))
    placed = storage.build(body=body({HOST_LABEL: "kvmhost1"}, {"cpus": 1}))
    assert placed == before  # placing a VM gives Kopf nothing to handle
    team = storage.build(body=body({HOST_LABEL: "kvmhost1", "team": "a"}, {"cpus": 1}))
    assert team != before and team["metadata"]["labels"] == {"team": "a"}
    assert storage.build(body=body({}, {"cpus": 2})) != before
