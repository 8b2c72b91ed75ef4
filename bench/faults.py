#!/usr/bin/env python3
"""The fault suite, longer: tests/integration/test_fault_suite.py run several times.

Each run of the suite prints one ``FAULT | fault | phase | outcome | recovery`` line per
case and one ``SIDE-BY-SIDE`` line (a VM's create time on a healthy host with and without
another host's libvirtd hung). This runs the suite ``--repeat`` times (optionally only the
tests ``-k`` selects), then prints the table of docs/operations.md with the median and
the worst recovery time of each case, and every side-by-side figure.

``--from-log FILE...`` builds the same table from saved outputs of the suite (``pytest
tests/integration/test_fault_suite.py -s``) instead of running it.

Usage (see bench/README.md):
  .venv/bin/python bench/faults.py [--repeat 3] [-k EXPR] [--json out.json]
  .venv/bin/python bench/faults.py --from-log run1.log run2.log
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "tests/integration/test_fault_suite.py"
# pytest -s prints a test's output right after its progress mark ("." or the module
# name), so a line does not necessarily start with FAULT.
FAULT = re.compile(r"FAULT \| (.+?) \| (.+?) \| (.+?) \| (\S+)$", re.MULTILINE)
SIDE = re.compile(r"SIDE-BY-SIDE \| (.+)$", re.MULTILINE)


def run_once(select: str | None) -> tuple[int, str]:
    """One pytest run of the suite; its exit code and output."""
    argv = [sys.executable, "-m", "pytest", SUITE, "-s", "-q", "-p", "no:cacheprovider"]
    if select:
        argv += ["-k", select]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    return result.returncode, result.stdout + result.stderr


def seconds(text: str) -> float | None:
    return float(text[:-1]) if text.endswith("s") else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument(
        "--from-log", nargs="+", type=Path, default=None, help="saved outputs of the suite"
    )
    args = parser.parse_args()
    cases: dict[tuple[str, str], list[tuple[str, float | None]]] = defaultdict(list)
    sides: list[str] = []
    failed = 0
    outputs = [p.read_text() for p in args.from_log] if args.from_log else None
    for n in range(len(outputs) if outputs is not None else args.repeat):
        if outputs is not None:
            output = outputs[n]
        else:
            code, output = run_once(args.select)
            failed += code != 0
            print(f"run {n + 1}/{args.repeat}: pytest exit {code}", file=sys.stderr)
        for fault, phase, outcome, took in FAULT.findall(output):
            cases[(fault, phase)].append((outcome, seconds(took)))
        sides += SIDE.findall(output)
    print("| fault | phase | outcome | recovery after the fault ends (median / worst) | runs |")
    print("|---|---|---|---|---|")
    for (fault, phase), seen in cases.items():
        times = [t for _, t in seen if t is not None]
        took = f"{statistics.median(times):.0f} s / {max(times):.0f} s" if times else "-"
        print(f"| {fault} | {phase} | {seen[-1][0]} | {took} | {len(seen)} |")
    for side in sides:
        print(f"\n{side}")
    if args.json:
        raw = {f"{k[0]} / {k[1]}": v for k, v in cases.items()}
        args.json.write_text(json.dumps({"cases": raw, "side_by_side": sides}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
