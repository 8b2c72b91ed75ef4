"""Golden-file tests of the domain XML builder.

Each case's XML is compared exactly with ``golden/<case>.xml``. After an intended change,
regenerate with ``KVMFLEET_REGEN_GOLDEN=1 pytest tests/unit/domain`` and review the diff.
Where libvirt's own tools are installed, every golden file is also checked against
libvirt's RNG schema (``virt-xml-validate``) and defined on libvirt's test driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from kvmfleet.domain.specs import RunStrategy, VirtualNodeSpec

from .golden_cases import CASES, XCAT_KVM1

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("KVMFLEET_REGEN_GOLDEN") == "1"


def assert_golden(case: str, xml: str) -> None:
    path = GOLDEN / f"{case}.xml"
    if REGENERATE:
        path.write_text(xml, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run with KVMFLEET_REGEN_GOLDEN=1 to create it"
    assert xml == path.read_text(encoding="utf-8"), (
        f"{case}: XML differs from {path}; if intended, regenerate with KVMFLEET_REGEN_GOLDEN=1"
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    assert_golden(case, CASES[case].build())


@pytest.mark.parametrize("case", sorted(CASES))
def test_build_is_deterministic(case: str) -> None:
    assert CASES[case].build() == CASES[case].build()


@pytest.mark.parametrize("strategy", [RunStrategy.ALWAYS, RunStrategy.HALTED, RunStrategy.MANUAL])
def test_run_strategy_makes_no_xml_difference(strategy: RunStrategy) -> None:
    spec = replace(VirtualNodeSpec.from_dict(XCAT_KVM1.spec), run_strategy=strategy)
    assert_golden("xcat-kvm1", XCAT_KVM1.build_spec(spec))


def test_every_golden_file_has_a_case() -> None:
    files = {path.stem for path in GOLDEN.glob("*.xml")}
    assert files == set(CASES)


needs_libvirt_tools = pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("virsh") is None,
    reason="libvirt client tools (virt-xml-validate, virsh) not installed",
)


@needs_libvirt_tools
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_validates_against_libvirt_schema(case: str) -> None:
    result = subprocess.run(
        ["virt-xml-validate", str(GOLDEN / f"{case}.xml"), "domain"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_libvirt_tools
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_defines_on_libvirt_test_driver(case: str) -> None:
    result = subprocess.run(
        ["virsh", "-q", "-c", "test:///default", "define", str(GOLDEN / f"{case}.xml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
