"""Fault injection for crash-consistency tests: die at a named step when told to.

`KVMFLEET_FAILPOINTS=after-disk,after-define` makes the operator exit abruptly (no
clean-up, like a kill -9) the first time it passes one of those points; tests then start
it again without the variable and check that it converges with nothing duplicated. Unset
(the default), a failpoint costs one set lookup.
"""

from __future__ import annotations

import os
import sys

_ARMED = frozenset(p for p in os.environ.get("KVMFLEET_FAILPOINTS", "").split(",") if p)


def hit(name: str) -> None:
    """Exit the process at once if failpoint `name` is armed."""
    if name in _ARMED:
        sys.stderr.write(f"kvmfleet: failpoint {name} hit, exiting\n")
        sys.stderr.flush()
        os._exit(86)
