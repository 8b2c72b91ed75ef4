"""Parallel test workers each get a control plane and a testbed of their own.

`hack/test.sh` runs pytest with `-n KVMFLEET_TEST_WORKERS --dist loadfile` (pytest-xdist).
Worker `gwK` uses testbed/control-plane instance `KVMFLEET_INSTANCE + K` (see
docs/testbed.md: its own network 10.77.N.0/24, links and ports). Worker 0 uses the
instance and run directory the test command brought up; worker K > 0 uses
`<run dir>/w<K>`, started by the session fixtures on first use and stopped at the end
(unless KVMFLEET_KEEP=1). This runs before any test module imports `support`, which
reads these variables once.
"""

from __future__ import annotations

import os
from pathlib import Path

_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit() and int(_WORKER[2:]) > 0:
    _k = int(_WORKER[2:])
    _base = int(os.environ.get("KVMFLEET_INSTANCE", "0") or "0")
    if _base + _k > 9:
        raise RuntimeError(
            f"worker {_WORKER} would need testbed instance {_base + _k}; instances are 0-9"
        )
    _repo = Path(__file__).resolve().parents[1]
    _run = Path(os.environ.get("KVMFLEET_RUN_DIR", _repo / ".run"))
    os.environ["KVMFLEET_INSTANCE"] = str(_base + _k)
    os.environ["KVMFLEET_RUN_DIR"] = str(_run / f"w{_k}")
    # Ports set for worker 0's control plane must not be reused; the instance shifts them.
    for _var in ("KVMFLEET_API_PORT", "KVMFLEET_ETCD_PORT", "KVMFLEET_ETCD_PEER_PORT"):
        os.environ.pop(_var, None)
    os.environ.pop("KVMFLEET_KCM_PORT", None)
    # What this worker starts, it stops (the test command keeps only worker 0's).
    if os.environ.get("KVMFLEET_KEEP") != "1":
        os.environ.pop("KVMFLEET_KEEP_CLUSTER", None)
        os.environ.pop("KVMFLEET_KEEP_TESTBED", None)
