"""GitOps readers of kvmfleet status, for tests: Argo CD's health.lua run by a real Lua 5.1,
and the cli-utils kstatus rules (what Flux and `kstatus` compute).

Argo CD runs a health check as a Lua 5.1 chunk with the object in the global `obj` and
uses the table it returns ({status, message}). `argocd_health` does the same with the
Debian `lua5.1` interpreter and lua-cjson: the object goes in as JSON (JSON null becomes
nil, as Argo's conversion from Go does), the chunk's answer comes back as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "charts" / "kvmfleet" / "argocd" / "resource_customizations" / "kvmfleet.io"
KINDS = ("KvmHost", "VirtualNode", "VmMaster")

_HARNESS = r"""
local cjson = require("cjson")
local function strip(value)
  if value == cjson.null then
    return nil
  end
  if type(value) == "table" then
    local out = {}
    for k, v in pairs(value) do
      out[k] = strip(v)
    end
    return out
  end
  return value
end
local f = assert(io.open(arg[1], "r"))
local text = f:read("*a")
f:close()
obj = strip(cjson.decode(text))
local check = assert(loadfile(arg[2]))
local hs = check()
io.write(cjson.encode({status = hs.status, message = hs.message or ""}))
"""


def lua() -> str:
    """The Lua 5.1 interpreter (Debian package lua5.1, with lua-cjson)."""
    found = shutil.which("lua5.1")
    if found is None:
        raise AssertionError(
            "lua5.1 is needed to run the Argo CD health checks: apt-get install lua5.1 "
            "lua-cjson (hack/lib/deps.sh installs them)"
        )
    return found


def health_lua(kind: str) -> Path:
    return CUSTOMIZATIONS / kind / "health.lua"


def argocd_health(kind: str, obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) of kvmfleet's Argo CD health check for `obj`, run by lua5.1."""
    with tempfile.TemporaryDirectory() as tmp:
        harness = Path(tmp) / "harness.lua"
        harness.write_text(_HARNESS)
        data = Path(tmp) / "obj.json"
        data.write_text(json.dumps(obj))
        result = subprocess.run(
            [lua(), str(harness), str(data), str(health_lua(kind))],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 0, f"lua5.1 failed on {kind}: {result.stderr}"
    answer = json.loads(result.stdout)
    return str(answer["status"]), str(answer["message"])


def kstatus(obj: Mapping[str, Any]) -> str:
    """The cli-utils kstatus status of a custom resource: Current, InProgress, Failed or
    Terminating (sigs.k8s.io/cli-utils/pkg/kstatus/status, checkGenericProperties).

    1. metadata.deletionTimestamp set: Terminating.
    2. status.observedGeneration present and != metadata.generation: InProgress.
    3. the first of Reconciling=True (InProgress) or Stalled=True (Failed) in
       status.conditions, in list order.
    4. otherwise Current: kstatus never reads Ready, which is why kvmfleet must set one of
       Reconciling and Stalled whenever Ready is False.
    """
    metadata = obj.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed != metadata.get("generation"):
        return "InProgress"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return "InProgress"
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Failed"
    return "Current"


def strip_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A captured object without what identifies one cluster's copy (for fixtures)."""
    out = json.loads(json.dumps(obj))
    metadata = out.get("metadata") or {}
    for key in ("managedFields", "uid", "resourceVersion", "selfLink"):
        metadata.pop(key, None)
    annotations = metadata.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if not annotations:
        metadata.pop("annotations", None)
    return out
