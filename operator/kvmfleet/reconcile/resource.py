"""A read-only snapshot of one custom object, as the use-cases see it (no Kopf types)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resource:
    """What a use-case needs to know about the object it reconciles."""

    kind: str
    name: str
    namespace: str | None
    uid: str
    generation: int | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    deleting: bool = False

    @property
    def key(self) -> str:
        """namespace/name, or name for cluster-scoped objects."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Resource:
        """Build the snapshot from a raw object (a Kopf body or a plain dict)."""
        meta = body.get("metadata") or {}
        return cls(
            kind=str(body.get("kind", "")),
            name=str(meta.get("name", "")),
            namespace=meta.get("namespace"),
            uid=str(meta.get("uid", "")),
            generation=meta.get("generation"),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )
